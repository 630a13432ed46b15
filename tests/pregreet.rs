//! The early-talker test: a `220-` teaser, a delay, and the weight added to clients that speak
//! before the greeting is complete; patient clients see one well-formed multi-line greeting.

mod common;

use common::{Gate, WAIT};
use mxgate::policy::Policy;
use mxgate_loadtest::client::{connect_from, SmtpClient};
use mxgate_loadtest::sink::Sink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gate(weight: i32) -> (Gate, Sink) {
    let sink = common::proxy_sink().await;
    let text = format!(
        "[server]\nhostname = \"mx.test\"\nlisten = [\"127.0.0.1:0\"]\n[backend]\naddress = \"{}\"\n\
         [pregreet]\nenabled = true\ndelay = \"400ms\"\nweight = {weight}\n\
         [[class]]\nname = \"neutral\"\nmax_score = 2\n[[class]]\nname = \"suspect\"\naction = \"defer\"\n",
        sink.addr()
    );
    (
        Gate::start(Policy::parse("pregreet", &text, None).unwrap_or_else(|e| panic!("{e}"))).await,
        sink,
    )
}

/// Reads the teaser line alone (mxgate sends nothing else until the delay is over).
async fn read_teaser(stream: &mut tokio::net::TcpStream) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed before the teaser ended"
        );
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_client_sees_one_greeting_and_delivers() {
    let (gate, sink) = gate(5).await;
    let mut client = gate.connect("127.0.0.70").await;
    let greeting = client.read_reply().await.unwrap();
    assert_eq!(
        greeting.text,
        "220-mx.test ESMTP\r\n220 sink.test ESMTP mxgate-sink\r\n"
    );
    client.command("EHLO patient").await.unwrap();
    common::deliver(&mut client).await;
    assert!(sink.wait_until(WAIT, |m, _| m.len() == 1).await);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_talker_is_deferred() {
    let (gate, sink) = gate(5).await;
    let mut stream = connect_from(gate.addr, Some("127.0.0.71".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(read_teaser(&mut stream).await, "220-mx.test ESMTP\r\n");
    stream.write_all(b"EHLO early\r\n").await.unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).await.unwrap();
    assert_eq!(
        rest,
        "220 mx.test ESMTP\r\n421 4.7.0 mx.test Try again later\r\n"
    );
    assert!(sink.sessions().is_empty());
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_early_talker_loses_nothing() {
    let (gate, _sink) = gate(1).await;
    let mut stream = connect_from(gate.addr, Some("127.0.0.72".parse().unwrap()))
        .await
        .unwrap();
    read_teaser(&mut stream).await;
    stream.write_all(b"EHLO early\r\n").await.unwrap();
    let mut client = SmtpClient::new(stream);
    let end_of_greeting = client.read_reply().await.unwrap();
    assert_eq!(end_of_greeting.text, "220 sink.test ESMTP mxgate-sink\r\n");
    // The EHLO sent early was kept and relayed.
    let ehlo = client.read_reply().await.unwrap();
    assert!(ehlo.text.starts_with("250-sink.test\r\n"), "{ehlo}");
    gate.stop().await;
}
