//! The model backend MTA: reads what mxgate relays, checks it (only relayed verbs, only lines the
//! client sent, bodies byte for byte, no more than the limits allow), and answers with tagged replies
//! whose codes the dice choose.

use crate::dice::Dice;
use crate::script::Kind;
use crate::wire::tagged;
use std::collections::HashMap;

/// Every reply the backend wrote, by tag: what it answered and its bytes.
#[derive(Default)]
pub struct Said(HashMap<u64, (Kind, Vec<u8>)>);

impl Said {
    pub fn get(&self, tag: u64) -> Option<(Kind, &[u8])> {
        self.0.get(&tag).map(|(kind, raw)| (*kind, raw.as_slice()))
    }
}

/// The limits the relay was given, which the backend checks it kept.
pub struct Limits {
    pub messages_per_session: u32,
    pub recipients_per_message: u32,
}

pub struct Backend {
    limits: Limits,
    inbox: Vec<u8>,
    /// Replies written and not yet read by the relay.
    pub outbox: Vec<u8>,
    /// Inside a body: what came so far, after a virtual CRLF (the DATA line's).
    body: Option<Vec<u8>>,
    next_tag: u64,
    pub said: Said,
    /// It closes once the relay has read its outbox.
    pub closing: bool,
    /// The relay was told of the close.
    pub gone: bool,
    quit_received: bool,
    /// How far the relayed lines got in the client's lines (they must come in the client's order).
    cursor: usize,
    /// A MAIL was accepted and its transaction has not ended: as a real MTA, it says 503 to RCPT and
    /// DATA otherwise.
    mail_open: bool,
    recipients_in_transaction: u32,
    /// Messages received in full, and how many the backend accepted.
    pub messages: Vec<Vec<u8>>,
    pub accepted: u32,
}

impl Backend {
    /// A backend that has just accepted the connection and written its greeting.
    pub fn new(limits: Limits, dice: &mut Dice) -> Self {
        let mut backend = Self {
            limits,
            inbox: Vec::new(),
            outbox: Vec::new(),
            body: None,
            next_tag: 0,
            said: Said::default(),
            closing: false,
            gone: false,
            quit_received: false,
            cursor: 0,
            mail_open: false,
            recipients_in_transaction: 0,
            messages: Vec::new(),
            accepted: 0,
        };
        let code = match dice.next() {
            0..=239 => 220,
            240..=254 => 554,
            255 => 421,
        };
        backend.answer(Kind::Greeting, code, "greeting");
        if code != 220 {
            backend.closing = true;
        }
        backend
    }

    /// Reads what mxgate wrote; `client_lines` are the command lines the client sent.
    pub fn receive(
        &mut self,
        bytes: &[u8],
        client_lines: &[Vec<u8>],
        dice: &mut Dice,
    ) -> Result<(), String> {
        if bytes.is_empty() || self.closing || self.gone {
            // A closed connection reads nothing (mxgate's write would fail or be reset).
            return Ok(());
        }
        if self.quit_received {
            return Err(format!(
                "bytes after QUIT: {:?}",
                String::from_utf8_lossy(bytes)
            ));
        }
        self.inbox.extend_from_slice(bytes);
        while !self.closing {
            let progressed = match self.body.is_some() {
                true => self.read_body(dice),
                false => self.read_command(client_lines, dice)?,
            };
            if !progressed {
                break;
            }
        }
        Ok(())
    }

    fn read_body(&mut self, dice: &mut Dice) -> bool {
        let body = self.body.as_mut().expect("in a body");
        body.append(&mut self.inbox);
        let Some(end) = body.windows(5).position(|w| w == b"\r\n.\r\n") else {
            return false;
        };
        self.inbox = body.split_off(end + 5);
        let message = body[2..end + 2].to_vec();
        self.body = None;
        self.end_transaction();
        self.messages.push(message);
        let code = self.code(dice, 250, 451, 554);
        if code == 250 {
            self.accepted += 1;
        }
        self.answer(Kind::EndOfData, code, "message");
        true
    }

    fn read_command(&mut self, client_lines: &[Vec<u8>], dice: &mut Dice) -> Result<bool, String> {
        let Some(nl) = self.inbox.iter().position(|&b| b == b'\n') else {
            return Ok(false);
        };
        let raw: Vec<u8> = self.inbox.drain(..=nl).collect();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let Some(line) = raw.strip_suffix(b"\r\n") else {
            return Err(format!("a line to the backend without CRLF: {shown:?}"));
        };
        if line.contains(&b'\r') {
            return Err(format!("a bare CR in a line to the backend: {shown:?}"));
        }
        let kind = Kind::of_relayed_line(line)
            .ok_or_else(|| format!("relayed a command it must not: {shown:?}"))?;
        match client_lines[self.cursor.min(client_lines.len())..]
            .iter()
            .position(|l| l == line)
        {
            Some(i) => self.cursor += i + 1,
            // mxgate's own QUIT, when it ends a session.
            None if line == b"QUIT" => {}
            None => return Err(format!("relayed a line the client never sent: {shown:?}")),
        }
        match kind {
            Kind::Ehlo => {
                let code = self.code(dice, 250, 421, 550);
                let tag = self.tag();
                let mut raw = tagged(code, tag, code == 250, "greets client.example");
                if code == 250 {
                    raw +=
                        "250-PIPELINING\r\n250-STARTTLS\r\n250-CHUNKING\r\n250 SIZE 10240000\r\n";
                }
                self.write(Kind::Ehlo, code, tag, raw);
                self.end_transaction();
            }
            Kind::Rset | Kind::Helo => {
                let code = self.code(dice, 250, 451, 550);
                self.answer(kind, code, "ok");
                self.end_transaction();
            }
            Kind::Mail => {
                let code = match self.mail_open {
                    true => 503,
                    false => self.code(dice, 250, 451, 550),
                };
                self.answer(kind, code, "sender");
                self.mail_open = code == 250;
            }
            Kind::Rcpt => {
                let code = match self.mail_open {
                    true => self.code(dice, 250, 450, 550),
                    false => 503,
                };
                if code == 250 {
                    self.recipients_in_transaction += 1;
                    if self.recipients_in_transaction > self.limits.recipients_per_message {
                        return Err("more recipients reached the backend than the cap".into());
                    }
                }
                self.answer(kind, code, "recipient");
            }
            Kind::Data => {
                let code = match self.recipients_in_transaction {
                    0 => 503,
                    _ => self.code(dice, 354, 451, 554),
                };
                if code == 354 {
                    if self.accepted >= self.limits.messages_per_session {
                        return Err("a body past the session's message limit".into());
                    }
                    self.body = Some(b"\r\n".to_vec());
                }
                self.answer(kind, code, "data");
            }
            Kind::Quit => {
                self.quit_received = true;
                self.answer(kind, 221, "bye");
                self.closing = true;
                if !self.inbox.is_empty() {
                    return Err("bytes after QUIT".into());
                }
            }
            _ => {
                let code = self.code(dice, 250, 450, 502);
                let tag = self.tag();
                // Multi-line now and then: replies are relayed whole, whatever their length.
                let raw = match dice.next() % 4 {
                    0 => tagged(code, tag, true, "first") + &format!("{code} second\r\n"),
                    _ => tagged(code, tag, false, "ok"),
                };
                self.write(kind, code, tag, raw);
            }
        }
        Ok(true)
    }

    /// The positive code mostly, else the transient or the permanent one; now and then 421 (the
    /// backend shutting down), after which it closes.
    fn code(&self, dice: &mut Dice, positive: u16, transient: u16, permanent: u16) -> u16 {
        match dice.next() {
            0..=199 => positive,
            200..=229 => transient,
            230..=254 => permanent,
            255 => 421,
        }
    }

    fn end_transaction(&mut self) {
        self.mail_open = false;
        self.recipients_in_transaction = 0;
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn answer(&mut self, kind: Kind, code: u16, text: &str) {
        let tag = self.tag();
        self.write(kind, code, tag, tagged(code, tag, false, text));
    }

    fn write(&mut self, kind: Kind, code: u16, tag: u64, raw: String) {
        self.outbox.extend_from_slice(raw.as_bytes());
        self.said.0.insert(tag, (kind, raw.into_bytes()));
        if code == 421 {
            self.closing = true;
        }
    }

    /// Says 421 unprompted (shutting down) and closes.
    pub fn goodbye(&mut self) {
        if !self.closing {
            self.answer(Kind::Greeting, 421, "shutting down");
        }
    }

    /// Writes what no SMTP server would: a line that does not start with a code, a multi-line
    /// reply whose codes differ, or a reply longer than mxgate reads; then it is deaf.
    pub fn garble(&mut self, dice: &mut Dice) {
        if self.closing {
            return;
        }
        let garbage = match dice.next() % 3 {
            0 => b"HTTP/1.1 200 OK\r\n".to_vec(),
            1 => b"250-first\r\n354 second\r\n".to_vec(),
            _ => vec![b'2'; 70 * 1024],
        };
        self.outbox.extend_from_slice(&garbage);
        self.closing = true;
    }

    /// Checks the bodies: each one received is the client's, byte for byte, and a body cut short is
    /// a beginning of the client's, never ended by mxgate.
    pub fn check_bodies(&self, client_messages: &[Vec<u8>]) -> Result<(), String> {
        for (i, got) in self.messages.iter().enumerate() {
            if client_messages.get(i) != Some(got) {
                return Err(format!(
                    "message {i} reached the backend as {:?}, the client sent {:?}",
                    String::from_utf8_lossy(got),
                    client_messages.get(i).map(|m| String::from_utf8_lossy(m))
                ));
            }
        }
        if let Some(partial) = &self.body {
            let sent = client_messages
                .get(self.messages.len())
                .ok_or("a body never sent")?;
            let whole = [sent.as_slice(), b".\r\n"].concat();
            if !whole.starts_with(&partial[2..]) {
                return Err("a body cut short is not the client's".into());
            }
        }
        Ok(())
    }
}
