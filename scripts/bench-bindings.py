#!/usr/bin/env python3
"""What the C ABI and the Python binding add to a publish (issue 13): the same loop of
publishes, one call after another on a node without a network, through the Rust API
(`BlockingNode::publish`, examples/rust/publish_bench.rs), the C ABI (`crabnet_node_publish`,
examples/c/publish_bench.c) and Python (`crabnet.Node.publish`, this script in a child
process), in alternating rounds in one run, each round on a fresh data directory.

    scripts/bench-bindings.py --rust target/release/examples/publish_bench \\
        --c target/c-bench/publish_bench [--rounds 9] [--count 300] [--sync normal] [--lockstep | --together]

The interpreter running it must import `crabnet` (a venv with the wheel installed; see
scripts/bench-bindings.sh, which builds everything in release and runs this). Prints one line
per run, a table, and as the last line one JSON object: median µs per publish of each, and
`c_ratio` / `python_ratio`, the medians of the per-round ratios to the Rust figure of the
same round (1.05 means the binding adds 5%).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def python_child(data_dir: str, count: int) -> None:
    import crabnet

    config = {"store": {"sync": "normal"}} if os.environ.get("CRABNET_BENCH_SYNC") == "normal" else None
    node = crabnet.Node(config, data_dir=data_dir)
    node.start()
    lockstep = "CRABNET_BENCH_LOCKSTEP" in os.environ
    elapsed = 0.0
    for i in range(count):
        if lockstep and not sys.stdin.readline():
            raise SystemExit("stdin closed before the last publish")
        start = time.perf_counter()
        node.publish(f"echo bench {i}", bid_window_secs=3600)
        took = time.perf_counter() - start
        elapsed += took
        if lockstep:
            print(f"{took * 1e6:.1f}", flush=True)
    node.stop()
    print(f"python {count} {elapsed * 1e6:.0f}")


def run_round(programs: dict, order: list, count: int, together: bool) -> dict:
    """Runs each program once on a fresh data directory (one after another in `order`, or
    all at once); returns µs per publish of each."""
    with tempfile.TemporaryDirectory(prefix="crabnet-bench-bindings-") as tmp:
        started = {}
        out = {}
        for kind in order:
            argv = programs[kind] + [os.path.join(tmp, kind), str(count)]
            started[kind] = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            if not together:
                out[kind] = started[kind].communicate()[0]
        for kind, proc in started.items():
            if together:
                out[kind] = proc.communicate()[0]
            if proc.returncode != 0:
                raise SystemExit(f"{programs[kind][0]} failed with status {proc.returncode}")
    figures = {}
    for kind, text in out.items():
        name, n, micros = text.strip().splitlines()[-1].split()
        if name != kind or int(n) != count:
            raise SystemExit(f"unexpected output from {programs[kind][0]}: {text!r}")
        figures[kind] = float(micros) / count
    return figures


def run_lockstep(programs: dict, count: int) -> dict:
    """Runs the three programs at once, one publish at a time in turn (the order rotating),
    so that neighbouring calls of the three meet the same load; returns each one's list of
    per-call µs."""
    os.environ["CRABNET_BENCH_LOCKSTEP"] = "1"
    kinds = list(programs)
    calls = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="crabnet-bench-bindings-") as tmp:
        procs = {
            k: subprocess.Popen(programs[k] + [os.path.join(tmp, k), str(count)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for k in kinds
        }
        for i in range(count):
            for k in kinds[i % 3:] + kinds[:i % 3]:
                procs[k].stdin.write("\n")
                procs[k].stdin.flush()
                line = procs[k].stdout.readline()
                if not line:
                    raise SystemExit(f"{programs[k][0]} ended early")
                calls[k].append(float(line))
        for k, proc in procs.items():
            rest, _ = proc.communicate()
            if proc.returncode != 0 or not rest.strip().startswith(f"{k} {count} "):
                raise SystemExit(f"{programs[k][0]} failed: {proc.returncode} {rest!r}")
    del os.environ["CRABNET_BENCH_LOCKSTEP"]
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rust", help="the publish_bench example (Rust API)")
    parser.add_argument("--c", help="the publish_bench C program")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--count", type=int, default=300, help="publishes per run")
    parser.add_argument("--lockstep", action="store_true",
                        help="run the three at once, one publish of each in turn (rounds: "
                        "how many such runs), and compare per-call times")
    parser.add_argument("--together", action="store_true",
                        help="run the three of a round at the same time (they share whatever "
                        "load the machine has) instead of one after another")
    parser.add_argument("--sync", choices=("full", "normal"), default="full",
                        help="store.sync of the nodes (normal: no fsync per commit, so the "
                        "binding's share of a publish is larger than under full)")
    parser.add_argument("--python-child", nargs=2, metavar=("DATA_DIR", "COUNT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.python_child:
        python_child(args.python_child[0], int(args.python_child[1]))
        return
    if not args.rust or not args.c or args.rounds < 1 or args.count < 1:
        parser.error("--rust and --c are required; --rounds and --count must be positive")
    os.environ["CRABNET_BENCH_SYNC"] = args.sync
    programs = {
        "rust": [args.rust],
        "c": [args.c],
        "python": [sys.executable, os.path.abspath(__file__), "--python-child"],
    }
    kinds = list(programs)
    figures = {k: [] for k in kinds}
    for r in range(args.rounds):
        if args.lockstep:
            calls = run_lockstep(programs, args.count)
            # Per run: the median call of each (one slow fsync does not swing it).
            run = {k: statistics.median(v) for k, v in calls.items()}
        else:
            # Rotate the order so that no binding always runs first or last in a round.
            order = kinds[r % 3:] + kinds[:r % 3]
            run = run_round(programs, order, args.count, args.together)
        for kind, us in run.items():
            figures[kind].append(us)
            print(f"round {r + 1} {kind:<6} {us:8.1f} µs/publish ({1e6 / us:6.0f}/s)", flush=True)
    ratios = {
        k: statistics.median(b / a for a, b in zip(figures["rust"], figures[k]))
        for k in ("c", "python")
    }
    medians = {k: statistics.median(v) for k, v in figures.items()}
    print(f"{'API':<8} {'µs/publish (median)':>20} {'publishes/s':>12} {'x Rust (median of rounds)':>26}")
    for k in kinds:
        ratio = 1.0 if k == "rust" else ratios[k]
        print(f"{k:<8} {medians[k]:>20.1f} {1e6 / medians[k]:>12.0f} {ratio:>26.3f}")
    print(json.dumps({
        "rust_us": round(medians["rust"], 1),
        "c_us": round(medians["c"], 1),
        "python_us": round(medians["python"], 1),
        "c_ratio": round(ratios["c"], 4),
        "python_ratio": round(ratios["python"], 4),
        "rounds": args.rounds,
        "count": args.count,
        "sync": args.sync,
        "together": args.together,
        "lockstep": args.lockstep,
    }))


if __name__ == "__main__":
    main()
