//! STARTTLS terminated by mxgate with a test certificate; the backend hop stays plain; commands
//! sent in the clear behind STARTTLS are dropped; handshakes that are garbled, stall or meet a
//! shutdown end the session cleanly, a shutdown cutting off a handshake at the end of its grace.

mod common;

use common::{policy_text, sha256, test_certificate, Gate, WAIT};
use mxgate::policy::Policy;
use mxgate_loadtest::client::SmtpClient;
use mxgate_loadtest::sink::Sink;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{pki_types::ServerName, ClientConfig};

/// mxgate with a test certificate for mx.test (`session_extra` added to `[session]`), in front of
/// a sink that expects PROXY v2; and a client configuration that trusts the certificate.
async fn tls_gate(dir: &std::path::Path, session_extra: &str) -> (Gate, Sink, Arc<ClientConfig>) {
    let (cert, key, client_tls) = test_certificate(dir, "mx.test");
    let sink = common::proxy_sink().await;
    let mut text = policy_text(sink.addr(), "v2", session_extra, "");
    text.push_str(&format!(
        "\n[tls]\ncertificate = {:?}\nkey = {:?}\n",
        cert, key
    ));
    let policy = Policy::parse("tls-policy", &text, None).unwrap_or_else(|e| panic!("{e}"));
    (Gate::start(policy).await, sink, client_tls)
}

/// A client from `source` that said EHLO and was told 220 to STARTTLS: its handshake comes next.
async fn told_to_start_tls(gate: &Gate, source: &str) -> SmtpClient<TcpStream> {
    let mut client = gate.client_from(source).await;
    client.command("EHLO client.test").await.unwrap();
    assert_eq!(client.command("STARTTLS").await.unwrap().code, 220);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_then_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, sink, client_tls) = tls_gate(dir.path(), "").await;

    let mut client = gate.connect("127.0.0.20").await;
    assert_eq!(client.read_reply().await.unwrap().code, 220);
    let ehlo = client.command("EHLO client.test").await.unwrap();
    assert!(ehlo.text.contains("250-STARTTLS\r\n"), "{ehlo}");
    let mut tls = client
        .starttls(client_tls, "mx.test")
        .await
        .expect("TLS handshake with mxgate");
    let ehlo = tls.command("EHLO client.test").await.unwrap();
    assert!(ehlo.is_positive());
    assert!(
        !ehlo.text.contains("STARTTLS"),
        "STARTTLS offered again after TLS: {ehlo}"
    );
    let body = b"Subject: over TLS\r\n\r\n.secret\r\n";
    assert_eq!(
        tls.send_message("a@b", &["r@s"], body).await.unwrap().code,
        250
    );
    assert_eq!(tls.command("QUIT").await.unwrap().code, 221);

    assert!(sink.wait_until(WAIT, |m, _| m.len() == 1).await);
    let message = &sink.messages()[0];
    assert_eq!(message.sha256, sha256(body));
    assert_eq!(message.client.to_string(), "127.0.0.20");
    // The sink never saw TLS: mxgate terminated it.
    assert!(!sink.sessions()[0].tls);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_not_offered_without_certificate() {
    let (gate, _sink) = common::gate_and_sink("v2", "", "").await;
    let mut client = gate.client_from("127.0.0.21").await;
    let ehlo = client.command("EHLO client.test").await.unwrap();
    assert!(!ehlo.text.contains("STARTTLS"), "{ehlo}");
    assert_eq!(client.command("STARTTLS").await.unwrap().code, 502);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_handshake_does_not_hurt_others() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, _sink, client_tls) = tls_gate(dir.path(), "tls_handshake_timeout = \"2s\"").await;

    let mut bad = told_to_start_tls(&gate, "127.0.0.22").await;
    bad.write_raw(b"this is not a TLS ClientHello\r\n")
        .await
        .unwrap();
    assert!(bad.closed_by_server().await);

    let mut good = gate.connect("127.0.0.23").await;
    good.read_reply().await.unwrap();
    good.command("EHLO good").await.unwrap();
    let mut tls = good.starttls(client_tls, "mx.test").await.unwrap();
    tls.command("EHLO good").await.unwrap();
    common::deliver(&mut tls).await;
    gate.stop().await;
}

/// RFC 3207 section 5, CVE-2011-0411: a command sent in the clear in the same segment as STARTTLS
/// must not be executed. Here it is QUIT: had it reached the backend, the backend would have closed
/// and the session over TLS would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_in_the_clear_behind_starttls_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, sink, client_tls) = tls_gate(dir.path(), "").await;
    let mut client = gate.client_from("127.0.0.24").await;
    assert!(client
        .command("EHLO client.test")
        .await
        .unwrap()
        .is_positive());
    client
        .write_raw(b"STARTTLS\r\nQUIT\r\nRSET\r\n")
        .await
        .unwrap();
    assert_eq!(client.read_reply().await.unwrap().code, 220);
    let name = ServerName::try_from("mx.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls)
        .connect(name, client.into_inner())
        .await
        .expect("TLS handshake with mxgate: no reply to the dropped commands came first");
    let mut tls = SmtpClient::new(tls);
    let ehlo = tls.command("EHLO client.test").await.unwrap();
    assert_eq!(ehlo.code, 250, "{ehlo}");
    let body = b"Subject: after STARTTLS\r\n\r\nhi\r\n";
    let reply = tls.send_message("a@b", &["r@s"], body).await.unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(tls.command("QUIT").await.unwrap().code, 221);
    assert!(sink.wait_until(WAIT, |m, _| m.len() == 1).await);
    assert_eq!(sink.messages()[0].sha256, sha256(body));
    gate.stop().await;
}

/// The first half of a real ClientHello for `server_name`: a client that stalls in the middle of a
/// TLS record.
fn half_a_client_hello(client_tls: Arc<ClientConfig>, server_name: &str) -> Vec<u8> {
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut hello = Vec::new();
    tokio_rustls::rustls::ClientConnection::new(client_tls, name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    assert!(hello.len() > 100, "a ClientHello: {} bytes", hello.len());
    hello.truncate(hello.len() / 2);
    hello
}

/// Clients that stop during the TLS handshake, one before its ClientHello and one in the middle of
/// it, are let go of after `tls_handshake_timeout`: their slots are freed and their backend sessions
/// end without a message. A client that connected after them delivers over TLS meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_silent_in_the_handshake_are_let_go_of() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, sink, client_tls) = tls_gate(dir.path(), "tls_handshake_timeout = \"1s\"").await;
    let admission = gate.admission.clone();

    let mut silent = told_to_start_tls(&gate, "127.0.0.25").await;
    let mut stalled = told_to_start_tls(&gate, "127.0.0.26").await;
    stalled
        .write_raw(&half_a_client_hello(client_tls.clone(), "mx.test"))
        .await
        .unwrap();

    let good = gate.client_from("127.0.0.27").await;
    let mut tls = good.starttls(client_tls, "mx.test").await.unwrap();
    tls.command("EHLO good").await.unwrap();
    common::deliver(&mut tls).await;
    assert_eq!(tls.command("QUIT").await.unwrap().code, 221);

    assert!(silent.closed_by_server().await, "silent client kept");
    assert!(stalled.closed_by_server().await, "stalled client kept");
    assert!(
        sink.wait_until(WAIT, |_, sessions| sessions.len() == 3
            && sessions.iter().all(|s| s.ended))
            .await,
        "backend sessions left open: {:?}",
        sink.sessions()
    );
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(sink.messages()[0].client.to_string(), "127.0.0.27");
    gate.stop().await;
    assert_eq!(admission.slots().in_use(), 0, "slot kept");
}

/// Shutdown while a client is between STARTTLS and its ClientHello: the handshake still completes,
/// and the client is then told 421 4.3.0 over TLS, as a session waiting for its next command is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_the_handshake_says_421_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, sink, client_tls) = tls_gate(dir.path(), "").await;
    let admission = gate.admission.clone();

    let client = told_to_start_tls(&gate, "127.0.0.28").await;
    gate.shutdown.cancel();
    let mut tls = client
        .tls_handshake(client_tls, "mx.test")
        .await
        .expect("the handshake completes during the grace period");
    let reply = tls.read_reply().await.unwrap();
    assert!(reply.text.starts_with("421 4.3.0 "), "{reply}");
    assert!(tls.closed_by_server().await);
    gate.stop().await;
    assert_eq!(admission.slots().in_use(), 0, "slot kept");
    assert!(sink.messages().is_empty());
}

/// A handshake still going on when the grace period after the shutdown signal ends is cut off
/// then, however long `tls_handshake_timeout` is: a shutdown waits no longer for a handshake than
/// for a session, and the client's slot and backend session are freed before mxgate stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_off_a_handshake_at_the_end_of_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let session = "tls_handshake_timeout = \"1h\"\nshutdown_grace = \"1s\"";
    let (gate, sink, _) = tls_gate(dir.path(), session).await;
    let admission = gate.admission.clone();

    let mut silent = told_to_start_tls(&gate, "127.0.0.29").await;
    gate.stop().await;
    assert_eq!(admission.slots().in_use(), 0, "slot kept past the stop");
    assert!(silent.closed_by_server().await, "handshake kept open");
    assert!(
        sink.wait_until(WAIT, |_, sessions| sessions.len() == 1 && sessions[0].ended)
            .await,
        "backend session left open: {:?}",
        sink.sessions()
    );
    assert!(sink.messages().is_empty());
}
