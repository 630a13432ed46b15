//! A population at work: a generator offers its mail at the scenario's rate, spread over its
//! addresses; each address sends like an MTA (queue, connect, deliver, back off after a 4xx), or,
//! for a silent population, connects and says nothing.

use crate::client::{connect_from, Reply, SmtpClient};
use crate::scenario::{Kind, Population};
use crate::stats::{ConnectionOutcome, PopulationStats};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

/// When the run started, until when mail is offered, and when everything stops.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    pub start: Instant,
    pub offer_until: Instant,
    pub hard_end: Instant,
}

impl RunClock {
    pub fn new(duration: Duration, drain: Duration) -> Self {
        let start = Instant::now();
        Self {
            start,
            offer_until: start + duration,
            hard_end: start + duration + drain,
        }
    }

    pub fn second(&self) -> usize {
        self.start.elapsed().as_secs() as usize
    }
}

/// One message waiting in a sender's queue.
#[derive(Debug, Clone, Copy)]
struct Queued {
    offered_at: Instant,
    recipients_left: usize,
}

/// Longest a sender waits for a connection or a reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts population `index` against `target`; the tasks end by `clock.hard_end`, but for a
/// connection opened just before it, which is seen through to its outcome.
pub fn spawn(
    index: usize,
    population: &Population,
    target: SocketAddr,
    clock: RunClock,
    stats: Arc<PopulationStats>,
    tasks: &mut JoinSet<()>,
) {
    let population = Arc::new(population.clone());
    let body = Arc::new(message_body(&population.name, population.size));
    let mut queues = Vec::new();
    for k in 0..population.addresses {
        let source = Population::address(index, k);
        for _ in 0..population.connections_per_address {
            let sender = Sender {
                population: population.clone(),
                source,
                target,
                clock,
                stats: stats.clone(),
                body: body.clone(),
            };
            match population.kind {
                Kind::Silent => {
                    tasks.spawn(sender.stay_silent());
                }
                Kind::Mta => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    queues.push(tx);
                    tasks.spawn(sender.send_mail(rx));
                }
            }
        }
    }
    if !queues.is_empty() {
        tasks.spawn(offer(population, clock, stats, queues));
    }
}

/// Offers the population's mail at its rate, round-robin over its senders, until `offer_until`.
async fn offer(
    population: Arc<Population>,
    clock: RunClock,
    stats: Arc<PopulationStats>,
    queues: Vec<mpsc::UnboundedSender<Queued>>,
) {
    let per_second = population.messages_per_second();
    if per_second <= 0.0 {
        return;
    }
    let total = (per_second * (clock.offer_until - clock.start).as_secs_f64()).round() as u64;
    for i in 0..total {
        let at = clock.start + Duration::from_secs_f64(i as f64 / per_second);
        sleep_until(at).await;
        stats.offered();
        let message = Queued {
            offered_at: Instant::now(),
            recipients_left: population.recipients,
        };
        // A sender that has stopped (past the hard end) cannot take more; nothing to do.
        let _ = queues[(i as usize) % queues.len()].send(message);
    }
}

/// A body of about `size` bytes: a few headers and lines of text.
fn message_body(population: &str, size: usize) -> Vec<u8> {
    let mut body = format!(
        "From: <sender@{population}.test>\r\nTo: <rcpt@sink.test>\r\nSubject: load test\r\n\r\n"
    )
    .into_bytes();
    let line =
        b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopqrstuvw\r\n";
    while body.len() + line.len() <= size {
        body.extend_from_slice(line);
    }
    body.extend_from_slice(b".\r\n");
    body
}

/// How a session ended, for the sender's next step.
enum SessionEnd {
    /// Its mail went (or was refused for good): connect again when there is more.
    Done,
    /// Deferred: wait the backoff, then retry.
    Deferred,
    /// Cut off after the server's message limit: reconnect at once.
    CutOff,
}

struct Sender {
    population: Arc<Population>,
    source: IpAddr,
    target: SocketAddr,
    clock: RunClock,
    stats: Arc<PopulationStats>,
    body: Arc<Vec<u8>>,
}

impl Sender {
    async fn send_mail(self, mut incoming: mpsc::UnboundedReceiver<Queued>) {
        let mut queue: VecDeque<Queued> = VecDeque::new();
        let mut backoff = self.population.backoff;
        let mut next_try = Instant::now();
        let mut open = true;
        loop {
            while let Ok(m) = incoming.try_recv() {
                queue.push_back(m);
            }
            if queue.is_empty() {
                if !open {
                    break;
                }
                tokio::select! {
                    m = incoming.recv() => match m {
                        Some(m) => queue.push_back(m),
                        None => open = false,
                    },
                    _ = sleep_until(self.clock.hard_end) => break,
                }
                continue;
            }
            if next_try >= self.clock.hard_end || Instant::now() >= self.clock.hard_end {
                break;
            }
            sleep_until(next_try).await;
            // A connection opened is seen through to its outcome (bounded by REPLY_TIMEOUT), even
            // past the run's end: mxgate has decided about it, and the counts must agree.
            let (outcome, opened) = self.open().await;
            self.stats.connection(outcome, self.clock.second());
            let delivered = self.session(outcome, opened, &mut queue, &mut incoming);
            let session = timeout_at(self.clock.hard_end, delivered).await;
            match session {
                Ok(SessionEnd::Done) | Ok(SessionEnd::CutOff) => {
                    backoff = self.population.backoff;
                    next_try = Instant::now();
                }
                Ok(SessionEnd::Deferred) => {
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(self.population.max_backoff);
                }
                Err(_) => break,
            }
        }
        while let Ok(m) = incoming.try_recv() {
            queue.push_back(m);
        }
        self.stats.undelivered(queue.len() as u64);
    }

    /// Connects, is greeted, says EHLO: the connection's outcome, and the client if admitted.
    /// A connection from this sender's address, within the reply timeout; `None` if none.
    async fn connect(&self) -> Option<SmtpClient<TcpStream>> {
        let connect = connect_from(self.target, Some(self.source));
        let stream = tokio::time::timeout(REPLY_TIMEOUT, connect)
            .await
            .ok()?
            .ok()?;
        let mut client = SmtpClient::new(stream);
        client.reply_timeout = REPLY_TIMEOUT;
        Some(client)
    }

    async fn open(&self) -> (ConnectionOutcome, Option<(SmtpClient<TcpStream>, Reply)>) {
        let Some(mut client) = self.connect().await else {
            return (ConnectionOutcome::Failed, None);
        };
        let ehlo = format!("EHLO {}.sender.test\r\n", self.population.name);
        if self.population.early_talker && client.write_raw(ehlo.as_bytes()).await.is_err() {
            return (ConnectionOutcome::Failed, None);
        }
        let greeting = match client.read_reply().await {
            Ok(r) => r,
            Err(_) => return (ConnectionOutcome::Failed, None),
        };
        if greeting.code != 220 {
            return (classify(greeting.code), None);
        }
        if !self.population.early_talker && client.write_raw(ehlo.as_bytes()).await.is_err() {
            return (ConnectionOutcome::Failed, None);
        }
        match client.read_reply().await {
            Ok(reply) if reply.code == 250 => (ConnectionOutcome::Admitted, Some((client, reply))),
            Ok(reply) => (classify(reply.code), None),
            Err(_) => (ConnectionOutcome::Failed, None),
        }
    }

    /// One connection, opened with `outcome`: delivers from the front of the queue until the
    /// queue, the sender's own batch size or the server's limit is exhausted.
    async fn session(
        &self,
        outcome: ConnectionOutcome,
        opened: Option<(SmtpClient<TcpStream>, Reply)>,
        queue: &mut VecDeque<Queued>,
        incoming: &mut mpsc::UnboundedReceiver<Queued>,
    ) -> SessionEnd {
        let Some((mut client, ehlo)) = opened else {
            if outcome == ConnectionOutcome::Refused {
                // A 5xx at connect is permanent: a real MTA returns the mail to its senders.
                for _ in queue.drain(..) {
                    self.stats.rejected();
                }
                return SessionEnd::Done;
            }
            return SessionEnd::Deferred;
        };
        let mut limit = self.population.messages_per_connection;
        if self.population.respect_limits {
            if let Some(max) = mailmax(&ehlo.text) {
                limit = limit.min(max.max(1));
            }
        }
        let mut end = SessionEnd::Done;
        for _ in 0..limit {
            if queue.is_empty() {
                // Like an MTA's connection cache: the session stays open a moment for more mail.
                match tokio::time::timeout(self.population.linger, incoming.recv()).await {
                    Ok(Some(m)) => queue.push_back(m),
                    Ok(None) | Err(_) => break,
                }
            }
            let Some(front) = queue.front_mut() else {
                break;
            };
            match self.transaction(&mut client, front.recipients_left).await {
                Ok(Transaction::Delivered { accepted }) => {
                    self.stats.recipients_delivered(accepted);
                    front.recipients_left = front.recipients_left.saturating_sub(accepted);
                    if front.recipients_left == 0 {
                        self.stats.delivered(front.offered_at.elapsed());
                        queue.pop_front();
                    } else {
                        // Some recipients were deferred (a rate): the rest waits for a retry.
                        self.stats.message_deferred();
                        end = SessionEnd::Deferred;
                        break;
                    }
                }
                Ok(Transaction::CutOff) => {
                    self.stats.cut_off();
                    return SessionEnd::CutOff;
                }
                Ok(Transaction::Deferred { closing }) => {
                    self.stats.message_deferred();
                    if !self.population.retry {
                        self.stats.abandoned();
                        queue.pop_front();
                    }
                    if closing {
                        return SessionEnd::Deferred;
                    }
                    end = SessionEnd::Deferred;
                    break;
                }
                Ok(Transaction::Rejected) => {
                    self.stats.rejected();
                    queue.pop_front();
                }
                Err(_) => return SessionEnd::Deferred,
            }
        }
        let _ = client.command("QUIT").await;
        end
    }

    /// MAIL, RCPTs and DATA pipelined, then the body if a recipient was accepted.
    async fn transaction(
        &self,
        client: &mut SmtpClient<TcpStream>,
        recipients: usize,
    ) -> io::Result<Transaction> {
        let mut group = format!("MAIL FROM:<sender@{}.test>\r\n", self.population.name);
        for r in 0..recipients {
            group.push_str(&format!("RCPT TO:<rcpt{r}@sink.test>\r\n"));
        }
        group.push_str("DATA\r\n");
        client.write_raw(group.as_bytes()).await?;
        let mail = client.read_reply().await?;
        if mail.code == 421 {
            return Ok(match mail.text.contains("Message limit") {
                true => Transaction::CutOff,
                false => Transaction::Deferred { closing: true },
            });
        }
        let (mut accepted, mut temporary) = (0, false);
        for _ in 0..recipients {
            let rcpt = client.read_reply().await?;
            if rcpt.code == 421 {
                return Ok(Transaction::Deferred { closing: true });
            }
            accepted += usize::from(rcpt.is_positive());
            temporary |= (400..500).contains(&rcpt.code);
        }
        let data = client.read_reply().await?;
        if data.code == 421 {
            return Ok(Transaction::Deferred { closing: true });
        }
        if !mail.is_positive() || data.code != 354 {
            let temporary = temporary || (400..500).contains(&mail.code);
            return Ok(match temporary {
                true => Transaction::Deferred { closing: false },
                false => Transaction::Rejected,
            });
        }
        client.write_raw(&self.body).await?;
        let end = client.read_reply().await?;
        Ok(match end.code {
            250..=259 => Transaction::Delivered { accepted },
            421 => Transaction::Deferred { closing: true },
            400..=499 => Transaction::Deferred { closing: false },
            _ => Transaction::Rejected,
        })
    }

    /// Slowloris: connect, read the greeting, say nothing until the server closes; again, until
    /// mail would stop being offered.
    async fn stay_silent(self) {
        while Instant::now() < self.clock.offer_until {
            let Some(mut client) = self.connect().await else {
                self.stats
                    .connection(ConnectionOutcome::Failed, self.clock.second());
                sleep_until(Instant::now() + self.population.backoff).await;
                continue;
            };
            let outcome = match client.read_reply().await {
                Ok(r) if r.code == 220 => ConnectionOutcome::Admitted,
                Ok(r) => classify(r.code),
                Err(_) => ConnectionOutcome::Failed,
            };
            self.stats.connection(outcome, self.clock.second());
            if outcome == ConnectionOutcome::Admitted {
                // Held until the server gives up on us (idle timeout) or the run ends.
                client.reply_timeout = self
                    .clock
                    .offer_until
                    .saturating_duration_since(Instant::now());
                let _ = client.closed_by_server().await;
            } else {
                sleep_until(Instant::now() + self.population.backoff).await;
            }
        }
    }
}

enum Transaction {
    /// 250 to the end of data, for `accepted` recipients.
    Delivered { accepted: usize },
    /// 421 Message limit: reconnect.
    CutOff,
    /// A 4xx; `closing` when the server ends the session with it.
    Deferred { closing: bool },
    /// A 5xx.
    Rejected,
}

fn classify(code: u16) -> ConnectionOutcome {
    match code {
        400..=499 => ConnectionOutcome::Deferred,
        500..=599 => ConnectionOutcome::Refused,
        _ => ConnectionOutcome::Failed,
    }
}

/// `LIMITS MAILMAX=N` (RFC 9422) in an EHLO reply.
pub fn mailmax(ehlo: &str) -> Option<usize> {
    ehlo.lines()
        .filter_map(|l| l.get(4..))
        .filter(|l| l.to_ascii_uppercase().starts_with("LIMITS"))
        .flat_map(|l| l.split_whitespace())
        .find_map(|t| {
            t.to_ascii_uppercase()
                .strip_prefix("MAILMAX=")
                .and_then(|n| n.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_from_ehlo() {
        let ehlo = "250-mx.test\r\n250-PIPELINING\r\n250-LIMITS MAILMAX=10 RCPTMAX=100\r\n250 8BITMIME\r\n";
        assert_eq!(mailmax(ehlo), Some(10));
        assert_eq!(mailmax("250-mx\r\n250 SIZE 1000\r\n"), None);
        assert_eq!(mailmax("250 limits rcptmax=5 mailmax=3\r\n"), Some(3));
    }

    #[test]
    fn bodies_have_the_size_asked_for() {
        for size in [0, 100, 2048, 100_000] {
            let body = message_body("p", size);
            assert!(body.ends_with(b"\r\n.\r\n"));
            assert!(
                body.len() + 200 >= size && body.len() <= size.max(100) + 100,
                "{size}: {}",
                body.len()
            );
        }
    }
}
