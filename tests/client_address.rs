//! The backend learns the real client: PROXY v2, PROXY v1 and XCLIENT, checked at the sink.

mod common;

use common::{gate_and_sink, WAIT};

async fn announced_client(mode: &str, source: &str) -> (String, &'static str) {
    let (gate, sink) = gate_and_sink(mode, "", "").await;
    let mut client = gate.client_from(source).await;
    let ehlo = client.command("EHLO client.test").await.unwrap();
    // The backend's XCLIENT must never be offered to clients.
    assert!(!ehlo.text.contains("XCLIENT"), "{ehlo}");
    common::deliver(&mut client).await;
    client.command("QUIT").await.unwrap();
    assert!(sink.wait_until(WAIT, |m, _| m.len() == 1).await);
    let message = &sink.messages()[0];
    let session = &sink.sessions()[0];
    gate.stop().await;
    assert_eq!(message.client, session.client);
    (session.client.to_string(), session.announced_by)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_carries_the_client_address() {
    assert_eq!(
        announced_client("v2", "127.0.0.9").await,
        ("127.0.0.9".into(), "proxy-v2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v1_carries_the_client_address() {
    assert_eq!(
        announced_client("v1", "127.0.0.10").await,
        ("127.0.0.10".into(), "proxy-v1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xclient_carries_the_client_address() {
    assert_eq!(
        announced_client("xclient", "127.0.0.11").await,
        ("127.0.0.11".into(), "xclient")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_shows_mxgate_as_the_client() {
    assert_eq!(
        announced_client("none", "127.0.0.12").await,
        ("127.0.0.1".into(), "none")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_xclient_is_refused() {
    let (gate, sink) = gate_and_sink("xclient", "", "").await;
    let mut client = gate.client_from("127.0.0.13").await;
    client.command("EHLO client.test").await.unwrap();
    let reply = client.command("XCLIENT ADDR=192.0.2.1").await.unwrap();
    assert_eq!(reply.code, 502, "{reply}");
    client
        .send_message("a@b", &["r@s"], b"m\r\n")
        .await
        .unwrap();
    assert_eq!(sink.messages()[0].client.to_string(), "127.0.0.13");
    gate.stop().await;
}

/// A client on IPv6 (mxgate listening on ::1) is announced as an IPv6 address in every mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_announced() {
    for (mode, by) in [
        ("v2", "proxy-v2"),
        ("v1", "proxy-v1"),
        ("xclient", "xclient"),
    ] {
        let mut config = mxgate_loadtest::sink::SinkConfig::loopback();
        config.expect_proxy = mode != "xclient";
        config.xclient = mode == "xclient";
        let sink = mxgate_loadtest::sink::Sink::start(config).await.unwrap();
        let text = common::policy_text(sink.addr(), mode, "", "")
            .replace("listen = [\"127.0.0.1:0\"]", "listen = [\"[::1]:0\"]");
        let policy = mxgate::policy::Policy::parse("ipv6", &text, None).unwrap();
        let gate = common::Gate::start(policy).await;
        assert!(gate.addr.is_ipv6(), "{}", gate.addr);
        let mut client = gate.client_from("::1").await;
        client.command("EHLO client.test").await.unwrap();
        common::deliver(&mut client).await;
        client.command("QUIT").await.unwrap();
        assert!(sink.wait_until(WAIT, |m, _| m.len() == 1).await);
        let session = &sink.sessions()[0];
        assert_eq!(
            (session.client.to_string(), session.announced_by),
            ("::1".into(), by)
        );
        gate.stop().await;
    }
}
