//! What the demo checks as it goes: each step's outcome against what README.md says the demo shows,
//! so that `mxgate-loadtest demo` ends with an error instead of quietly showing something else.

use crate::harness::RunReport;
use std::fmt::Display;

/// One outcome the demo looked for, and what it saw.
struct Check {
    what: String,
    expected: String,
    seen: String,
    held: bool,
}

/// The demo's checks, in the order they were made.
#[derive(Default)]
pub struct DemoChecks {
    checks: Vec<Check>,
}

impl DemoChecks {
    /// Records whether `what` went as `expected`; `seen` is what happened, shown if it did not.
    pub fn expect(&mut self, what: &str, expected: &str, seen: impl Display, held: bool) {
        self.checks.push(Check {
            what: what.to_owned(),
            expected: expected.to_owned(),
            seen: seen.to_string(),
            held,
        });
    }

    /// Records whether a reply began with `prefix` (a code, or a code and an enhanced status).
    pub fn reply(&mut self, what: &str, prefix: &str, reply: impl Display) {
        let reply = reply.to_string();
        let held = reply.starts_with(prefix);
        self.expect(what, &format!("a reply beginning {prefix:?}"), reply, held);
    }

    /// The scenario's checks: all wanted mail in, none of the unwanted, and the sink holding exactly
    /// the recipients the senders were told it accepted.
    pub fn scenario(&mut self, run: &RunReport) {
        let good = &run.good;
        self.expect(
            "good connections admitted in the scenario",
            &good.connections_tried.to_string(),
            good.connections_admitted,
            good.connections_admitted == good.connections_tried,
        );
        self.expect(
            "good messages delivered in the scenario",
            &good.messages_offered.to_string(),
            good.messages_delivered,
            good.messages_offered > 0 && good.messages_delivered == good.messages_offered,
        );
        for p in &run.populations {
            if !p.good {
                self.expect(
                    &format!("messages delivered for {}", p.name),
                    "0",
                    p.messages_delivered,
                    p.messages_delivered == 0,
                );
            }
            let arrived = run.sink_recipients.get(&p.name).copied().unwrap_or(0);
            self.expect(
                &format!("recipients of {} at the sink", p.name),
                &format!("{} (what the senders were told)", p.recipients_delivered),
                arrived,
                arrived == p.recipients_delivered,
            );
        }
    }

    /// The closing summary, and an error naming every check that failed.
    pub fn verdict(&self) -> anyhow::Result<String> {
        let failed: Vec<&Check> = self.checks.iter().filter(|c| !c.held).collect();
        if failed.is_empty() {
            return Ok(format!(
                "All {} checks went as README.md describes the demo.",
                self.checks.len()
            ));
        }
        let mut text = format!(
            "{} of the demo's {} checks failed:",
            failed.len(),
            self.checks.len()
        );
        for c in failed {
            text.push_str(&format!(
                "\n   {}: expected {}, saw {}",
                c.what, c.expected, c.seen
            ));
        }
        anyhow::bail!(text)
    }
}

#[cfg(test)]
mod tests {
    use super::DemoChecks;

    #[test]
    fn all_held() {
        let mut checks = DemoChecks::default();
        checks.reply("spammer", "554 5.7.1", "554 5.7.1 mx Service unavailable");
        checks.expect("messages", "13", 13, true);
        let summary = checks.verdict().unwrap();
        assert!(summary.starts_with("All 2 checks"), "{summary}");
    }

    #[test]
    fn a_failure_is_named_with_what_was_seen() {
        let mut checks = DemoChecks::default();
        checks.reply("spammer", "554 5.7.1", "554 5.7.1 mx Service unavailable");
        checks.reply("infected host", "421 4.7.0", "250 mx Hello");
        checks.expect("messages at the sink", "13", 12, false);
        let error = checks.verdict().unwrap_err().to_string();
        assert!(
            error.starts_with("2 of the demo's 3 checks failed"),
            "{error}"
        );
        assert!(
            error.contains(
                "infected host: expected a reply beginning \"421 4.7.0\", saw 250 mx Hello"
            ),
            "{error}"
        );
        assert!(
            error.contains("messages at the sink: expected 13, saw 12"),
            "{error}"
        );
        assert!(!error.contains("spammer"), "{error}");
    }
}
