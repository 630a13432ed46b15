//! mxgate in front of a real Postfix smtpd with smtpd_upstream_proxy_protocol = haproxy: a message
//! sent with swaks from 127.0.0.9 is accepted, and Postfix's log names 127.0.0.9 as the client.

mod common;

use common::peers::{available, free_port, wait_for};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A private Postfix instance under a temporary directory; stopped on drop.
struct Postfix {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Postfix {
    fn start(port: u16) -> Postfix {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        // The postfix user must reach every directory of the instance.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for sub in ["etc", "queue", "data", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        std::fs::write(
            dir.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
maillog_file = {d}/log/maillog\nmaillog_file_prefixes = {d}/log\ninet_interfaces = loopback-only\n\
inet_protocols = ipv4\nmyhostname = backend.test.localdomain\nmydestination = test.localdomain\n\
mynetworks = 127.0.0.0/8\nsmtpd_peername_lookup = no\ndefault_transport = discard\n\
local_transport = discard\nlocal_recipient_maps =\nalias_maps =\nalias_database =\n"
            ),
        )
        .unwrap();
        let services = include_str!("postfix/master.cf");
        std::fs::write(
            dir.join("etc/master.cf"),
            format!("127.0.0.1:{port} inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy\n{services}"),
        )
        .unwrap();
        let etc = dir.join("etc");
        run(
            "/usr/sbin/postfix",
            &["-c", etc.to_str().unwrap(), "set-permissions"],
        );
        run("/usr/sbin/postfix", &["-c", etc.to_str().unwrap(), "start"]);
        assert!(
            wait_for(Duration::from_secs(20), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "postfix smtpd did not start listening on {port}"
        );
        Postfix { dir, _tmp: tmp }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let etc = self.dir.join("etc");
        let _ = Command::new("/usr/sbin/postfix")
            .args(["-c", etc.to_str().unwrap(), "stop"])
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The mxgate binary with the embedded default policy; terminated (SIGTERM to its PID) on drop.
struct Mxgate(Child);

impl Mxgate {
    fn start(listen: u16, backend: u16) -> Mxgate {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mxgate"))
            .args([
                "run",
                "--listen",
                &format!("127.0.0.1:{listen}"),
                "--backend",
                &format!("127.0.0.1:{backend}"),
            ])
            .args(["--backend-proxy", "v2"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Ready when it logs that it listens.
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("listening"));
        assert!(ready, "mxgate exited before listening");
        std::thread::spawn(move || lines.for_each(drop));
        Mxgate(child)
    }
}

impl Drop for Mxgate {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn postfix_sees_the_real_client_through_proxy_v2() {
    if !available("/usr/sbin/postfix") || !available("/usr/bin/swaks") {
        return;
    }
    let (backend_port, gate_port) = (free_port(), free_port());
    let postfix = Postfix::start(backend_port);
    let _gate = Mxgate::start(gate_port, backend_port);
    let swaks = Command::new("/usr/bin/swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{gate_port}"),
            "--local-interface",
            "127.0.0.9",
        ])
        .args([
            "--from",
            "sender@example.test",
            "--to",
            "user@test.localdomain",
            "--timeout",
            "20",
        ])
        .args(["--header", "Subject: through mxgate"])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&swaks.stdout);
    assert!(swaks.status.success(), "swaks failed:\n{transcript}");
    assert!(
        transcript.contains("<-  250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    assert!(transcript.contains("LIMITS MAILMAX=10"), "{transcript}");
    let logged = wait_for(Duration::from_secs(10), || {
        let log = postfix.log();
        log.contains("connect from unknown[127.0.0.9]") && log.contains("client=unknown[127.0.0.9]")
    });
    assert!(
        logged,
        "Postfix log does not name 127.0.0.9:\n{}",
        postfix.log()
    );
    assert!(Path::new(&postfix.dir).exists());
}
