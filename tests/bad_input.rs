//! Malformed lines, overlong lines, binary junk, silent clients and a vanished backend each get the
//! right reply or timeout, and other sessions carry on.

mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{gate_and_sink, policy_text, Gate};
use mxgate::policy::Policy;
use mxgate_loadtest::client::SmtpClient;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_gets_500_and_too_much_closes() {
    let (gate, sink) =
        gate_and_sink("v2", "max_junk_commands = 4\nidle_timeout = \"2s\"", "").await;
    let mut junk = gate.client_from("127.0.0.30").await;
    // A bogus line, binary junk, a 100 KiB line without CRLF.
    let reply = junk.command("FROBNICATE now").await.unwrap();
    assert!(reply.text.starts_with("502 5.5.2"), "{reply}");
    let reply = junk.command("\u{1}\u{2}\0\u{7f}binary").await.unwrap();
    assert!(reply.text.starts_with("500 5.5.2"), "{reply}");
    junk.write_raw(&vec![b'A'; 100 * 1024]).await.unwrap();
    let reply = junk.read_reply().await.unwrap();
    assert!(
        reply.text.starts_with("500 5.5.2 Error: line too long"),
        "{reply}"
    );

    // Meanwhile another client delivers.
    let mut good = gate.client_from("127.0.0.31").await;
    good.command("EHLO good").await.unwrap();
    common::deliver(&mut good).await;

    // The long line ends (its tail is discarded); the session still works.
    junk.write_raw(b"tail of the long line\r\nNOOP\r\n")
        .await
        .unwrap();
    assert_eq!(junk.read_reply().await.unwrap().code, 250);
    // The fourth junk line closes it.
    assert_eq!(junk.command("FOO").await.unwrap().code, 502);
    let reply = junk.read_reply().await.unwrap();
    assert_eq!(reply.text, "421 4.7.0 mx.test Error: too many errors\r\n");
    assert!(junk.closed_by_server().await);
    assert_eq!(sink.messages().len(), 1);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_times_out() {
    let (gate, sink) = gate_and_sink("v2", "idle_timeout = \"1s\"", "").await;
    let mut silent = gate.client_from("127.0.0.32").await;
    // Another session, opened after the silent one, delivers while that one waits.
    let mut good = gate.client_from("127.0.0.33").await;
    good.command("EHLO good").await.unwrap();
    common::deliver(&mut good).await;
    assert_timed_out(&mut silent).await;
    assert_eq!(sink.messages().len(), 1);
    gate.stop().await;
}

/// A backend that greets a moment after it accepts (as a loaded MTA does): the client's idle timeout
/// still counts from the last bytes, not from each wake-up of the timer. (Found by the slowloris
/// scenario: the deadline used to move forward every time the timer fired early, for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_times_out_behind_a_slow_greeting() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let (mut stream, _) = backend.accept().await.unwrap();
        // The greeting comes 50 ms after the connection: a slow MTA, not synchronisation.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stream.write_all(b"220 slow.test ESMTP\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        rest
    });
    let text = common::policy_text(backend_addr, "none", "idle_timeout = \"1s\"", "");
    let policy = mxgate::policy::Policy::parse("test", &text, None).unwrap();
    let gate = common::Gate::start(policy).await;
    let mut silent = gate.client_from("127.0.0.34").await;
    assert_timed_out(&mut silent).await;
    // The backend was told QUIT, or at least let go of.
    let told = tokio::time::timeout(common::WAIT, held)
        .await
        .unwrap()
        .unwrap();
    assert!(told.is_empty() || told.starts_with(b"QUIT"), "{told:?}");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_gets_421() {
    // A port nobody listens on: bind one, note it, close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = policy_text(closed, "v2", "", "");
    let gate = Gate::start(Policy::parse("t", &text, None).unwrap()).await;
    let mut client = gate.connect("127.0.0.34").await;
    let reply = client.read_reply().await.unwrap();
    assert_eq!(
        reply.text,
        "421 4.3.2 mx.test Service temporarily unavailable\r\n"
    );
    assert!(client.closed_by_server().await);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_vanishing_mid_transaction_gets_421_not_250() {
    let (gate, sink) = gate_and_sink("v2", "", "").await;
    let mut client = gate.client_from("127.0.0.35").await;
    client.command("EHLO c").await.unwrap();
    client
        .write_raw(b"MAIL FROM:<a@b>\r\nRCPT TO:<r@s>\r\nDATA\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        client.read_reply().await.unwrap();
    }
    client.write_raw(b"half a body\r\n").await.unwrap();
    sink.stop().await;
    // mxgate tells the client at once, mid-body; the message was not accepted.
    let reply = client.read_reply().await.unwrap();
    assert_eq!(
        reply.text,
        "421 4.3.2 mx.test Service temporarily unavailable\r\n"
    );
    gate.stop().await;
}

/// The client, silent past the idle timeout, gets mxgate's 421 and the connection is closed.
async fn assert_timed_out(silent: &mut SmtpClient<TcpStream>) {
    let reply = silent.read_reply().await.unwrap();
    assert!(
        reply
            .text
            .starts_with("421 4.4.2 mx.test Error: timeout exceeded"),
        "{reply}"
    );
    assert!(silent.closed_by_server().await);
}
