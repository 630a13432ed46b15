//! The relay state machine against a model client and a model backend, in random sessions: every
//! byte split at random, commands pipelined, junk, overlong lines, BDAT chunks, dot-stuffed bodies
//! with bare LFs, some ended by `.` and a bare LF (as a lenient backend would end them), replies of
//! every class, and faults (either side closing, timeouts, shutdown, a backend writing
//! garbage) at random moments.
//!
//! Whatever happens, it checks that:
//! - every reply the client gets is SMTP, and answers what the client asked, in order: the backend's
//!   own reply to that very command, byte for byte (the EHLO reply rewritten as documented), or one of
//!   mxgate's own, which is never positive but for the go-ahead to start TLS;
//! - so no message is reported accepted unless the backend accepted it, and the relay counts exactly
//!   the deliveries the client was told of;
//! - the backend gets only lines the client sent, in its order, with CRLF, only verbs mxgate relays
//!   (and mxgate's own QUIT), nothing after QUIT, and each body byte for byte but bare LFs as CRLF; a body cut short is
//!   never ended by mxgate;
//! - the recipient cap and the session's message limit hold at the backend;
//! - the session never stalls while the client is owed a reply, and it ends after a 421.

mod backend;
mod client;
mod dice;
mod script;
mod session;
mod wire;

use proptest::prelude::*;
use session::{Session, Setup};

fn setup() -> impl Strategy<Value = Setup> {
    let limits = (1u32..4, 1u32..4, 64usize..600, 1u32..6, any::<bool>());
    limits.prop_map(|(messages, recipients, line, junk, tls)| Setup {
        messages_per_session: messages,
        recipients_per_message: recipients,
        max_command_line: line,
        max_junk_commands: junk,
        tls_available: tls,
    })
}

/// Sessions per run: 2,000 (a few seconds), or `PROPTEST_CASES`.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(2_000)
}

proptest! {
    // PROPTEST_CASES=200000 for a longer hunt.
    // A failure prints the shrunk input and the transcript; nothing is written into the source tree.
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn relay_keeps_its_promises(
        setup in setup(),
        script in script::script(),
        rolls in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        if let Err(broken) = Session::new(setup, script, rolls).run() {
            prop_assert!(false, "{}", broken);
        }
    }
}

/// A sensible session with no faults and no rolls: every message gets through.
#[test]
fn a_plain_session_delivers() {
    use script::{BodyLine, Item, Kind};
    let command = |kind| Item::Command {
        kind,
        lower: false,
        bare_lf: false,
    };
    let body = vec![
        BodyLine {
            text: b".leading dot".to_vec(),
            bare_lf: false,
        },
        BodyLine {
            text: b"end".to_vec(),
            bare_lf: false,
        },
    ];
    let script = vec![
        command(Kind::Ehlo),
        Item::Wait,
        command(Kind::Mail),
        command(Kind::Rcpt),
        Item::Data {
            lines: body,
            lf_end: false,
        },
        command(Kind::Quit),
    ];
    let setup = Setup {
        messages_per_session: 2,
        recipients_per_message: 2,
        max_command_line: 512,
        max_junk_commands: 3,
        tls_available: false,
    };
    assert_eq!(Session::new(setup, script, Vec::new()).run(), Ok(1));
}
