//! The model client: plays its script in pipelined groups, reads the replies it gets, and checks each
//! one against what it asked and against what the backend really said.

use crate::backend::Said;
use crate::script::{body_wire, Item, Kind};
use crate::wire::{parse_replies, ClientReply};
use std::collections::VecDeque;

pub struct Client {
    script: VecDeque<Item>,
    max_line: usize,
    /// What each reply still owed answers, in order.
    owed: VecDeque<Kind>,
    /// Bodies to send once their DATA gets 354, in DATA order.
    bodies: VecDeque<Vec<u8>>,
    /// Bytes written and not yet read by the relay (the socket).
    pub socket: Vec<u8>,
    /// The command lines it wrote, without line endings, in order (for the backend's check).
    pub lines_sent: Vec<Vec<u8>>,
    /// The messages whose body went out in full (for the backend's check).
    pub messages_sent: Vec<Vec<u8>>,
    received: Vec<u8>,
    /// The session is over from the client's side: a 421 came, or it closed.
    pub heard_421: bool,
    pub closed: bool,
    tls: bool,
    last_tag: Option<u64>,
    pub deliveries_seen: u32,
}

impl Client {
    pub fn new(script: Vec<Item>, max_line: usize) -> Self {
        Self {
            script: script.into(),
            max_line,
            owed: VecDeque::from([Kind::Greeting]),
            bodies: VecDeque::new(),
            socket: Vec::new(),
            lines_sent: Vec::new(),
            messages_sent: Vec::new(),
            received: Vec::new(),
            heard_421: false,
            closed: false,
            tls: false,
            last_tag: None,
            deliveries_seen: 0,
        }
    }

    /// Replies still owed to the client.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    /// Whether the client has more to say now (not waiting for replies, not done).
    pub fn can_send(&self) -> bool {
        !self.closed && !self.heard_421 && self.owed.is_empty() && !self.script.is_empty()
    }

    /// Writes the next pipelined group: items up to one that ends a group.
    pub fn send_group(&mut self) {
        while let Some(item) = self.script.pop_front() {
            let wire = item.wire(self.max_line);
            if let Some(kind) = item.kind() {
                self.owed.push_back(kind);
            }
            let line = wire.strip_suffix(b"\n").unwrap_or(&wire);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if Kind::of_relayed_line(line).is_some() && !matches!(item, Item::Overlong { .. }) {
                self.lines_sent.push(line.to_vec());
            }
            if let Item::Data { lines, lf_end } = &item {
                let (body, message) = body_wire(lines, *lf_end);
                self.bodies.push_back(body);
                self.messages_sent.push(message);
            }
            self.socket.extend_from_slice(&wire);
            if item.ends_group() {
                break;
            }
        }
    }

    /// Takes the bytes mxgate wrote to the client and checks every complete reply among them.
    pub fn receive(&mut self, bytes: &[u8], said: &Said, tls_offered: bool) -> Result<(), String> {
        self.received.extend_from_slice(bytes);
        let (replies, used) = parse_replies(&self.received)?;
        self.received.drain(..used);
        for reply in replies {
            self.check(reply, said, tls_offered)?;
        }
        Ok(())
    }

    fn check(&mut self, reply: ClientReply, said: &Said, tls_offered: bool) -> Result<(), String> {
        let asked = self.owed.pop_front();
        if self.heard_421 {
            // 421 closes the channel (RFC 5321 3.8): nothing may follow it.
            return Err(format!("after a 421 the client got {:?}", reply.text()));
        }
        if reply.code == 421 {
            self.heard_421 = true;
        }
        let Some(asked) = asked else {
            return match reply.code {
                421 => Ok(()),
                _ => Err(format!("a reply nobody asked for: {:?}", reply.text())),
            };
        };
        match reply.tag {
            Some(tag) => self.check_relayed(asked, tag, &reply, said, tls_offered)?,
            None => check_own(asked, &reply)?,
        }
        if asked == Kind::Data && reply.code == 354 {
            let body = self
                .bodies
                .pop_front()
                .ok_or("354 without a body to send")?;
            self.socket.extend_from_slice(&body);
            self.owed.push_back(Kind::EndOfData);
        } else if asked == Kind::Data {
            self.bodies.pop_front();
            // The backend refused DATA: it must never see this body. (After mxgate's own 421 the
            // backend may have said 354 and be waiting for a body that never comes.)
            if reply.tag.is_some() {
                self.messages_sent.pop();
            }
        }
        if asked == Kind::StartTls && reply.code == 220 {
            self.tls = true;
        }
        Ok(())
    }

    /// A reply from the backend: it must be the backend's reply to the same command, in order,
    /// byte for byte (the EHLO reply rewritten as documented).
    fn check_relayed(
        &mut self,
        asked: Kind,
        tag: u64,
        reply: &ClientReply,
        said: &Said,
        tls_offered: bool,
    ) -> Result<(), String> {
        let (kind, raw) = said
            .get(tag)
            .ok_or_else(|| format!("a reply with tag {tag} the backend never sent"))?;
        if self.last_tag.is_some_and(|last| tag <= last) {
            return Err(format!("backend reply {tag} out of order or twice"));
        }
        self.last_tag = Some(tag);
        // A backend may say 421 in place of any reply when it shuts down (RFC 5321 3.8).
        if kind != asked && reply.code != 421 {
            return Err(format!(
                "the client asked {asked:?} and got the backend's reply to {kind:?}: {:?}",
                reply.text()
            ));
        }
        if asked == Kind::EndOfData && (200..300).contains(&reply.code) {
            self.deliveries_seen += 1;
        }
        if asked == Kind::Ehlo && (200..300).contains(&reply.code) {
            return check_ehlo(reply, raw, tls_offered && !self.tls);
        }
        if reply.raw != raw {
            return Err(format!(
                "backend reply changed: {:?} became {:?}",
                String::from_utf8_lossy(raw),
                reply.text()
            ));
        }
        Ok(())
    }
}

/// A reply of mxgate's own: never positive (but the go-ahead for TLS), and one it may give to this.
fn check_own(asked: Kind, reply: &ClientReply) -> Result<(), String> {
    let allowed: &[u16] = match asked {
        Kind::StartTls => &[220, 502, 503, 554],
        Kind::Mail => &[503],
        Kind::Rcpt => &[451, 452],
        Kind::Junk => &[500, 502],
        Kind::Overlong => &[500],
        Kind::Bdat => &[501, 502],
        Kind::NotRelayed => &[502],
        _ => &[],
    };
    if reply.code == 421 || allowed.contains(&reply.code) {
        Ok(())
    } else {
        Err(format!(
            "mxgate answered {asked:?} itself with {:?}",
            reply.text()
        ))
    }
}

/// The EHLO reply: the backend's first line, no keyword mxgate hides, STARTTLS only if mxgate
/// offers it, and the LIMITS line last.
fn check_ehlo(reply: &ClientReply, raw: &[u8], starttls: bool) -> Result<(), String> {
    let first = |b: &[u8]| b.split(|&c| c == b'\n').next().map(|l| l[3..].to_vec());
    let text = reply.text();
    let ok = first(&reply.raw) == first(raw)
        && !text.contains("CHUNKING")
        && text.contains("STARTTLS") == starttls
        && text
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("250 LIMITS MAILMAX="));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "EHLO reply {text:?} from {:?}",
            String::from_utf8_lossy(raw)
        )),
    }
}
