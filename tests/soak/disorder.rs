//! What goes wrong around mxgate during the soak: the backend stops and comes back on the same
//! address, the policy is reloaded with other limits, the DNS lists stop answering for a while.
//! The backend also refuses recipients named `refused...`, drops the connection without a word
//! at a recipient named `crash...` and hangs at one named `stall...`.
//! Each runs until the senders are done; the pauses between events are random, as outages are.

use mxgate_loadtest::dnsbl::{Behaviour, DnsblServer};
use mxgate_loadtest::sink::{SessionRecord, Sink, SinkConfig};
use proptest::prelude::RngExt;
use proptest::test_runner::TestRng;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn pause(rng: &mut TestRng, millis: std::ops::Range<u64>, done: &CancellationToken) -> bool {
    let wait = Duration::from_millis(rng.random_range(millis));
    tokio::select! {
        _ = done.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// The backend as mxgate is set to reach it: how it announces the client (`v2` or `xclient`), and
/// the backend's STARTTLS configuration when the hop is in TLS.
#[derive(Clone)]
pub struct BackendSpec {
    pub mode: &'static str,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The sink on `addr`, as `backend` says.
pub fn sink_config(addr: SocketAddr, backend: &BackendSpec) -> SinkConfig {
    SinkConfig {
        listen: addr,
        tls: backend.tls.clone(),
        expect_proxy: backend.mode == "v2",
        xclient: backend.mode == "xclient",
        keep_bodies: false,
        keep_messages: false,
        reject_rcpt_prefix: Some("refused".into()),
        crash_rcpt_prefix: Some("crash".into()),
        stall_rcpt_prefix: Some("stall".into()),
        ..SinkConfig::loopback()
    }
}

/// Stops the sink every 1-3 s and starts a new one on its address 0.2-1 s later. Returns the
/// records of every sink that ran, the last one stopped too.
pub async fn restart_backend(
    mut sink: Sink,
    backend: BackendSpec,
    mut rng: TestRng,
    done: CancellationToken,
) -> Vec<SessionRecord> {
    let addr = sink.addr();
    let mut records = Vec::new();
    while pause(&mut rng, 1_000..3_000, &done).await {
        records.extend(sink.stop().await);
        pause(&mut rng, 200..1_000, &CancellationToken::new()).await;
        sink = Sink::start(sink_config(addr, &backend))
            .await
            .expect("the sink starts again on its address");
    }
    records.extend(sink.stop().await);
    records
}

/// Rewrites the policy file (atomically: a reload never reads half a file) with other slots and
/// message limits every 0.3-1.5 s and signals mxgate to reload it. Returns how many reloads it
/// asked for; the file is left as `policy(80, 3)`.
pub async fn reload_policy(
    file: PathBuf,
    policy: impl Fn(usize, u32) -> String,
    pid: u32,
    mut rng: TestRng,
    done: CancellationToken,
) -> u32 {
    let mut reloads = 0;
    let mut write_and_signal = |text: String| {
        let next = file.with_extension("next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &file).unwrap();
        let hup = mxgate_loadtest::child::kill(pid, "HUP").expect("kill(1) runs");
        assert!(hup.success(), "SIGHUP to mxgate {pid}");
        reloads += 1;
    };
    while pause(&mut rng, 300..1_500, &done).await {
        let slots = [5, 50, 200, 500][rng.random_range(0..4)];
        write_and_signal(policy(slots, rng.random_range(1..=4)));
    }
    write_and_signal(policy(80, 3));
    reloads
}

/// Every 1-3 s both DNS lists stop answering for 0.5-2 s.
pub async fn stall_dns(dns: &DnsblServer, mut rng: TestRng, done: CancellationToken) {
    while pause(&mut rng, 1_000..3_000, &done).await {
        for zone in ["zen.spamhaus.org", "list.dnswl.org"] {
            dns.set_behaviour(zone, Behaviour::Silent);
        }
        pause(&mut rng, 500..2_000, &done).await;
        for zone in ["zen.spamhaus.org", "list.dnswl.org"] {
            dns.set_behaviour(zone, Behaviour::Normal);
        }
    }
}
