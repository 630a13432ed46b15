//! mxgate's DNS list lookups against Debian's real rbldnsd (run by .ci/run), serving an ip4set zone.

mod common;

use common::peers::{available, free_port};
use mxgate::admission::assess;
use mxgate::policy::Policy;
use std::process::{Child, Command};
use std::time::Duration;

struct Rbldnsd(Child);

impl Drop for Rbldnsd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_against_rbldnsd() {
    if !available("/usr/sbin/rbldnsd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // rbldnsd drops to user nobody: the zone file and its directory must be readable.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let zone = dir.path().join("zen.ip4set");
    std::fs::write(
        &zone,
        ":127.0.0.2:test\n127.0.0.2\n127.0.42.0/24 :127.0.0.4:XBL\n127.0.43.7 :127.0.0.10:PBL\n",
    )
    .unwrap();
    std::fs::set_permissions(&zone, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let port = free_port();
    let child = Command::new("/usr/sbin/rbldnsd")
        .args([
            "-n",
            "-u",
            "nobody",
            "-b",
            &format!("127.0.0.1/{port}"),
            "-r",
            dir.path().to_str().unwrap(),
        ])
        .arg("zen.spamhaus.org:ip4set:zen.ip4set")
        .spawn()
        .unwrap();
    let _rbldnsd = Rbldnsd(child);
    let text = format!(
        "[backend]\naddress = \"127.0.0.1:25\"\n[dns]\nresolver = \"127.0.0.1:{port}\"\nbudget = \"2s\"\n\
         sites = [\"zen.spamhaus.org=127.0.0.[4..7]*5\", \"zen.spamhaus.org=127.0.0.[10;11]*4\"]\n\
         [[class]]\nname = \"ok\"\nmax_score = 0\n[[class]]\nname = \"listed\"\n"
    );
    let policy = Policy::parse("rbldnsd", &text, None).unwrap_or_else(|e| panic!("{e}"));
    // rbldnsd gives no readiness signal: poll (bounded) until its zone passes the self-test.
    let runtime_lists = mxgate::server::dns_lists(&policy).await.unwrap();
    let mut ready = runtime_lists.is_usable("zen.spamhaus.org");
    for _ in 0..40 {
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ready = runtime_lists.self_test().await.is_empty();
    }
    assert!(ready, "rbldnsd zone never passed the RFC 5782 self-test");
    let score = |ip: &'static str| {
        let (policy, lists) = (&policy, &runtime_lists);
        async move { assess(policy, lists, ip.parse().unwrap()).await.score }
    };
    assert_eq!(score("127.0.42.9").await, 5, "XBL");
    assert_eq!(score("127.0.43.7").await, 4, "PBL");
    assert_eq!(score("127.0.44.1").await, 0, "unlisted");
}
