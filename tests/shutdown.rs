//! Graceful shutdown: idle sessions get 421 at once, a transaction in progress finishes, a session
//! that outstays the grace period gets 421 and its unfinished message is not delivered.

mod common;

use common::{gate_and_sink, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_in_progress_finishes() {
    let (gate, sink) = gate_and_sink("v2", "", "").await;
    let mut busy = gate.client_from("127.0.0.40").await;
    busy.command("EHLO busy").await.unwrap();
    busy.write_raw(b"MAIL FROM:<a@b>\r\nRCPT TO:<r@s>\r\nDATA\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        busy.read_reply().await.unwrap();
    }
    busy.write_raw(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .await
        .unwrap();
    let mut idle = gate.client_from("127.0.0.41").await;
    idle.command("EHLO idle").await.unwrap();

    gate.shutdown.cancel();
    let reply = idle.read_reply().await.unwrap();
    assert_eq!(reply.text, "421 4.3.0 mx.test Server shutting down\r\n");
    assert!(idle.closed_by_server().await);

    busy.write_raw(b"second half\r\n.\r\n").await.unwrap();
    assert_eq!(busy.read_reply().await.unwrap().code, 250);
    let reply = busy.read_reply().await.unwrap();
    assert_eq!(reply.text, "421 4.3.0 mx.test Server shutting down\r\n");
    assert!(busy.closed_by_server().await);

    let addr = gate.addr;
    tokio::time::timeout(WAIT, gate.done)
        .await
        .expect("mxgate stops")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    common::assert_one_message_ending(&sink, b"second half\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_ends_unfinished_transactions() {
    let (gate, sink) = gate_and_sink("v2", "shutdown_grace = \"1s\"", "").await;
    let mut slow = gate.client_from("127.0.0.42").await;
    slow.command("EHLO slow").await.unwrap();
    slow.write_raw(b"MAIL FROM:<a@b>\r\nRCPT TO:<r@s>\r\nDATA\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        slow.read_reply().await.unwrap();
    }
    slow.write_raw(b"never finished\r\n").await.unwrap();
    gate.shutdown.cancel();
    let reply = slow.read_reply().await.unwrap();
    assert_eq!(reply.text, "421 4.3.0 mx.test Server shutting down\r\n");
    assert!(slow.closed_by_server().await);
    tokio::time::timeout(WAIT, gate.done)
        .await
        .expect("mxgate stops")
        .unwrap();
    assert!(
        sink.wait_until(WAIT, |_, s| s.iter().all(|s| s.ended))
            .await
    );
    assert!(
        sink.messages().is_empty(),
        "an unfinished message was delivered"
    );
}
