//! Scenario tables for the relay state machine: client and backend bytes in, both directions out.

use super::*;

struct Harness {
    relay: Relay,
    client_in: BytesMut,
    backend_in: BytesMut,
}

/// What one step produced, as text for readable assertions.
#[derive(Debug, PartialEq)]
struct Step {
    to_client: String,
    to_backend: String,
    action: Option<Action>,
}

fn config() -> RelayConfig {
    RelayConfig {
        hostname: "mx.test".into(),
        messages_per_session: 2,
        recipients_per_message: 3,
        max_command_line: 512,
        max_junk_commands: 3,
        tls_available: true,
        teaser_sent: false,
    }
}

impl Harness {
    fn new() -> Self {
        Self::with(config())
    }

    fn with(config: RelayConfig) -> Self {
        Self {
            relay: Relay::new(config),
            client_in: BytesMut::new(),
            backend_in: BytesMut::new(),
        }
    }

    /// A relay past the greeting and EHLO.
    fn ready() -> Self {
        let mut h = Self::new();
        h.backend("220 backend ESMTP\r\n");
        h.client("EHLO c\r\n");
        h.backend("250-backend\r\n250 PIPELINING\r\n");
        h
    }

    fn run(&mut self, f: impl FnOnce(&mut Relay, &mut Output)) -> Step {
        let mut out = Output::default();
        f(&mut self.relay, &mut out);
        self.relay
            .pump(&mut self.client_in, &mut self.backend_in, &mut out);
        Step {
            to_client: String::from_utf8(out.to_client.to_vec()).unwrap(),
            to_backend: String::from_utf8(out.to_backend.to_vec()).unwrap(),
            action: out.action,
        }
    }

    fn client(&mut self, bytes: &str) -> Step {
        self.client_in.extend_from_slice(bytes.as_bytes());
        self.run(|_, _| {})
    }

    fn backend(&mut self, bytes: &str) -> Step {
        self.backend_in.extend_from_slice(bytes.as_bytes());
        self.run(|_, _| {})
    }

    fn deliver_one(&mut self) {
        self.client("MAIL FROM:<a@b>\r\nRCPT TO:<r@x>\r\nDATA\r\n");
        self.backend("250 ok\r\n250 ok\r\n354 go\r\n");
        self.client("body\r\n.\r\n");
        self.backend("250 queued\r\n");
    }
}

fn step(to_client: &str, to_backend: &str, action: Option<Action>) -> Step {
    Step {
        to_client: to_client.into(),
        to_backend: to_backend.into(),
        action,
    }
}

#[test]
fn greeting_and_ehlo_rewritten() {
    let mut h = Harness::new();
    // The client is not read before the greeting.
    assert!(!h.relay.wants_client_input(0));
    assert_eq!(
        h.backend("220 backend ESMTP\r\n"),
        step("220 backend ESMTP\r\n", "", None)
    );
    assert_eq!(h.client("EHLO c\r\n"), step("", "EHLO c\r\n", None));
    assert_eq!(
        h.backend("250-backend\r\n250-STARTTLS\r\n250 CHUNKING\r\n"),
        step(
            "250-backend\r\n250-STARTTLS\r\n250 LIMITS MAILMAX=2 RCPTMAX=3\r\n",
            "",
            None
        )
    );
}

#[test]
fn pipelined_transaction_and_dot_stuffing() {
    let mut h = Harness::ready();
    let s = h.client("MAIL FROM:<a@b>\r\nRCPT TO:<r@x>\r\nDATA\r\n");
    assert_eq!(
        s,
        step("", "MAIL FROM:<a@b>\r\nRCPT TO:<r@x>\r\nDATA\r\n", None)
    );
    // Body bytes sent before the 354 are not read as commands.
    assert!(!h.relay.wants_client_input(0));
    assert_eq!(
        h.backend("250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n"),
        step("250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n", "", None)
    );
    assert_eq!(
        h.client("..stuffed\r\n.."),
        step("", "..stuffed\r\n..", None)
    );
    assert_eq!(
        h.client("\r\n.\r\nQUIT\r\n"),
        step("", "\r\n.\r\nQUIT\r\n", None)
    );
    assert_eq!(
        h.backend("250 2.0.0 queued\r\n221 bye\r\n"),
        step("250 2.0.0 queued\r\n221 bye\r\n", "", Some(Action::Close))
    );
    assert_eq!(h.relay.stats().deliveries, 1);
    assert_eq!(h.relay.end_reason(), Some(EndReason::Quit));
}

#[test]
fn message_limit_cuts_off_at_next_mail() {
    let mut h = Harness::ready();
    h.deliver_one();
    h.deliver_one();
    assert_eq!(h.relay.stats().deliveries, 2);
    assert_eq!(
        h.client("MAIL FROM:<a@b>\r\n"),
        step(
            "421 4.7.0 mx.test Message limit for this session reached, reconnect\r\n",
            "QUIT\r\n",
            Some(Action::Close)
        )
    );
    assert_eq!(h.relay.end_reason(), Some(EndReason::MessageLimit));
}

#[test]
fn message_limit_waits_for_pipelined_end_of_data() {
    let mut h = Harness::ready();
    h.deliver_one();
    h.client("MAIL FROM:<a@b>\r\nRCPT TO:<r@x>\r\nDATA\r\n");
    h.backend("250 ok\r\n250 ok\r\n354 go\r\n");
    // End of data and the next MAIL in one group: the MAIL waits for the end-of-data reply.
    assert_eq!(
        h.client("x\r\n.\r\nMAIL FROM:<a@b>\r\n"),
        step("", "x\r\n.\r\n", None)
    );
    assert_eq!(
        h.backend("250 queued\r\n"),
        step(
            "250 queued\r\n421 4.7.0 mx.test Message limit for this session reached, reconnect\r\n",
            "QUIT\r\n",
            Some(Action::Close)
        )
    );
}

#[test]
fn message_limit_holds_at_data_behind_a_backend_that_needs_no_mail() {
    let mut h = Harness::ready();
    h.deliver_one();
    h.deliver_one();
    // A backend that breaks RFC 5321 takes recipients without a MAIL: the body would be a third
    // delivery, so DATA gets the limit's 421 and goes no further.
    h.client("RCPT TO:<r@x>\r\n");
    h.backend("250 ok\r\n");
    assert_eq!(
        h.client("DATA\r\n"),
        step(
            "421 4.7.0 mx.test Message limit for this session reached, reconnect\r\n",
            "QUIT\r\n",
            Some(Action::Close)
        )
    );
    assert_eq!(h.relay.stats().deliveries, 2);
    assert_eq!(h.relay.end_reason(), Some(EndReason::MessageLimit));
}

#[test]
fn refused_message_does_not_count() {
    let mut h = Harness::ready();
    h.client("MAIL FROM:<a@b>\r\nRCPT TO:<r@x>\r\nDATA\r\n");
    h.backend("250 ok\r\n250 ok\r\n354 go\r\n");
    h.client("x\r\n.\r\n");
    h.backend("554 5.7.1 no\r\n");
    h.deliver_one();
    h.deliver_one();
    assert_eq!(h.relay.stats().deliveries, 2);
}

#[test]
fn recipient_cap_in_a_pipelined_group() {
    let mut h = Harness::ready();
    let s = h.client(
        "MAIL FROM:<a@b>\r\nRCPT TO:<1@x>\r\nRCPT TO:<2@x>\r\nRCPT TO:<3@x>\r\nRCPT TO:<4@x>\r\n",
    );
    assert_eq!(
        s.to_backend,
        "MAIL FROM:<a@b>\r\nRCPT TO:<1@x>\r\nRCPT TO:<2@x>\r\nRCPT TO:<3@x>\r\n"
    );
    // One recipient was refused by the backend: the fourth fits after all.
    assert_eq!(
        h.backend("250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n")
            .to_backend,
        "RCPT TO:<4@x>\r\n"
    );
    assert_eq!(h.backend("250 ok\r\n").to_client, "250 ok\r\n");
    let s = h.client("RCPT TO:<5@x>\r\nDATA\r\n");
    assert_eq!(
        s,
        step("452 4.5.3 Error: too many recipients\r\n", "DATA\r\n", None)
    );
    assert_eq!(h.relay.stats().recipients_refused_by_cap, 1);
}

#[test]
fn local_replies_keep_command_order() {
    let mut h = Harness::ready();
    let s = h.client("NOOP\r\nFROB\r\nNOOP\r\n");
    assert_eq!(s, step("", "NOOP\r\nNOOP\r\n", None));
    assert_eq!(
        h.backend("250 a\r\n").to_client,
        "250 a\r\n502 5.5.2 Error: command not recognized\r\n"
    );
    assert_eq!(h.backend("250 b\r\n").to_client, "250 b\r\n");
}

#[test]
fn junk_lines_and_limit() {
    let mut h = Harness::ready();
    assert_eq!(
        h.client("\x00\x01\x02\r\n").to_client,
        "500 5.5.2 Error: bad syntax\r\n"
    );
    let long = "A".repeat(600);
    assert_eq!(
        h.client(&long).to_client,
        "500 5.5.2 Error: line too long\r\n"
    );
    // The rest of the long line is discarded; the next line is a command again.
    assert_eq!(h.client("AAAA\r\nNOOP\r\n"), step("", "NOOP\r\n", None));
    h.backend("250 ok\r\n");
    assert_eq!(
        h.client("FROB\r\n"),
        step(
            "502 5.5.2 Error: command not recognized\r\n421 4.7.0 mx.test Error: too many errors\r\n",
            "QUIT\r\n",
            Some(Action::Close)
        )
    );
}

#[test]
fn commands_that_are_not_relayed() {
    let mut h = Harness::ready();
    assert_eq!(
        h.client("XCLIENT ADDR=10.0.0.1\r\n"),
        step("502 5.5.1 Error: command not implemented\r\n", "", None)
    );
    // A refused BDAT chunk is skipped, not read as commands.
    assert_eq!(
        h.client("BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n"),
        step(
            "502 5.5.1 Error: BDAT not offered, use DATA\r\n",
            "NOOP\r\n",
            None
        )
    );
    let s = h.client("GET / HTTP/1.0\r\n");
    assert_eq!(s.action, None, "waits for the NOOP reply first");
    let s = h.backend("250 ok\r\n");
    assert_eq!(
        s.to_client,
        "250 ok\r\n421 4.7.0 mx.test Error: non-SMTP command\r\n"
    );
    assert_eq!(s.action, Some(Action::Close));
}

#[test]
fn starttls_discards_pipelined_input_and_resets() {
    let mut h = Harness::ready();
    let s = h.client("STARTTLS\r\nMAIL FROM:<evil@x>\r\n");
    assert_eq!(
        s,
        step(
            "220 2.0.0 Ready to start TLS\r\n",
            "",
            Some(Action::StartTls)
        )
    );
    assert!(h.client_in.is_empty());
    h.relay.on_tls_established();
    assert_eq!(
        h.client("MAIL FROM:<a@b>\r\n").to_client,
        "503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
    h.client("EHLO c\r\n");
    let s = h.backend("250-backend\r\n250 PIPELINING\r\n");
    assert!(!s.to_client.contains("STARTTLS"), "{}", s.to_client);
    assert_eq!(
        h.client("STARTTLS\r\n").to_client,
        "554 5.5.1 Error: TLS already active\r\n"
    );
}

#[test]
fn client_eof_mid_body_aborts_without_quit() {
    let mut h = Harness::ready();
    h.client("MAIL FROM:<a@b>\r\nRCPT TO:<r@x>\r\nDATA\r\n");
    h.backend("250 ok\r\n250 ok\r\n354 go\r\n");
    h.client("partial body");
    let s = h.run(|r, out| r.on_client_eof(out));
    assert_eq!(s, step("", "", Some(Action::Close)));
    assert_eq!(h.relay.stats().deliveries, 0);
}

#[test]
fn backend_failures() {
    let mut h = Harness::ready();
    h.client("MAIL FROM:<a@b>\r\n");
    let s = h.run(|r, out| r.on_backend_eof(out));
    assert_eq!(
        s,
        step(
            "421 4.3.2 mx.test Service temporarily unavailable\r\n",
            "",
            Some(Action::Close)
        )
    );
    let mut h = Harness::ready();
    h.client("NOOP\r\n");
    assert_eq!(
        h.backend("HTTP/1.1 200 OK\r\n").to_client,
        "421 4.3.2 mx.test Service temporarily unavailable\r\n"
    );
    // A backend that times out says 421 by itself: relayed as it is.
    let mut h = Harness::ready();
    let s = h.backend("421 4.4.2 backend Error: timeout exceeded\r\n");
    assert_eq!(s.to_client, "421 4.4.2 backend Error: timeout exceeded\r\n");
    assert_eq!(s.action, Some(Action::Close));
}

/// The driver waits for the backend to close only where QUIT went to it.
#[test]
fn backend_closes_next_only_after_quit() {
    // The client's QUIT, answered.
    let mut h = Harness::ready();
    assert!(!h.relay.backend_closes_next());
    h.client("QUIT\r\n");
    assert_eq!(h.backend("221 bye\r\n").action, Some(Action::Close));
    assert!(h.relay.backend_closes_next());
    // mxgate's own QUIT, at the message limit.
    let mut h = Harness::ready();
    h.deliver_one();
    h.deliver_one();
    assert_eq!(h.client("MAIL FROM:<a@b>\r\n").to_backend, "QUIT\r\n");
    assert!(h.relay.backend_closes_next());
    // A body cut short: no QUIT, the backend is just let go of.
    let mut h = Harness::ready();
    h.client("MAIL FROM:<a@b>\r\nRCPT TO:<r@x>\r\nDATA\r\n");
    h.backend("250 ok\r\n250 ok\r\n354 go\r\n");
    h.client("partial body");
    h.run(|r, out| r.on_client_eof(out));
    assert!(!h.relay.backend_closes_next());
    // A backend that failed after QUIT is not waited for.
    let mut h = Harness::ready();
    h.client("QUIT\r\n");
    h.run(|r, out| r.on_timeout(out));
    assert!(!h.relay.backend_closes_next());
}

#[test]
fn timeouts() {
    let mut h = Harness::ready();
    let s = h.run(|r, out| r.on_timeout(out));
    assert_eq!(
        s,
        step(
            "421 4.4.2 mx.test Error: timeout exceeded\r\n",
            "QUIT\r\n",
            Some(Action::Close)
        )
    );
    let mut h = Harness::ready();
    h.client("NOOP\r\n");
    assert_eq!(h.relay.awaiting_backend(), Some(false));
    let s = h.run(|r, out| r.on_timeout(out));
    assert_eq!(
        s.to_client,
        "421 4.3.2 mx.test Service temporarily unavailable\r\n"
    );
    assert_eq!(h.relay.end_reason(), Some(EndReason::BackendTimeout));
}

#[test]
fn shutdown_lets_the_transaction_finish() {
    let mut h = Harness::ready();
    h.client("MAIL FROM:<a@b>\r\nRCPT TO:<r@x>\r\nDATA\r\n");
    h.backend("250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(h.run(|r, out| r.on_shutdown(out)), step("", "", None));
    h.client("body\r\n.\r\n");
    assert_eq!(
        h.backend("250 queued\r\n"),
        step(
            "250 queued\r\n421 4.3.0 mx.test Server shutting down\r\n",
            "QUIT\r\n",
            Some(Action::Close)
        )
    );
    assert_eq!(h.relay.stats().deliveries, 1);

    let mut idle = Harness::ready();
    let s = idle.run(|r, out| r.on_shutdown(out));
    assert_eq!(s.to_client, "421 4.3.0 mx.test Server shutting down\r\n");
    assert_eq!(s.action, Some(Action::Close));
}

#[test]
fn shutdown_deadline_mid_body() {
    let mut h = Harness::ready();
    h.client("MAIL FROM:<a@b>\r\nRCPT TO:<r@x>\r\nDATA\r\n");
    h.backend("250 ok\r\n250 ok\r\n354 go\r\n");
    h.run(|r, out| r.on_shutdown(out));
    h.client("half a bo");
    let s = h.run(|r, out| r.on_shutdown_deadline(out));
    assert_eq!(
        s,
        step(
            "421 4.3.0 mx.test Server shutting down\r\n",
            "",
            Some(Action::Close)
        )
    );
}

#[test]
fn bare_lf_commands_are_normalised() {
    let mut h = Harness::ready();
    assert_eq!(h.client("NOOP\n").to_backend, "NOOP\r\n");
}

#[test]
fn teaser_then_refusing_backend_finishes_the_greeting() {
    let mut h = Harness::with(RelayConfig {
        teaser_sent: true,
        ..config()
    });
    let s = h.backend("554 5.3.2 backend busy\r\n");
    assert_eq!(
        s.to_client,
        "220 mx.test ESMTP\r\n421 4.3.2 mx.test Service temporarily unavailable\r\n"
    );
    assert_eq!(s.action, Some(Action::Close));
    let mut ok = Harness::with(RelayConfig {
        teaser_sent: true,
        ..config()
    });
    assert_eq!(
        ok.backend("220 backend ESMTP\r\n").to_client,
        "220 backend ESMTP\r\n"
    );
}

// ---- found by the relay model (tests/relay_model) -----------------------------------------------

/// A nested MAIL (refused by the backend with 503) does not start a new transaction, so it does
/// not reset the recipients counted against the cap.
#[test]
fn nested_mail_keeps_the_recipient_count() {
    let mut h = Harness::ready();
    h.client("MAIL FROM:<a@b>\r\nRCPT TO:<1@x>\r\nRCPT TO:<2@x>\r\nRCPT TO:<3@x>\r\n");
    h.backend("250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n");
    assert_eq!(
        h.client("MAIL FROM:<c@d>\r\n"),
        step("", "MAIL FROM:<c@d>\r\n", None)
    );
    h.backend("503 5.5.1 Error: nested MAIL command\r\n");
    assert_eq!(
        h.client("RCPT TO:<4@x>\r\n").to_client,
        "452 4.5.3 Error: too many recipients\r\n"
    );
    // After RSET a transaction starts afresh, even with replies still on their way.
    let s = h.client("RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@x>\r\nRCPT TO:<2@x>\r\n");
    assert_eq!(
        s.to_backend,
        "RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@x>\r\nRCPT TO:<2@x>\r\n"
    );
}

/// A backend's 421 is the client's last reply: the session ends with it, whatever the client had
/// pipelined behind.
#[test]
fn backend_421_ends_the_session() {
    let mut h = Harness::new();
    h.backend("220 backend ESMTP\r\n");
    assert_eq!(
        h.client("EHLO c\r\nSTARTTLS\r\n"),
        step("", "EHLO c\r\n", None)
    );
    assert_eq!(
        h.backend("421 4.3.2 backend shutting down\r\n"),
        step(
            "421 4.3.2 backend shutting down\r\n",
            "",
            Some(Action::Close)
        )
    );
    assert_eq!(h.relay.end_reason(), Some(EndReason::BackendClosed));
}

/// At the session's time limit the replies the backend owes go out first, then the 421; called
/// again (the session already ending), nothing more happens.
#[test]
fn session_time_limit_after_the_replies_owed() {
    let mut h = Harness::ready();
    h.client("NOOP\r\n");
    assert_eq!(
        h.run(|r, out| r.on_session_expired(out)),
        step("", "", None)
    );
    assert_eq!(
        h.run(|r, out| r.on_session_expired(out)),
        step("", "", None)
    );
    assert_eq!(
        h.backend("250 ok\r\n"),
        step(
            "250 ok\r\n421 4.4.2 mx.test Error: session time limit exceeded\r\n",
            "QUIT\r\n",
            Some(Action::Close)
        )
    );
    // Waiting for a 354, the body can no longer be relayed: 421 at once, no QUIT inside DATA.
    let mut h = Harness::ready();
    h.client("MAIL FROM:<a@b>\r\nRCPT TO:<r@x>\r\nDATA\r\n");
    assert_eq!(
        h.run(|r, out| r.on_session_expired(out)),
        step(
            "421 4.4.2 mx.test Error: session time limit exceeded\r\n",
            "",
            Some(Action::Close)
        )
    );
}

/// Past the shutdown grace period the client gets 421 in place of the replies still owed, and
/// nothing after it.
#[test]
fn shutdown_deadline_with_replies_owed() {
    let mut h = Harness::ready();
    h.client("MAIL FROM:<a@b>\r\nRCPT TO:<r@x>\r\n");
    assert_eq!(
        h.run(|r, out| r.on_shutdown_deadline(out)),
        step(
            "421 4.3.0 mx.test Server shutting down\r\n",
            "QUIT\r\n",
            Some(Action::Close)
        )
    );
}
