//! The demo: starts the sink MTA, a DNS list server and the `mxgate` binary (embedded default
//! policy) on loopback, plays a few senders from their own 127.x addresses, and shows what mxgate
//! decided and what arrived; it fails if that is not what README.md says it shows.

use crate::child::ChildProcess;
use crate::client::{Reply, SmtpClient};
use crate::demo_checks::DemoChecks;
use crate::dnsbl::{demo_zones, DnsblServer};
use crate::harness::Target;
use crate::scenario::Scenario;
use crate::sink::{Sink, SinkConfig};
use anyhow::{bail, Context};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{broadcast, mpsc};

/// Log lines kept for a subscriber that lags behind (older ones are dropped, never piled up).
const LOG_BACKLOG: usize = 1024;

/// Finds the mxgate binary: `$MXGATE_BIN`, else next to this executable (target/<profile>/).
pub fn mxgate_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("MXGATE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let here = std::env::current_exe().context("cannot locate this executable")?;
    let candidate = here.with_file_name("mxgate");
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "{} not found: build it first (cargo build --release --workspace) or set MXGATE_BIN",
            candidate.display()
        )
    }
}

/// A running mxgate process whose log lines are echoed with a prefix, and can be watched.
pub struct MxgateProcess {
    child: ChildProcess,
    pub addr: SocketAddr,
    log: broadcast::Sender<String>,
    log_done: tokio::task::JoinHandle<()>,
}

impl MxgateProcess {
    /// Starts `mxgate run` with `args` added, echoes its log, and waits until it listens.
    pub async fn start(
        listen: SocketAddr,
        backend: SocketAddr,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(listen, backend, args, true).await
    }

    /// Like `start`, with only warnings logged and nothing echoed (for measurements).
    pub async fn start_quiet(
        listen: SocketAddr,
        backend: SocketAddr,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(listen, backend, args, false).await
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The log lines mxgate writes from now on (for a test that waits for one).
    pub fn log_lines(&self) -> broadcast::Receiver<String> {
        self.log.subscribe()
    }

    async fn spawn(
        listen: SocketAddr,
        backend: SocketAddr,
        args: &[&str],
        echo: bool,
    ) -> anyhow::Result<Self> {
        let bin = mxgate_binary()?;
        let mut command = Command::new(&bin);
        // MXGATE_LOG set by the caller: its log level, echoed (to see mxgate's decisions in a run).
        let echo = echo || std::env::var_os("MXGATE_LOG").is_some();
        if !echo {
            command.env("MXGATE_LOG", "warn,mxgate::startup=info");
        }
        command
            .arg("run")
            .args([
                "--listen",
                &listen.to_string(),
                "--backend",
                &backend.to_string(),
            ])
            .args(args)
            .stderr(Stdio::piped());
        let (child, stderr) = ChildProcess::spawn(&mut command)
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(
            stderr.context("no stderr")?,
        ))?;
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        let (log, _) = broadcast::channel(LOG_BACKLOG);
        let log_tx = log.clone();
        let log_done = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening") {
                    let _ = ready_tx.try_send(());
                }
                if echo {
                    println!("  mxgate | {line}");
                }
                // Nobody subscribed is the usual case, not an error.
                let _ = log_tx.send(line);
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .ok()
            .flatten()
            .context("mxgate did not start listening (see its log above)")?;
        Ok(Self {
            child,
            addr: listen,
            log,
            log_done,
        })
    }

    /// SIGTERM, then wait for the process (and its last log lines).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = self
            .child
            .signal_and_wait("TERM", Duration::from_secs(40))
            .await
            .context("mxgate did not exit after SIGTERM")??;
        let _ = self.log_done.await;
        if !status.success() {
            bail!("mxgate exited with {status}");
        }
        Ok(())
    }
}

/// The next line of an mxgate log (from [`MxgateProcess::log_lines`]) that `wanted` accepts,
/// waited for up to `within`; `None` if none came in time or mxgate exited first.
pub async fn next_log_line(
    log: &mut broadcast::Receiver<String>,
    within: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Option<String> {
    use broadcast::error::RecvError;
    let found = async {
        loop {
            match log.recv().await {
                Ok(line) if wanted(&line) => return Some(line),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    };
    tokio::time::timeout(within, found).await.ok().flatten()
}

/// What an EHLO reply advertises in its LIMITS line (RFC 9422), e.g. `LIMITS MAILMAX=10 ...`.
fn advertised_limits(ehlo: &Reply) -> Option<&str> {
    ehlo.text
        .lines()
        .find(|l| l.contains("LIMITS"))
        .and_then(|l| l.get(4..))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// A free TCP address on 127.0.0.1 (bound, then released for a server to take).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Runs the demo, printing as it goes; an error if anything went otherwise than README.md says.
pub async fn run() -> anyhow::Result<()> {
    let mut checks = DemoChecks::default();
    let sink = Sink::start(SinkConfig {
        expect_proxy: true,
        keep_bodies: false,
        ..SinkConfig::loopback()
    })
    .await?;
    println!("sink MTA on {} (expects a PROXY v2 header)", sink.addr());
    let dns = DnsblServer::start(demo_zones()).await?;
    println!(
        "DNS lists on {} (test zones for zen.spamhaus.org and list.dnswl.org)",
        dns.addr()
    );
    let listen = free_addr()?;
    let resolver = dns.addr().to_string();
    let gate = MxgateProcess::start(
        listen,
        sink.addr(),
        &["--backend-proxy", "v2", "--resolver", &resolver],
    )
    .await?;
    println!("mxgate on {listen}, embedded default policy\n");

    println!("0. Senders the DNS lists know about.");
    for (source, who, expected) in [
        ("127.0.1.2", "SBL-listed spammer", "554 5.7.1"),
        ("127.0.1.4", "XBL-listed infected host", "421 4.7.0"),
        ("127.0.1.10", "PBL-listed dynamic address", "421 4.7.0"),
        (
            "127.0.2.1",
            "DNSWL-listed sender",
            "admitted, LIMITS MAILMAX=50 ",
        ),
    ] {
        let mut client = SmtpClient::connect(listen, Some(ip(source))).await?;
        let first = client.read_reply().await?;
        let shown = if first.code == 220 {
            let ehlo = client.command("EHLO sender.example").await?;
            let limits = advertised_limits(&ehlo).unwrap_or("");
            client.command("QUIT").await?;
            format!("admitted, {limits}")
        } else {
            first.to_string()
        };
        println!("   {source:<11} {who:<27} -> {shown}");
        checks.reply(who, expected, shown);
    }
    println!();

    println!("1. A person at 127.0.3.2 sends one message.");
    let mut person = SmtpClient::connect(listen, Some(ip("127.0.3.2"))).await?;
    println!("   greeting: {}", person.read_reply().await?);
    let ehlo = person.command("EHLO person.example").await?;
    let limits = advertised_limits(&ehlo).unwrap_or("(none)");
    println!("   EHLO reply advertises: {limits}");
    checks.reply("the person's EHLO reply", "LIMITS MAILMAX=10 ", limits);
    let delivered = person
        .send_message(
            "alice@person.example",
            &["bob@mx.example"],
            b"Subject: hi\r\n\r\nHello Bob.\r\n",
        )
        .await?;
    println!("   end of data: {delivered}");
    checks.reply("the person's message", "250 ", delivered);
    person.command("QUIT").await?;

    println!(
        "\n2. A bulk sender at 127.0.3.3 pushes 12 messages down one connection, 5 per second."
    );
    let news = b"Subject: news\r\n\r\nBuy.\r\n";
    let mut bulk = SmtpClient::connect(listen, Some(ip("127.0.3.3"))).await?;
    bulk.read_reply().await?;
    bulk.command("EHLO bulk.example").await?;
    let mut sent = 0;
    let mut stopped_by = String::from("no reply but 250");
    for n in 1..=12 {
        // A polite sender paces itself under the 6 recipients per second neutral senders get.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reply = bulk
            .send_message("news@bulk.example", &["reader@mx.example"], news)
            .await?;
        if reply.code != 250 {
            println!("   message {n}: {reply}");
            stopped_by = reply.to_string();
            break;
        }
        sent += 1;
    }
    println!("   {sent} accepted in that session; the sender must reconnect and compete for a slot again.");
    checks.expect("messages in the bulk session", "10", sent, sent == 10);
    let held = stopped_by.starts_with("421 4.7.0")
        && stopped_by.contains("Message limit for this session reached");
    checks.expect(
        "the bulk session's next message",
        "421 4.7.0 ... Message limit for this session reached",
        stopped_by,
        held,
    );
    let mut again = SmtpClient::connect(listen, Some(ip("127.0.3.3"))).await?;
    again.read_reply().await?;
    again.command("EHLO bulk.example").await?;
    for _ in sent..12 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reply = again
            .send_message("news@bulk.example", &["reader@mx.example"], news)
            .await?;
        checks.reply("a message after reconnecting", "250 ", reply);
    }
    again.command("QUIT").await?;
    println!("   reconnected and sent the remaining {}.", 12 - sent);

    println!(
        "\n3. Recipients: 20 at once from a neutral sender (6 per second allowed), 102 in one"
    );
    println!("   message from an allow-listed one (100 per message allowed).");
    // A neutral sender's burst is 6; a 7th or 8th may pass if the pipelined group spans a refill
    // on a slow machine. mxgate's log counts the refusals in the session's end line.
    let mut log = gate.log_lines();
    for (source, count, accepted_range, refusal, counted_as) in [
        ("127.0.3.4", 20, 6..=8, "451 4.7.1", "recipients_over_rate"),
        (
            "127.0.2.2",
            102,
            100..=100,
            "452 4.5.3",
            "recipients_over_cap",
        ),
    ] {
        let mut many = SmtpClient::connect(listen, Some(ip(source))).await?;
        many.read_reply().await?;
        many.command("EHLO many.example").await?;
        many.command("MAIL FROM:<list@many.example>").await?;
        let mut group = String::new();
        for n in 1..=count {
            group.push_str(&format!("RCPT TO:<user{n}@mx.example>\r\n"));
        }
        many.write_raw(group.as_bytes()).await?;
        let mut accepted = 0;
        let mut refused: Option<(usize, String)> = None;
        for n in 1..=count {
            let reply = many.read_reply().await?;
            if reply.code == 250 {
                accepted += 1;
            } else if refused.is_none() {
                refused = Some((n, reply.to_string()));
            }
        }
        let (first, reply) = refused.unwrap_or((0, "none".into()));
        println!("   {source}: {accepted} of {count} accepted; from recipient {first} on: {reply}");
        checks.expect(
            &format!("recipients accepted from {source}"),
            &format!("{accepted_range:?}"),
            accepted,
            accepted_range.contains(&accepted),
        );
        checks.reply(&format!("the first refusal to {source}"), refusal, reply);
        many.command("QUIT").await?;
        let counted = format!("{counted_as}={}", count - accepted);
        let client = format!("client={source} ");
        let line = next_log_line(&mut log, Duration::from_secs(5), |l| {
            l.contains("session end") && l.contains(&client)
        })
        .await;
        checks.expect(
            &format!("mxgate's log of {source}'s session"),
            &format!("a session end line with {counted}"),
            line.as_deref().unwrap_or("no such line within 5 s"),
            line.as_deref().is_some_and(|l| l.contains(&counted)),
        );
    }

    println!("\n4. A port scanner at 127.0.3.5 sends junk.");
    let mut junk = SmtpClient::connect(listen, Some(ip("127.0.3.5"))).await?;
    junk.read_reply().await?;
    let unknown = junk.command("HELLO?").await?;
    println!("   \"HELLO?\" -> {unknown}");
    checks.reply("an unknown command", "5", unknown);
    let http = junk.command("GET / HTTP/1.0").await?;
    println!("   \"GET / HTTP/1.0\" -> {http}");
    checks.reply("an HTTP request", "421 4.7.0", http);

    gate.stop().await?;
    dns.stop().await;
    let _ = sink
        .wait_until(Duration::from_secs(5), |_, s| s.iter().all(|s| s.ended))
        .await;
    println!(
        "\nWhat the sink MTA received (client address as announced by mxgate's PROXY v2 header):"
    );
    for s in sink.sessions() {
        println!(
            "   session {:>2}: client {:<10} {:>2} message(s)",
            s.id, s.client, s.messages
        );
    }
    let total = sink.messages().len();
    println!("   total: {total} messages");
    checks.expect("messages at the sink", "13", total, total == 13);
    let clients: BTreeSet<IpAddr> = sink.sessions().iter().map(|s| s.client).collect();
    let admitted: BTreeSet<IpAddr> = [
        "127.0.2.1",
        "127.0.3.2",
        "127.0.3.3",
        "127.0.3.4",
        "127.0.2.2",
        "127.0.3.5",
    ]
    .into_iter()
    .map(ip)
    .collect();
    checks.expect(
        "clients the sink saw (listed senders never reach it)",
        &format!("{admitted:?}"),
        format!("{clients:?}"),
        clients == admitted,
    );
    sink.stop().await;

    println!(
        "\n5. A short scenario (loadtest/scenarios/demo.toml): people, an allow-listed newsletter,"
    );
    println!("   a PBL/XBL botnet and an SBL spammer at once, for 8 seconds plus a drain.\n");
    let scenario = Scenario::parse("demo.toml", DEMO_SCENARIO)?;
    let run = crate::harness::run(&scenario, &Target::Mxgate { policy: None }).await?;
    checks.scenario(&run);
    let report = crate::report::Report {
        scenario: scenario.name.clone(),
        runs: vec![run],
    };
    println!("{}", report.render());
    let dir = std::path::Path::new("target/loadtest/demo");
    for file in report.write(dir)? {
        println!("wrote {}", file.display());
    }
    println!("\n{}", checks.verdict()?);
    Ok(())
}

/// The demo scenario, built in so that the demo runs from any directory.
const DEMO_SCENARIO: &str = include_str!("../scenarios/demo.toml");
