//! A port already taken (by another mxgate, say) is an error at start, not a port silently shared
//! through SO_REUSEPORT by two processes deciding with different policies.

use std::process::Command;

#[test]
fn a_taken_port_stops_mxgate_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_mxgate"))
        .args(["run", "--listen", &addr, "--backend", "127.0.0.1:1"])
        .env("MXGATE_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}: Address already in use")),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
}

#[tokio::test]
async fn accepted_sessions_have_nagle_off_from_the_listener() {
    // mxgate no longer sets TCP_NODELAY per session on Linux: it relies on the accepted socket
    // inheriting it from the listener. Without it each small reply would wait for a delayed ACK.
    let addr = "127.0.0.1:0".parse().unwrap();
    let mut sets = mxgate::server::bind_per_worker(&[addr], 1).unwrap();
    let listener = tokio::net::TcpListener::from_std(sets.remove(0).remove(0)).unwrap();
    let target = listener.local_addr().unwrap();
    let _client = tokio::net::TcpStream::connect(target).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    assert!(accepted.nodelay().unwrap());
}
