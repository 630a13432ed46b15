//! Criterion benches of the relay's hot paths: command parsing, reply scanning, end-of-data search,
//! a body on its way to the backend (bare LFs checked, copied), and a whole pipelined transaction through the relay state machine.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mxgate::session::body::BodyStream;
use mxgate::session::codec::{parse_command, scan_reply};
use mxgate::session::data_end::DataEndScanner;
use mxgate::session::relay::{Output, Relay, RelayConfig};
use std::hint::black_box;

fn commands(c: &mut Criterion) {
    c.bench_function("parse_command RCPT", |b| {
        b.iter(|| parse_command(black_box(b"RCPT TO:<someone@example.net> NOTIFY=NEVER\r\n")))
    });
    let ehlo = b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n";
    c.bench_function("scan_reply EHLO (6 lines)", |b| {
        b.iter(|| scan_reply(black_box(ehlo)))
    });
}

fn data_end(c: &mut Criterion) {
    let mut body = Vec::with_capacity(1 << 20);
    while body.len() < (1 << 20) {
        body.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");
    let mut group = c.benchmark_group("data_end");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("1 MiB body in 16 KiB reads", |b| {
        b.iter(|| {
            let mut scanner = DataEndScanner::new();
            let mut end = None;
            for (i, chunk) in body.chunks(16 * 1024).enumerate() {
                if let Some(e) = scanner.feed(black_box(chunk)) {
                    end = Some(i * 16 * 1024 + e);
                }
            }
            end
        })
    });
    group.bench_function(
        "1 MiB body in 16 KiB reads, relayed (bare LFs checked, copied)",
        |b| {
            let mut out = BytesMut::with_capacity(body.len() + 64);
            b.iter(|| {
                out.clear();
                let mut stream = BodyStream::new();
                for chunk in body.chunks(16 * 1024) {
                    if stream.relay(black_box(chunk), &mut out).ended {
                        break;
                    }
                }
                out.len()
            })
        },
    );
    group.finish();
}

/// The relay's configuration in these benches: no cap in the way but the message limit given.
fn bench_config(messages_per_session: u32) -> RelayConfig {
    RelayConfig {
        hostname: "mx.bench".into(),
        messages_per_session,
        recipients_per_message: 100,
        max_command_line: 2048,
        max_junk_commands: 10,
        tls_available: false,
        teaser_sent: false,
    }
}

/// The relay's two input buffers and its output, as the driver holds them.
#[derive(Default)]
struct Wire {
    client: BytesMut,
    backend: BytesMut,
    out: Output,
}

impl Wire {
    /// Gives `bytes` to the relay as read from the client or the backend; returns how many bytes
    /// it wrote, then drops them, as if the sockets took them.
    fn feed(&mut self, relay: &mut Relay, from_client: bool, bytes: &[u8]) -> usize {
        let buf = match from_client {
            true => &mut self.client,
            false => &mut self.backend,
        };
        buf.extend_from_slice(bytes);
        relay.pump(&mut self.client, &mut self.backend, &mut self.out);
        let written = self.out.to_client.len() + self.out.to_backend.len();
        self.out.to_client.clear();
        self.out.to_backend.clear();
        written
    }
}

fn transaction(c: &mut Criterion) {
    let config = bench_config(1000);
    let steps: Vec<(bool, &[u8])> = vec![
        (false, b"220 backend ESMTP\r\n"),
        (true, b"EHLO client.example\r\n"),
        (
            false,
            b"250-backend\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n",
        ),
        (
            true,
            b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@backend>\r\nDATA\r\n",
        ),
        (false, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n"),
        (true, b"Subject: bench\r\n\r\nHello.\r\n.\r\n"),
        (false, b"250 2.0.0 Ok: queued\r\n"),
        (true, b"QUIT\r\n"),
        (false, b"221 2.0.0 Bye\r\n"),
    ];
    c.bench_function("relay: greeting, EHLO, one pipelined message, QUIT", |b| {
        b.iter_batched(
            || Relay::new(config.clone()),
            |mut relay| {
                let mut wire = Wire::default();
                for &(from_client, bytes) in &steps {
                    wire.feed(&mut relay, from_client, bytes);
                }
                wire.out.action
            },
            BatchSize::SmallInput,
        )
    });
}

/// The steady state of a persistent session, as in the throughput harness: one pipelined message
/// of about 1 KiB in 80-byte lines, its replies, and nothing else.
fn message_in_open_session(c: &mut Criterion) {
    let mut body =
        b"From: <a@client.example>\r\nTo: <b@backend>\r\nSubject: bench\r\n\r\n".to_vec();
    while body.len() < 900 {
        body.extend_from_slice(
            b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopqrstuvw\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");
    let opening: [(bool, &[u8]); 3] = [
        (false, b"220 backend ESMTP\r\n"),
        (true, b"EHLO client.example\r\n"),
        (false, b"250-backend\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
    ];
    let message: [(bool, &[u8]); 4] = [
        (
            true,
            b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@backend>\r\nDATA\r\n",
        ),
        (false, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n"),
        (true, &body),
        (false, b"250 2.0.0 Ok: queued\r\n"),
    ];
    let mut relay = Relay::new(bench_config(u32::MAX));
    let mut wire = Wire::default();
    for (from_client, bytes) in opening {
        wire.feed(&mut relay, from_client, bytes);
    }
    c.bench_function(
        "relay: one pipelined 1 KiB message in an open session",
        |b| {
            b.iter(|| {
                let mut written = 0;
                for (from_client, bytes) in message {
                    written += wire.feed(&mut relay, from_client, black_box(bytes));
                }
                assert!(written > body.len());
                written
            })
        },
    );
}

criterion_group!(
    benches,
    commands,
    data_end,
    transaction,
    message_in_open_session
);
criterion_main!(benches);
