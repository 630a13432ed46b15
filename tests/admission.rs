//! Admission through the whole proxy: class shares of the slot pool, concurrent sessions per
//! address, the recipient rate (controlled clock), and no slot leaked whatever ends a session.

mod common;

use common::{Gate, WAIT};
use governor::clock::FakeRelativeClock;
use mxgate::admission::gate::AdmissionState;
use mxgate::policy::Policy;
use mxgate::server::Server;
use mxgate_loadtest::client::SmtpClient;
use mxgate_loadtest::sink::{Sink, SinkConfig};
use std::net::TcpStream as StdTcpStream;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Classes by static rule: 127.0.8.0/24 trusted, 127.0.7.0/24 good, 127.0.9.0/24 suspect (admitted
/// at most to half the pool); anyone else neutral.
fn policy(sink: &Sink, slots: usize, extra_class: &str) -> Policy {
    let text = format!(
        r#"
[server]
hostname = "mx.test"
listen = ["127.0.0.1:0"]
[backend]
address = "{}"
[admission]
slots = {slots}
[[rule]]
cidr = "127.0.8.0/24"
action = "allow"
class = "trusted"
[[rule]]
cidr = "127.0.7.0/24"
action = "allow"
class = "good"
[[rule]]
cidr = "127.0.9.0/24"
action = "deny"
class = "suspect"
[[class]]
name = "trusted"
max_score = -10
max_share = 1.0
[[class]]
name = "good"
max_score = -5
max_share = 0.9
[[class]]
name = "neutral"
max_score = 2
max_share = 0.6
{extra_class}
[[class]]
name = "suspect"
max_share = 0.5
"#,
        sink.addr()
    );
    Policy::parse("admission", &text, None).unwrap_or_else(|e| panic!("{e}"))
}

async fn sink() -> Sink {
    Sink::start(SinkConfig {
        expect_proxy: true,
        keep_bodies: false,
        ..SinkConfig::loopback()
    })
    .await
    .unwrap()
}

/// Connects from `source` and returns the first reply and the connection.
async fn connect(gate: &Gate, source: &str) -> (String, SmtpClient<TcpStream>) {
    let mut client = gate.connect(source).await;
    let reply = client.read_reply().await.unwrap();
    (reply.text, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspects_holding_sessions_do_not_stop_a_trusted_sender() {
    let sink = sink().await;
    let gate = Gate::start(policy(&sink, 10, "")).await;
    let mut held = Vec::new();
    let mut busy = 0;
    for i in 1..=10 {
        let (reply, client) = connect(&gate, &format!("127.0.9.{i}")).await;
        if reply.starts_with("220") {
            held.push(client);
        } else {
            assert_eq!(reply, "421 4.3.2 mx.test All server ports are busy\r\n");
            busy += 1;
        }
    }
    assert_eq!(
        (held.len(), busy),
        (5, 5),
        "suspects fill at most half the pool"
    );
    let (reply, mut trusted) = connect(&gate, "127.0.8.1").await;
    assert!(reply.starts_with("220"), "{reply}");
    trusted.command("EHLO trusted").await.unwrap();
    common::deliver(&mut trusted).await;
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neutral_deferred_at_sixty_percent_while_good_admitted() {
    let sink = sink().await;
    let gate = Gate::start(policy(&sink, 10, "")).await;
    let mut held = Vec::new();
    for i in 1..=6 {
        let (reply, client) = connect(&gate, &format!("127.0.7.{i}")).await;
        assert!(reply.starts_with("220"), "{reply}");
        held.push(client);
    }
    let (reply, _) = connect(&gate, "127.0.6.1").await;
    assert_eq!(
        reply, "421 4.3.2 mx.test All server ports are busy\r\n",
        "neutral at 60%"
    );
    let (reply, _good) = connect(&gate, "127.0.7.7").await;
    assert!(reply.starts_with("220"), "good at 60%: {reply}");
    // A slot freed below 60% lets neutral in again.
    drop(held.drain(..3).collect::<Vec<_>>());
    let mut admitted = false;
    // The freed sessions end when mxgate reads their EOF: retry (as an MTA would) until then.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let (reply, _c) = connect(&gate, "127.0.6.1").await;
        if reply.starts_with("220") {
            admitted = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(admitted, "neutral never admitted after slots were freed");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixth_connection_from_one_address_is_refused() {
    let sink = sink().await;
    let gate = Gate::start(policy(&sink, 100, "connections_per_ip = 5")).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let (reply, client) = connect(&gate, "127.0.6.9").await;
        assert!(reply.starts_with("220"), "{reply}");
        held.push(client);
    }
    let (reply, _) = connect(&gate, "127.0.6.9").await;
    assert_eq!(reply, "421 4.7.0 mx.test Too many connections\r\n");
    // Another address is not affected.
    let (reply, _) = connect(&gate, "127.0.6.10").await;
    assert!(reply.starts_with("220"), "{reply}");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_over_six_per_second_get_451() {
    let sink = sink().await;
    let policy = policy(&sink, 100, "recipient_rate = \"6/s\"");
    // A controlled clock: it does not move while the 20 recipients are offered.
    let clock = FakeRelativeClock::default();
    let admission = AdmissionState::with_clock(&policy, clock.clone());
    let server = Server::bind(policy)
        .await
        .unwrap()
        .with_admission(admission);
    let addr = server.local_addrs()[0];
    let shutdown = CancellationToken::new();
    let done = tokio::spawn(server.run(shutdown.clone()));

    let mut client = SmtpClient::connect(addr, Some("127.0.6.20".parse().unwrap()))
        .await
        .unwrap();
    client.read_reply().await.unwrap();
    client.command("EHLO bulk").await.unwrap();
    let mut group = String::from("MAIL FROM:<bulk@sender.test>\r\n");
    for i in 0..20 {
        group.push_str(&format!("RCPT TO:<user{i}@mx.test>\r\n"));
    }
    client.write_raw(group.as_bytes()).await.unwrap();
    assert_eq!(client.read_reply().await.unwrap().code, 250);
    let mut codes = Vec::new();
    for _ in 0..20 {
        let reply = client.read_reply().await.unwrap();
        if reply.code == 451 {
            assert_eq!(
                reply.text,
                "451 4.7.1 Recipient rate limit exceeded, try again later\r\n"
            );
        }
        codes.push(reply.code);
    }
    assert_eq!(codes.iter().filter(|&&c| c == 250).count(), 6);
    assert_eq!(codes.iter().filter(|&&c| c == 451).count(), 14);
    // The session goes on, and a second later the allowance is back.
    clock.advance(std::time::Duration::from_secs(1));
    assert_eq!(
        client.command("RCPT TO:<late@mx.test>").await.unwrap().code,
        250
    );
    client.command("QUIT").await.unwrap();
    shutdown.cancel();
    done.await.unwrap();
}

/// How a session in the leak test ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Quit,
    Reset,
    EofMidBody,
    BackendCrash,
    Junk,
    MessageLimit,
}

async fn session(addr: std::net::SocketAddr, source: String, ending: Ending) {
    let Ok(mut client) = SmtpClient::connect(addr, Some(source.parse().unwrap())).await else {
        return;
    };
    let Ok(greeting) = client.read_reply().await else {
        return;
    };
    if greeting.code != 220 {
        return;
    }
    let _ = client.command("EHLO leak").await;
    match ending {
        Ending::Quit => {
            let _ = client.command("QUIT").await;
        }
        Ending::Reset => {
            let std: StdTcpStream = client.into_inner().into_std().unwrap();
            // SO_LINGER 0: close sends RST.
            socket2::SockRef::from(&std)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
            drop(std);
        }
        Ending::EofMidBody => {
            let _ = client
                .write_raw(b"MAIL FROM:<a@b>\r\nRCPT TO:<r@s>\r\nDATA\r\n")
                .await;
            for _ in 0..3 {
                let _ = client.read_reply().await;
            }
            let _ = client.write_raw(b"half a body\r\n").await;
        }
        Ending::BackendCrash => {
            let _ = client.command("MAIL FROM:<a@b>").await;
            let _ = client.command("RCPT TO:<crash@s>").await;
        }
        Ending::Junk => {
            for _ in 0..3 {
                let _ = client.command("FROB").await;
            }
        }
        Ending::MessageLimit => {
            let _ = client.send_message("a@b", &["r@s"], b"m\r\n").await;
            let _ = client.command("MAIL FROM:<a@b>").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_slot_leaks_after_ten_thousand_sessions() {
    let sink = Sink::start(SinkConfig {
        expect_proxy: true,
        keep_bodies: false,
        crash_rcpt_prefix: Some("crash".into()),
        ..SinkConfig::loopback()
    })
    .await
    .unwrap();
    let mut text = common::policy_text(
        sink.addr(),
        "v2",
        "max_junk_commands = 3",
        "messages_per_session = 1\nconnections_per_ip = 0",
    );
    text.push_str("[admission]\nslots = 40\n");
    let gate =
        Gate::start(Policy::parse("leak", &text, None).unwrap_or_else(|e| panic!("{e}"))).await;
    let endings = [
        Ending::Quit,
        Ending::Reset,
        Ending::EofMidBody,
        Ending::BackendCrash,
        Ending::Junk,
        Ending::MessageLimit,
    ];
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (next, addr) = (next.clone(), gate.addr);
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 10_000 {
                    return;
                }
                let source = format!("127.0.{}.{}", 30 + i / 250 % 50, 1 + i % 250);
                session(addr, source, endings[i % endings.len()]).await;
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
    let admission = gate_admission(&gate);
    // Sessions end asynchronously after their clients: stopping the gate waits for all of them.
    gate.stop().await;
    assert_eq!(admission.slots().in_use(), 0, "slots leaked");
    assert_eq!(admission.sessions_from("127.0.30.1".parse().unwrap()), 0);
    assert!(
        sink.wait_until(WAIT, |_, s| s.iter().all(|s| s.ended))
            .await
    );
    assert!(
        sink.sessions().len() > 9_000,
        "most sessions reached the backend: {}",
        sink.sessions().len()
    );
}

fn gate_admission(gate: &Gate) -> Arc<AdmissionState> {
    gate.admission.clone()
}
