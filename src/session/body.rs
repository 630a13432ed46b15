//! A DATA body on its way to the backend: bare LFs sent as CRLF (RFC 5321 2.3.8 forbids them), so
//! that mxgate and a backend that takes `LF . LF` for the end of data agree on where the body ends
//! (SMTP smuggling), and the end found with [`DataEndScanner`].

use super::data_end::DataEndScanner;
use bytes::BytesMut;

/// The body of one DATA command, read in arbitrary pieces.
#[derive(Debug, Clone, Default)]
pub struct BodyStream {
    scanner: DataEndScanner,
    /// Whether the last byte seen was a CR (so an LF at the start of the next piece is not bare).
    after_cr: bool,
}

/// What [`BodyStream::relay`] did with a piece of input.
#[derive(Debug, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes of the input taken (the rest belongs to the commands after the body).
    pub consumed: usize,
    /// Whether the body ended, its terminator included in what was taken.
    pub ended: bool,
}

impl BodyStream {
    /// A body starting right after the line of the DATA command.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the body at the front of `input` to `out`, each bare LF as CRLF, up to and including
    /// the terminator if it is there.
    pub fn relay(&mut self, input: &[u8], out: &mut BytesMut) -> Relayed {
        // Almost every body has no bare LF: one branch-free pass says so, and the piece is then
        // passed on whole instead of line by line.
        if !has_bare_lf(self.after_cr, input) {
            return self.relay_from(input, 0, out);
        }
        let mut start = 0;
        for lf in memchr::memchr_iter(b'\n', input) {
            let bare = match lf {
                0 => !self.after_cr,
                _ => input[lf - 1] != b'\r',
            };
            if !bare {
                continue;
            }
            if let Some(ended) = self.pass(&input[start..lf], start, out) {
                return ended;
            }
            if self.pass(b"\r\n", 0, out).is_some() {
                return Relayed {
                    consumed: lf + 1,
                    ended: true,
                };
            }
            start = lf + 1;
        }
        self.relay_from(input, start, out)
    }

    /// Passes on the input from `start`, which holds no bare LF.
    fn relay_from(&mut self, input: &[u8], start: usize, out: &mut BytesMut) -> Relayed {
        if let Some(ended) = self.pass(&input[start..], start, out) {
            return ended;
        }
        if let Some(&last) = input.last() {
            self.after_cr = last == b'\r';
        }
        Relayed {
            consumed: input.len(),
            ended: false,
        }
    }

    /// Copies `bytes` (found at `offset` of the input) to `out`, up to the terminator if it ends
    /// among them; then the input taken so far.
    fn pass(&mut self, bytes: &[u8], offset: usize, out: &mut BytesMut) -> Option<Relayed> {
        match self.scanner.feed(bytes) {
            Some(end) => {
                out.extend_from_slice(&bytes[..end]);
                Some(Relayed {
                    consumed: offset + end,
                    ended: true,
                })
            }
            None => {
                out.extend_from_slice(bytes);
                None
            }
        }
    }
}

/// Whether `input` holds an LF without a CR before it (`after_cr`: the piece before ended with a
/// CR). Without branches, so that the compiler compares many bytes at a time.
fn has_bare_lf(after_cr: bool, input: &[u8]) -> bool {
    let Some(&first) = input.first() else {
        return false;
    };
    let first_bare = u8::from((first == b'\n') & !after_cr);
    let rest_bare = input[1..]
        .iter()
        .zip(input)
        .fold(0u8, |found, (&b, &before)| {
            found | u8::from((b == b'\n') & (before != b'\r'))
        });
    (first_bare | rest_bare) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes sent on, and the input left, for `body` cut at `cuts`.
    fn relay_in_pieces(body: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<u8>) {
        let mut stream = BodyStream::new();
        let mut out = BytesMut::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
            let relayed = stream.relay(&body[start..cut], &mut out);
            if relayed.ended {
                return (out.to_vec(), body[start + relayed.consumed..].to_vec());
            }
            assert_eq!(relayed.consumed, cut - start);
            start = cut;
        }
        (out.to_vec(), Vec::new())
    }

    #[test]
    fn bare_lfs_become_crlf_and_end_the_body_where_a_lenient_backend_would() {
        let table: &[(&[u8], &[u8], &[u8])] = &[
            // (input, sent to the backend, left for the commands)
            (b"a\r\nb\r\n.\r\nQUIT\r\n", b"a\r\nb\r\n.\r\n", b"QUIT\r\n"),
            (b"a\nb\n.\r\n", b"a\r\nb\r\n.\r\n", b""),
            // The smuggling sequences: each ends the body here, as it would at the backend.
            (
                b"a\n.\nMAIL FROM:<x>\r\n",
                b"a\r\n.\r\n",
                b"MAIL FROM:<x>\r\n",
            ),
            (
                b"a\r\n.\nMAIL FROM:<x>\r\n",
                b"a\r\n.\r\n",
                b"MAIL FROM:<x>\r\n",
            ),
            (
                b"a\n.\r\nMAIL FROM:<x>\r\n",
                b"a\r\n.\r\n",
                b"MAIL FROM:<x>\r\n",
            ),
            (b".\nRSET\r\n", b".\r\n", b"RSET\r\n"),
            (b"\n.\r\n", b"\r\n.\r\n", b""),
            // Dot-stuffing and bare CRs pass untouched.
            (b"..\n..x\r\n.\r\n", b"..\r\n..x\r\n.\r\n", b""),
            (b"a\rb\r\r\n.\r\n", b"a\rb\r\r\n.\r\n", b""),
            (b"a\r.\r\n.\r\n", b"a\r.\r\n.\r\n", b""),
        ];
        for &(input, sent, left) in table {
            let shown = String::from_utf8_lossy(input);
            let (got_sent, got_left) = relay_in_pieces(input, &[]);
            assert_eq!(
                String::from_utf8_lossy(&got_sent),
                String::from_utf8_lossy(sent),
                "{shown:?}"
            );
            assert_eq!(got_left, left, "{shown:?}");
            for a in 0..=input.len() {
                for b in a..=input.len() {
                    let got = relay_in_pieces(input, &[a, b]);
                    assert_eq!(
                        (got.0.as_slice(), got.1.as_slice()),
                        (sent, left),
                        "{shown:?} cut at {a},{b}"
                    );
                }
            }
        }
    }

    #[test]
    fn bare_lfs_are_found_wherever_they_are() {
        let table: &[(bool, &[u8], bool)] = &[
            // (the piece before ended with a CR, piece, has a bare LF)
            (false, b"", false),
            (true, b"", false),
            (false, b"\n", true),
            (true, b"\n", false),
            (false, b"a\r\nb\r\n", false),
            (false, b"a\r\nb\n", true),
            (false, b"\r\r\n\r", false),
            (false, b"\n\r\n", true),
        ];
        for &(after_cr, piece, bare) in table {
            assert_eq!(has_bare_lf(after_cr, piece), bare, "{piece:?} {after_cr}");
        }
        // Long enough for the compiler's wide comparisons: a bare LF at each position is found.
        let clean = b"0123456789abcd\r\n".repeat(8);
        assert!(!has_bare_lf(false, &clean));
        for i in 0..clean.len() {
            let mut piece = clean.clone();
            piece[i] = b'\n';
            let bare = i == 0 || piece[i - 1] != b'\r';
            assert_eq!(has_bare_lf(false, &piece), bare, "LF at {i}");
        }
    }

    #[test]
    fn an_unfinished_body_is_all_taken() {
        let mut stream = BodyStream::new();
        let mut out = BytesMut::new();
        let relayed = stream.relay(b"line\nmore\r", &mut out);
        assert_eq!(
            relayed,
            Relayed {
                consumed: 10,
                ended: false
            }
        );
        // The CR carried over: this LF is not bare.
        let relayed = stream.relay(b"\n.\r\n", &mut out);
        assert_eq!(
            relayed,
            Relayed {
                consumed: 4,
                ended: true
            }
        );
        assert_eq!(&out[..], b"line\r\nmore\r\n.\r\n");
    }
}
