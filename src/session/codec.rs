//! SMTP wire codec: command lines from the client and replies from the backend, pure and without I/O.
//!
//! Commands are recognised by verb only; their arguments are relayed as the client wrote them. Replies
//! are grouped into complete (possibly multi-line) replies and kept as raw bytes, so that what the client
//! sees is the backend's reply byte for byte.

use memchr::memchr;

/// The verbs mxgate tells apart. Anything else is `Unknown` and never reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    /// Commands that would let a client speak for mxgate to the backend (XCLIENT, XFORWARD) or that this
    /// MX does not relay (AUTH, ETRN, TURN...): answered by mxgate with 502.
    NotRelayed,
    /// What a web proxy or a port scanner sends (GET, POST, CONNECT...): the session ends at once.
    NonSmtp,
    Unknown,
}

impl Verb {
    fn from_word(word: &[u8]) -> Verb {
        // Verbs are four letters except STARTTLS and XFORWARD/XCLIENT; compare case-insensitively.
        let mut upper = [0u8; 8];
        if word.len() > upper.len() {
            return Verb::Unknown;
        }
        for (dst, src) in upper.iter_mut().zip(word) {
            *dst = src.to_ascii_uppercase();
        }
        match &upper[..word.len()] {
            b"HELO" => Verb::Helo,
            b"EHLO" => Verb::Ehlo,
            b"MAIL" => Verb::Mail,
            b"RCPT" => Verb::Rcpt,
            b"DATA" => Verb::Data,
            b"BDAT" => Verb::Bdat,
            b"RSET" => Verb::Rset,
            b"NOOP" => Verb::Noop,
            b"QUIT" => Verb::Quit,
            b"VRFY" => Verb::Vrfy,
            b"EXPN" => Verb::Expn,
            b"HELP" => Verb::Help,
            b"STARTTLS" => Verb::StartTls,
            b"AUTH" | b"XCLIENT" | b"XFORWARD" | b"ETRN" | b"TURN" | b"ATRN" | b"XEXCH50" => {
                Verb::NotRelayed
            }
            b"GET" | b"POST" | b"PUT" | b"HEAD" | b"CONNECT" | b"OPTIONS" => Verb::NonSmtp,
            _ => Verb::Unknown,
        }
    }
}

/// One command line, borrowed from the client's input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    pub verb: Verb,
    /// The whole line without its line ending.
    pub line: &'a [u8],
    /// What follows the verb, without the separating space.
    pub args: &'a [u8],
}

/// What the next line of a buffer looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineScan {
    /// A line of `len` bytes including its line ending (CRLF, or a bare LF, which many clients send).
    Complete { len: usize },
    /// No line ending yet and the buffer is still within the limit.
    Incomplete,
    /// No line ending within `max` bytes: the line is too long (RFC 5321 4.5.3.1.4).
    TooLong,
}

/// Finds the end of the first line in `buf`, allowing at most `max` bytes including the line ending.
pub fn scan_line(buf: &[u8], max: usize) -> LineScan {
    let window = &buf[..buf.len().min(max)];
    match memchr(b'\n', window) {
        Some(i) => LineScan::Complete { len: i + 1 },
        None if buf.len() >= max => LineScan::TooLong,
        None => LineScan::Incomplete,
    }
}

/// Strips the CRLF or LF ending of a line.
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Why a command line was refused before looking at its verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// NUL, other control characters or a bare CR: not a text line (RFC 5321 2.3.8).
    Binary,
    Empty,
}

/// Parses one complete line (with or without its ending) into a command.
pub fn parse_command(line: &[u8]) -> Result<Command<'_>, CommandError> {
    let line = trim_eol(line);
    if has_control(line) {
        return Err(CommandError::Binary);
    }
    let word_end = line
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    if word_end == 0 {
        return Err(CommandError::Empty);
    }
    let (word, rest) = line.split_at(word_end);
    let args = rest
        .strip_prefix(b" ")
        .or_else(|| rest.strip_prefix(b"\t"))
        .unwrap_or(rest);
    Ok(Command {
        verb: Verb::from_word(word),
        line,
        args,
    })
}

/// Whether `line` holds a C0 control other than TAB, or DEL. UTF-8 is allowed (SMTPUTF8 addresses).
/// Without branches, so that the compiler checks many bytes at a time: lines are short and almost
/// always clean, and an early exit would cost a branch per byte.
fn has_control(line: &[u8]) -> bool {
    let found = line.iter().fold(0u8, |found, &b| {
        found | u8::from(((b < 0x20) & (b != b'\t')) | (b == 0x7f))
    });
    found != 0
}

/// `BDAT <size> [LAST]` (RFC 3030): the chunk size, so that a refused chunk can be skipped.
pub fn bdat_size(args: &[u8]) -> Option<u64> {
    let size = args.split(|&b| b == b' ').next()?;
    std::str::from_utf8(size).ok()?.parse().ok()
}

/// A complete reply: its code and its raw bytes (all lines, with their CRLFs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub len: usize,
}

impl Reply {
    pub fn is_positive_completion(&self) -> bool {
        (200..300).contains(&self.code)
    }
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }
}

/// Why the backend's output could not be read as SMTP replies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("backend sent a reply line that does not start with a 3-digit code")]
    Malformed,
    #[error("backend sent a multi-line reply whose lines carry different codes")]
    MixedCodes,
    #[error("backend reply longer than {0} bytes")]
    TooLong(usize),
}

/// Longest reply mxgate accepts from the backend; an EHLO reply with every extension is under 1 KiB.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Looks for one complete reply at the start of `buf`. `Ok(None)` means more bytes are needed.
pub fn scan_reply(buf: &[u8]) -> Result<Option<Reply>, ReplyError> {
    let mut pos = 0;
    let mut code = None;
    loop {
        let rest = &buf[pos..];
        let Some(nl) = memchr(b'\n', rest) else {
            if buf.len() > MAX_REPLY_BYTES {
                return Err(ReplyError::TooLong(MAX_REPLY_BYTES));
            }
            // A partial line can still be checked, so garbage is refused without waiting for a newline.
            if rest.len() >= 3 && !rest[..3].iter().all(u8::is_ascii_digit) {
                return Err(ReplyError::Malformed);
            }
            return Ok(None);
        };
        let line = trim_eol(&rest[..=nl]);
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed);
        }
        let this_code = u16::from(line[0] - b'0') * 100
            + u16::from(line[1] - b'0') * 10
            + u16::from(line[2] - b'0');
        if *code.get_or_insert(this_code) != this_code {
            return Err(ReplyError::MixedCodes);
        }
        pos += nl + 1;
        match line.get(3) {
            Some(b'-') => continue,
            // "250 text", or a bare "250" (allowed by RFC 5321 4.2).
            Some(b' ') | None => {
                return Ok(Some(Reply {
                    code: this_code,
                    len: pos,
                }))
            }
            Some(_) => return Err(ReplyError::Malformed),
        }
    }
}

/// The lines of a complete raw reply: for each, the text after the code and separator.
pub fn reply_texts(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    raw.split_inclusive(|&b| b == b'\n')
        .map(trim_eol)
        .map(|line| line.get(4..).unwrap_or_default())
}

/// Writes a reply made of `texts` with `code`, continuation dashes on all lines but the last.
pub fn write_reply<'a>(out: &mut Vec<u8>, code: u16, texts: impl IntoIterator<Item = &'a [u8]>) {
    let mut texts = texts.into_iter().peekable();
    let code = code.to_string();
    while let Some(text) = texts.next() {
        out.extend_from_slice(code.as_bytes());
        out.push(if texts.peek().is_some() { b'-' } else { b' ' });
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let table: &[(&[u8], Verb, &[u8])] = &[
            (b"EHLO client.example\r\n", Verb::Ehlo, b"client.example"),
            (b"ehlo client.example\n", Verb::Ehlo, b"client.example"),
            (
                b"MAIL FROM:<a@b> SIZE=10\r\n",
                Verb::Mail,
                b"FROM:<a@b> SIZE=10",
            ),
            (b"rcpt TO:<r@x>\r\n", Verb::Rcpt, b"TO:<r@x>"),
            (b"DATA\r\n", Verb::Data, b""),
            (b"BDAT 100 LAST\r\n", Verb::Bdat, b"100 LAST"),
            (b"StartTLS\r\n", Verb::StartTls, b""),
            (
                b"XCLIENT ADDR=1.2.3.4\r\n",
                Verb::NotRelayed,
                b"ADDR=1.2.3.4",
            ),
            (
                b"AUTH PLAIN AGFiYwBkZWY=\r\n",
                Verb::NotRelayed,
                b"PLAIN AGFiYwBkZWY=",
            ),
            (b"GET / HTTP/1.1\r\n", Verb::NonSmtp, b"/ HTTP/1.1"),
            (b"FROB\r\n", Verb::Unknown, b""),
            (b"MAILX FROM:<>\r\n", Verb::Unknown, b"FROM:<>"),
            (b"MAIL\tFROM:<>\r\n", Verb::Mail, b"FROM:<>"),
            (
                b"MAIL FROM:<j\xc3\xb6rg@b> SMTPUTF8\r\n",
                Verb::Mail,
                b"FROM:<j\xc3\xb6rg@b> SMTPUTF8",
            ),
        ];
        for (line, verb, args) in table {
            let cmd = parse_command(line).unwrap();
            assert_eq!(cmd.verb, *verb, "{:?}", String::from_utf8_lossy(line));
            assert_eq!(cmd.args, *args);
        }
    }

    #[test]
    fn junk_lines() {
        assert_eq!(parse_command(b"\r\n"), Err(CommandError::Empty));
        assert_eq!(parse_command(b" MAIL\r\n"), Err(CommandError::Empty));
        assert_eq!(parse_command(b"MA\x00IL\r\n"), Err(CommandError::Binary));
        assert_eq!(
            parse_command(b"\x16\x03\x01\x02\r\n"),
            Err(CommandError::Binary)
        );
        assert_eq!(parse_command(b"HELO a\rb\r\n"), Err(CommandError::Binary));
        assert_eq!(parse_command(b"HELO \x7f\r\n"), Err(CommandError::Binary));
    }

    #[test]
    fn line_scanning() {
        assert_eq!(
            scan_line(b"NOOP\r\nQUIT\r\n", 512),
            LineScan::Complete { len: 6 }
        );
        assert_eq!(scan_line(b"NOOP\nQUIT", 512), LineScan::Complete { len: 5 });
        assert_eq!(scan_line(b"NOO", 512), LineScan::Incomplete);
        assert_eq!(scan_line(&[b'a'; 512], 512), LineScan::TooLong);
        assert_eq!(scan_line(&[b'a'; 511], 512), LineScan::Incomplete);
        let mut exact = vec![b'a'; 510];
        exact.extend_from_slice(b"\r\n");
        assert_eq!(scan_line(&exact, 512), LineScan::Complete { len: 512 });
        exact.insert(0, b'a');
        assert_eq!(scan_line(&exact, 512), LineScan::TooLong);
    }

    #[test]
    fn bdat_sizes() {
        assert_eq!(bdat_size(b"100 LAST"), Some(100));
        assert_eq!(bdat_size(b"0"), Some(0));
        assert_eq!(bdat_size(b"-1"), None);
        assert_eq!(bdat_size(b"x LAST"), None);
    }

    #[test]
    fn replies() {
        let ok: &[(&[u8], u16, usize)] = &[
            (b"250 ok\r\n", 250, 8),
            (b"250 ok\r\nMORE", 250, 8),
            (b"250-a\r\n250-b\r\n250 c\r\n", 250, 21),
            (b"220\r\n", 220, 5),
            (b"354 go\n", 354, 7),
        ];
        for (raw, code, len) in ok {
            assert_eq!(
                scan_reply(raw),
                Ok(Some(Reply {
                    code: *code,
                    len: *len
                }))
            );
        }
        assert_eq!(scan_reply(b"250-a\r\n250 b"), Ok(None));
        assert_eq!(scan_reply(b"25"), Ok(None));
        assert_eq!(scan_reply(b"hello\r\n"), Err(ReplyError::Malformed));
        assert_eq!(scan_reply(b"HTTP/1.1 400"), Err(ReplyError::Malformed));
        assert_eq!(scan_reply(b"250x\r\n"), Err(ReplyError::Malformed));
        assert_eq!(
            scan_reply(b"250-a\r\n550 b\r\n"),
            Err(ReplyError::MixedCodes)
        );
        let huge = vec![b'2'; MAX_REPLY_BYTES + 1];
        assert_eq!(scan_reply(&huge), Err(ReplyError::TooLong(MAX_REPLY_BYTES)));
    }

    #[test]
    fn reply_round_trip() {
        let raw = b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n";
        let texts: Vec<&[u8]> = reply_texts(raw).collect();
        assert_eq!(texts, vec![&b"mx.example"[..], b"PIPELINING", b"SIZE 100"]);
        let mut out = Vec::new();
        write_reply(&mut out, 250, texts);
        assert_eq!(out, raw);
    }
}
