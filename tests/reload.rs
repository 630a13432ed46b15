//! Hot reload under load: sessions in flight keep the policy they started with and all complete,
//! new connections get the new one, the pool's capacity changes without dropping anyone, and a
//! policy that fails validation changes nothing; settings fixed at start are reported and kept.

mod common;

use mxgate::live::{Live, ReloadError};
use mxgate::policy::PolicySource;
use mxgate::server::Server;
use mxgate_loadtest::client::SmtpClient;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn policy(backend: SocketAddr, slots: usize, messages_per_session: u32) -> String {
    format!(
        r#"
[server]
hostname = "mx.test"
listen = ["127.0.0.1:0"]

[backend]
address = "{backend}"

[admission]
slots = {slots}

[[class]]
name = "neutral"
connections_per_ip = 2
messages_per_session = {messages_per_session}
"#
    )
}

async fn session(addr: SocketAddr, source: IpAddr) -> SmtpClient<tokio::net::TcpStream> {
    let mut client = SmtpClient::connect(addr, Some(source)).await.unwrap();
    assert_eq!(client.read_reply().await.unwrap().code, 220);
    assert_eq!(client.command("EHLO c").await.unwrap().code, 250);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_in_flight_survive_reloads_and_a_bad_policy_changes_nothing() {
    let sink = common::proxy_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, policy(sink.addr(), 50, 100)).unwrap();
    let source = PolicySource {
        path: Some(file.clone()),
        ..PolicySource::default()
    };
    let live = Live::start(source.load().unwrap(), source).await.unwrap();
    let server = Server::bind_live(live.clone()).await.unwrap();
    let addr = server.local_addrs()[0];
    let shutdown = CancellationToken::new();
    let done = tokio::spawn(server.run(shutdown.clone()));

    // 20 sessions in flight under the first policy (100 messages per session), one message each.
    let mut in_flight = Vec::new();
    for i in 0..20u8 {
        let mut client = session(addr, IpAddr::from([127, 0, 1, i + 1])).await;
        common::deliver(&mut client).await;
        in_flight.push(client);
    }

    // Load while the policy changes: 4 senders, 25 one-message sessions each (bounded).
    let load: Vec<_> = (0..4u8)
        .map(|t| {
            tokio::spawn(async move {
                for _ in 0..25 {
                    let mut client = session(addr, IpAddr::from([127, 0, 2, t + 1])).await;
                    common::deliver(&mut client).await;
                    assert_eq!(client.command("QUIT").await.unwrap().code, 221);
                }
            })
        })
        .collect();
    // Ten reloads: one message per session from now on, and a pool shrinking from 39 to 30 slots,
    // never below the 24 sessions open at most.
    for k in 0..10 {
        std::fs::write(&file, policy(sink.addr(), 39 - k, 1)).unwrap();
        let report = live.reload().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(report.restart_needed.is_empty(), "{report:?}");
        tokio::task::yield_now().await;
    }
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(live.admission().slots().capacity(), 30);

    // A policy that fails validation is refused with its place, and the old one stays.
    let before = live.current();
    std::fs::write(
        &file,
        policy(sink.addr(), 30, 1).replace("slots = 30", "slots = 0"),
    )
    .unwrap();
    match live.reload().await {
        Err(ReloadError::Invalid(e)) => {
            let want = format!(
                "{}:10:9: admission.slots must be at least 1",
                file.display()
            );
            assert!(e.to_string().starts_with(&want), "{e}\nwant: {want}");
        }
        other => panic!("a slots = 0 policy was not refused: {other:?}"),
    }
    assert!(Arc::ptr_eq(&before.policy, &live.current().policy));
    assert_eq!(live.admission().slots().capacity(), 30);

    // The sessions in flight kept their policy: two more messages each, then a clean QUIT.
    for client in &mut in_flight {
        common::deliver(client).await;
        common::deliver(client).await;
        assert_eq!(client.command("QUIT").await.unwrap().code, 221);
    }
    // A new session has the new policy: one message, then the cut-off.
    let mut fresh = session(addr, "127.0.3.1".parse().unwrap()).await;
    common::deliver(&mut fresh).await;
    let cut = fresh.send_message("a@b", &["r@s"], b"m\r\n").await.unwrap();
    assert_eq!(cut.code, 421, "{cut}");

    let expected = 20 * 3 + 4 * 25 + 1;
    assert!(
        sink.wait_until(common::WAIT, |m, _| m.len() == expected)
            .await,
        "the sink got {} of {expected} messages",
        sink.messages().len()
    );
    shutdown.cancel();
    tokio::time::timeout(common::WAIT, done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.admission().slots().in_use(), 0, "a slot leaked");
}

/// Settings that exist once per process (listeners, admin, workers, the spin) are reported as
/// needing a restart and keep their running values; the rest of the policy takes effect.
#[tokio::test]
async fn settings_fixed_at_start_are_reported_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    let backend: SocketAddr = "127.0.0.1:2525".parse().unwrap();
    let base = policy(backend, 50, 100);
    std::fs::write(&file, &base).unwrap();
    let source = PolicySource {
        path: Some(file.clone()),
        ..PolicySource::default()
    };
    let live = Live::start(source.load().unwrap(), source).await.unwrap();
    let running = live.policy().server.clone();

    let unchanged = live.reload().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(unchanged.restart_needed.is_empty(), "{unchanged:?}");

    let changed = base
        .replace(
            "[server]\n",
            "[server]\nworkers = 7\nspin_before_sleep = \"40us\"\nscheduling = \"normal\"\nadmin = \"127.0.0.1:0\"\n",
        )
        .replace("127.0.0.1:0\"]", "127.0.0.2:0\"]")
        .replace("slots = 50", "slots = 51");
    std::fs::write(&file, changed).unwrap();
    let report = live.reload().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.restart_needed,
        [
            "server.listen",
            "server.admin",
            "server.workers",
            "server.spin_before_sleep",
            "server.scheduling"
        ],
        "{report:?}"
    );
    let now = live.policy();
    assert_eq!(now.server.listen, running.listen);
    assert_eq!(now.server.admin, running.admin);
    assert_eq!(now.server.workers, running.workers);
    assert_eq!(now.server.spin_before_sleep, running.spin_before_sleep);
    assert_eq!(now.server.scheduling, running.scheduling);
    assert_eq!(now.admission.slots, 51, "the rest took effect");
}
