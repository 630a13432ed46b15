//! The soak's rig: mxgate (the binary) in front of a sink, with DNS lists, a certificate and a
//! policy of small limits and timeouts; and what a test reads of it (slots, descriptors).

use crate::common::{self, metrics};
use crate::disorder::{self, BackendSpec};
use crate::tally::Tally;
use mxgate_loadtest::client::SmtpClient;
use mxgate_loadtest::demo::{free_addr, MxgateProcess};
use mxgate_loadtest::dnsbl::{demo_zones, DnsblServer};
use mxgate_loadtest::sink::Sink;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Small limits and timeouts, so that every way a session can end comes up within seconds.
/// `backend_tls`: the `[backend.tls]` table, or nothing.
fn policy(
    mode: &str,
    backend_tls: &str,
    dns: SocketAddr,
    cert: &Path,
    key: &Path,
    slots: usize,
    messages: u32,
) -> String {
    format!(
        r#"
[server]
hostname = "mx.test"

[backend]
address = "127.0.0.1:10025"   # replaced by --backend
client_address = "{mode}"
connect_timeout = "2s"
reply_timeout = "1s"        # shorter than the backend restarts: a hung backend times out
data_reply_timeout = "3s"

[tls]
certificate = "{cert}"
key = "{key}"

[session]
idle_timeout = "2s"
max_duration = "8s"
max_command_line = 1024
max_junk_commands = 3
shutdown_grace = "3s"
tls_handshake_timeout = "2s"

[dns]
resolver = "{dns}"
budget = "200ms"
query_timeout = "1s"

[[dns.list]]
zone = "zen.spamhaus.org"
codes = "127.0.0.[2..11]"
name = "ZEN"
weight = 10

[[dns.list]]
zone = "list.dnswl.org"
codes = "127.0.[0..255].[1..3]"
name = "DNSWL"
weight = -5

[admission]
slots = {slots}
connections_per_prefix = 1000
connection_rate_per_ip = "6000/m"
connection_rate_per_prefix = "60000/m"

[[class]]
name = "trusted"
max_score = -1
connections_per_ip = 20
messages_per_session = 5
recipients_per_message = 4

[[class]]
name = "neutral"
max_score = 2
max_share = 0.8
connections_per_ip = 4
recipient_rate = "50/s"
messages_per_session = {messages}
recipients_per_message = 3

[[class]]
name = "listed"
max_score = 100
action = "defer"

{backend_tls}
"#,
        cert = cert.display(),
        key = key.display(),
    )
}

/// A session from `source`, greeted and past EHLO.
async fn greeted(gate: SocketAddr, source: &str) -> SmtpClient<tokio::net::TcpStream> {
    let mut client = SmtpClient::connect(gate, Some(source.parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(client.read_reply().await.unwrap().code, 220);
    assert_eq!(client.command("EHLO soak.test").await.unwrap().code, 250);
    client
}

pub fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Polls `/metrics` until every class's slots are free again; returns what is still in use.
pub async fn slots_in_use_settled(admin: SocketAddr) -> f64 {
    settled(
        || async {
            let (_, samples) = metrics::scrape(admin, None).await;
            samples
                .iter()
                .filter(|(key, _)| key.starts_with("mxgate_slots_in_use"))
                .map(|(_, value)| value)
                .sum::<f64>()
        },
        |used| *used == 0.0,
    )
    .await
}

/// Polls `read` every 100 ms until `good` holds of its value or `common::WAIT` passes (sessions end
/// by their own timeouts, which nothing signals); returns the last value.
pub async fn settled<T, F: std::future::Future<Output = T>>(
    mut read: impl FnMut() -> F,
    good: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let value = read().await;
        if good(&value) || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// mxgate in front of a sink, with its DNS lists, certificate and policy file.
pub struct Rig {
    _dir: tempfile::TempDir,
    /// How mxgate reaches the sink: how it announces each client, and TLS or not.
    pub backend: BackendSpec,
    pub tls: Arc<rustls::ClientConfig>,
    pub dns: Arc<DnsblServer>,
    /// Taken by a test that restarts or stops it.
    pub sink: Option<Sink>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub policy_file: PathBuf,
    pub policy_for: Arc<dyn Fn(usize, u32) -> String + Send + Sync>,
    pub gate: MxgateProcess,
    panics: Arc<AtomicUsize>,
    log_watch: tokio::task::JoinHandle<()>,
}

impl Rig {
    /// mxgate announcing each client to the sink as `mode` says (`v2` or `xclient`), over
    /// STARTTLS to the sink if `backend_tls`.
    pub async fn start(mode: &'static str, backend_tls: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, tls) = common::test_certificate(dir.path(), "mx.test");
        let (backend, tls_table) = match backend_tls {
            false => (BackendSpec { mode, tls: None }, String::new()),
            true => {
                // The sink's own certificate, for the address mxgate checks by default.
                let (sink_cert, sink_key, _) =
                    common::certificate_files(dir.path(), "sink", &["127.0.0.1"]);
                let server = mxgate::session::tls::server_config(&sink_cert, &sink_key).unwrap();
                let table = format!(
                    "[backend.tls]\nmode = \"starttls\"\nca = \"{}\"\n",
                    sink_cert.display()
                );
                let spec = BackendSpec {
                    mode,
                    tls: Some(server),
                };
                (spec, table)
            }
        };
        let dns = DnsblServer::start(demo_zones()).await.unwrap();
        let sink = Sink::start(disorder::sink_config(free_addr().unwrap(), &backend))
            .await
            .unwrap();
        let dns_addr = dns.addr();
        let policy_for = Arc::new(move |slots, messages| {
            policy(mode, &tls_table, dns_addr, &cert, &key, slots, messages)
        });
        let policy_file = dir.path().join("policy.toml");
        std::fs::write(&policy_file, policy_for(80, 3)).unwrap();
        let (listen, admin) = (free_addr().unwrap(), free_addr().unwrap());
        let gate = common::mxgate_binary(&policy_file, listen, admin, sink.addr(), true).await;
        let mut log = gate.log_lines();
        let panics = Arc::new(AtomicUsize::new(0));
        let counted = panics.clone();
        let log_watch = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match log.recv().await {
                    Ok(line) if line.contains("panicked") => {
                        eprintln!("mxgate | {line}");
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Rig {
            _dir: dir,
            backend,
            tls,
            dns: Arc::new(dns),
            sink: Some(sink),
            listen,
            admin,
            policy_file,
            policy_for,
            gate,
            panics,
            log_watch,
        }
    }

    /// SIGTERM: mxgate must exit with status 0, without having panicked.
    pub async fn stop(self, seed: u64) {
        self.gate
            .stop()
            .await
            .expect("mxgate stops cleanly on SIGTERM");
        self.log_watch.await.unwrap();
        let panics = self.panics.load(Ordering::Relaxed);
        assert_eq!(panics, 0, "seed {seed}: mxgate panicked");
        if let Some(sink) = self.sink {
            sink.stop().await;
        }
    }

    /// One message from 127.0.2.1, delivered and counted in `tally`.
    pub async fn deliver_one(&self, tally: &mut Tally) {
        let mut client = greeted(self.listen, "127.0.2.1").await;
        common::deliver(&mut client).await;
        assert_eq!(client.command("QUIT").await.unwrap().code, 221);
        assert!(client.closed_by_server().await);
        *tally
            .told_accepted
            .entry(client_ip("127.0.2.1"))
            .or_default() += 1;
    }
}

fn client_ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}
