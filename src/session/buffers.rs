//! The session's byte buffers, kept in a pool per worker thread: a session takes its two input
//! buffers when it starts and gives them back when it ends, and takes its two output buffers only
//! while the relay's output waits to be written, so that a connection carrying one message does not
//! pay allocations and frees of buffers too large for the allocator's per-thread caches, and the
//! output buffers a worker uses stay few and in its cache.

use bytes::BytesMut;
use std::cell::RefCell;

/// Capacity of a new buffer: command lines and replies are short. Buffers grow when they must
/// (a DATA body is read in larger pieces); those that grew past [`MAX_KEPT`] are freed, so that a
/// session that only waits never holds a body-sized buffer it took from the pool.
pub const START: usize = 2 * 1024;
/// Largest capacity a returned buffer may have to be kept.
pub const MAX_KEPT: usize = 2 * START;
/// Buffers kept per thread (at most 512 KiB): enough for the sessions that start and end between
/// two peaks; the rest are freed.
const POOL_SIZE: usize = 128;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least [`START`] bytes, from the pool if it has one.
pub fn take() -> BytesMut {
    let mut buf = POOL
        .with_borrow_mut(|pool| pool.pop())
        .unwrap_or_else(|| BytesMut::with_capacity(START));
    // A buffer that was advanced through has its room at the front: reclaim it (no copy, it is empty).
    buf.reserve(START);
    buf
}

/// Gives a buffer back for another session of this thread; its contents are dropped.
pub fn give(mut buf: BytesMut) {
    buf.clear();
    if !(START..=MAX_KEPT).contains(&buf.capacity()) {
        return;
    }
    POOL.with_borrow_mut(|pool| {
        if pool.len() < POOL_SIZE {
            pool.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn a_given_buffer_is_taken_again_empty_with_its_room() {
        let mut buf = take();
        buf.extend_from_slice(b"250 ok\r\n");
        let ptr = buf.as_ptr();
        give(buf);
        let again = take();
        assert_eq!(again.as_ptr(), ptr, "the same allocation comes back");
        assert!(again.is_empty());
        assert!(again.capacity() >= START);
    }

    #[test]
    fn a_buffer_advanced_through_gets_its_room_back() {
        let mut buf = take();
        buf.extend_from_slice(&[b'x'; START]);
        buf.advance(START);
        assert!(buf.capacity() < START, "advancing used up the room");
        give(buf);
        assert!(take().capacity() >= START);
    }

    #[test]
    fn oversized_and_tiny_buffers_are_not_kept() {
        let before = POOL.with_borrow(Vec::len);
        give(BytesMut::with_capacity(MAX_KEPT * 2));
        give(BytesMut::with_capacity(16));
        assert_eq!(POOL.with_borrow(Vec::len), before);
    }

    #[test]
    fn the_pool_keeps_at_most_its_size() {
        let many: Vec<BytesMut> = (0..POOL_SIZE + 10).map(|_| take()).collect();
        for buf in many {
            give(buf);
        }
        POOL.with_borrow(|pool| assert_eq!(pool.len(), POOL_SIZE));
    }
}
