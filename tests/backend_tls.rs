//! TLS on the hop to the backend (`[backend.tls]`): STARTTLS or implicit TLS with the sink, the
//! client announced by PROXY v2 or XCLIENT. A backend that cannot do TLS as asked, or whose
//! certificate does not verify, or that sends bytes in the clear behind its `220` to STARTTLS,
//! costs the client a `421 4.3.2`, never a message in the clear.

mod common;

use common::{policy_text, sha256, Gate, WAIT};
use mxgate::policy::Policy;
use mxgate_loadtest::sink::{Sink, SinkConfig};
use std::path::{Path, PathBuf};

/// A self-signed certificate for `names`, written into `dir` under `stem`: (certificate, key).
fn certificate(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key, _) = common::certificate_files(dir, stem, names);
    (cert, key)
}

/// How the sink speaks TLS.
#[derive(Clone, Copy, Debug)]
enum SinkTls {
    None,
    Starttls,
    Implicit,
}

/// A sink for mxgate's `client_mode`, with its certificate (for 127.0.0.1 and sink.test) from `dir`.
async fn sink(dir: &Path, tls: SinkTls, client_mode: &str) -> Sink {
    let (cert, key) = certificate(dir, "sink", &["127.0.0.1", "sink.test"]);
    let server = mxgate::session::tls::server_config(&cert, &key).unwrap();
    Sink::start(SinkConfig {
        tls: (!matches!(tls, SinkTls::None)).then_some(server),
        tls_on_connect: matches!(tls, SinkTls::Implicit),
        expect_proxy: client_mode == "v2",
        xclient: client_mode == "xclient",
        ..SinkConfig::loopback()
    })
    .await
    .expect("start sink")
}

/// mxgate in front of `sink` with `[backend.tls]` set to `tls` (TOML lines).
async fn gate(sink: &Sink, client_mode: &str, tls: &str) -> Gate {
    let mut text = policy_text(sink.addr(), client_mode, "", "");
    text.push_str(&format!("\n[backend.tls]\n{tls}\n"));
    let policy = Policy::parse("backend-tls", &text, None).unwrap_or_else(|e| panic!("{e}"));
    Gate::start(policy).await
}

/// A body that takes many TLS records, with a dot-stuffed line.
fn large_body() -> Vec<u8> {
    let mut body = b"Subject: over TLS to the backend\r\n\r\n..stuffed\r\n".to_vec();
    while body.len() < 1024 * 1024 {
        body.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqr\r\n",
        );
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_delivers_over_tls() {
    let cases = [
        ("starttls", "v2", "127.0.0.21"),
        ("starttls", "xclient", "127.0.0.22"),
        ("implicit", "v2", "127.0.0.23"),
        ("implicit", "xclient", "127.0.0.24"),
    ];
    let body = large_body();
    for (mode, client_mode, source) in cases {
        let dir = tempfile::tempdir().unwrap();
        let sink_tls = match mode {
            "starttls" => SinkTls::Starttls,
            _ => SinkTls::Implicit,
        };
        let sink = sink(dir.path(), sink_tls, client_mode).await;
        let ca = dir.path().join("sink-cert.pem");
        let gate = gate(&sink, client_mode, &format!("mode = {mode:?}\nca = {ca:?}")).await;
        let case = format!("{mode} with {client_mode}");

        let mut client = gate.connect(source).await;
        let greeting = client.read_reply().await.expect(&case);
        assert_eq!(greeting.code, 220, "{case}: {greeting}");
        assert!(greeting.text.contains("sink.test"), "{case}: {greeting}");
        let ehlo = client.command("EHLO client.test").await.expect(&case);
        assert_eq!(ehlo.code, 250, "{case}: {ehlo}");
        assert!(!ehlo.text.contains("STARTTLS"), "{case}: {ehlo}");
        let reply = client.send_message("a@b", &["r@s"], &body).await;
        assert_eq!(reply.expect(&case).code, 250, "{case}");
        let reply = client.send_message("a@b", &["r@s"], b"second\r\n").await;
        assert_eq!(reply.expect(&case).code, 250, "{case}");
        assert_eq!(client.command("QUIT").await.expect(&case).code, 221);

        assert!(sink.wait_until(WAIT, |m, _| m.len() == 2).await, "{case}");
        let messages = sink.messages();
        assert_eq!(messages[0].sha256, sha256(&body), "{case}");
        assert_eq!(messages[1].sha256, sha256(b"second\r\n"), "{case}");
        assert!(
            messages.iter().all(|m| m.client.to_string() == source),
            "{case}"
        );
        let sessions = sink.sessions();
        assert_eq!(sessions.len(), 1, "{case}");
        assert!(sessions[0].tls, "{case}: the sink's session was not in TLS");
        let announced = match client_mode {
            "v2" => "proxy-v2",
            _ => "xclient",
        };
        assert_eq!(sessions[0].announced_by, announced, "{case}");
        gate.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tls_as_asked_means_421_and_nothing_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (stranger, _) = certificate(dir.path(), "stranger", &["127.0.0.1"]);
    let ca = dir.path().join("sink-cert.pem");
    let cases = [
        (
            "no STARTTLS offered",
            SinkTls::None,
            format!("mode = \"starttls\"\nca = {ca:?}"),
        ),
        (
            "implicit TLS to a plain backend",
            SinkTls::None,
            format!("mode = \"implicit\"\nca = {ca:?}"),
        ),
        (
            "untrusted certificate",
            SinkTls::Starttls,
            format!("mode = \"starttls\"\nca = {stranger:?}"),
        ),
        (
            "certificate for another name",
            SinkTls::Implicit,
            format!("mode = \"implicit\"\nca = {ca:?}\nserver_name = \"other.test\""),
        ),
    ];
    for (case, sink_tls, tls) in cases {
        // The sink writes its certificate afresh: `ca` names the one it uses.
        let sink = sink(dir.path(), sink_tls, "v2").await;
        let gate = gate(&sink, "v2", &tls).await;
        let mut client = gate.connect("127.0.0.25").await;
        let reply = client.read_reply().await.expect(case);
        assert_eq!(reply.code, 421, "{case}: {reply}");
        assert!(
            reply
                .text
                .contains("4.3.2 mx.test Service temporarily unavailable"),
            "{case}: {reply}"
        );
        assert!(
            client.read_reply().await.is_err(),
            "{case}: closed after the 421"
        );
        assert!(sink.messages().is_empty(), "{case}");
        assert!(
            sink.sessions().iter().all(|s| s.messages == 0 && !s.tls),
            "{case}"
        );
        gate.stop().await;
    }
}

/// A backend that answers STARTTLS with `220` and, in the same write, a reply in the clear: the
/// bytes an attacker on the path would inject to have them read as if inside TLS (CVE-2011-0411).
/// mxgate must not start TLS on top of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_in_the_clear_behind_starttls_are_refused() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = BufReader::new(stream);
        let mut commands = Vec::new();
        stream.write_all(b"220 fake.test ESMTP\r\n").await.unwrap();
        let replies: [&[u8]; 2] = [
            b"250-fake.test\r\n250 STARTTLS\r\n",
            b"220 2.0.0 Ready to start TLS\r\n250 2.1.0 injected\r\n",
        ];
        for reply in replies {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            commands.push(line);
            stream.write_all(reply).await.unwrap();
        }
        // What mxgate does next: nothing (it closes), or a TLS ClientHello.
        let mut rest = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest).await;
        (commands, rest)
    });
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = certificate(dir.path(), "ca", &["127.0.0.1"]);
    let mut text = policy_text(backend, "none", "", "");
    text.push_str(&format!(
        "\n[backend.tls]\nmode = \"starttls\"\nca = {ca:?}\n"
    ));
    let policy = Policy::parse("backend-tls", &text, None).unwrap_or_else(|e| panic!("{e}"));
    let gate = Gate::start(policy).await;

    let mut client = gate.connect("127.0.0.26").await;
    let reply = client.read_reply().await.unwrap();
    assert_eq!(reply.code, 421, "{reply}");
    assert!(reply.text.contains("4.3.2"), "{reply}");
    let (commands, rest) = tokio::time::timeout(WAIT, fake).await.unwrap().unwrap();
    assert_eq!(commands, ["EHLO mx.test\r\n", "STARTTLS\r\n"]);
    assert!(
        rest.is_empty(),
        "mxgate went on after the injected bytes: {rest:?}"
    );
    gate.stop().await;
}

/// Without `server_name`, the certificate is checked against the address mxgate connects to: the
/// one `--backend` gives, not the policy file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_name_follows_the_backend_override() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), SinkTls::Starttls, "v2").await;
    let ca = dir.path().join("sink-cert.pem");
    // The file names another address; the certificate carries only the sink's, 127.0.0.1.
    let mut text = policy_text("127.0.0.9:25".parse().unwrap(), "v2", "", "");
    text.push_str(&format!(
        "\n[backend.tls]\nmode = \"starttls\"\nca = {ca:?}\n"
    ));
    let policy = Policy::parse("backend-tls", &text, None).unwrap_or_else(|e| panic!("{e}"));
    let overrides = mxgate::policy::Overrides {
        backend: Some(sink.addr()),
        ..Default::default()
    };
    let gate = Gate::start(overrides.apply(policy)).await;

    let mut client = gate.client_from("127.0.0.27").await;
    assert_eq!(client.command("EHLO client.test").await.unwrap().code, 250);
    common::deliver(&mut client).await;
    assert!(sink.wait_until(WAIT, |m, _| m.len() == 1).await);
    assert!(sink.sessions()[0].tls);
    gate.stop().await;
}
