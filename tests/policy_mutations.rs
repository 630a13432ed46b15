//! Broken policy files of every shape: the shipped policies mutated at random (lines deleted,
//! duplicated, swapped or cut short, values replaced by odd ones, stray lines inserted). Loading
//! one gives a policy or an error that says where, never a panic; a policy that loads decides for
//! every score.

use mxgate::policy::Policy;
use proptest::prelude::*;

const SHIPPED: [&str; 3] = [
    include_str!("../policies/default.toml"),
    include_str!("../policies/strict.toml"),
    include_str!("../policies/lenient.toml"),
];

/// Values that tend to break parsers and validators.
const ODD_VALUES: &[&str] = &[
    "-1",
    "0",
    "99999999999999999999",
    "-2147483649",
    "1e999",
    "nan",
    "\"\"",
    "\"0s\"",
    "\"-5s\"",
    "\"9999999999999999h\"",
    "\"1 fortnight\"",
    "\"127.0.0.1:99999\"",
    "\"::1\"",
    "\"0.0.0.0/0\"",
    "\"256.1.1.1/33\"",
    "\"127.0.0.2\"",
    "\"127.0.0.0-255\"",
    "\"..\"",
    "\"\\u0000\"",
    "[]",
    "[[]]",
    "{}",
    "true",
    "\"defer\"",
    "\"reject\"",
    "\"admit\"",
];

/// Lines that tend to break the shape of the document.
const STRAY_LINES: &[&str] = &[
    "[[class]]",
    "[[class]]\nname = \"neutral\"",
    "[[rule]]",
    "[dns]",
    "[server]",
    "[tls]",
    "[[dns.list]]\nzone = \"x.test\"",
    "unknown_key = 1",
    "weight = 2147483647",
    "max_score = -2147483648",
    "name = \"\"",
    "a.b.c = 1",
    "= 1",
    "[",
    "\"",
    "\u{feff}",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// Replaces the value of a `key = value` line.
    Revalue(usize, usize),
    Insert(usize, usize),
    /// Cuts the text short at this fraction of its length (in thousandths).
    Truncate(u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = any::<usize>();
    prop_oneof![
        1 => line.prop_map(Mutation::Delete),
        1 => line.prop_map(Mutation::Duplicate),
        1 => (line, line).prop_map(|(a, b)| Mutation::Swap(a, b)),
        4 => (line, 0..ODD_VALUES.len()).prop_map(|(a, v)| Mutation::Revalue(a, v)),
        2 => (line, 0..STRAY_LINES.len()).prop_map(|(a, s)| Mutation::Insert(a, s)),
        1 => (0u16..1000).prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for mutation in mutations {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match *mutation {
            Mutation::Delete(i) => {
                lines.remove(i % n);
            }
            Mutation::Duplicate(i) => lines.insert(i % n, lines[i % n].clone()),
            Mutation::Swap(a, b) => lines.swap(a % n, b % n),
            Mutation::Revalue(i, v) => {
                // The next line from i on that has a value; comments and tables have none.
                let found = (0..n)
                    .map(|k| (i + k) % n)
                    .find(|&k| !lines[k].trim_start().starts_with('#') && lines[k].contains(" = "));
                if let Some(k) = found {
                    let key = lines[k].split(" = ").next().unwrap_or_default().to_owned();
                    lines[k] = format!("{key} = {}", ODD_VALUES[v]);
                }
            }
            Mutation::Insert(i, s) => lines.insert(i % (n + 1), STRAY_LINES[s].to_owned()),
            Mutation::Truncate(at) => {
                let text = lines.join("\n");
                let mut cut = text.len() * usize::from(at) / 1000;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                lines = text[..cut].lines().map(str::to_owned).collect();
            }
        }
    }
    lines.join("\n")
}

proptest! {
    // A failure prints the shrunk mutations; nothing is written into the source tree.
    #![proptest_config(ProptestConfig {
        cases: 3_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_mutated_policy_loads_or_says_where(
        which in 0..SHIPPED.len(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let text = mutate(SHIPPED[which], &mutations);
        match Policy::parse("mutated.toml", &text, None) {
            Ok(policy) => {
                prop_assert!(!policy.classes.is_empty());
                for score in [i32::MIN, -1000, -1, 0, 1, 2, 5, 10, 1000, i32::MAX] {
                    prop_assert!(policy.class_for_score(score) < policy.classes.len());
                }
                for warning in &policy.warnings {
                    prop_assert!(warning.to_string().starts_with("mutated.toml"));
                }
            }
            Err(error) => {
                prop_assert!(!error.issues.is_empty());
                let said = error.to_string();
                prop_assert!(said.starts_with("mutated.toml:"), "{}", said);
            }
        }
    }
}
