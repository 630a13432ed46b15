//! The relay over loopback: mxgate between a real client and the sink MTA, bytes compared by hash.

mod common;

use common::{gate_and_sink, sha256, WAIT};
use mxgate_loadtest::client::dot_stuff;

/// A body with dot-stuffed lines, a lone dot that is not the end, and CRLF.CRLF-like text.
const TRICKY: &[u8] =
    b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r.\r\nend . \r\n.\r\nx\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_byte_identical() {
    let (gate, sink) = gate_and_sink("v2", "", "").await;
    let mut ten_mib = Vec::with_capacity(10 * 1024 * 1024 + 64);
    let mut i = 0u64;
    while ten_mib.len() < 10 * 1024 * 1024 {
        // Lines of varying length, some starting with a dot.
        let line = format!(
            "{}{}\r\n",
            if i.is_multiple_of(7) { "." } else { "" },
            "x".repeat((i % 990) as usize)
        );
        ten_mib.extend_from_slice(line.as_bytes());
        i += 1;
    }
    let bodies: Vec<&[u8]> = vec![b"Subject: plain\r\n\r\nhello\r\n", TRICKY, &ten_mib];

    let mut client = gate.client_from("127.0.0.2").await;
    assert!(client
        .command("EHLO client.test")
        .await
        .unwrap()
        .is_positive());
    for body in &bodies {
        let reply = client
            .send_message("a@client.test", &["r@sink.test"], body)
            .await
            .unwrap();
        assert_eq!(reply.code, 250, "{reply}");
    }
    assert_eq!(client.command("QUIT").await.unwrap().code, 221);

    let messages = sink.messages();
    assert_eq!(messages.len(), bodies.len());
    for (message, body) in messages.iter().zip(&bodies) {
        assert_eq!(message.size, body.len());
        assert_eq!(
            message.sha256,
            sha256(body),
            "body of {} bytes changed in transit",
            body.len()
        );
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_data_split_across_writes() {
    let (gate, sink) = gate_and_sink("v2", "", "").await;
    let body = b"Subject: split\r\n\r\nline\r\n";
    let wire = dot_stuff(body);
    // Every cut of the terminator: "\r" | "\n.\r\n", "\r\n" | ".\r\n", "\r\n." | "\r\n", ...
    for cut in 1..5 {
        let mut client = gate.client_from("127.0.0.3").await;
        client.command("EHLO client.test").await.unwrap();
        client
            .write_raw(b"MAIL FROM:<a@b>\r\nRCPT TO:<r@s>\r\nDATA\r\n")
            .await
            .unwrap();
        for _ in 0..3 {
            assert!(client.read_reply().await.unwrap().code < 400);
        }
        let split = wire.len() - 5 + cut;
        client.write_raw(&wire[..split]).await.unwrap();
        tokio::task::yield_now().await;
        client.write_raw(&wire[split..]).await.unwrap();
        assert_eq!(client.read_reply().await.unwrap().code, 250, "cut {cut}");
        client.command("QUIT").await.unwrap();
    }
    let messages = sink.messages();
    assert_eq!(messages.len(), 4);
    assert!(messages.iter().all(|m| m.sha256 == sha256(body)));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_group_gets_replies_in_order() {
    let (gate, sink) = gate_and_sink("v2", "", "recipients_per_message = 2").await;
    let mut client = gate.client_from("127.0.0.4").await;
    let ehlo = client.command("EHLO client.test").await.unwrap();
    assert!(ehlo.text.contains("PIPELINING"), "{ehlo}");
    client
        .write_raw(
            b"MAIL FROM:<a@b>\r\nRCPT TO:<1@s>\r\nRCPT TO:<2@s>\r\nRCPT TO:<3@s>\r\nDATA\r\n",
        )
        .await
        .unwrap();
    let mut got = Vec::with_capacity(5);
    for _ in 0..5 {
        let reply = client.read_reply().await.unwrap();
        got.push((reply.code, reply.text.contains("4.5.3")));
    }
    assert_eq!(
        got,
        vec![
            (250, false),
            (250, false),
            (250, false),
            (452, true),
            (354, false)
        ]
    );
    client.write_raw(&dot_stuff(b"x\r\n")).await.unwrap();
    assert_eq!(client.read_reply().await.unwrap().code, 250);
    assert_eq!(sink.messages()[0].rcpts.len(), 2);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_limit_cuts_off_and_is_advertised() {
    let (gate, sink) = gate_and_sink("v2", "", "messages_per_session = 3").await;
    let mut client = gate.client_from("127.0.0.5").await;
    let ehlo = client.command("EHLO client.test").await.unwrap();
    assert!(ehlo.text.contains("LIMITS MAILMAX=3"), "{ehlo}");
    for _ in 0..3 {
        common::deliver(&mut client).await;
    }
    let cut = client.command("MAIL FROM:<a@b>").await.unwrap();
    assert_eq!(cut.code, 421, "{cut}");
    assert!(
        cut.text
            .contains("4.7.0 mx.test Message limit for this session reached, reconnect"),
        "{cut}"
    );
    assert!(client.closed_by_server().await);
    assert!(
        sink.wait_until(WAIT, |_, sessions| sessions.iter().all(|s| s.ended))
            .await
    );
    let sessions = sink.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].messages, 3);
    gate.stop().await;
}

/// SMTP smuggling: a body that a lenient backend would end at `LF . LF` carries a second
/// transaction. mxgate sends bare LFs as CRLF, so it ends the body where such a backend would and
/// sees the smuggled MAIL as a command of its own: the message limit still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_transaction_is_seen_and_cut_off() {
    let (gate, sink) = gate_and_sink("v2", "", "messages_per_session = 1").await;
    let mut client = gate.client_from("127.0.0.7").await;
    client.command("EHLO client.test").await.unwrap();
    client
        .write_raw(
            b"MAIL FROM:<a@b>\r\nRCPT TO:<r@s>\r\nDATA\r\nSubject: first\r\n\r\nhi\n.\n\
              MAIL FROM:<smuggled@x>\r\nRCPT TO:<r@s>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n",
        )
        .await
        .unwrap();
    for expected in [250, 250, 354, 250] {
        let reply = client.read_reply().await.unwrap();
        assert_eq!(reply.code, expected, "{reply}");
    }
    let cut = client.read_reply().await.unwrap();
    assert!(
        cut.text.starts_with("421 4.7.0 mx.test Message limit"),
        "the smuggled MAIL: {cut}"
    );
    assert!(client.closed_by_server().await);
    assert!(
        sink.wait_until(WAIT, |_, sessions| sessions.iter().all(|s| s.ended))
            .await
    );
    let messages = sink.messages();
    assert_eq!(
        messages.len(),
        1,
        "the smuggled message reached the backend"
    );
    assert_eq!(
        messages[0].body.as_deref().unwrap(),
        b"Subject: first\r\n\r\nhi\r\n"
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_refusals_are_relayed_and_not_counted() {
    let mut config = mxgate_loadtest::sink::SinkConfig::loopback();
    config.expect_proxy = true;
    config.reject_rcpt_prefix = Some("nobody".into());
    let sink = mxgate_loadtest::sink::Sink::start(config).await.unwrap();
    let text = common::policy_text(sink.addr(), "v2", "", "messages_per_session = 1");
    let gate = common::Gate::start(mxgate::policy::Policy::parse("t", &text, None).unwrap()).await;
    let mut client = gate.client_from("127.0.0.6").await;
    client.command("EHLO client.test").await.unwrap();
    // Refused recipient and then DATA without recipients: the backend's own replies, byte for byte.
    let reply = client
        .send_message("a@b", &["nobody@s"], b"m\r\n")
        .await
        .unwrap();
    assert_eq!(reply.text, "554 5.5.1 Error: no valid recipients\r\n");
    client.command("RSET").await.unwrap();
    common::deliver(&mut client).await;
    assert_eq!(client.command("MAIL FROM:<a@b>").await.unwrap().code, 421);
    assert_eq!(sink.messages().len(), 1);
    gate.stop().await;
}

/// A scripted backend MTA behind mxgate (backend proxy none) and a client connected through it, the
/// greeting relayed.
async fn gate_with_scripted_backend(
    session_extra: &str,
) -> (
    common::Gate,
    mxgate_loadtest::client::SmtpClient<tokio::net::TcpStream>,
    tokio::net::TcpStream,
) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let text = common::policy_text(listener.local_addr().unwrap(), "none", session_extra, "");
    let policy = mxgate::policy::Policy::parse("test", &text, None).unwrap();
    let gate = common::Gate::start(policy).await;
    let mut client = gate.connect("127.0.0.40").await;
    let (mut mta, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    mta.write_all(b"220 mta.test ESMTP\r\n").await.unwrap();
    assert_eq!(client.read_reply().await.unwrap().code, 220);
    (gate, client, mta)
}

/// Reads what the backend is sent, up to and including QUIT.
async fn read_up_to_quit(mta: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    while !got.ends_with(b"QUIT\r\n") {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(WAIT, mta.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "mxgate closed before QUIT: {got:?}");
        got.extend_from_slice(&chunk[..n]);
    }
}

/// After QUIT the backend closes first, as behind a TCP proxy, so that the connection's TIME_WAIT
/// stays with the backend and not on mxgate's ports towards it; the client is not kept waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_closes_first_after_quit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gate, mut client, mut mta) = gate_with_scripted_backend("").await;
    client.write_raw(b"QUIT\r\n").await.unwrap();
    read_up_to_quit(&mut mta).await;
    mta.write_all(b"221 mta.test Bye\r\n").await.unwrap();
    assert_eq!(client.read_reply().await.unwrap().code, 221);
    assert!(client.closed_by_server().await);
    // mxgate keeps its side towards the backend open until the backend closes.
    let mut rest = [0u8; 64];
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), mta.read(&mut rest));
    assert!(early.await.is_err(), "mxgate closed before the backend");
    mta.shutdown().await.unwrap();
    let end = tokio::time::timeout(WAIT, mta.read(&mut rest))
        .await
        .unwrap();
    assert_eq!(end.unwrap(), 0);
    gate.stop().await;
}

/// A backend that answers mxgate's own QUIT (here after the client's idle timeout) but never closes
/// is let go of after a short wait: no session, slot or socket is held for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_that_never_closes_is_let_go_of() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gate, mut client, mut mta) = gate_with_scripted_backend("idle_timeout = \"1s\"").await;
    read_up_to_quit(&mut mta).await;
    mta.write_all(b"221 mta.test Bye\r\n").await.unwrap();
    let reply = client.read_reply().await.unwrap();
    assert!(reply.text.starts_with("421 4.4.2"), "{reply}");
    assert!(client.closed_by_server().await);
    let mut rest = [0u8; 64];
    let end = tokio::time::timeout(WAIT, mta.read(&mut rest))
        .await
        .unwrap();
    assert_eq!(end.unwrap(), 0, "mxgate closes after its wait");
    gate.stop().await;
}
