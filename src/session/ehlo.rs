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
