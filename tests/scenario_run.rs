//! One small scenario through the load harness, end to end, against the `mxgate` binary: listed
//! senders are kept out, good mail all arrives, the sink agrees with the senders, and the report's
//! JSON and plots are written.

use mxgate_loadtest::harness::{self, Target};
use mxgate_loadtest::report::Report;
use mxgate_loadtest::scenario::Scenario;

const SCENARIO: &str = r#"
name = "ci"
duration = "3s"
drain = "3s"

[[population]]
name = "people"
addresses = 10
rate = "10/s"
recipients = 2

[[population]]
name = "newsletter"
addresses = 1
listed = ["dnswl"]
rate = "40/s"
messages_per_connection = 100

[[population]]
name = "botnet"
addresses = 50
listed = ["pbl", "xbl"]
rate = "20/s"
backoff = "200ms"
max_backoff = "500ms"

[[population]]
name = "spammer"
addresses = 2
listed = ["sbl"]
rate = "2/s"
retry = false
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_scenario_end_to_end() {
    std::env::set_var("MXGATE_BIN", env!("CARGO_BIN_EXE_mxgate"));
    let scenario = Scenario::parse("ci", SCENARIO).unwrap();
    let run = harness::run(&scenario, &Target::Mxgate { policy: None })
        .await
        .unwrap();
    let by_name = |name: &str| run.populations.iter().find(|p| p.name == name).unwrap();

    // Good mail: every connection admitted, every message delivered, and the sink agrees.
    assert_eq!(run.good.admission_ratio, 1.0, "{:#?}", run.good);
    for name in ["people", "newsletter"] {
        let p = by_name(name);
        let spec = scenario
            .populations
            .iter()
            .find(|s| s.name == name)
            .unwrap();
        assert_eq!(p.messages_offered, scenario.messages_offered(spec));
        assert_eq!(p.messages_delivered, p.messages_offered, "{p:#?}");
        assert_eq!(run.sink_recipients.get(name), Some(&p.recipients_delivered));
        let recipients = if name == "people" { 2 } else { 1 };
        assert_eq!(p.recipients_delivered, p.messages_delivered * recipients);
        assert_eq!(p.delivery_seconds.count as u64, p.messages_delivered);
    }
    // The newsletter reconnects after the trusted class's 50 messages (LIMITS MAILMAX=50).
    let newsletter = by_name("newsletter");
    assert!(newsletter.connections_admitted >= newsletter.messages_delivered.div_ceil(50));

    // Listed senders: the botnet is deferred at every attempt, the SBL spammer refused.
    let botnet = by_name("botnet");
    assert!(botnet.connections_tried > 0);
    assert_eq!(botnet.connections_admitted, 0);
    assert_eq!(botnet.connections_deferred, botnet.connections_tried);
    assert_eq!(botnet.messages_undelivered, botnet.messages_offered);
    let spammer = by_name("spammer");
    assert_eq!(spammer.connections_refused, spammer.connections_tried);
    assert_eq!(spammer.messages_rejected, spammer.messages_offered);
    assert!(
        !run.sink_recipients.contains_key("botnet") && !run.sink_recipients.contains_key("spammer")
    );

    // mxgate's own view, scraped from its admin API.
    let gate = run.gate.as_ref().expect("mxgate metrics");
    let tried: u64 = run.populations.iter().map(|p| p.connections_tried).sum();
    assert_eq!(gate.metrics.decisions, tried, "one decision per connection");
    assert!(!gate.metrics.occupancy.is_empty());

    // The report: JSON that reads back, a table, and the plots.
    let report = Report {
        scenario: scenario.name.clone(),
        runs: vec![run],
    };
    let dir = tempfile::tempdir().unwrap();
    let files = report.write(dir.path()).unwrap();
    assert_eq!(files.len(), 4, "{files:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["runs"][0]["populations"][0]["name"], "people");
    let svg = std::fs::read_to_string(dir.path().join("occupancy.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("slots in use"));
    assert!(report.render().contains("| botnet | no |"));
}
