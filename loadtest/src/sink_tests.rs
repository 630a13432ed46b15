//! The sink's records: each delivery counted against its own session, with or without message records.

use super::{SessionRecord, Sink, SinkConfig};
use crate::client::SmtpClient;

/// Opens `sessions` sessions at once, then delivers `per_session[i]` messages on session i,
/// interleaved, and closes them all.
async fn deliver_interleaved(sink: &Sink, per_session: &[usize]) {
    let mut clients = Vec::new();
    for _ in per_session {
        let mut client = SmtpClient::connect(sink.addr(), None).await.unwrap();
        assert_eq!(client.read_reply().await.unwrap().code, 220);
        assert_eq!(client.command("EHLO t").await.unwrap().code, 250);
        clients.push(client);
    }
    let most = per_session.iter().copied().max().unwrap_or(0);
    for round in 0..most {
        // Later sessions first, so deliveries do not come in the order the sessions were opened.
        for (i, client) in clients.iter_mut().enumerate().rev() {
            if round < per_session[i] {
                let body = format!("session {i} message {round}\r\n");
                let reply = client
                    .send_message("a@b", &["r@s"], body.as_bytes())
                    .await
                    .unwrap();
                assert_eq!(reply.code, 250, "{reply}");
            }
        }
    }
    for mut client in clients {
        assert_eq!(client.command("QUIT").await.unwrap().code, 221);
    }
}

/// The sink's sessions in the order they were opened.
fn sessions_in_order(sink: &Sink) -> Vec<SessionRecord> {
    let mut sessions = sink.sessions();
    sessions.sort_by_key(|s| s.id);
    sessions
}

/// Message counts per session, in the order the sessions were opened.
fn counts(sink: &Sink) -> Vec<u32> {
    sessions_in_order(sink).iter().map(|s| s.messages).collect()
}

#[tokio::test]
async fn every_delivery_counts_against_its_own_session() {
    let sink = Sink::start(SinkConfig::loopback()).await.unwrap();
    deliver_interleaved(&sink, &[3, 0, 5, 1]).await;
    assert_eq!(counts(&sink), vec![3, 0, 5, 1]);
    let messages = sink.messages();
    assert_eq!(messages.len(), 9);
    let third = sessions_in_order(&sink)[2].id;
    let of_third = messages.iter().filter(|m| m.session == third).count();
    assert_eq!(of_third, 5);
    sink.stop().await;
}

#[tokio::test]
async fn without_message_records_the_sessions_still_count() {
    let sink = Sink::start(SinkConfig {
        keep_messages: false,
        ..SinkConfig::loopback()
    })
    .await
    .unwrap();
    deliver_interleaved(&sink, &[2, 4, 0]).await;
    assert_eq!(counts(&sink), vec![2, 4, 0]);
    assert!(sink.messages().is_empty(), "no message records kept");
    sink.stop().await;
}

/// `stop` reports each session as it ended, a session still open included, with every message it
/// had its 250 for.
#[tokio::test]
async fn stop_reports_sessions_after_they_end() {
    let sink = Sink::start(SinkConfig {
        keep_messages: false,
        ..SinkConfig::loopback()
    })
    .await
    .unwrap();
    deliver_interleaved(&sink, &[2]).await;
    let mut open = SmtpClient::connect(sink.addr(), None).await.unwrap();
    assert_eq!(open.read_reply().await.unwrap().code, 220);
    assert_eq!(open.command("EHLO t").await.unwrap().code, 250);
    let reply = open.send_message("a@b", &["r@s"], b"x\r\n").await.unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    let before = sessions_in_order(&sink);
    assert!(!before[1].ended, "the second session is still open");
    let report = sink.stop().await;
    let ended: Vec<(u32, bool)> = report.iter().map(|s| (s.messages, s.ended)).collect();
    assert_eq!(ended, vec![(2, true), (1, true)]);
    assert!(open.closed_by_server().await);
}

/// A recipient named with the stall prefix hangs the session: the replies before it go out, then
/// nothing more, until the sink's idle timeout closes the connection.
#[tokio::test]
async fn a_stalling_recipient_hangs_the_session() {
    let sink = Sink::start(SinkConfig {
        stall_rcpt_prefix: Some("stall".into()),
        idle_timeout: std::time::Duration::from_millis(200),
        ..SinkConfig::loopback()
    })
    .await
    .unwrap();
    let mut client = SmtpClient::connect(sink.addr(), None).await.unwrap();
    assert_eq!(client.read_reply().await.unwrap().code, 220);
    assert_eq!(client.command("EHLO t").await.unwrap().code, 250);
    client
        .write_raw(b"MAIL FROM:<a@b>\r\nRCPT TO:<stall@s>\r\nRCPT TO:<r@s>\r\n")
        .await
        .unwrap();
    assert_eq!(client.read_reply().await.unwrap().code, 250);
    let after = client.read_reply().await.unwrap_err();
    assert_eq!(after.kind(), std::io::ErrorKind::UnexpectedEof, "{after}");
    sink.stop().await;
}
