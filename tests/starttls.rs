//! STARTTLS terminated by mxgate with a test certificate; the backend hop stays plain.

mod common;

use common::{policy_text, sha256, test_certificate, Gate, WAIT};
use mxgate::policy::Policy;
use mxgate_loadtest::sink::{Sink, SinkConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_then_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, client_tls) = test_certificate(dir.path(), "mx.test");
    let mut config = SinkConfig::loopback();
    config.expect_proxy = true;
    let sink = Sink::start(config).await.unwrap();
    let mut text = policy_text(sink.addr(), "v2", "", "");
    text.push_str(&format!(
        "\n[tls]\ncertificate = {:?}\nkey = {:?}\n",
        cert, key
    ));
    let gate =
        Gate::start(Policy::parse("tls-policy", &text, None).unwrap_or_else(|e| panic!("{e}")))
            .await;

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
    let (cert, key, client_tls) = test_certificate(dir.path(), "mx.test");
    let sink = common::proxy_sink().await;
    let mut text = policy_text(sink.addr(), "v2", "tls_handshake_timeout = \"2s\"", "");
    text.push_str(&format!(
        "\n[tls]\ncertificate = {:?}\nkey = {:?}\n",
        cert, key
    ));
    let gate = Gate::start(Policy::parse("tls-policy", &text, None).unwrap()).await;

    let mut bad = gate.client_from("127.0.0.22").await;
    bad.command("EHLO bad").await.unwrap();
    assert_eq!(bad.command("STARTTLS").await.unwrap().code, 220);
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
