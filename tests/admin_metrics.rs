//! The `mxgate` binary with `--admin`: GET /metrics answers Prometheus text whose counters moved.

mod common;

use mxgate_loadtest::demo::MxgateProcess;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: mxgate\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions_sessions_and_deliveries() {
    std::env::set_var("MXGATE_BIN", env!("CARGO_BIN_EXE_mxgate"));
    let sink = common::proxy_sink().await;
    let port = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (listen, admin): (SocketAddr, SocketAddr) = (port(0), port(1));
    let gate = MxgateProcess::start(listen, sink.addr(), &["--admin", &admin.to_string()])
        .await
        .unwrap();

    for source in ["127.0.0.60", "127.0.0.61"] {
        let mut client =
            mxgate_loadtest::client::SmtpClient::connect(listen, Some(source.parse().unwrap()))
                .await
                .unwrap();
        client.read_reply().await.unwrap();
        client.command("EHLO c").await.unwrap();
        common::deliver(&mut client).await;
        assert_eq!(client.command("QUIT").await.unwrap().code, 221);
        assert!(client.closed_by_server().await);
    }
    // The session-end counters move after the client has its 221: wait for both to be counted.
    let mut body = String::new();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while tokio::time::Instant::now() < deadline {
        body = http_get(admin, "/metrics").await;
        if body.contains("mxgate_sessions_ended_total{end=\"quit\"} 2") {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("mxgate_decisions_total{class=\"neutral\",outcome=\"admit\"} 2"),
        "{body}"
    );
    assert!(
        body.contains("mxgate_sessions_ended_total{end=\"quit\"} 2"),
        "{body}"
    );
    assert!(body.contains("mxgate_deliveries_total 2"), "{body}");
    gate.stop().await.unwrap();
}
