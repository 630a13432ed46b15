//! Lints: policies that are valid but wrong in practice. `mxgate check` prints them as warnings and
//! `--strict` makes them errors; `mxgate run` and reloads log them.

use super::error::PolicyIssue;
use super::locate::Locator;
use super::{Action, Policy};
use std::collections::BTreeSet;

/// Past this many weighted terms the reachable scores are not enumerated (2^n sums).
const MAX_TERMS_FOR_REACHABILITY: usize = 20;

/// Every warning for `policy`, located in `text`.
pub fn lint(policy: &Policy, origin: &str, text: &str, locate: &Locator<'_>) -> Vec<PolicyIssue> {
    let mut out = Vec::new();
    let mut warn = |path: &str, message: String| {
        out.push(PolicyIssue::warning(
            origin,
            text,
            locate.span(path),
            message,
        ));
    };
    shadowed_rules(policy, &mut warn);
    unreachable_classes(policy, &mut warn);
    misweighted_lists(policy, locate.len("dns.sites"), &mut warn);
    exposed_admin(policy, &mut warn);
    inverted_shares(policy, &mut warn);
    out
}

/// A rule after one that covers all its addresses never matches: first match wins.
fn shadowed_rules(policy: &Policy, warn: &mut impl FnMut(&str, String)) {
    for (j, later) in policy.rules.iter().enumerate() {
        let Some(i) = policy.rules[..j]
            .iter()
            .position(|earlier| earlier.net.contains(&later.net))
        else {
            continue;
        };
        let earlier = &policy.rules[i];
        let what = if earlier.action == later.action && earlier.class == later.class {
            "it is redundant"
        } else {
            "its different action or class never applies: put the narrower rule first"
        };
        warn(
            &format!("rule.{j}.cidr"),
            format!(
                "rule #{} ({}) can never match: rule #{} ({}) before it covers every address in it and the first match wins; {what}",
                j + 1, later.net, i + 1, earlier.net
            ),
        );
    }
}

/// The scores the DNS lists (and the early-talker test) can add up to, if few enough to enumerate.
pub fn reachable_scores(policy: &Policy) -> Option<BTreeSet<i64>> {
    let mut weights: Vec<i64> = policy
        .dns
        .lists
        .entries
        .iter()
        .map(|e| i64::from(e.weight))
        .collect();
    if let Some(p) = policy.pregreet {
        weights.push(i64::from(p.weight));
    }
    if weights.len() > MAX_TERMS_FOR_REACHABILITY {
        return None;
    }
    let mut sums = BTreeSet::from([0i64]);
    for w in weights {
        let shifted: Vec<i64> = sums.iter().map(|s| s + w).collect();
        sums.extend(shifted);
    }
    Some(sums)
}

/// A class whose score range holds no reachable score, and that no rule sends clients to.
fn unreachable_classes(policy: &Policy, warn: &mut impl FnMut(&str, String)) {
    let Some(scores) = reachable_scores(policy) else {
        return;
    };
    let mut lower: Option<i64> = None;
    for (i, class) in policy.classes.iter().enumerate() {
        let upper = policy.thresholds[i].map(i64::from);
        let by_score = scores
            .iter()
            .any(|&s| lower.is_none_or(|l| s > l) && upper.is_none_or(|u| s <= u));
        let by_rule = policy.rules.iter().any(|r| r.class == i);
        if !by_score && !by_rule {
            let range = match (lower, upper) {
                (None, Some(u)) => format!("at most {u}"),
                (Some(l), Some(u)) => format!("{} to {u}", l + 1),
                (Some(l), None) => format!("above {l}"),
                (None, None) => "any".to_owned(),
            };
            let possible: Vec<String> = scores.iter().map(|s| s.to_string()).collect();
            warn(
                &format!("class.{i}.name"),
                format!(
                    "class {:?} can never be chosen: it takes scores {range}, the lists can only add up to {{{}}}, and no rule names it",
                    class.name,
                    possible.join(", ")
                ),
            );
        }
        if upper.is_some() {
            lower = upper;
        }
    }
}

fn looks_like_allow_list(zone: &str, name: Option<&str>) -> bool {
    let zone = zone.to_ascii_lowercase();
    let name = name.unwrap_or_default().to_ascii_lowercase();
    [
        "dnswl",
        "whitelist",
        "allowlist",
        "wl.mailspike.net",
        "iadb.isipp.com",
    ]
    .iter()
    .any(|p| zone.contains(p) || name.contains(p))
        || zone.starts_with("swl.")
        || zone.contains(".swl.")
}

fn looks_like_block_list(zone: &str) -> bool {
    let zone = zone.to_ascii_lowercase();
    [
        "zen.spamhaus.org",
        "sbl.spamhaus.org",
        "xbl.spamhaus.org",
        "pbl.spamhaus.org",
        "bl.spamcop.net",
        "b.barracudacentral.org",
        "dnsbl",
        "blocklist",
        "blacklist",
    ]
    .iter()
    .any(|p| zone.contains(p))
}

/// An allow list with a positive weight counts against the senders it vouches for (and the reverse).
fn misweighted_lists(policy: &Policy, sites: usize, warn: &mut impl FnMut(&str, String)) {
    for (k, entry) in policy.dns.lists.entries.iter().enumerate() {
        let path = match k < sites {
            true => format!("dns.sites.{k}"),
            false => format!("dns.list.{}.weight", k - sites),
        };
        let allow = looks_like_allow_list(&entry.zone, entry.name.as_deref());
        if allow && entry.weight > 0 {
            warn(&path, format!("{} looks like an allow list but has weight {:+}: listed senders would be counted against; allow lists take negative weights", entry.zone, entry.weight));
        } else if !allow && looks_like_block_list(&entry.zone) && entry.weight < 0 {
            warn(&path, format!("{} looks like a block list but has weight {:+}: listed senders would be favoured; block lists take positive weights", entry.zone, entry.weight));
        }
    }
}

/// The admin address, if it is off loopback and has no token: anyone who reaches it can reload
/// the policy and read every decision.
pub fn exposed_admin_address(policy: &Policy) -> Option<std::net::SocketAddr> {
    policy
        .server
        .admin
        .filter(|addr| !addr.ip().is_loopback() && policy.server.admin_token.is_none())
}

fn exposed_admin(policy: &Policy, warn: &mut impl FnMut(&str, String)) {
    if let Some(addr) = exposed_admin_address(policy) {
        warn("server.admin", format!("the admin listener {addr} is not on a loopback address and has no admin_token: anyone who reaches it can reload the policy; set server.admin_token_file or listen on 127.0.0.1"));
    }
}

/// Under load, a worse class with a larger share keeps getting slots after a better one is refused.
fn inverted_shares(policy: &Policy, warn: &mut impl FnMut(&str, String)) {
    let admitted: Vec<(usize, &super::ClassPolicy)> = policy
        .classes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.action == Action::Admit)
        .collect();
    for (n, &(i, better)) in admitted.iter().enumerate() {
        if let Some(&(_, worse)) = admitted[n + 1..]
            .iter()
            .find(|(_, w)| w.max_share > better.max_share)
        {
            warn(
                &format!("class.{i}.max_share"),
                format!(
                    "class {:?} has max_share {} below the worse class {:?}'s {}: under load the worse class still gets slots after the better one is turned away",
                    better.name, better.max_share, worse.name, worse.max_share
                ),
            );
        }
    }
}
