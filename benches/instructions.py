#!/usr/bin/env python3
"""Instructions and simulated cache misses per relayed message, mxgate beside haproxy, counted by
valgrind's cachegrind behind the harness's own throughput load.

Usage: python3 benches/instructions.py [--sessions 500] [--small 5000] [--large 15000] [--top 15]
Needs: valgrind, haproxy, and target/release/{mxgate,mxgate-loadtest} (cargo build --release
--workspace). Runs `mxgate-loadtest throughput` twice, with --small and with --large messages, both
proxies started under cachegrind (through $MXGATE_BIN and $HAPROXY_BIN), and divides the difference
of the two runs' counts by the difference of their messages, so that start-up and warm-up drop out.
Under valgrind both proxies run about ten times slower, so each wake-up finds more work than on the
real load: the counts are a guide to where the work is, not the real load. Everything binds
127.0.0.1 and stops by itself, as with the harness.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# L1 data cache and L2 of the project's machine; the simulated last level is the L2 of both cores.
CACHES = ["--D1=49152,12,64", "--LL=4194304,16,64"]


def wrapper(dir, name, binary):
    """A script that execs `binary` under cachegrind, its counts written to dir/name.PID."""
    path = os.path.join(dir, f"{name}.sh")
    out = os.path.join(dir, f"{name}.%p")
    args = " ".join(["--tool=cachegrind", "--cache-sim=yes", *CACHES, f"--cachegrind-out-file={out}"])
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nexec valgrind {args} {binary} "$@"\n')
    os.chmod(path, 0o755)
    return path


def run(dir, sessions, messages):
    """One harness run, its counts written to `dir` (empty); returns the count files of haproxy
    and of the mxgate that relayed."""
    env = dict(os.environ)
    env["MXGATE_BIN"] = wrapper(dir, "mxgate", os.path.join(ROOT, "target/release/mxgate"))
    env["HAPROXY_BIN"] = wrapper(dir, "haproxy", shutil.which("haproxy") or "/usr/sbin/haproxy")
    harness = os.path.join(ROOT, "target/release/mxgate-loadtest")
    cmd = [harness, "throughput", "--reps", "1", "--sessions", str(sessions),
           "--messages", str(messages), "--refusals", "100", "--idle-sessions", "10"]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=1800)
    by_pid = lambda name: sorted(glob.glob(os.path.join(dir, f"{name}.[0-9]*")),
                                 key=lambda p: int(p.rsplit(".", 1)[1]))
    # The harness starts the relaying mxgate first, then one for refusals and one for idle sessions.
    return by_pid("haproxy")[0], by_pid("mxgate")[0]


def counts(path):
    """Event names, and the counts per function of a cachegrind output file."""
    events, fn, per_fn = None, None, {}
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("fn="):
                fn = line[3:].strip()
            elif line[:1].isdigit():
                values = [int(v) for v in line.split()[1:]]
                values += [0] * (len(events) - len(values))
                acc = per_fn.get(fn) or [0] * len(events)
                per_fn[fn] = [a + v for a, v in zip(acc, values)]
    return events, per_fn


def per_message(small, large, messages):
    events, a = counts(small)
    _, b = counts(large)
    zero = [0] * len(events)
    diff = {fn: [(y - x) / messages for x, y in zip(a.get(fn) or zero, b.get(fn) or zero)]
            for fn in set(a) | set(b)}
    return events, diff


def report(name, events, diff, top):
    total = [sum(v[i] for v in diff.values()) for i in range(len(events))]
    print(f"\n{name}: per message " + ", ".join(f"{e} {t:,.1f}" for e, t in zip(events, total)))
    shown = ["Ir", "Dr", "D1mr", "Dw", "D1mw"]
    idx = [events.index(e) for e in shown]
    print("| " + " | ".join(shown) + " | function |")
    print("|" + " ---: |" * len(shown) + " --- |")
    for fn, v in sorted(diff.items(), key=lambda kv: -kv[1][events.index("Ir")])[:top]:
        print("| " + " | ".join(f"{v[i]:,.1f}" for i in idx) + f" | `{fn[:100]}` |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=15000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if args.large <= args.small:
        sys.exit("--large must be more messages than --small")
    if not shutil.which("valgrind"):
        sys.exit("valgrind not found: apt-get install -y valgrind")
    with tempfile.TemporaryDirectory(prefix="mxgate-instructions-") as dir:
        small_dir, large_dir = os.path.join(dir, "small"), os.path.join(dir, "large")
        os.mkdir(small_dir)
        os.mkdir(large_dir)
        small = run(small_dir, args.sessions, args.small)
        large = run(large_dir, args.sessions, args.large)
        messages = args.large - args.small
        print(f"{args.sessions} sessions; counts per message from runs of {args.small:,} and "
              f"{args.large:,} messages")
        for name, i in (("haproxy", 0), ("mxgate", 1)):
            events, diff = per_message(small[i], large[i], messages)
            report(name, events, diff, args.top)


if __name__ == "__main__":
    main()
