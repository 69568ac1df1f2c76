"""``python -m crabnet demo``: runs the local demo network, like the ``crabnet demo`` CLI."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from ._crabnet import CrabnetError
from ._demo import DEFAULT_DEMO_COMMAND, DemoReport, demo


def _summary(report: DemoReport) -> None:
    print()
    print("final state on every node:")
    for name, digest in report.digests:
        print(f"  {name:<6} state digest {digest[:16]}")
    print(f"  {len(report.digests)} nodes {'agree' if report.converged else 'DISAGREE'}")
    view = report.seed
    print(f"seed        {view.seed.id}")
    print(f"status      {view.status}")
    print(f"command     {view.seed.command}")
    for bid in view.bids:
        print(f"bid         {bid.price} by {bid.bidder[:8]} ({bid.id})")
    if view.award is not None and view.award.winner_node is not None:
        print(f"winner      {view.award.winner_node} at {view.award.price}")
    if view.result is not None:
        r = view.result
        outcome = "success" if r.success else "failure"
        code = "none" if r.exit_code is None else str(r.exit_code)
        print(
            f"result      {outcome} exit {code} in {r.duration_ms} ms, "
            f"{r.output_bytes} bytes, sha256 {r.output_sha256}"
        )
    if view.settlement is not None:
        s = view.settlement
        note = f" ({s.note})" if s.note else ""
        print(f"settled     {s.outcome} amount {s.amount}{note}")
    if report.base_dir is not None:
        print(f"node data kept in {report.base_dir}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crabnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "demo", help="run a local network (in this process) through a whole task lifecycle"
    )
    run.add_argument("--nodes", type=int, default=3, help="number of nodes (at least 3)")
    run.add_argument("--command", default=DEFAULT_DEMO_COMMAND, help="the command the task runs")
    run.add_argument("--keep", action="store_true", help="keep the nodes' data directories")
    run.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = parser.parse_args(argv)
    try:
        report = demo(
            nodes=args.nodes,
            command=args.command,
            keep=args.keep,
            say=None if args.json else print,
        )
    except CrabnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        seed = report.seed
        print(
            json.dumps(
                {
                    "seed_id": seed.id,
                    "status": str(seed.status),
                    "digests": [list(d) for d in report.digests],
                    "converged": report.converged,
                    "data_dir": report.base_dir,
                }
            )
        )
    else:
        _summary(report)
    return 0 if report.converged else 1


if __name__ == "__main__":
    sys.exit(main())
