#!/usr/bin/env python3
"""Two processes publishing on one data directory: how long a publish waits for the other's lock.

A node shares its data directory with CLI commands and bindings: each of their commits holds
the database's write lock, and a write of the node that meets it waits (SQLite's busy
handler) with the node's store held. This starts two `publish_bench` processes (the Rust API,
`examples/rust/publish_bench.rs`, in its lockstep mode) on one fresh data directory, A asked
to publish every `--a-every` seconds and B every `--b-every`, each publish timed inside its
process, and prints per process the p50, p90, p99 and maximum of a publish (microseconds).
Given several builds, it runs them in turn, `--rounds` times (alternating, so that each meets
the same machine), and ends with one JSON line of every run's figures.

    cargo build --release -p crabnet-core --example publish_bench
    scripts/bench-contention.py target/release/examples/publish_bench --rounds 4

Loopback only: the nodes have no network. Uses only the Python standard library.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time


def percentiles(values):
    values = sorted(values)
    n = len(values)
    return {"p50": values[n // 2], "p90": values[n * 9 // 10], "p99": values[n * 99 // 100],
            "max": values[-1], "n": n}


def drive(proc, count, every, out, name):
    """Asks `proc` for `count` publishes, one every `every` seconds; its times go to out[name]."""
    times = []
    try:
        for _ in range(count):
            asked = time.monotonic()
            proc.stdin.write("\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{name}: publish_bench ended early")
            times.append(float(line))
            left = every - (time.monotonic() - asked)
            if left > 0:
                time.sleep(left)
        proc.stdin.close()
        proc.wait(timeout=60)
        out[name] = percentiles(times)
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
        out[name] = {"error": str(e)}


def run(binary, count, a_every, b_every):
    data = tempfile.mkdtemp(prefix="crabnet-contention-")
    env = dict(os.environ, CRABNET_BENCH_LOCKSTEP="1")
    procs = []
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([binary, data, str(count)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, env=env))
            # The first creates the node's identity; the second starts on it.
            time.sleep(1.0)
        out = {}
        threads = [threading.Thread(target=drive, args=(p, count, every, out, name))
                   for p, every, name in zip(procs, (a_every, b_every), ("A", "B"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(data, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bins", nargs="+", help="publish_bench builds to compare")
    ap.add_argument("--count", type=int, default=1000, help="publishes per process and run")
    ap.add_argument("--a-every", type=float, default=0.001)
    ap.add_argument("--b-every", type=float, default=0.003)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    if args.count < 1 or args.rounds < 1:
        ap.error("--count and --rounds must be at least 1")
    runs = []
    for r in range(args.rounds):
        for binary in args.bins:
            out = run(os.path.abspath(binary), args.count, args.a_every, args.b_every)
            runs.append({"round": r + 1, "bin": binary, **out})
            figures = "  ".join(
                f"{k} " + (" ".join(f"{q} {v[q]:.0f}" for q in ("p50", "p90", "p99", "max"))
                           if "error" not in v else v["error"])
                for k, v in sorted(out.items()))
            print(f"round {r + 1} {binary}: {figures} (us)", flush=True)
    print(json.dumps({"count": args.count, "a_every": args.a_every, "b_every": args.b_every,
                      "runs": runs}))
    if any("error" in v for run_ in runs for k, v in run_.items() if k in ("A", "B")):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
