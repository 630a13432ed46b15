//! Which answers of a DNS list count: postscreen's return-code filters (`127.0.0.[10;11]`,
//! `127.0.[0..255].[2..3]`), and postscreen's one-line site form `zone=filter*weight`.

use std::fmt;
use std::net::Ipv4Addr;

/// A filter on the A records a list returns: each octet a set of ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeFilter {
    octets: [Vec<(u8, u8)>; 4],
    text: String,
}

impl CodeFilter {
    /// Parses `d.d.d.d` where each `d` is a number or `[items]`, items separated by `;`, each a
    /// number or `low..high`.
    pub fn parse(text: &str) -> Result<CodeFilter, String> {
        let parts: Vec<&str> = text.split('.').collect();
        // Ranges contain dots too ("[0..255]"): re-join the pieces inside brackets.
        let mut octets: Vec<String> = Vec::with_capacity(4);
        let mut open: Option<String> = None;
        for part in parts {
            match open.take() {
                Some(mut acc) => {
                    acc.push('.');
                    acc.push_str(part);
                    if acc.ends_with(']') {
                        octets.push(acc);
                    } else {
                        open = Some(acc);
                    }
                }
                None if part.starts_with('[') && !part.ends_with(']') => {
                    open = Some(part.to_owned())
                }
                None => octets.push(part.to_owned()),
            }
        }
        if open.is_some() || octets.len() != 4 {
            return Err(format!(
                "return-code filter {text:?} must have four octets, e.g. \"127.0.0.2\" or \"127.0.0.[10;11]\""
            ));
        }
        let mut parsed: [Vec<(u8, u8)>; 4] = Default::default();
        for (slot, octet) in parsed.iter_mut().zip(&octets) {
            *slot = parse_octet(octet).map_err(|e| {
                format!("return-code filter {text:?}: {e}; write e.g. \"127.0.0.2\", \"127.0.0.[10;11]\" or \"127.0.[0..255].[2..3]\"")
            })?;
        }
        // Answers outside 127.0.0.0/8 are errors, never listings (RFC 5782): such a filter never matches.
        if !parsed[0].iter().any(|&(lo, hi)| (lo..=hi).contains(&127)) {
            return Err(format!(
                "return-code filter {text:?} can never match: list answers are in 127.0.0.0/8 (anything else is an error answer)"
            ));
        }
        Ok(CodeFilter {
            octets: parsed,
            text: text.to_owned(),
        })
    }

    pub fn matches(&self, code: Ipv4Addr) -> bool {
        self.octets
            .iter()
            .zip(code.octets())
            .all(|(ranges, o)| ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&o)))
    }
}

impl fmt::Display for CodeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_octet(octet: &str) -> Result<Vec<(u8, u8)>, String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u8>()
            .map_err(|_| format!("{s:?} is not a number from 0 to 255"))
    };
    match octet.strip_prefix('[').and_then(|o| o.strip_suffix(']')) {
        Some(items) => items
            .split(';')
            .map(|item| match item.split_once("..") {
                Some((lo, hi)) => {
                    let (lo, hi) = (number(lo)?, number(hi)?);
                    if lo > hi {
                        return Err(format!("range {item:?} runs backwards"));
                    }
                    Ok((lo, hi))
                }
                None => number(item).map(|n| (n, n)),
            })
            .collect(),
        None => number(octet).map(|n| vec![(n, n)]),
    }
}

/// One `postscreen_dnsbl_sites` element: `zone`, `zone=filter`, `zone*weight`, `zone=filter*weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSpec {
    pub zone: String,
    pub filter: Option<CodeFilter>,
    pub weight: i32,
}

pub fn parse_site(text: &str) -> Result<SiteSpec, String> {
    let (rest, weight) = match text.rsplit_once('*') {
        Some((rest, w)) => (
            rest,
            w.trim()
                .parse::<i32>()
                .map_err(|_| format!("weight {w:?} in {text:?} is not a whole number"))?,
        ),
        None => (text, 1),
    };
    let (zone, filter) = match rest.split_once('=') {
        Some((zone, filter)) => (zone, Some(CodeFilter::parse(filter.trim())?)),
        None => (rest, None),
    };
    let zone = normalize_zone(zone)?;
    Ok(SiteSpec {
        zone,
        filter,
        weight,
    })
}

/// A zone name in lower case without its trailing dot; refuses what cannot be a DNS name.
pub fn normalize_zone(zone: &str) -> Result<String, String> {
    let zone = zone.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !zone.is_empty()
        && zone.len() <= 200
        && zone.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(zone)
    } else {
        Err(format!(
            "{zone:?} is not a DNS zone name, e.g. \"zen.spamhaus.org\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn filters() {
        let pbl = CodeFilter::parse("127.0.0.[10;11]").unwrap();
        assert!(pbl.matches(ip("127.0.0.10")) && pbl.matches(ip("127.0.0.11")));
        assert!(!pbl.matches(ip("127.0.0.2")));
        let dnswl = CodeFilter::parse("127.0.[0..255].[2..3]").unwrap();
        assert!(dnswl.matches(ip("127.0.15.2")) && dnswl.matches(ip("127.0.200.3")));
        assert!(!dnswl.matches(ip("127.0.15.1")));
        let mixed = CodeFilter::parse("127.0.0.[2;4..7]").unwrap();
        assert!(mixed.matches(ip("127.0.0.5")) && !mixed.matches(ip("127.0.0.3")));
        assert!(CodeFilter::parse("127.0.0.2")
            .unwrap()
            .matches(ip("127.0.0.2")));
    }

    #[test]
    fn bad_filters() {
        for bad in [
            "127.0.0",
            "127.0.0.256",
            "127.0.0.[3..2]",
            "127.0.0.[1;x]",
            "127.0.[0..255",
            "a.b.c.d",
        ] {
            assert!(CodeFilter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sites() {
        let s = parse_site("zen.spamhaus.org=127.0.0.[10;11]*3").unwrap();
        assert_eq!((s.zone.as_str(), s.weight), ("zen.spamhaus.org", 3));
        assert!(s.filter.unwrap().matches(ip("127.0.0.11")));
        let s = parse_site("list.dnswl.org=127.0.[0..255].[2..3]*-5").unwrap();
        assert_eq!(s.weight, -5);
        let s = parse_site("B.Barracudacentral.org.*2").unwrap();
        assert_eq!(
            (s.zone.as_str(), s.weight, s.filter),
            ("b.barracudacentral.org", 2, None)
        );
        assert_eq!(parse_site("bl.example").unwrap().weight, 1);
        assert!(parse_site("bl.example*x").is_err());
        assert!(parse_site("bad zone*1").is_err());
    }
}
