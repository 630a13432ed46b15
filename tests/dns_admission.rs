//! The whole proxy with the default policy and a DNS server serving zen.spamhaus.org and
//! list.dnswl.org test zones: SBL is refused with 554, XBL and PBL deferred with 421, unlisted and
//! DNSWL-listed senders admitted and delivered; each client from its own 127.x address.

mod common;

use common::{Gate, WAIT};
use mxgate::policy::Policy;
use mxgate_loadtest::dnsbl::{demo_zones, DnsblServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_decides_by_dns_lists() {
    let dns = DnsblServer::start(demo_zones()).await.unwrap();
    let sink = common::proxy_sink().await;
    let text = mxgate::policy::EMBEDDED_DEFAULT
        .replace(
            "listen = [\"127.0.0.1:2525\"]",
            "listen = [\"127.0.0.1:0\"]",
        )
        .replace(
            "address = \"127.0.0.1:10025\"",
            &format!("address = \"{}\"", sink.addr()),
        )
        .replace(
            "# resolver = \"127.0.0.1:53\"",
            &format!("resolver = \"{}\"", dns.addr()),
        )
        .replace("hostname = \"mx.localdomain\"", "hostname = \"mx.test\"");
    let gate =
        Gate::start(Policy::parse("default", &text, None).unwrap_or_else(|e| panic!("{e}"))).await;

    let refused = [
        (
            "127.0.1.2",
            "554 5.7.1 mx.test Service unavailable; client [127.0.1.2] blocked\r\n",
        ),
        ("127.0.1.4", "421 4.7.0 mx.test Try again later\r\n"),
        ("127.0.1.10", "421 4.7.0 mx.test Try again later\r\n"),
    ];
    for (source, expected) in refused {
        let mut client = gate.connect(source).await;
        let reply = client.read_reply().await.unwrap();
        assert_eq!(reply.text, expected, "{source}");
    }
    for source in ["127.0.5.5", "127.0.2.1"] {
        let mut client = gate.client_from(source).await;
        client.command("EHLO sender.test").await.unwrap();
        let reply = client
            .send_message(
                "a@sender.test",
                &["r@mx.test"],
                b"Subject: hi\r\n\r\nhello\r\n",
            )
            .await
            .unwrap();
        assert_eq!(reply.code, 250, "{source}: {reply}");
        client.command("QUIT").await.unwrap();
    }
    assert!(sink.wait_until(WAIT, |m, _| m.len() == 2).await);
    let mut delivered: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| m.client.to_string())
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["127.0.2.1", "127.0.5.5"]);
    // Refused and deferred clients never reached the backend.
    assert_eq!(sink.sessions().len(), 2);
    gate.stop().await;
    dns.stop().await;
}
