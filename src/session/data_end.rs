//! Finds the end of a DATA body (`CRLF . CRLF`, RFC 5321 4.1.1.4) in a stream read in arbitrary pieces.
//!
//! The body is relayed as it arrives and never split into lines: this scanner only looks for the
//! terminator, with memchr's substring search, and carries at most four bytes of state across reads.
//! Dot-stuffed lines (`..`) are not the terminator and pass through untouched.

use memchr::memmem;
use std::sync::LazyLock;

const TERMINATOR: &[u8; 5] = b"\r\n.\r\n";

/// The terminator's searcher, built once: building one costs about as much as searching a small body.
static FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(TERMINATOR));

/// State carried across reads: how many bytes of the terminator the stream currently ends with.
#[derive(Debug, Clone)]
pub struct DataEndScanner {
    matched: usize,
}

impl Default for DataEndScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl DataEndScanner {
    /// A scanner for a body that starts right after the CRLF of the DATA command, so a body that is
    /// just `.\r\n` is an empty message.
    pub fn new() -> Self {
        Self { matched: 2 }
    }

    /// Feeds the next piece of the body. Returns the offset just past the terminator if it ends in
    /// `chunk`; bytes from there on belong to the next command.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        if chunk.len() < TERMINATOR.len() - 1 {
            return self.step_through(chunk);
        }
        // A terminator begun in an earlier read ends within the next four bytes of this one.
        if self.matched > 0 {
            if let Some(end) = self.step_through(&chunk[..TERMINATOR.len() - 1]) {
                return Some(end);
            }
        }
        if let Some(start) = FINDER.find(chunk) {
            return Some(start + TERMINATOR.len());
        }
        // No terminator: remember how much of one the chunk ends with (at most its last four bytes).
        let tail = &chunk[chunk.len() - (TERMINATOR.len() - 1)..];
        self.matched = tail.iter().fold(0, |m, &b| step(m, b));
        None
    }

    fn step_through(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            self.matched = step(self.matched, b);
            if self.matched == TERMINATOR.len() {
                return Some(i + 1);
            }
        }
        None
    }
}

/// One step of the matching automaton. The only proper prefix of the terminator that is also a suffix
/// of another prefix is a lone CR, so a mismatch falls back to 1 on CR and to 0 otherwise.
fn step(matched: usize, byte: u8) -> usize {
    if TERMINATOR[matched] == byte {
        matched + 1
    } else if byte == b'\r' {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_in_one_piece(body: &[u8]) -> Option<usize> {
        DataEndScanner::new().feed(body)
    }

    /// Feeds `body` cut at every position in `cuts` and returns the absolute end offset.
    fn end_in_pieces(body: &[u8], cuts: &[usize]) -> Option<usize> {
        let mut scanner = DataEndScanner::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
            if let Some(end) = scanner.feed(&body[start..cut]) {
                return Some(start + end);
            }
            start = cut;
        }
        None
    }

    #[test]
    fn terminator_positions() {
        let table: &[(&[u8], Option<usize>)] = &[
            (b".\r\n", Some(3)),
            (b".\r\nMAIL", Some(3)),
            (b"Subject: x\r\n\r\nbody\r\n.\r\n", Some(23)),
            (b"body\r\n..\r\nmore\r\n.\r\nQUIT\r\n", Some(19)),
            (b"..\r\n", None),
            (b"body\r\n.\r", None),
            (b"body\n.\n", None),
            (b"a\r\r\n.\r\n", Some(7)),
            (b"a\r\n.\r\r\n.\r\n", Some(10)),
        ];
        for (body, end) in table {
            assert_eq!(
                end_in_one_piece(body),
                *end,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn every_split_finds_the_same_end() {
        let body = b"line one\r\n..stuffed\r\n\r\n.x\r\nend\r\n.\r\nMAIL FROM:<>\r\n";
        let expected = end_in_one_piece(body);
        assert_eq!(expected, Some(body.len() - 14));
        for a in 0..=body.len() {
            assert_eq!(end_in_pieces(body, &[a]), expected, "cut at {a}");
            for b in a..=body.len() {
                assert_eq!(end_in_pieces(body, &[a, b]), expected, "cuts at {a},{b}");
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let body = b"x\r\n.\r\r\n..\r\n.\r\n";
        let cuts: Vec<usize> = (1..body.len()).collect();
        assert_eq!(end_in_pieces(body, &cuts), Some(body.len()));
    }

    #[test]
    fn no_false_end_across_reads() {
        // "\r\n." then a read starting with "." is a stuffed line, not the end.
        let mut scanner = DataEndScanner::new();
        assert_eq!(scanner.feed(b"a\r\n."), None);
        assert_eq!(scanner.feed(b".\r\n"), None);
        assert_eq!(scanner.feed(b"b\r\n"), None);
        assert_eq!(scanner.feed(b".\r\n"), Some(3));
    }
}
