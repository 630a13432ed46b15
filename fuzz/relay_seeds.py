#!/usr/bin/env python3
"""Writes the relay target's seeds (fuzz/seeds/relay/): sessions that go the whole way, in the
input format of fuzz_targets/relay.rs.

The format: four bytes of set-up (a: message limit - 1 in bits 0-2, STARTTLS offered in bit 7;
b: recipient cap - 1 in bits 0-2, greeting teaser sent in bit 7; c: command line limit
(32 + 4 * c), recipient-rate gate on in bit 0; d: junk limit - 1 in bits 0-2, or the gate's
pattern when it is on), then operations: op % 8 of 0-2 is client bytes and 3-4 backend bytes,
each followed by a length byte and that many bytes; 5-7 an event chosen by the next byte (1:
the backend's end of file). After STARTTLS the next op's low bit says whether the handshake
works (0) or fails (1).
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "seeds", "relay")


def pieces(kind, data):
    out = b""
    while data:
        piece, data = data[:255], data[255:]
        out += bytes([kind, len(piece)]) + piece
    return out


def client(data):
    return pieces(0, data)


def backend(data):
    return pieces(3, data)


def setup(messages, recipients, line_units=40, junk=3, tls=False, teaser=False, gate=None):
    a = (messages - 1) | (0x80 if tls else 0)
    b = (recipients - 1) | (0x80 if teaser else 0)
    c = ((line_units << 1) | (1 if gate is not None else 0)) & 0xFF
    d = gate if gate is not None else junk - 1
    return bytes([a, b, c, d])


GREETING = backend(b"220 mx ESMTP\r\n")
EHLO = client(b"EHLO c\r\n") + backend(
    b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
)
QUIT = client(b"QUIT\r\n") + backend(b"221 bye\r\n") + bytes([5, 1])


def message(body=b"Subject: x\r\n\r\n..dot\r\nline\r\n.\r\n"):
    return (
        client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n")
        + backend(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        + client(body)
        + backend(b"250 queued\r\n")
    )


SEEDS = {
    # Three messages, then one tried with BDAT, which mxgate refuses itself (CHUNKING is not
    # offered) and whose chunk it skips, then QUIT.
    "session": setup(8, 4)
    + GREETING
    + EHLO
    + message() * 3
    + client(b"MAIL FROM:<a@x>\r\n")
    + backend(b"250 ok\r\n")
    + client(b"RCPT TO:<b@y>\r\n")
    + backend(b"250 ok\r\n")
    + client(b"BDAT 3 LAST\r\nabc")
    + QUIT,
    # The message limit reached: the third MAIL gets 421 and mxgate says QUIT.
    "limit": setup(2, 4)
    + GREETING
    + EHLO
    + message() * 2
    + client(b"MAIL FROM:<a@x>\r\n")
    + backend(b"221 bye\r\n")
    + bytes([5, 1]),
    # STARTTLS, then EHLO again and a message.
    "starttls": setup(8, 4, tls=True)
    + GREETING
    + client(b"EHLO c\r\n")
    + backend(b"250-mx\r\n250 PIPELINING\r\n")
    + client(b"STARTTLS\r\n")
    + bytes([0])
    + client(b"EHLO c\r\n")
    + backend(b"250 mx\r\n")
    + message()
    + QUIT,
    # A recipient rate: the gate defers every other RCPT, so the backend sees two of three.
    "rate": setup(8, 4, gate=0b10101010)
    + GREETING
    + EHLO
    + client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n")
    + backend(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    + client(b"x\r\n.\r\n")
    + backend(b"250 queued\r\n")
    + QUIT,
    # A greeting teaser, and a backend that refuses at its greeting.
    "teaser": setup(8, 4, teaser=True) + backend(b"554 no\r\n"),
}

if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
