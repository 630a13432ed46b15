//! DNS block and allow lists: queries (RFC 5782), return-code filters and weights, a shared cache
//! with single-flight, list health and the RFC 5782 self-test.

pub mod cache;
pub mod filter;
pub mod lists;
pub mod lookup;
pub mod query;
