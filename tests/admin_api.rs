//! The `mxgate` binary's admin API: the bearer token, `/metrics` parsed by a Prometheus text parser
//! with the counters moving as expected, `/healthz` following the backend, `/explain` as JSON, and
//! reloads by `POST /reload` and SIGHUP (a bad policy refused with its errors, changing nothing).

mod common;

use common::http::request;
use common::metrics;
use mxgate_loadtest::client::SmtpClient;
use mxgate_loadtest::demo::free_addr;

const TOKEN: &str = "test-token-0123456789abcdef";

fn policy(slots: usize) -> String {
    format!(
        r#"
[server]
hostname = "mx.test"
admin_token = "{TOKEN}"

[backend]
address = "127.0.0.1:10025"   # replaced by --backend

[admission]
slots = {slots}

[[class]]
name = "neutral"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_metrics_health_explain_and_reload() {
    let sink = common::proxy_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, policy(100)).unwrap();
    let (listen, admin) = (free_addr().unwrap(), free_addr().unwrap());
    let gate = common::mxgate_binary(&policy_file, listen, admin, sink.addr(), false).await;

    // The token: every endpoint but /healthz wants it.
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/explain?ip=127.0.0.1"),
        ("POST", "/reload"),
    ] {
        let (status, _) = request(admin, method, path, None).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        let (status, _) = request(admin, method, path, Some("wrong-token-0123456789")).await;
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }

    for source in ["127.0.0.60", "127.0.0.61"] {
        let mut client = SmtpClient::connect(listen, Some(source.parse().unwrap()))
            .await
            .unwrap();
        client.read_reply().await.unwrap();
        client.command("EHLO c").await.unwrap();
        common::deliver(&mut client).await;
        assert_eq!(client.command("QUIT").await.unwrap().code, 221);
        assert!(client.closed_by_server().await);
    }
    let samples = metrics::wait_for_sample(
        admin,
        Some(TOKEN),
        "mxgate_sessions_ended_total{class=\"neutral\",end=\"quit\"}",
        2.0,
    )
    .await;
    let value = |key: &str| samples.get(key).copied();
    assert_eq!(
        value("mxgate_decisions_total{class=\"neutral\",outcome=\"admit\"}"),
        Some(2.0)
    );
    assert_eq!(
        value("mxgate_deliveries_total{class=\"neutral\"}"),
        Some(2.0)
    );
    assert_eq!(value("mxgate_decision_duration_seconds_count"), Some(2.0));
    assert_eq!(value("mxgate_session_duration_seconds_count"), Some(2.0));
    assert_eq!(value("mxgate_slots_capacity"), Some(100.0));
    assert_eq!(value("mxgate_build_info{version=\"0.1.0\"}"), Some(1.0));
    let (body, _) = metrics::scrape(admin, Some(TOKEN)).await;
    assert!(
        body.contains("# TYPE mxgate_decision_duration_seconds histogram"),
        "decision latency is a histogram:\n{body}"
    );
    assert!(body.contains("# HELP mxgate_decisions_total "), "{body}");

    // Health follows the backend.
    let (status, body) = request(admin, "GET", "/healthz", None).await;
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["backend_reachable"], true);

    // Explain, as JSON.
    let (status, body) = request(admin, "GET", "/explain?ip=127.0.0.60", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let explained: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(explained["decision"], "admit");
    assert_eq!(explained["class"], "neutral");
    assert_eq!(explained["score"], 0);
    let (status, _) = request(admin, "GET", "/explain?ip=not-an-ip", Some(TOKEN)).await;
    assert_eq!(status, 400);

    // A broken policy is refused with its errors and changes nothing.
    std::fs::write(
        &policy_file,
        policy(100).replace("slots = 100", "slots = \"many\""),
    )
    .unwrap();
    let (status, body) = request(admin, "POST", "/reload", Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    let refused: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first = refused["errors"][0].as_str().unwrap();
    let expected = format!(
        "{}:10:9: invalid type: string \"many\"",
        policy_file.display()
    );
    assert!(first.starts_with(&expected), "{first}\nwant: {expected}");
    let samples = metrics::wait_for_sample(
        admin,
        Some(TOKEN),
        "mxgate_policy_reloads_total{result=\"invalid\"}",
        1.0,
    )
    .await;
    assert_eq!(samples.get("mxgate_slots_capacity"), Some(&100.0));

    // A good one takes effect: by POST /reload, then by SIGHUP.
    std::fs::write(&policy_file, policy(7)).unwrap();
    let (status, body) = request(admin, "POST", "/reload", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    metrics::wait_for_sample(admin, Some(TOKEN), "mxgate_slots_capacity", 7.0).await;
    std::fs::write(&policy_file, policy(9)).unwrap();
    let hup = mxgate_loadtest::child::kill(gate.pid(), "HUP").unwrap();
    assert!(hup.success());
    let samples = metrics::wait_for_sample(admin, Some(TOKEN), "mxgate_slots_capacity", 9.0).await;
    assert_eq!(
        samples.get("mxgate_policy_reloads_total{result=\"ok\"}"),
        Some(&2.0)
    );

    // Without its backend, mxgate is not healthy, and a session it admits ends as
    // backend_unavailable (not backend_closed: nothing was relayed).
    sink.stop().await;
    let (status, body) = request(admin, "GET", "/healthz", None).await;
    assert_eq!(status, 503, "{body}");
    let mut client = SmtpClient::connect(listen, Some("127.0.0.62".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(client.read_reply().await.unwrap().code, 421);
    let samples = metrics::wait_for_sample(
        admin,
        Some(TOKEN),
        "mxgate_sessions_ended_total{class=\"neutral\",end=\"backend_unavailable\"}",
        1.0,
    )
    .await;
    assert_eq!(
        samples.get("mxgate_backend_connect_failures_total{reason=\"connect\"}"),
        Some(&1.0)
    );
    assert_eq!(
        samples.get("mxgate_sessions_ended_total{class=\"neutral\",end=\"backend_closed\"}"),
        None
    );
    gate.stop().await.unwrap();
}

/// Every metric mxgate defines is listed in docs/operations.md.
#[test]
fn operations_guide_lists_every_metric() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let missing: Vec<&str> = mxgate::telemetry::METRICS
        .iter()
        .map(|(name, _, _)| *name)
        .filter(|name| !guide.contains(&format!("`{name}`")))
        .collect();
    assert!(missing.is_empty(), "not in docs/operations.md: {missing:?}");
}
