#!/usr/bin/env python3
"""What the C ABI and the Python binding add to a publish (issue 13): the same loop of
publishes, one call after another on a node without a network, through the Rust API
(`BlockingNode::publish`, examples/rust/publish_bench.rs), the C ABI (`crabnet_node_publish`,
examples/c/publish_bench.c) and Python (`crabnet.Node.publish`, this script in a child
process), in alternating rounds in one run, each round on a fresh data directory.

    scripts/bench-bindings.py --rust target/release/examples/publish_bench \\
        --c target/c-bench/publish_bench [--rounds 9] [--count 300]

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

    node = crabnet.Node(data_dir=data_dir)
    node.start()
    start = time.perf_counter()
    for i in range(count):
        node.publish(f"echo bench {i}", bid_window_secs=3600)
    elapsed = time.perf_counter() - start
    node.stop()
    print(f"python {count} {elapsed * 1e6:.0f}")


def run_one(kind: str, argv: list, count: int) -> float:
    """Runs one measurement on a fresh data directory; returns µs per publish."""
    with tempfile.TemporaryDirectory(prefix=f"crabnet-bench-{kind}-") as tmp:
        out = subprocess.run(
            argv + [os.path.join(tmp, "node"), str(count)],
            check=True,
            capture_output=True,
            text=True,
        )
    name, n, micros = out.stdout.strip().splitlines()[-1].split()
    if name != kind or int(n) != count:
        raise SystemExit(f"unexpected output from {argv[0]}: {out.stdout!r}")
    return float(micros) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rust", help="the publish_bench example (Rust API)")
    parser.add_argument("--c", help="the publish_bench C program")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--count", type=int, default=300, help="publishes per run")
    parser.add_argument("--python-child", nargs=2, metavar=("DATA_DIR", "COUNT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.python_child:
        python_child(args.python_child[0], int(args.python_child[1]))
        return
    if not args.rust or not args.c or args.rounds < 1 or args.count < 1:
        parser.error("--rust and --c are required; --rounds and --count must be positive")
    programs = {
        "rust": [args.rust],
        "c": [args.c],
        "python": [sys.executable, os.path.abspath(__file__), "--python-child"],
    }
    kinds = list(programs)
    figures = {k: [] for k in kinds}
    for r in range(args.rounds):
        # Rotate the order so that no binding always runs first or last in a round.
        order = kinds[r % 3:] + kinds[:r % 3]
        for kind in order:
            us = run_one(kind, programs[kind], args.count)
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
    }))


if __name__ == "__main__":
    main()
