//! What the model client says: random SMTP items (good commands, junk, overlong lines, BDAT chunks,
//! bodies with dots) as proptest strategies, and the bytes each item puts on the wire.

use proptest::prelude::*;

/// What a reply answers, as the client and the backend each see it: the two must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Greeting,
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Rset,
    Noop,
    Vrfy,
    Help,
    Quit,
    StartTls,
    Junk,
    Overlong,
    Bdat,
    NotRelayed,
    Http,
}

impl Kind {
    /// The kind of a command line as the backend reads it (mxgate only relays these verbs).
    pub fn of_relayed_line(line: &[u8]) -> Option<Kind> {
        let verb = line.split(|&b| b == b' ').next()?.to_ascii_uppercase();
        Some(match verb.as_slice() {
            b"EHLO" => Kind::Ehlo,
            b"HELO" => Kind::Helo,
            b"MAIL" => Kind::Mail,
            b"RCPT" => Kind::Rcpt,
            b"DATA" => Kind::Data,
            b"RSET" => Kind::Rset,
            b"NOOP" => Kind::Noop,
            b"VRFY" => Kind::Vrfy,
            b"HELP" => Kind::Help,
            b"QUIT" => Kind::Quit,
            _ => return None,
        })
    }
}

/// One step of the client's script.
#[derive(Debug, Clone)]
pub enum Item {
    /// A well-formed command, in upper or lower case, ended by CRLF or a bare LF.
    Command {
        kind: Kind,
        lower: bool,
        bare_lf: bool,
    },
    /// DATA; if the backend says 354, this body (lines, dot-stuffed by the client) follows, ended
    /// by `.` and CRLF, or by `.` and a bare LF (`lf_end`), which ends a body too (SMTP smuggling).
    Data { lines: Vec<BodyLine>, lf_end: bool },
    /// A whole transaction pipelined: MAIL, this many RCPTs, DATA and the body (see `expand`).
    Transaction {
        recipients: usize,
        lines: Vec<BodyLine>,
        lf_end: bool,
    },
    /// A line that is no command: `X` and then any bytes but LF.
    Junk(Vec<u8>),
    /// A NOOP padded to `max_command_line - short` bytes with its CRLF: at the limit, still valid.
    LongNoop { short: usize },
    /// A line this many bytes past the command line limit.
    Overlong { extra: usize },
    /// `BDAT n` and its n bytes, which mxgate must skip, not read as commands.
    Bdat(Vec<u8>),
    /// AUTH or XCLIENT: answered by mxgate, never relayed.
    NotRelayed { xclient: bool },
    /// An HTTP request line: mxgate ends the session.
    Http,
    /// The client waits for all the replies it is owed before going on (ends a pipelined group).
    Wait,
}

#[derive(Debug, Clone)]
pub struct BodyLine {
    /// Any bytes but CR and LF; a leading dot is stuffed by the client.
    pub text: Vec<u8>,
    pub bare_lf: bool,
}

impl Item {
    /// Whether the client must wait for replies after this item (RFC 2920: DATA, STARTTLS and QUIT
    /// end a pipelined group).
    pub fn ends_group(&self) -> bool {
        match self {
            Item::Data { .. } | Item::Wait | Item::Http => true,
            Item::Command { kind, .. } => matches!(kind, Kind::StartTls | Kind::Quit),
            _ => false,
        }
    }

    /// The reply kind the client expects for this item, if it expects one.
    pub fn kind(&self) -> Option<Kind> {
        Some(match self {
            Item::Command { kind, .. } => *kind,
            Item::Data { .. } => Kind::Data,
            Item::Junk(_) => Kind::Junk,
            Item::LongNoop { .. } => Kind::Noop,
            Item::Overlong { .. } => Kind::Overlong,
            Item::Bdat(_) => Kind::Bdat,
            Item::NotRelayed { .. } => Kind::NotRelayed,
            Item::Http => Kind::Http,
            Item::Wait | Item::Transaction { .. } => return None,
        })
    }

    /// The items a transaction stands for; any other item stands for itself.
    pub fn expand(self) -> Vec<Item> {
        let Item::Transaction {
            recipients,
            lines,
            lf_end,
        } = self
        else {
            return vec![self];
        };
        let command = |kind| Item::Command {
            kind,
            lower: false,
            bare_lf: false,
        };
        let mut items = vec![command(Kind::Mail)];
        items.extend((0..recipients).map(|_| command(Kind::Rcpt)));
        items.push(Item::Data { lines, lf_end });
        items
    }

    /// The bytes of the item's command line (and a BDAT chunk), for a session whose command line
    /// limit is `max_line`.
    pub fn wire(&self, max_line: usize) -> Vec<u8> {
        match self {
            Item::Command {
                kind,
                lower,
                bare_lf,
            } => {
                let text = match kind {
                    Kind::Ehlo => "EHLO client.example",
                    Kind::Helo => "HELO client.example",
                    Kind::Mail => "MAIL FROM:<sender@example.org>",
                    Kind::Rcpt => "RCPT TO:<rcpt@example.net>",
                    Kind::Rset => "RSET",
                    Kind::Noop => "NOOP",
                    Kind::Vrfy => "VRFY postmaster",
                    Kind::Help => "HELP",
                    Kind::Quit => "QUIT",
                    Kind::StartTls => "STARTTLS",
                    other => unreachable!("no plain command for {other:?}"),
                };
                let mut line = match lower {
                    true => text.to_ascii_lowercase().into_bytes(),
                    false => text.as_bytes().to_vec(),
                };
                line.extend_from_slice(if *bare_lf { b"\n" } else { b"\r\n" });
                line
            }
            Item::Data { .. } => b"DATA\r\n".to_vec(),
            Item::Junk(bytes) => [b"X".as_slice(), bytes, b"\r\n"].concat(),
            Item::LongNoop { short } => {
                let mut line = b"NOOP ".to_vec();
                line.resize(max_line.saturating_sub(2 + short).max(5), b'n');
                line.extend_from_slice(b"\r\n");
                line
            }
            Item::Overlong { extra } => {
                let mut line = vec![b'X'; max_line + extra];
                line.extend_from_slice(b"\r\n");
                line
            }
            Item::Bdat(chunk) => [format!("BDAT {}\r\n", chunk.len()).as_bytes(), chunk].concat(),
            Item::NotRelayed { xclient: true } => b"XCLIENT ADDR=192.0.2.1\r\n".to_vec(),
            Item::NotRelayed { xclient: false } => b"AUTH PLAIN AGFiYwBkZWY=\r\n".to_vec(),
            Item::Http => b"GET / HTTP/1.0\r\n".to_vec(),
            Item::Wait | Item::Transaction { .. } => Vec::new(),
        }
    }
}

/// The body as the client sends it after 354 (dot-stuffed, with the terminator), and the message
/// the backend must receive: the same bytes without the terminator, each bare LF sent as CRLF.
pub fn body_wire(lines: &[BodyLine], lf_end: bool) -> (Vec<u8>, Vec<u8>) {
    let (mut wire, mut message) = (Vec::new(), Vec::new());
    for line in lines {
        let stuffed = match line.text.first() {
            Some(b'.') => [b".", line.text.as_slice()].concat(),
            _ => line.text.clone(),
        };
        wire.extend_from_slice(&stuffed);
        wire.extend_from_slice(if line.bare_lf { b"\n" } else { b"\r\n" });
        message.extend_from_slice(&stuffed);
        message.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(if lf_end { b".\n" } else { b".\r\n" });
    (wire, message)
}

fn command() -> impl Strategy<Value = Item> {
    let kind = prop_oneof![
        3 => Just(Kind::Ehlo),
        1 => Just(Kind::Helo),
        4 => Just(Kind::Mail),
        5 => Just(Kind::Rcpt),
        1 => Just(Kind::Rset),
        1 => Just(Kind::Noop),
        1 => Just(Kind::Vrfy),
        1 => Just(Kind::Help),
        1 => Just(Kind::Quit),
        1 => Just(Kind::StartTls),
    ];
    (kind, any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(kind, lower, bare_lf)| {
        Item::Command {
            kind,
            lower,
            bare_lf,
        }
    })
}

/// Bytes but CR and LF, with dots more frequent than chance (they are what dot-stuffing is about).
fn text_byte() -> impl Strategy<Value = u8> {
    any::<u8>().prop_map(|b| match b {
        b'\r' | b'\n' => b'.',
        b => b,
    })
}

fn body_line() -> impl Strategy<Value = BodyLine> {
    let text = prop_oneof![
        Just(b".".to_vec()),
        Just(b"..".to_vec()),
        Just(Vec::new()),
        prop::collection::vec(text_byte(), 0..40),
    ];
    (text, prop::bool::weighted(0.2)).prop_map(|(text, bare_lf)| BodyLine { text, bare_lf })
}

fn item() -> impl Strategy<Value = Item> {
    let no_lf = any::<u8>().prop_map(|b| if b == b'\n' { b'\r' } else { b });
    let lines = || prop::collection::vec(body_line(), 0..6);
    let lf_end = || prop::bool::weighted(0.2);
    prop_oneof![
        20 => command(),
        5 => (lines(), lf_end()).prop_map(|(lines, lf_end)| Item::Data { lines, lf_end }),
        12 => (1usize..5, lines(), lf_end()).prop_map(|(recipients, lines, lf_end)| {
            Item::Transaction { recipients, lines, lf_end }
        }),
        4 => Just(Item::Wait),
        1 => prop::collection::vec(no_lf, 0..20).prop_map(Item::Junk),
        1 => (0usize..3).prop_map(|short| Item::LongNoop { short }),
        1 => (0usize..80).prop_map(|extra| Item::Overlong { extra }),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Item::Bdat),
        1 => any::<bool>().prop_map(|xclient| Item::NotRelayed { xclient }),
    ]
}

/// A client's whole script: mostly sensible sessions (EHLO first, whole transactions), with every
/// kind of misbehaviour mixed in, and now and then an HTTP request line, which ends it.
pub fn script() -> impl Strategy<Value = Vec<Item>> {
    let greet = prop::bool::weighted(0.9);
    let http = prop::bool::weighted(0.05);
    (greet, prop::collection::vec(item(), 0..40), http).prop_map(|(greet, items, http)| {
        let ehlo = Item::Command {
            kind: Kind::Ehlo,
            lower: false,
            bare_lf: false,
        };
        let mut script: Vec<Item> = greet.then_some(ehlo).into_iter().chain(items).collect();
        if http {
            script.insert(script.len() / 2, Item::Http);
        }
        script.into_iter().flat_map(Item::expand).collect()
    })
}
