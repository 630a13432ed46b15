//! Words for a verdict: the multi-line text of `mxgate explain` and the fields of the decision log line.

use super::{Decision, Verdict};
use crate::policy::{Policy, RuleAction};
use crate::reputation::dnsbl::lists::{Outcome, Term};
use std::fmt::Write;

fn term_label(t: &Term) -> String {
    format!(
        "{}{}={}{:+}",
        t.name
            .as_deref()
            .map(|n| format!("{n}:"))
            .unwrap_or_default(),
        t.zone,
        t.code,
        t.weight
    )
}

/// Compact reasons for the decision log line: `rule:<cidr>`, or what made up the score: the DNS
/// terms (e.g. `PBL:zen.spamhaus.org=127.0.0.10+3`) and the early-talker weight (`pregreet+N`).
pub fn log_fields(policy: &Policy, verdict: &Verdict) -> String {
    if let Some(i) = verdict.rule {
        return format!("rule:{}", policy.rules[i].net);
    }
    let mut reasons: Vec<String> = verdict.terms.iter().map(term_label).collect();
    if let Some(weight) = verdict.early_talker {
        reasons.push(format!("pregreet{weight:+}"));
    }
    if reasons.is_empty() {
        return "none".to_owned();
    }
    reasons.join(",")
}

/// The DNS lists that gave no usable answer for this client, for the decision log line:
/// `zone:late` (no answer within the budget), `zone:<error>` (e.g. `servfail`,
/// `refused_127.255.255.x`) or `zone:unusable` (its self-test has not passed), else `none`. Each
/// counted as not listed, so a listed sender admitted while its list failed shows why here.
pub fn lists_not_counted(verdict: &Verdict) -> String {
    let failed: Vec<String> = verdict
        .dns
        .iter()
        .filter_map(|result| {
            let why = match &result.outcome {
                Outcome::Listed(_) | Outcome::NotListed => return None,
                Outcome::Error(e) => e,
                other => other.as_str(),
            };
            Some(format!("{}:{why}", result.zone))
        })
        .collect();
    if failed.is_empty() {
        return "none".to_owned();
    }
    failed.join(",")
}

/// The full explanation printed by `mxgate explain`.
pub fn render(policy: &Policy, verdict: &Verdict) -> String {
    let class = policy.class(verdict.decision.class());
    let mut out = String::new();
    let _ = writeln!(out, "client    {}", verdict.ip);
    let _ = writeln!(
        out,
        "decision  {} (class {}, score {})",
        verdict.decision.outcome(),
        class.name,
        verdict.score
    );
    match verdict.rule {
        Some(i) => {
            let rule = &policy.rules[i];
            let action = match rule.action {
                RuleAction::Allow => "allow",
                RuleAction::Deny => "deny",
            };
            let _ = writeln!(
                out,
                "rule      #{} {} {} -> class {} (no DNS lookups)",
                i + 1,
                action,
                rule.net,
                class.name
            );
        }
        None => {
            let _ = writeln!(out, "rule      none matched");
        }
    }
    for (i, result) in verdict.dns.iter().enumerate() {
        let head = if i == 0 { "dns" } else { "" };
        let what = match &result.outcome {
            Outcome::Listed(codes) => format!(
                "listed {}",
                codes
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Outcome::NotListed => "not listed".to_owned(),
            Outcome::Error(e) => format!("error ({e}): counts as not listed"),
            Outcome::Late => "no answer within the budget: counts as not listed".to_owned(),
            Outcome::Unusable => "left out: its self-test has not passed".to_owned(),
        };
        let freshness = match (&result.outcome, result.cached) {
            (Outcome::Late | Outcome::Unusable, _) => String::new(),
            (_, true) => format!("  cached, ttl {}s left", result.ttl_left.as_secs()),
            (_, false) => format!("  fresh, ttl {}s", result.ttl_left.as_secs()),
        };
        let _ = writeln!(out, "{head:<9} {:<24} {what}{freshness}", result.zone);
    }
    if let Some(weight) = verdict.early_talker {
        let _ = writeln!(
            out,
            "pregreet  {weight:+4}  the client talked before the greeting was complete"
        );
    }
    if verdict.rule.is_none() {
        if verdict.terms.is_empty() && verdict.early_talker.is_none() {
            let _ = writeln!(out, "terms     none (score 0)");
        }
        for (i, t) in verdict.terms.iter().enumerate() {
            let head = if i == 0 { "terms" } else { "" };
            let name = t.name.as_deref().unwrap_or("-");
            let _ = writeln!(
                out,
                "{head:<9} {:+4}  {:<6} {} answered {}",
                t.weight, name, t.zone, t.code
            );
        }
    }
    if let Decision::Admit { .. } = verdict.decision {
        let a = &policy.admission;
        let limit = super::slots::limit_for(a.slots, class.max_share);
        let per_ip = match class.connections_per_ip {
            0 => "no limit".to_owned(),
            n => n.to_string(),
        };
        let _ = writeln!(
            out,
            "admission needs a slot while fewer than {limit} of {} are in use (max_share {}); sessions per address: {per_ip}",
            a.slots, class.max_share
        );
        if let Some(rate) = class.recipient_rate {
            let _ = writeln!(
                out,
                "          recipients: {} per address, one more every {} ms",
                rate.burst_size(),
                rate.replenish_interval().as_millis()
            );
        }
    }
    let reply = match &verdict.decision {
        Decision::Admit { .. } => format!(
            "relayed to the backend; {} messages per session, {} recipients per message",
            class.messages_per_session, class.recipients_per_message
        ),
        Decision::Defer { reply, .. } | Decision::Reject { reply, .. } => {
            reply.trim_end().to_owned()
        }
    };
    let _ = writeln!(out, "reply     {reply}");
    let _ = writeln!(
        out,
        "took      {:.1} ms",
        verdict.elapsed.as_secs_f64() * 1000.0
    );
    out
}

/// The same explanation as structured JSON, for `GET /explain?ip=` on the admin API.
pub fn to_json(policy: &Policy, verdict: &Verdict) -> serde_json::Value {
    use serde_json::json;
    let class = policy.class(verdict.decision.class());
    let rule = verdict.rule.map(|i| {
        let r = &policy.rules[i];
        json!({
            "index": i + 1,
            "cidr": r.net.to_string(),
            "action": match r.action { RuleAction::Allow => "allow", RuleAction::Deny => "deny" },
        })
    });
    let dns: Vec<_> = verdict
        .dns
        .iter()
        .map(|r| {
            let (codes, error): (Vec<String>, _) = match &r.outcome {
                Outcome::Listed(codes) => (codes.iter().map(|c| c.to_string()).collect(), None),
                Outcome::Error(e) => (Vec::new(), Some(*e)),
                _ => (Vec::new(), None),
            };
            json!({
                "zone": &*r.zone,
                "result": r.outcome.as_str(),
                "codes": codes,
                "error": error,
                "cached": r.cached,
                "ttl_left_seconds": r.ttl_left.as_secs(),
            })
        })
        .collect();
    let terms: Vec<_> = verdict
        .terms
        .iter()
        .map(|t| {
            json!({
                "zone": &*t.zone,
                "name": t.name,
                "code": t.code.to_string(),
                "weight": t.weight,
            })
        })
        .collect();
    let reply = match &verdict.decision {
        Decision::Admit { .. } => None,
        Decision::Defer { reply, .. } | Decision::Reject { reply, .. } => {
            Some(reply.trim_end().to_owned())
        }
    };
    json!({
        "client": verdict.ip.to_string(),
        "decision": verdict.decision.outcome(),
        "class": class.name,
        "score": verdict.score,
        "rule": rule,
        "dns": dns,
        "terms": terms,
        "early_talker_weight": verdict.early_talker,
        "reply": reply,
        "limits": {
            "slots": policy.admission.slots,
            "class_slot_limit": super::slots::limit_for(policy.admission.slots, class.max_share),
            "max_share": class.max_share,
            "connections_per_ip": class.connections_per_ip,
            "messages_per_session": class.messages_per_session,
            "recipients_per_message": class.recipients_per_message,
        },
        "decision_ms": verdict.elapsed.as_secs_f64() * 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::{lists_not_counted, log_fields, to_json};
    use crate::admission::{decision_for, Verdict};
    use crate::policy::Policy;
    use crate::reputation::dnsbl::lists::{Outcome, Term, ZoneResult};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;
    use std::time::Duration;

    fn zone(name: &str, outcome: Outcome) -> ZoneResult {
        ZoneResult {
            zone: Arc::from(name),
            outcome,
            cached: false,
            ttl_left: Duration::from_secs(60),
        }
    }

    fn verdict(policy: &Policy, dns: Vec<ZoneResult>, terms: Vec<Term>) -> Verdict {
        let ip = IpAddr::from([192, 0, 2, 7]);
        let score = terms.iter().map(|t| t.weight).sum();
        Verdict {
            ip,
            decision: decision_for(policy, policy.class_for_score(score), ip),
            score,
            rule: None,
            dns,
            terms,
            early_talker: None,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn reasons_name_every_part_of_the_score() {
        let policy = Policy::embedded_default();
        let pbl = Term {
            zone: Arc::from("zen.spamhaus.org"),
            code: Ipv4Addr::new(127, 0, 0, 10),
            name: Some("PBL".into()),
            weight: 4,
            cached: false,
            ttl_left: Duration::from_secs(60),
        };
        let listed = verdict(&policy, Vec::new(), vec![pbl]);
        assert_eq!(
            log_fields(&policy, &listed),
            "PBL:zen.spamhaus.org=127.0.0.10+4"
        );
        let early = listed.with_early_talker(&policy, 3);
        assert_eq!(early.score, 7);
        assert_eq!(
            log_fields(&policy, &early),
            "PBL:zen.spamhaus.org=127.0.0.10+4,pregreet+3"
        );
        let only_early = verdict(&policy, Vec::new(), Vec::new()).with_early_talker(&policy, 5);
        assert_eq!(log_fields(&policy, &only_early), "pregreet+5");
        let nothing = verdict(&policy, Vec::new(), Vec::new());
        assert_eq!(log_fields(&policy, &nothing), "none");
    }

    #[test]
    fn lists_without_a_usable_answer_are_named() {
        let policy = Policy::embedded_default();
        let answered = verdict(
            &policy,
            vec![
                zone(
                    "zen.spamhaus.org",
                    Outcome::Listed(vec![Ipv4Addr::new(127, 0, 0, 2)]),
                ),
                zone("list.dnswl.org", Outcome::NotListed),
            ],
            Vec::new(),
        );
        assert_eq!(lists_not_counted(&answered), "none");
        let failed = verdict(
            &policy,
            vec![
                zone("zen.spamhaus.org", Outcome::Late),
                zone("list.dnswl.org", Outcome::NotListed),
                zone("bl.example", Outcome::Error("servfail")),
                zone("wl.example", Outcome::Unusable),
            ],
            Vec::new(),
        );
        assert_eq!(
            lists_not_counted(&failed),
            "zen.spamhaus.org:late,bl.example:servfail,wl.example:unusable"
        );
    }

    #[test]
    fn the_json_names_each_outcome_with_its_codes_and_error() {
        let policy = Policy::embedded_default();
        let all = verdict(
            &policy,
            vec![
                zone(
                    "a.example",
                    Outcome::Listed(vec![Ipv4Addr::new(127, 0, 0, 4)]),
                ),
                zone("b.example", Outcome::NotListed),
                zone("c.example", Outcome::Error("servfail")),
                zone("d.example", Outcome::Late),
                zone("e.example", Outcome::Unusable),
            ],
            Vec::new(),
        );
        let json = to_json(&policy, &all);
        let seen: Vec<(&str, &str, serde_json::Value, serde_json::Value)> = json["dns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["zone"].as_str().unwrap(),
                    r["result"].as_str().unwrap(),
                    r["codes"].clone(),
                    r["error"].clone(),
                )
            })
            .collect();
        let none = serde_json::Value::Null;
        let no_codes = serde_json::json!([]);
        assert_eq!(
            seen,
            [
                (
                    "a.example",
                    "listed",
                    serde_json::json!(["127.0.0.4"]),
                    none.clone()
                ),
                ("b.example", "not_listed", no_codes.clone(), none.clone()),
                (
                    "c.example",
                    "error",
                    no_codes.clone(),
                    serde_json::json!("servfail")
                ),
                ("d.example", "late", no_codes.clone(), none.clone()),
                ("e.example", "unusable", no_codes, none),
            ]
        );
    }
}
