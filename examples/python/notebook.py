"""Notebook-friendly Crabnet: functions that return plain lists of typed, frozen objects.

In a notebook::

    from notebook import market_round, event_log
    views = market_round(tasks=["uname -s", "echo $((2 ** 10))", "exit 1"])
    views                                   # a list of crabnet.SeedView, readable reprs
    [v.result.output_excerpt for v in views if v.result]
    import dataclasses, pandas              # optional: one row per seed
    pandas.DataFrame([dataclasses.asdict(v.seed) for v in views])

Or as a script: ``python examples/python/notebook.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import crabnet


def _until(stream: crabnet.EventStream, seed_id: str, event_type: str) -> crabnet.Event:
    return stream.wait_for(lambda e: e.type == event_type and getattr(e, "seed_id", None) == seed_id, 10)


def market_round(
    tasks: Sequence[str], bidders: int = 2, base_dir: str | None = None
) -> List[crabnet.SeedView]:
    """Publishes each command, lets `bidders` nodes bid, runs and settles it; returns the final
    state of every seed as seen by the publisher, in publication order."""
    hub = crabnet.MemoryHub()
    fast = {"network": {"tick_ms": 50}}
    with tempfile.TemporaryDirectory(prefix="crabnet-nb-") as tmp:
        root = Path(base_dir or tmp)
        publisher = crabnet.Node(fast, data_dir=root / "publisher", name="publisher", hub=hub)
        workers = [
            crabnet.Node(fast, data_dir=root / f"worker{i}", name=f"worker{i}", hub=hub)
            for i in range(bidders)
        ]
        nodes = [publisher, *workers]
        for node in nodes:
            node.start()
        try:
            # Messages are accepted only from peers whose hello arrived.
            for node in nodes:
                node.wait_for_peers(len(nodes) - 1, timeout=10)
            results: List[crabnet.SeedView] = []
            for command in tasks:
                streams = [w.events() for w in workers]
                view = publisher.publish(command, max_bids=bidders)
                for price, (worker, stream) in enumerate(zip(workers, streams), start=10):
                    _until(stream, view.id, "seed_published")
                    worker.bid(view, price)
                closed = _until(streams[0], view.id, "bidding_closed")
                assert isinstance(closed, crabnet.BiddingClosed)
                winner = next(w for w in workers if w.node_id == closed.winner_node)
                winner_stream = streams[workers.index(winner)]
                if winner.seed(view).award is None:
                    _until(winner_stream, view.id, "bidding_closed")
                with publisher.events() as pub_events:
                    winner.claim(view)
                    ran = winner.run(view)
                    if publisher.seed(view).status != crabnet.SeedStatus.COMPLETED:
                        _until(pub_events, view.id, "result_recorded")
                assert ran.result is not None
                results.append(publisher.settle(view, accept=ran.result.success))
                for stream in streams:
                    stream.close()
            return results
        finally:
            for node in nodes:
                node.stop()


def event_log(node: crabnet.Node, types: Sequence[str] = ()) -> List[crabnet.Event]:
    """The node's logged events, optionally only those of the given types."""
    events = node.events_after(0, limit=10_000)
    return [e for e in events if not types or e.type in types]


def earnings(views: Sequence[crabnet.SeedView]) -> Dict[str, int]:
    """Amount due per winning node (short id), from settled seeds."""
    due: Dict[str, int] = {}
    for v in views:
        if v.settlement is not None and v.award is not None and v.award.winner_node:
            key = v.award.winner_node[:8]
            due[key] = due.get(key, 0) + v.settlement.amount
    return due


def summary(views: Sequence[crabnet.SeedView]) -> List[Tuple[str, str, str, int]]:
    """(command, status, output, amount) per seed: a table for display."""
    rows = []
    for v in views:
        output = v.result.output_excerpt.strip() if v.result else ""
        amount = v.settlement.amount if v.settlement else 0
        rows.append((v.seed.command, str(v.status), output, amount))
    return rows


if __name__ == "__main__":
    views = market_round(["uname -s", "echo $((2 ** 10))", "exit 1"])
    for row in summary(views):
        print(row)
    print(earnings(views))
    print(views[0])
