//! Hints appended to the TOML parser's messages, so that each error also says how to fix it.

/// The parser's `message`, with a hint when one is known.
pub fn with_hint(message: &str) -> String {
    let message = message.trim_end();
    match hint(message) {
        Some(hint) => format!("{message}; {hint}"),
        None => message.to_owned(),
    }
}

fn hint(message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (unknown, expected) = rest.split_once('`')?;
        let candidates = expected.split('`').skip(1).step_by(2);
        let closest = candidates
            .map(|c| (edit_distance(unknown, c), c))
            .filter(|(d, c)| *d <= 2 || c.starts_with(unknown) || unknown.starts_with(c))
            .min_by_key(|(d, _)| *d)?;
        return Some(format!("did you mean `{}`?", closest.1));
    }
    if message.contains("invalid IP address syntax") {
        return Some(
            "write a network as \"192.0.2.0/24\" or \"2001:db8::/32\" (a prefix length of at most 32 for IPv4, 128 for IPv6)".into(),
        );
    }
    if message.contains("invalid socket address syntax") {
        return Some(
            "write an address with its port, e.g. \"127.0.0.1:25\" or \"[::1]:25\"".into(),
        );
    }
    if message.starts_with("invalid type: string") && message.contains("expected") {
        return Some("write the number without quotes".into());
    }
    if message.starts_with("invalid type: integer") && message.contains("expected a string") {
        return Some("quote it: durations read \"300s\", rates \"6/s\"".into());
    }
    if message.starts_with("invalid type: integer") && message.contains("expected f64") {
        return Some("write a fraction such as 0.5 or 1.0".into());
    }
    if message == "missing field `backend`" {
        return Some("add a [backend] section with address = \"127.0.0.1:10025\"".into());
    }
    if message == "missing field `class`" {
        return Some("define at least one [[class]] with a name".into());
    }
    None
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_known_key() {
        let m = "unknown field `slot`, expected one of `slots`, `prefix_v4`, `prefix_v6`";
        assert!(
            with_hint(m).ends_with("did you mean `slots`?"),
            "{}",
            with_hint(m)
        );
        let far = "unknown field `colour`, expected one of `slots`, `prefix_v4`";
        assert_eq!(with_hint(far), far);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
