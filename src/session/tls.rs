//! STARTTLS configuration: the rustls server config built from the policy's certificate and key,
//! and the reading of PEM certificate files (the backend hop's trusted ones too).
//!
//! The ring provider is named explicitly, so no process-wide default provider has to be installed.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error(
        "cannot read TLS certificate {path}: {reason}; give a PEM file with the certificate chain"
    )]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot read TLS private key {path}: {reason}; give a PEM file with a PKCS#8, PKCS#1 or SEC1 key")]
    Key { path: PathBuf, reason: String },
    #[error("TLS certificate {cert} and key {key} do not make a usable configuration: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The certificates of a PEM file, in order; an error (its reason) unless there is one at least.
pub fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|e| e.to_string())?;
    match certs.is_empty() {
        true => Err("no CERTIFICATE block found".into()),
        false => Ok(certs),
    }
}

/// Loads the certificate chain and key and builds the server configuration offered with STARTTLS.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let chain = pem_certificates(cert).map_err(|reason| TlsConfigError::Certificate {
        path: cert.to_owned(),
        reason,
    })?;
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsConfigError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let config_error = |reason: String| TlsConfigError::Config {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| config_error(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, private_key)
    .map_err(|e| config_error(e.to_string()))?;
    Ok(Arc::new(config))
}
