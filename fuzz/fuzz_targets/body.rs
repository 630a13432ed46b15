//! Fuzzes the DATA body path (`session::body`, with its end-of-data scanner) against a plain
//! byte-at-a-time reference: for any body cut into any pieces, the bytes sent to the backend, the
//! bytes taken and where the body ends must be the reference's. This is where mxgate and a backend
//! must agree on the end of a body (SMTP smuggling), and where the fast paths live.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mxgate::session::body::BodyStream;

/// What relaying a body gives: the bytes sent on, the bytes of the input taken, and whether the
/// body ended.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    sent: Vec<u8>,
    taken: usize,
    ended: bool,
}

/// The reference: each LF without a CR before it becomes CRLF, and the body ends with the first
/// `CRLF . CRLF` of what is sent, the CRLF of the DATA line counting as the first CRLF.
fn reference(body: &[u8]) -> Outcome {
    let mut sent = b"\r\n".to_vec();
    for (i, &b) in body.iter().enumerate() {
        let bare_lf = b == b'\n' && (i == 0 || body[i - 1] != b'\r');
        if bare_lf {
            sent.push(b'\r');
        }
        sent.push(b);
        if sent.ends_with(b"\r\n.\r\n") {
            return Outcome {
                sent: sent[2..].to_vec(),
                taken: i + 1,
                ended: true,
            };
        }
    }
    Outcome {
        sent: sent[2..].to_vec(),
        taken: body.len(),
        ended: false,
    }
}

/// The body relayed in pieces ending at `cuts` (increasing, within the body).
fn relayed(body: &[u8], cuts: &[usize]) -> Outcome {
    let mut stream = BodyStream::new();
    let mut sent = BytesMut::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        let piece = &body[start..cut];
        let step = stream.relay(piece, &mut sent);
        assert!(step.consumed <= piece.len(), "took more than the piece");
        if step.ended {
            return Outcome {
                sent: sent.to_vec(),
                taken: start + step.consumed,
                ended: true,
            };
        }
        assert_eq!(
            step.consumed,
            piece.len(),
            "an unfinished body is all taken"
        );
        start = cut;
    }
    Outcome {
        sent: sent.to_vec(),
        taken: body.len(),
        ended: false,
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte says how many cut points follow (one byte each, scaled to the body's length).
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 16).min(rest.len());
    let (cut_bytes, body) = rest.split_at(count);
    let mut cuts: Vec<usize> = cut_bytes
        .iter()
        .map(|&c| usize::from(c) * body.len() / 255)
        .collect();
    cuts.sort_unstable();
    assert_eq!(relayed(body, &cuts), reference(body), "cut at {cuts:?}");
});
