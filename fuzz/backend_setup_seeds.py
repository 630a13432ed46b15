#!/usr/bin/env python3
"""Writes the backend_setup target's seeds (fuzz/seeds/backend_setup/): backends that say yes and
backends that say no, in the input format of fuzz_targets/backend_setup.rs.

The format: a flags byte (bit 0: STARTTLS, else XCLIENT; bit 1: the greeting was read already,
XCLIENT only; bits 2-3: the client, 127.0.0.9, ::ffff:127.0.0.9 or 2001:db8::1; bit 4: the
backend's last read fails instead of ending the stream; bits 5-6: each write takes all, 1, 7 or
64 bytes; bit 7: the third write fails), the client's port, then the pieces the backend's reads
return, each a length byte and that many bytes, or a length of 0, a count of KiB and a byte repeated
that often.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "seeds", "backend_setup")

GREETING = b"220 mx.test ESMTP Postfix\r\n"
EHLO_XCLIENT = b"250-mx.test\r\n250-PIPELINING\r\n250-XCLIENT NAME ADDR PORT\r\n250 8BITMIME\r\n"
EHLO_STARTTLS = b"250-mx.test\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250 8BITMIME\r\n"


def run(kib, byte):
    """A piece of `kib` KiB of `byte`, written in three bytes."""
    return (kib, byte)


def seed(flags, *pieces, port=40):
    out = bytes([flags, port])
    for piece in pieces:
        if isinstance(piece, tuple):
            out += bytes([0, piece[0], ord(piece[1])])
            continue
        while piece:
            part, piece = piece[:255], piece[255:]
            out += bytes([len(part)]) + part
    return out


SEEDS = {
    "xclient-ok": seed(0, GREETING, EHLO_XCLIENT, b"220 mx.test ESMTP after XCLIENT\r\n"),
    "xclient-after-starttls": seed(2 | 4, EHLO_XCLIENT, b"220 mx.test again\r\n"),
    "xclient-v6-slow-writes": seed(8 | 32, GREETING, EHLO_XCLIENT, b"220 mx.test\r\n"),
    "xclient-refused": seed(0, GREETING, EHLO_XCLIENT, b"550 5.7.0 not authorized\r\n"),
    "xclient-not-offered": seed(0, GREETING, EHLO_STARTTLS),
    "starttls-ok": seed(1, GREETING, EHLO_STARTTLS, b"220 2.0.0 Ready to start TLS\r\n"),
    "starttls-injected": seed(1, GREETING, EHLO_STARTTLS, b"220 go\r\n250 injected\r\n"),
    "starttls-greeting-refused": seed(1, b"554 5.3.2 \x1b[31mbusy\r\n"),
    "starttls-reset": seed(1 | 16, GREETING[:10]),
    "xclient-long-refusal": seed(0, GREETING, EHLO_XCLIENT, b"554 ", run(10, "x"), b"\r\n"),
    "greeting-without-end": seed(64, b"220-", run(70, "y")),
}

os.makedirs(OUT, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"{len(SEEDS)} seeds in {OUT}")
