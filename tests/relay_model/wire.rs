//! Reading replies on the client's side, independently of mxgate's codec: complete replies, their
//! codes, and the tag (`b<N>`) the model backend puts first in every reply it writes.

/// One complete reply the client received.
#[derive(Debug)]
pub struct ClientReply {
    pub code: u16,
    pub raw: Vec<u8>,
    /// The backend's tag, if the reply is the backend's; mxgate's own replies carry none.
    pub tag: Option<u64>,
}

impl ClientReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// The complete replies at the start of `buf`, and how many bytes they took. A malformed line is an
/// error: whatever mxgate writes to a client must be SMTP.
pub fn parse_replies(buf: &[u8]) -> Result<(Vec<ClientReply>, usize), String> {
    let mut replies = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = &buf[pos..pos + nl + 1];
        let malformed = || format!("malformed reply line {:?}", String::from_utf8_lossy(line));
        if line.len() < 5 || !line.ends_with(b"\r\n") || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(malformed());
        }
        let code: u16 = std::str::from_utf8(&line[..3]).unwrap().parse().unwrap();
        if !(200..600).contains(&code) || buf[start..start + 3] != line[..3] {
            return Err(malformed());
        }
        pos += nl + 1;
        match line[3] {
            b'-' => continue,
            b' ' | b'\r' => {}
            _ => return Err(malformed()),
        }
        let raw = buf[start..pos].to_vec();
        replies.push(ClientReply {
            code,
            tag: tag_of(&raw),
            raw,
        });
        start = pos;
    }
    Ok((replies, start))
}

/// The tag in the first word of a reply's first line.
fn tag_of(raw: &[u8]) -> Option<u64> {
    let first_line = raw.split(|&b| b == b'\r').next()?;
    let word = first_line.get(4..)?.split(|&b| b == b' ').next()?;
    std::str::from_utf8(word.strip_prefix(b"b")?)
        .ok()?
        .parse()
        .ok()
}

/// The first line of a tagged reply from the model backend.
pub fn tagged(code: u16, tag: u64, more: bool, text: &str) -> String {
    format!("{code}{}b{tag} {text}\r\n", if more { '-' } else { ' ' })
}
