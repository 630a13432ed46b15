//! Shared fixtures for the integration tests: a sink MTA, mxgate in-process, test certificates.
#![allow(dead_code)]

use mxgate::policy::Policy;
use mxgate::server::Server;
use mxgate_loadtest::client::SmtpClient;
use mxgate_loadtest::demo::MxgateProcess;
use mxgate_loadtest::sink::{Sink, SinkConfig};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub mod http;
pub mod metrics;
pub mod peers;

/// Generous bound for waits on the peers; a test that hits it has failed.
pub const WAIT: Duration = Duration::from_secs(20);

/// A policy for tests: mxgate on an ephemeral loopback port in front of `backend`.
/// `extra` is appended to the [session] table; `class` replaces the class body.
pub fn policy_text(
    backend: SocketAddr,
    mode: &str,
    session_extra: &str,
    class_extra: &str,
) -> String {
    format!(
        r#"
[server]
hostname = "mx.test"
listen = ["127.0.0.1:0"]

[backend]
address = "{backend}"
client_address = "{mode}"
connect_timeout = "2s"

[session]
{session_extra}

[[class]]
name = "neutral"
{class_extra}
"#
    )
}

pub struct Gate {
    pub addr: SocketAddr,
    pub admission: Arc<mxgate::admission::gate::AdmissionState>,
    pub shutdown: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn start(policy: Policy) -> Gate {
        let server = Server::bind(policy).await.expect("bind mxgate");
        let addr = server.local_addrs()[0];
        let admission = server.admission();
        let shutdown = CancellationToken::new();
        let done = tokio::spawn(server.run(shutdown.clone()));
        Gate {
            addr,
            admission,
            shutdown,
            done,
        }
    }

    /// A client connected from `source`, nothing read yet.
    pub async fn connect(&self, source: &str) -> SmtpClient<TcpStream> {
        let source: IpAddr = source.parse().unwrap();
        SmtpClient::connect(self.addr, Some(source))
            .await
            .expect("connect to mxgate")
    }

    /// A client connected from `source`, greeting read and checked.
    pub async fn client_from(&self, source: &str) -> SmtpClient<TcpStream> {
        let mut client = self.connect(source).await;
        let greeting = client.read_reply().await.expect("greeting");
        assert_eq!(greeting.code, 220, "greeting: {greeting}");
        client
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.done)
            .await
            .expect("mxgate stops")
            .unwrap();
    }
}

/// A sink that expects mxgate's PROXY header and keeps message bodies.
pub async fn proxy_sink() -> Sink {
    Sink::start(SinkConfig {
        expect_proxy: true,
        ..SinkConfig::loopback()
    })
    .await
    .expect("start sink")
}

/// The sink holds exactly one message, and its body ends with `tail`.
pub fn assert_one_message_ending(sink: &Sink, tail: &[u8]) {
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let body = messages[0].body.as_deref().expect("the sink keeps bodies");
    assert!(
        body.ends_with(tail),
        "the body ends {:?}",
        String::from_utf8_lossy(&body[body.len().saturating_sub(tail.len() + 16)..])
    );
}

/// A sink and mxgate in front of it, with the client address passed as `mode`.
pub async fn gate_and_sink(mode: &str, session_extra: &str, class_extra: &str) -> (Gate, Sink) {
    let mut config = SinkConfig::loopback();
    config.expect_proxy = matches!(mode, "v1" | "v2");
    config.xclient = mode == "xclient";
    let sink = Sink::start(config).await.expect("start sink");
    let text = policy_text(sink.addr(), mode, session_extra, class_extra);
    let policy = Policy::parse("test-policy", &text, None).unwrap_or_else(|e| panic!("{e}"));
    (Gate::start(policy).await, sink)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// A self-signed certificate for `names` (DNS names or IP addresses), written into `dir` as
/// `<stem>-cert.pem` and `<stem>-key.pem`; returns their paths and the certificate.
pub fn certificate_files(
    dir: &Path,
    stem: &str,
    names: &[&str],
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    rcgen::CertifiedKey<rcgen::KeyPair>,
) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let cert_path = dir.join(format!("{stem}-cert.pem"));
    let key_path = dir.join(format!("{stem}-key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, certified)
}

/// A self-signed certificate for `name`, written as PEM files into `dir`; returns (cert, key) paths
/// and a client configuration that trusts it.
pub fn test_certificate(
    dir: &std::path::Path,
    name: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    Arc<rustls::ClientConfig>,
) {
    let (cert_path, key_path, certified) = certificate_files(dir, name, &[name]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    (cert_path, key_path, Arc::new(config))
}

/// Sends one small message on an open session and asserts the backend accepted it.
pub async fn deliver<S>(client: &mut SmtpClient<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let reply = client
        .send_message("a@b", &["r@s"], b"m\r\n")
        .await
        .expect("send a message");
    assert_eq!(reply.code, 250, "{reply}");
}

/// This package's `mxgate` binary on `listen`, in front of `backend`, with `policy_file` and its
/// admin API on `admin`. `quiet`: only warnings logged, nothing echoed.
pub async fn mxgate_binary(
    policy_file: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    backend: SocketAddr,
    quiet: bool,
) -> MxgateProcess {
    std::env::set_var("MXGATE_BIN", env!("CARGO_BIN_EXE_mxgate"));
    let policy = policy_file.to_str().expect("a UTF-8 path");
    let args = ["--policy", policy, "--admin", &admin.to_string()];
    let started = match quiet {
        true => MxgateProcess::start_quiet(listen, backend, &args).await,
        false => MxgateProcess::start(listen, backend, &args).await,
    };
    started.expect("start mxgate")
}
