//! TLS on the hop to the backend: the rustls client configuration built from the policy (the
//! certificates trusted, the name the backend's certificate must carry) and the handshake.

use crate::policy::BackendTlsMode;
use rustls::pki_types::ServerName;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// TLS towards the backend as the policy sets it.
#[derive(Debug, Clone)]
pub struct BackendTls {
    pub mode: BackendTlsMode,
    pub config: Arc<rustls::ClientConfig>,
    /// The name the backend's certificate must carry (a DNS name or an IP address); when `None`,
    /// the backend's IP address, whatever it is at the time (`--backend` may change it).
    pub server_name: Option<ServerName<'static>>,
}

impl BackendTls {
    /// The name the certificate of the backend at `backend` is checked against.
    pub fn name_for(&self, backend: IpAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(backend.into()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendTlsError {
    #[error("cannot read backend.tls.ca {path}: {reason}; give a PEM file with the certificate that signed the backend's (or the backend's own, if self-signed)")]
    Ca { path: PathBuf, reason: String },
    #[error("backend.tls.server_name {name:?} is neither a DNS name nor an IP address")]
    ServerName { name: String },
    #[error("backend.tls: no usable TLS configuration: {reason}")]
    Config { reason: String },
}

/// Builds the client side of the backend hop. Without `server_name`, the certificate must carry
/// the backend's IP address.
pub fn client_setup(
    mode: BackendTlsMode,
    ca: &Path,
    server_name: Option<&str>,
) -> Result<BackendTls, BackendTlsError> {
    let ca_error = |reason: String| BackendTlsError::Ca {
        path: ca.to_owned(),
        reason,
    };
    let anchors = crate::session::tls::pem_certificates(ca).map_err(ca_error)?;
    let mut roots = rustls::RootCertStore::empty();
    for anchor in anchors {
        roots.add(anchor).map_err(|e| ca_error(e.to_string()))?;
    }
    let server_name = match server_name {
        Some(name) => Some(ServerName::try_from(name.to_owned()).map_err(|_| {
            BackendTlsError::ServerName {
                name: name.to_owned(),
            }
        })?),
        None => None,
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| BackendTlsError::Config {
        reason: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(BackendTls {
        mode,
        config: Arc::new(config),
        server_name,
    })
}

/// The TLS handshake with the backend at `backend` over `stream`, its certificate checked.
pub async fn handshake(
    stream: TcpStream,
    tls: &BackendTls,
    backend: IpAddr,
) -> io::Result<TlsStream<TcpStream>> {
    tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(tls.name_for(backend), stream)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_file(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn names_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["mta.test".into()]).unwrap();
        let ca = pem_file(dir.path(), &cert.cert.pem());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();

        let by_ip = client_setup(BackendTlsMode::Starttls, &ca, None).unwrap();
        assert_eq!(by_ip.name_for(ip), ServerName::IpAddress(ip.into()));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(by_ip.name_for(other), ServerName::IpAddress(other.into()));
        let by_name = client_setup(BackendTlsMode::Implicit, &ca, Some("mta.test")).unwrap();
        assert_eq!(by_name.name_for(ip).to_str(), "mta.test");

        let bad_name = client_setup(BackendTlsMode::Starttls, &ca, Some("not a name"));
        assert!(matches!(bad_name, Err(BackendTlsError::ServerName { .. })));
        let empty = pem_file(dir.path(), "nothing here\n");
        let error = client_setup(BackendTlsMode::Starttls, &empty, None).unwrap_err();
        assert!(
            error.to_string().contains("no CERTIFICATE block"),
            "{error}"
        );
        let missing = client_setup(BackendTlsMode::Starttls, &dir.path().join("nope"), None);
        assert!(matches!(missing, Err(BackendTlsError::Ca { .. })));
    }
}
