//! A class's action decides before the backend is involved: defer gets 421, reject gets 554 and 503s.

mod common;

use common::gate_and_sink;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defer_answers_421_and_never_reaches_the_backend() {
    let (gate, sink) = gate_and_sink("v2", "", "action = \"defer\"").await;
    let mut client = gate.connect("127.0.0.50").await;
    let reply = client.read_reply().await.unwrap();
    assert_eq!(reply.text, "421 4.7.0 mx.test Try again later\r\n");
    assert!(client.closed_by_server().await);
    assert!(sink.sessions().is_empty());
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_answers_554_then_503_until_quit() {
    let (gate, sink) = gate_and_sink("v2", "", "action = \"reject\"").await;
    let mut client = gate.connect("127.0.0.51").await;
    let reply = client.read_reply().await.unwrap();
    assert_eq!(
        reply.text,
        "554 5.7.1 mx.test Service unavailable; client [127.0.0.51] blocked\r\n"
    );
    assert_eq!(client.command("EHLO c").await.unwrap().code, 503);
    assert_eq!(client.command("MAIL FROM:<a@b>").await.unwrap().code, 503);
    assert_eq!(client.command("QUIT").await.unwrap().code, 221);
    assert!(client.closed_by_server().await);
    assert!(sink.sessions().is_empty());
    gate.stop().await;
}
