//! Rewrites the backend's EHLO reply into the one the client sees.
//!
//! mxgate answers STARTTLS itself, does not relay BDAT, AUTH or the backend's own trust commands
//! (XCLIENT, XFORWARD), and announces its per-session limits (RFC 9422 LIMITS). Every other line is the
//! backend's, in the backend's order.

use super::codec::{reply_texts, write_reply};

/// What mxgate adds to the EHLO reply.
#[derive(Debug, Clone, Copy)]
pub struct EhloOffer {
    pub starttls: bool,
    pub mailmax: u32,
    pub rcptmax: u32,
}

/// Keywords removed from the backend's reply. BINARYMIME needs CHUNKING (RFC 3030), so both go.
const HIDDEN: &[&[u8]] = &[
    b"STARTTLS",
    b"CHUNKING",
    b"BINARYMIME",
    b"AUTH",
    b"XCLIENT",
    b"XFORWARD",
    b"ETRN",
    b"ATRN",
    b"TURN",
    b"LIMITS",
];

fn keyword(text: &[u8]) -> &[u8] {
    let end = text
        .iter()
        .position(|&b| b == b' ' || b == b'=')
        .unwrap_or(text.len());
    &text[..end]
}

/// Whether an EHLO reply (`raw`, all lines with CRLFs) offers the extension `wanted`, in any case.
/// The first line names the server; the extensions follow it.
pub fn offers(raw: &[u8], wanted: &[u8]) -> bool {
    reply_texts(raw)
        .skip(1)
        .any(|text| keyword(text).eq_ignore_ascii_case(wanted))
}

/// The client's EHLO reply made from the backend's positive one (`raw`, all lines with CRLFs).
pub fn rewrite_ehlo(raw: &[u8], code: u16, offer: EhloOffer) -> Vec<u8> {
    let mut texts: Vec<&[u8]> = Vec::with_capacity(16);
    for (i, text) in reply_texts(raw).enumerate() {
        let hidden = HIDDEN.iter().any(|h| keyword(text).eq_ignore_ascii_case(h));
        if i == 0 || !hidden {
            texts.push(text);
        }
    }
    if offer.starttls {
        texts.push(b"STARTTLS");
    }
    let limits = format!("LIMITS MAILMAX={} RCPTMAX={}", offer.mailmax, offer.rcptmax);
    texts.push(limits.as_bytes());
    let mut out = Vec::with_capacity(raw.len() + 48);
    write_reply(&mut out, code, texts);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTFIX: &[u8] = b"250-mx.backend\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n\
250-ETRN\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n250-XCLIENT NAME ADDR\r\n\
250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";

    #[test]
    fn offers_matches_whole_keywords() {
        assert!(offers(POSTFIX, b"STARTTLS"));
        assert!(offers(POSTFIX, b"xclient"));
        assert!(offers(POSTFIX, b"SIZE"));
        assert!(!offers(POSTFIX, b"XFORWARD"));
        assert!(!offers(b"250-mx\r\n250 STARTTLSX\r\n", b"STARTTLS"));
        // The first line is the backend's name, not an extension.
        assert!(!offers(b"250-STARTTLS\r\n250 SIZE 1\r\n", b"STARTTLS"));
    }

    #[test]
    fn hides_and_adds() {
        let offer = EhloOffer {
            starttls: true,
            mailmax: 10,
            rcptmax: 100,
        };
        let out = rewrite_ehlo(POSTFIX, 250, offer);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "250-mx.backend\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n\
250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250-STARTTLS\r\n\
250 LIMITS MAILMAX=10 RCPTMAX=100\r\n"
        );
    }

    /// Any backend reply: the first line stays, hidden keywords go (in any case), the others keep
    /// their order, STARTTLS is there only if mxgate offers it, and LIMITS comes last.
    #[test]
    fn any_reply_is_rewritten_by_the_rules() {
        use proptest::prelude::*;
        // Each keyword line, and whether the client may see it.
        const WORDS: &[(&str, bool)] = &[
            ("PIPELINING", true),
            ("SIZE 10240000", true),
            ("8BITMIME", true),
            ("SMTPUTF8", true),
            ("ENHANCEDSTATUSCODES", true),
            ("VRFY", true),
            ("X-EXTENSION", true),
            ("AUTHX", true),
            ("STARTTLSX", true),
            ("STARTTLS", false),
            ("starttls", false),
            ("CHUNKING", false),
            ("BinaryMIME", false),
            ("AUTH PLAIN LOGIN", false),
            ("AUTH=PLAIN", false),
            ("XCLIENT NAME ADDR", false),
            ("xforward NAME", false),
            ("ETRN", false),
            ("ATRN", false),
            ("TURN", false),
            ("LIMITS RCPTMAX=5", false),
        ];
        let lines = prop::collection::vec(0..WORDS.len(), 0..12);
        // A failure prints the shrunk input; nothing is written into the source tree.
        let config = ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest!(config, |(picked in lines, starttls: bool, mailmax in 1u32..100)| {
            let mut raw = b"250-mx.backend\r\n".to_vec();
            for &i in &picked {
                raw.extend_from_slice(format!("250-{}\r\n", WORDS[i].0).as_bytes());
            }
            raw.extend_from_slice(b"250 LAST\r\n");
            let offer = EhloOffer { starttls, mailmax, rcptmax: 7 };
            let out = String::from_utf8(rewrite_ehlo(&raw, 250, offer)).unwrap();
            let lines: Vec<&str> = out.split_terminator("\r\n").collect();
            prop_assert_eq!(lines[0], "250-mx.backend");
            let last = format!("250 LIMITS MAILMAX={mailmax} RCPTMAX=7");
            prop_assert_eq!(*lines.last().unwrap(), last.as_str());
            for line in &lines[..lines.len() - 1] {
                prop_assert!(line.starts_with("250-"), "{}", line);
            }
            let shown: Vec<&str> = lines[1..lines.len() - 1].iter().map(|l| &l[4..]).collect();
            let kept: Vec<&str> = picked
                .iter()
                .filter(|&&i| WORDS[i].1)
                .map(|&i| WORDS[i].0)
                .chain(["LAST"])
                .chain(starttls.then_some("STARTTLS"))
                .collect();
            prop_assert_eq!(shown, kept);
        });
    }

    #[test]
    fn single_line_reply_and_no_tls() {
        let offer = EhloOffer {
            starttls: false,
            mailmax: 3,
            rcptmax: 5,
        };
        let out = rewrite_ehlo(b"250 STARTTLS.example\r\n", 250, offer);
        // The first line is the backend's greeting name, never a keyword.
        assert_eq!(
            out,
            b"250-STARTTLS.example\r\n250 LIMITS MAILMAX=3 RCPTMAX=5\r\n"
        );
    }
}
