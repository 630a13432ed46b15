//! Real peers from Debian packages (Postfix, swaks): found, or the test is skipped with a loud note,
//! unless MXGATE_REQUIRE_PEERS=1 (set by .ci/run), where a missing peer fails the test.

use std::path::Path;
use std::time::{Duration, Instant};

/// Whether `program` (an absolute path) is installed; panics when peers are required but missing.
pub fn available(program: &str) -> bool {
    if Path::new(program).exists() {
        return true;
    }
    if std::env::var("MXGATE_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
        panic!("{program} is required (MXGATE_REQUIRE_PEERS=1) but not installed; run .ci/run or apt-get install it");
    }
    eprintln!("SKIPPED: {program} is not installed (bash .ci/run installs it)");
    false
}

/// A free TCP port on 127.0.0.1 (bound, then released for the peer to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ready` every 50 ms until it holds or `limit` passes: for peers that give no other signal.
pub fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ready()
}
