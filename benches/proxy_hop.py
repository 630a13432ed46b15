#!/usr/bin/env python3
"""The cost of a proxy hop: Postfix's smtp-source straight to smtp-sink, through haproxy (TCP mode)
and through mxgate (backend proxy none), in one run, alternating A B C A C B.

Usage: python3 benches/proxy_hop.py [--reps 3] [--messages 20000] [--sessions 50] [--threads N] [--split]
       [--mxgate-scheduling batch|normal] [--haproxy-scheduling normal|batch]
Needs: postfix (smtp-source, smtp-sink), haproxy, and target/release/mxgate (cargo build --release).
Everything binds 127.0.0.1, every load is bounded by --messages, and every process started here is
stopped by PID at the end. Prints Markdown tables for docs/benchmarks.md: medians, the ratio
mxgate / haproxy within each rep with a 95% confidence interval of its median, and where each
message's time went on the machine (the proxy's, the sink's and the sender's CPU, and idle time).
"""

import argparse
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port} after {limit}s")


def cpu_seconds(pid):
    """utime + stime of a process and its reaped children, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def thread_run_seconds(pid):
    """Seconds the process's threads have run, in the scheduler's nanoseconds
    (/proc/PID/task/*/schedstat), where /proc/PID/stat counts in 10 ms ticks. Only threads alive
    when it is read count: neither proxy starts or ends a thread under this load."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # a thread that ended since the directory was read
    return total / 1e9


def idle_seconds():
    """The machine's idle and iowait time so far, summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[4]) + int(fields[5])) / CLK_TCK


def children_cpu_seconds():
    """User and system time of this script's reaped children (smtp-source runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_interval(values, confidence=0.95):
    """A distribution-free confidence interval for the median: the order statistics k and n+1-k,
    with k the largest rank such that P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. With too few
    values for that confidence, the whole range."""
    xs = sorted(values)
    n = len(xs)
    tail = (1 - confidence) / 2
    k, below = 0, 0.0
    while k < n and below + math.comb(n, k) / 2 ** n <= tail:
        below += math.comb(n, k) / 2 ** n
        k += 1
    if k == 0:
        return xs[0], xs[-1]
    return xs[k - 1], xs[n - k]


def on_cpu(cpu):
    """A preexec_fn that pins the child to one CPU, or None to leave it to the scheduler."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def run_load(port, sessions, messages, persistent, cpu=None):
    args = ["/usr/sbin/smtp-source", "-s", str(sessions), "-m", str(messages), "-l", "1024",
            "-f", "sender@example.test", "-t", "rcpt@example.test"]
    if persistent:
        args.append("-d")
    args.append(f"127.0.0.1:{port}")
    start = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, preexec_fn=on_cpu(cpu))
    elapsed = time.monotonic() - start
    if done.returncode != 0 or done.stderr.strip():
        sys.exit(f"smtp-source against {port} failed: {done.stderr.strip()}")
    return elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both proxies (haproxy nbthread, mxgate server.workers); 0: each its default")
    parser.add_argument("--mxgate-workers", type=int, default=0,
                        help="mxgate's server.workers alone (haproxy keeps --threads or its default)")
    parser.add_argument("--mxgate-scheduling", choices=("batch", "normal"),
                        help="mxgate's server.scheduling (default: the policy's, batch)")
    parser.add_argument("--haproxy-scheduling", choices=("normal", "batch"), default="normal",
                        help="haproxy's threads' policy: normal as Debian starts it, or batch (chrt --batch "
                             "0), to compare the two proxies under the same policy")
    parser.add_argument("--split", action="store_true",
                        help="the proxy alone on CPU 0, the sender and the sink on CPU 1 (each proxy then "
                             "defaults to one thread)")
    opts = parser.parse_args()

    mxgate_bin = os.path.join(ROOT, "target", "release", "mxgate")
    if not os.path.exists(mxgate_bin):
        sys.exit("build first: cargo build --release")
    proxy_cpu, load_cpu = (0, 1) if opts.split else (None, None)
    procs = []
    # SIGTERM ends the run through the `finally` below, as Ctrl-C does: the servers stop, the files go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("interrupted"))
    tmp = tempfile.mkdtemp(prefix="mxgate-bench-")
    try:
        sink_port, haproxy_port, gate_port = free_port(), free_port(), free_port()
        sink = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "1000"],
                                preexec_fn=on_cpu(load_cpu))
        procs.append(sink)
        cfg = os.path.join(tmp, "haproxy.cfg")
        nbthread = f"    nbthread {opts.threads}\n" if opts.threads else ""
        with open(cfg, "w") as f:
            f.write(f"""global
    maxconn 4000
{nbthread}defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen smtp
    bind 127.0.0.1:{haproxy_port}
    server sink 127.0.0.1:{sink_port}
""")
        chrt = ["chrt", "--batch", "0"] if opts.haproxy_scheduling == "batch" else []
        haproxy = subprocess.Popen([*chrt, "/usr/sbin/haproxy", "-db", "-f", cfg], preexec_fn=on_cpu(proxy_cpu))
        procs.append(haproxy)
        policy = os.path.join(tmp, "bench-policy.toml")
        with open(os.path.join(ROOT, "benches", "bench-policy.toml")) as src, open(policy, "w") as dst:
            text = src.read()
            workers = opts.mxgate_workers or opts.threads
            if workers:
                text = text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
            if opts.mxgate_scheduling:
                text = text.replace("[server]\n", f"[server]\nscheduling = \"{opts.mxgate_scheduling}\"\n", 1)
            dst.write(text)
        gate = subprocess.Popen([mxgate_bin, "run", "--policy", policy,
                                 "--listen", f"127.0.0.1:{gate_port}", "--backend", f"127.0.0.1:{sink_port}",
                                 "--backend-proxy", "none"],
                                stderr=subprocess.DEVNULL, env={**os.environ, "MXGATE_LOG": "warn"},
                                preexec_fn=on_cpu(proxy_cpu))
        procs.append(gate)
        for port in (sink_port, haproxy_port, gate_port):
            wait_listening(port)

        targets = [("direct", sink_port, None), ("haproxy", haproxy_port, haproxy.pid), ("mxgate", gate_port, gate.pid)]
        rows = []
        pairs = []
        shares = []
        for persistent in (False, True):
            rates = {name: [] for name, _, _ in targets}
            cpu = {name: [] for name, _, _ in targets}
            # Microseconds per message: the sink's CPU, the sender's CPU, the machine's idle time.
            spent = {name: {"sink": [], "sender": [], "idle": []} for name, _, _ in targets}
            for rep in range(opts.reps):
                # The two proxies swap places every rep, so neither always runs in the other's wake
                # (its TIME_WAIT sockets, a load that just rose or fell).
                order = targets if rep % 2 == 0 else [targets[0], targets[2], targets[1]]
                for name, port, pid in order:
                    before = thread_run_seconds(pid) if pid else 0.0
                    marks = (cpu_seconds(sink.pid), children_cpu_seconds(), idle_seconds())
                    elapsed = run_load(port, opts.sessions, opts.messages, persistent, load_cpu)
                    rates[name].append(opts.messages / elapsed)
                    now = (cpu_seconds(sink.pid), children_cpu_seconds(), idle_seconds())
                    for key, start, end in zip(("sink", "sender", "idle"), marks, now):
                        spent[name][key].append((end - start) / opts.messages * 1e6)
                    if pid:
                        cpu[name].append((thread_run_seconds(pid) - before) / opts.messages * 1000)
            label = "persistent (-d)" if persistent else "1 msg/connection"
            # Paired within each rep (same minute of machine load): mxgate over haproxy.
            pairs.append((label,
                          [m / h for m, h in zip(rates["mxgate"], rates["haproxy"])],
                          [m / h for m, h in zip(cpu["mxgate"], cpu["haproxy"])]))
            for name, _, pid in targets:
                rate = statistics.median(rates[name])
                per_k = f"{statistics.median(cpu[name]):.3f}" if pid else "-"
                rows.append((label, name, rate, per_k, rates[name]))
                proxy_us = statistics.median(cpu[name]) * 1000 if pid else 0.0
                others = (statistics.median(spent[name][key]) for key in ("sink", "sender", "idle"))
                shares.append((label, name, proxy_us, *others))

        threads = opts.threads or "default"
        if opts.mxgate_workers:
            threads = f"{threads}; mxgate workers: {opts.mxgate_workers}"
        if opts.split:
            threads = f"{threads}; proxy on CPU 0, sender and sink on CPU 1"
        if opts.mxgate_scheduling:
            threads = f"{threads}; mxgate scheduling: {opts.mxgate_scheduling}"
        if opts.haproxy_scheduling != "normal":
            threads = f"{threads}; haproxy scheduling: {opts.haproxy_scheduling}"
        print(f"\n{opts.sessions} sessions, 1 KiB messages, {opts.messages} messages per run, median of {opts.reps}, threads: {threads}\n")
        print("| load | path | msg/s (median) | proxy CPU s per 1,000 msg | runs (msg/s) |")
        print("| --- | --- | ---: | ---: | --- |")
        for label, name, rate, per_k, runs in rows:
            print(f"| {label} | {name} | {rate:,.0f} | {per_k} | {', '.join(f'{r:,.0f}' for r in runs)} |")
        print("\nmxgate / haproxy within each rep: median, and the 95% confidence interval of the median")
        print("(order statistics; a target is shown only if its interval lies on the right side of 1)\n")
        print("| load | msg/s ratio | interval | CPU per msg ratio | interval |")
        print("| --- | ---: | --- | ---: | --- |")
        for label, rate_ratios, cpu_ratios in pairs:
            (rlo, rhi), (clo, chi) = median_interval(rate_ratios), median_interval(cpu_ratios)
            print(f"| {label} | {statistics.median(rate_ratios):.3f} | {rlo:.3f} - {rhi:.3f} "
                  f"| {statistics.median(cpu_ratios):.3f} | {clo:.3f} - {chi:.3f} |")
        print("\nWhere each message's time went, us per message (medians; the proxies' CPU from schedstat, the sink's from /proc ticks, idle from")
        print("/proc/stat over both cores):\n")
        print("| load | path | proxy CPU | sink CPU | sender CPU | machine idle |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for label, name, proxy_us, sink_us, sender_us, idle_us in shares:
            proxy = f"{proxy_us:.0f}" if name != "direct" else "-"
            print(f"| {label} | {name} | {proxy} | {sink_us:.0f} | {sender_us:.0f} | {idle_us:.0f} |")
        for label, rate_ratios, cpu_ratios in pairs:
            print(f"\n{label}, per rep: msg/s {', '.join(f'{r:.3f}' for r in rate_ratios)}; "
                  f"CPU {', '.join(f'{c:.3f}' for c in cpu_ratios)}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
