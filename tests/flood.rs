//! A small flood, bounded to 30 s: 200 PBL-listed senders (admitted to at most 60% of the pool)
//! and 20 good senders that retry after a 4xx like real MTAs, against a pool of 20. Every good
//! sender's message is delivered and the pool never holds more than its capacity.

mod common;

use common::{Gate, WAIT};
use mxgate::policy::Policy;
use mxgate_loadtest::client::SmtpClient;
use mxgate_loadtest::dnsbl::{demo_zones, DnsblServer, Zone};
use mxgate_loadtest::sink::{Sink, SinkConfig};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_senders_get_through_a_flood() {
    let mut zones = demo_zones();
    zones[0] = (
        "zen.spamhaus.org",
        Zone::parse("127.0.0.2\n127.0.40.0/24 :127.0.0.10:PBL\n").unwrap(),
    );
    let dns = DnsblServer::start(zones).await.unwrap();
    let sink = Sink::start(SinkConfig {
        expect_proxy: true,
        keep_bodies: false,
        ..SinkConfig::loopback()
    })
    .await
    .unwrap();
    let text = format!(
        r#"
[server]
hostname = "mx.test"
listen = ["127.0.0.1:0"]
[backend]
address = "{}"
[admission]
slots = 20
[dns]
resolver = "{}"
budget = "2s"
sites = ["zen.spamhaus.org=127.0.0.[10;11]*4"]
[[class]]
name = "neutral"
max_score = 2
connections_per_ip = 2
[[class]]
name = "suspect"
max_share = 0.6
messages_per_session = 1
connections_per_ip = 2
"#,
        sink.addr(),
        dns.addr()
    );
    let gate =
        Gate::start(Policy::parse("flood", &text, None).unwrap_or_else(|e| panic!("{e}"))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let stop = Arc::new(AtomicBool::new(false));

    // Watch occupancy while the flood runs.
    let max_seen = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (admission, stop, max_seen) = (gate.admission.clone(), stop.clone(), max_seen.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                max_seen.fetch_max(admission.slots().in_use(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // 200 listed senders: connect, and when admitted hold the session while sending a message.
    let mut flooders = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let (addr, stop) = (gate.addr, stop.clone());
        flooders.spawn(async move {
            let source = format!("127.0.40.{}", 1 + i % 250);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok(mut c) = SmtpClient::connect(addr, Some(source.parse().unwrap())).await
                else {
                    continue;
                };
                let Ok(greeting) = c.read_reply().await else {
                    continue;
                };
                if greeting.code == 220 {
                    let _ = c.command("EHLO flood").await;
                    let _ = c
                        .send_message(
                            "spam@flood.test",
                            &["victim@mx.test"],
                            b"Subject: buy\r\n\r\nnow\r\n",
                        )
                        .await;
                    for _ in 0..5 {
                        let _ = c.command("NOOP").await;
                    }
                    let _ = c.command("QUIT").await;
                }
            }
        });
    }

    // 20 good senders, each with one message, retrying after 4xx with backoff.
    let mut good = tokio::task::JoinSet::new();
    for i in 0..20u32 {
        let addr = gate.addr;
        good.spawn(async move {
            let source = format!("127.0.41.{}", 1 + i);
            let mut backoff = Duration::from_millis(20);
            let mut attempts = 0;
            while Instant::now() < deadline {
                attempts += 1;
                if let Ok(mut c) = SmtpClient::connect(addr, Some(source.parse().unwrap())).await {
                    if let Ok(g) = c.read_reply().await {
                        if g.code == 220 && c.command("EHLO good").await.is_ok() {
                            if let Ok(r) = c
                                .send_message(
                                    "person@good.test",
                                    &["friend@mx.test"],
                                    b"Subject: hello\r\n\r\nhi\r\n",
                                )
                                .await
                            {
                                if r.code == 250 {
                                    let _ = c.command("QUIT").await;
                                    return (true, attempts);
                                }
                            }
                        }
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            (false, attempts)
        });
    }
    let mut delivered = 0;
    let mut attempts = Vec::new();
    while let Some(result) = good.join_next().await {
        let (ok, n) = result.unwrap();
        delivered += usize::from(ok);
        attempts.push(n);
    }
    stop.store(true, Ordering::Relaxed);
    while flooders.join_next().await.is_some() {}
    monitor.await.unwrap();

    assert_eq!(
        delivered, 20,
        "every good sender delivers (attempts per sender: {attempts:?})"
    );
    let max = max_seen.load(Ordering::Relaxed);
    assert!(max <= 20, "pool exceeded its capacity: {max}");
    assert!(
        max >= 12,
        "the flood did not load the pool ({max} slots at most): the test proves nothing"
    );
    assert!(
        sink.wait_until(WAIT, |m, _| m
            .iter()
            .filter(|m| m.mail_from.contains("good.test"))
            .count()
            == 20)
            .await
    );
    let admission = gate.admission.clone();
    gate.stop().await;
    assert_eq!(
        admission.slots().in_use(),
        0,
        "slots held after every session ended"
    );
    dns.stop().await;
}
