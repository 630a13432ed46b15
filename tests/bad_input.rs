//! Malformed lines, overlong lines, binary junk, silent clients and a vanished backend each get the
//! right reply or timeout, and other sessions carry on.

mod common;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

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

/// A client that pipelines commands without end and never reads its replies: once its replies back
/// up, mxgate stops reading it, gives up after the idle timeout, and frees the slot; another client
/// delivers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_let_go_of() {
    let (gate, sink) = gate_and_sink("v2", "idle_timeout = \"1s\"", "").await;
    let admission = gate.admission.clone();
    let mut deaf = gate.client_from("127.0.0.39").await;
    deaf.command("EHLO deaf").await.unwrap();
    let (unread, mut writer) = deaf.into_inner().into_split();
    const BOUND: usize = 1 << 30;
    let flood = tokio::spawn(async move {
        let lines = b"NOOP\r\n".repeat(10_000);
        let mut sent = 0;
        // Ends when mxgate drops the connection (or at the bound, which fails the test).
        while sent < BOUND && writer.write_all(&lines).await.is_ok() {
            sent += lines.len();
        }
        sent
    });
    let mut good = gate.client_from("127.0.0.29").await;
    good.command("EHLO good").await.unwrap();
    common::deliver(&mut good).await;
    let sent = tokio::time::timeout(common::WAIT, flood)
        .await
        .expect("the deaf client is let go of")
        .unwrap();
    assert!(
        sent < BOUND,
        "mxgate kept reading a client that never reads"
    );
    drop(unread);
    gate.stop().await;
    assert_eq!(admission.slots().in_use(), 0, "slot kept");
    assert_eq!(sink.messages().len(), 1);
}

/// A backend that stops reading in the middle of a large body: mxgate's write to it is bounded by
/// `reply_timeout`, then the client gets 421 4.3.2 (never a 250) and the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_that_stops_reading_a_body_gets_421() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let (stopped, stop) = tokio::sync::oneshot::channel::<()>();
    let held = tokio::spawn(async move {
        let _stream = backend_up_to_body(backend).await;
        // From here on it reads nothing, until the test is over.
        let _ = stop.await;
    });
    let text = backend_setting(
        policy_text(backend_addr, "none", "", ""),
        "reply_timeout = \"1s\"",
    );
    let gate = Gate::start(Policy::parse("t", &text, None).unwrap()).await;
    let mut client = gate.client_from("127.0.0.28").await;
    send_one_message_head(&mut client).await;
    let (mut replies, mut writer) = client.into_inner().into_split();
    let body = tokio::spawn(async move {
        let chunk = b"a line of a large body that the backend never reads\r\n".repeat(1000);
        for _ in 0..2_000 {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.write_all(b".\r\n").await;
    });
    // Read up to the end of the connection, a reset included (mxgate closes with the client's body
    // unread).
    let mut said = Vec::new();
    let read = tokio::time::timeout(common::WAIT, replies.read_to_end(&mut said)).await;
    assert!(read.is_ok(), "the session did not end");
    assert_eq!(
        String::from_utf8_lossy(&said),
        "421 4.3.2 mx.test Service temporarily unavailable\r\n"
    );
    let _ = tokio::time::timeout(common::WAIT, body).await;
    drop(stopped);
    held.await.unwrap();
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

/// The session's time limit runs out while the backend still owes its reply to the end of data: the
/// client gets the backend's reply first, then the 421, and nothing after it. (Found by the relay
/// model: the 421 used to go out at once, ahead of the reply, and again on every turn of the
/// session's loop for as long as the backend kept silent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_time_limit_waits_for_the_reply_owed() {
    // The backend is slow to accept the message: it answers after the session's 1 s limit.
    let (gate, mut client, held) = message_owed_a_reply(
        Some("250 2.0.0 queued late"),
        |backend| policy_text(backend, "none", "max_duration = \"1s\"", ""),
        "127.0.0.36",
    )
    .await;
    assert_eq!(
        client.read_reply().await.unwrap().text,
        "250 2.0.0 queued late\r\n"
    );
    let reply = client.read_reply().await.unwrap();
    assert_eq!(
        reply.text,
        "421 4.4.2 mx.test Error: session time limit exceeded\r\n"
    );
    assert_nothing_more(client).await;
    assert_eq!(backend_told(held).await, b"QUIT\r\n");
    gate.stop().await;
}

/// The same with a backend that never answers: the wait for its reply is bounded by
/// `data_reply_timeout`, and the client gets one 421.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_time_limit_with_a_silent_backend_says_421_once() {
    let (gate, mut client, held) = message_owed_a_reply(
        None,
        |backend| {
            let text = policy_text(backend, "none", "max_duration = \"1s\"", "");
            backend_setting(text, "data_reply_timeout = \"2s\"")
        },
        "127.0.0.37",
    )
    .await;
    let reply = client.read_reply().await.unwrap();
    assert_eq!(
        reply.text,
        "421 4.3.2 mx.test Service temporarily unavailable\r\n"
    );
    assert_nothing_more(client).await;
    // The backend is let go of without QUIT, which it would have read as part of the reply wait.
    assert_eq!(backend_told(held).await, b"");
    gate.stop().await;
}

/// Shutdown while the backend owes its reply to the end of data and never gives it: past the grace
/// period the client gets one 421 in its place, the backend is told QUIT, and mxgate stops. (Before,
/// the 421 went out again on every turn of the session's loop, and mxgate never stopped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_with_a_silent_backend_says_421_once() {
    let (gate, mut client, held) = message_owed_a_reply(
        None,
        |backend| policy_text(backend, "none", "shutdown_grace = \"1s\"", ""),
        "127.0.0.38",
    )
    .await;
    gate.shutdown.cancel();
    let reply = client.read_reply().await.unwrap();
    assert_eq!(reply.text, "421 4.3.0 mx.test Server shutting down\r\n");
    assert_nothing_more(client).await;
    assert_eq!(backend_told(held).await, b"QUIT\r\n");
    tokio::time::timeout(common::WAIT, gate.done)
        .await
        .expect("mxgate stops")
        .unwrap();
}

/// A backend that greets, accepts EHLO, MAIL, RCPT and DATA, and answers the end of data with
/// `eod_reply` 1.5 s late, or never. It returns what it read after that.
async fn backend_owing_end_of_data(
    eod_reply: Option<&'static str>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = backend.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut stream = backend_up_to_body(backend).await;
        let mut line = String::new();
        while line != ".\r\n" {
            line.clear();
            stream.read_line(&mut line).await.unwrap();
        }
        if let Some(reply) = eod_reply {
            // A slow MTA, not synchronisation: the order the client sees does not depend on it.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            stream
                .write_all(format!("{reply}\r\n").as_bytes())
                .await
                .unwrap();
        }
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        rest
    });
    (addr, held)
}

/// Accepts one connection, greets, and answers EHLO, MAIL, RCPT and DATA (354): the body is next.
async fn backend_up_to_body(listener: tokio::net::TcpListener) -> tokio::io::BufReader<TcpStream> {
    let (stream, _) = listener.accept().await.unwrap();
    let mut stream = tokio::io::BufReader::new(stream);
    stream
        .write_all(b"220 backend.test ESMTP\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    for reply in ["250 backend.test", "250 ok", "250 ok", "354 go on"] {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        stream
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .unwrap();
    }
    stream
}

/// A session whose message waits for the reply of [`backend_owing_end_of_data`]: mxgate with the
/// policy `policy` makes for that backend, and a client from `source` that has sent one message.
async fn message_owed_a_reply(
    eod_reply: Option<&'static str>,
    policy: impl FnOnce(std::net::SocketAddr) -> String,
    source: &str,
) -> (
    Gate,
    SmtpClient<TcpStream>,
    tokio::task::JoinHandle<Vec<u8>>,
) {
    let (backend_addr, held) = backend_owing_end_of_data(eod_reply).await;
    let gate = Gate::start(Policy::parse("t", &policy(backend_addr), None).unwrap()).await;
    let mut client = gate.client_from(source).await;
    send_one_message(&mut client).await;
    (gate, client, held)
}

/// What the backend read after its last reply, once its connection ended.
async fn backend_told(held: tokio::task::JoinHandle<Vec<u8>>) -> Vec<u8> {
    tokio::time::timeout(common::WAIT, held)
        .await
        .expect("the backend's connection ends")
        .unwrap()
}

/// `policy_text` with one more setting in its [backend] table.
fn backend_setting(text: String, setting: &str) -> String {
    text.replace("[session]", &format!("{setting}\n\n[session]"))
}

async fn send_one_message(client: &mut SmtpClient<TcpStream>) {
    send_one_message_head(client).await;
    client.write_raw(b"body\r\n.\r\n").await.unwrap();
}

/// EHLO, then MAIL, RCPT and DATA pipelined, and their replies: the body is next.
async fn send_one_message_head(client: &mut SmtpClient<TcpStream>) {
    client.command("EHLO c").await.unwrap();
    client
        .write_raw(b"MAIL FROM:<a@b>\r\nRCPT TO:<r@s>\r\nDATA\r\n")
        .await
        .unwrap();
    for reply in ["250", "250", "354"] {
        assert!(client.read_reply().await.unwrap().text.starts_with(reply));
    }
}

/// The connection ends with nothing more from mxgate.
async fn assert_nothing_more(client: SmtpClient<TcpStream>) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(common::WAIT, client.into_inner().read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(_))), "the connection did not end");
    assert_eq!(String::from_utf8_lossy(&rest), "");
}
