//! mxgate in front of a real Postfix smtpd with smtpd_upstream_proxy_protocol = haproxy: a message
//! sent with swaks from 127.0.0.9 is accepted, and Postfix's log names 127.0.0.9 as the client;
//! with `[backend.tls]`, over STARTTLS and over implicit TLS, which Postfix's log shows too.

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
    /// Postfix with one smtpd behind a PROXY header on each of `smtpds`: (port, its `-o` options).
    /// `main_extra` is added to main.cf; `setup` writes files into the instance's directory first.
    fn start(smtpds: &[(u16, &str)], main_extra: &str, setup: impl FnOnce(&Path)) -> Postfix {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        setup(&dir);
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
local_transport = discard\nlocal_recipient_maps =\nalias_maps =\nalias_database =\n{main_extra}"
            ),
        )
        .unwrap();
        let mut master = String::new();
        for (port, options) in smtpds {
            master.push_str(&format!(
                "127.0.0.1:{port} inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy {options}\n"
            ));
        }
        master.push_str(include_str!("postfix/master.cf"));
        std::fs::write(dir.join("etc/master.cf"), master).unwrap();
        let etc = dir.join("etc");
        run(
            "/usr/sbin/postfix",
            &["-c", etc.to_str().unwrap(), "set-permissions"],
        );
        run("/usr/sbin/postfix", &["-c", etc.to_str().unwrap(), "start"]);
        for (port, _) in smtpds {
            assert!(
                wait_for(Duration::from_secs(20), || std::net::TcpStream::connect((
                    "127.0.0.1",
                    *port
                ))
                .is_ok()),
                "postfix smtpd did not start listening on {port}"
            );
        }
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

/// The mxgate binary with `policy` (the embedded default if `None`); terminated (SIGTERM to its
/// PID) on drop.
struct Mxgate(Child);

impl Mxgate {
    fn start(listen: u16, backend: u16, policy: Option<&Path>) -> Mxgate {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mxgate"));
        command.arg("run");
        if let Some(policy) = policy {
            command.arg("--policy").arg(policy);
        }
        let mut child = command
            .args([
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
        // Shown with a failing test: why mxgate refused or deferred.
        std::thread::spawn(move || {
            lines
                .map_while(Result::ok)
                .for_each(|l| eprintln!("mxgate: {l}"))
        });
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

/// Sends one message with swaks from 127.0.0.9 through mxgate on `gate_port`; returns the transcript
/// after checking that Postfix queued it.
fn swaks_through(gate_port: u16) -> String {
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
    let transcript = String::from_utf8_lossy(&swaks.stdout).into_owned();
    assert!(swaks.status.success(), "swaks failed:\n{transcript}");
    assert!(
        transcript.contains("<-  250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    transcript
}

fn postfix_available() -> bool {
    available("/usr/sbin/postfix") && available("/usr/bin/swaks")
}

#[test]
fn postfix_sees_the_real_client_through_proxy_v2() {
    if !postfix_available() {
        return;
    }
    let (backend_port, gate_port) = (free_port(), free_port());
    let postfix = Postfix::start(&[(backend_port, "")], "", |_| {});
    let _gate = Mxgate::start(gate_port, backend_port, None);
    let transcript = swaks_through(gate_port);
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

/// `[backend.tls]` against Postfix: one smtpd offering STARTTLS, one in wrapper mode (implicit
/// TLS), each behind a PROXY header. Postfix logs each session's TLS and names 127.0.0.9.
#[test]
fn postfix_takes_mail_over_tls_from_mxgate() {
    if !postfix_available() {
        return;
    }
    let (starttls_port, implicit_port) = (free_port(), free_port());
    let name = "backend.test.localdomain";
    let postfix = Postfix::start(
        &[
            (starttls_port, ""),
            (implicit_port, "-o smtpd_tls_wrappermode=yes"),
        ],
        "smtpd_tls_cert_file = $config_directory/postfix-cert.pem\n\
smtpd_tls_key_file = $config_directory/postfix-key.pem\nsmtpd_tls_security_level = may\n\
smtpd_tls_loglevel = 1\n",
        |dir| {
            let etc = dir.join("etc");
            std::fs::create_dir_all(&etc).unwrap();
            common::certificate_files(&etc, "postfix", &[name]);
        },
    );
    let ca = postfix.dir.join("etc/postfix-cert.pem");
    for (mode, backend_port) in [("starttls", starttls_port), ("implicit", implicit_port)] {
        let policy = postfix.dir.join(format!("mxgate-{mode}.toml"));
        let text = format!(
            "{}\n[backend.tls]\nmode = \"{mode}\"\nca = {ca:?}\nserver_name = \"{name}\"\n",
            mxgate::policy::EMBEDDED_DEFAULT
        );
        std::fs::write(&policy, text).unwrap();
        let gate_port = free_port();
        let gate = Mxgate::start(gate_port, backend_port, Some(&policy));
        let sent = std::panic::catch_unwind(|| swaks_through(gate_port));
        drop(gate);
        if let Err(e) = sent {
            eprintln!("Postfix log:\n{}", postfix.log());
            std::panic::resume_unwind(e);
        }
    }
    // One TLS session per smtpd, each from the client mxgate announced.
    let tls_sessions = |log: &str| {
        log.lines()
            .filter(|l| l.contains("TLS connection established from unknown[127.0.0.9]"))
            .count()
    };
    let logged = wait_for(Duration::from_secs(10), || {
        let log = postfix.log();
        tls_sessions(&log) == 2 && log.matches("client=unknown[127.0.0.9]").count() == 2
    });
    assert!(
        logged,
        "Postfix log does not show two TLS sessions from 127.0.0.9:\n{}",
        postfix.log()
    );
}
