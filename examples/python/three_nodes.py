"""A three-node Crabnet network in one process runs a task end to end and prints every event.

    python examples/python/three_nodes.py

alice publishes a task, bob and carol bid, the cheaper bid wins, the winner claims and runs the
task, and alice settles. Nothing leaves the process: the nodes talk through a MemoryHub. Every
message is signed; the nodes first exchange hellos (their public keys) and wait for each other.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List

import crabnet


# One line per event, with the details that matter for each kind.
DESCRIPTIONS: Dict[type, Callable[[Any], str]] = {
    crabnet.SeedPublished: lambda e: f"seed {e.seed_id[:8]} published: {e.command}",
    crabnet.BidPlaced: lambda e: f"bid of {e.price} by {e.bidder[:8]}",
    crabnet.BiddingClosed: lambda e: (
        f"bidding closed: {e.winner_node and e.winner_node[:8]} wins at {e.price}"
    ),
    crabnet.StatusChanged: lambda e: f"seed {e.seed_id[:8]}: {e.from_status or '-'} -> {e.to}",
    crabnet.ResultRecorded: lambda e: (
        f"result: success={e.success} exit={e.exit_code} in {e.duration_ms} ms"
    ),
    crabnet.SeedSettled: lambda e: f"settled: {e.outcome}, {e.amount} due",
    crabnet.PeerDiscovered: lambda e: (
        f"peer {e.name} ({e.node_id[:8]}) at {', '.join(e.addresses)}"
    ),
    crabnet.MessageRejected: lambda e: (
        f"rejected a message from {e.sender and e.sender[:8]}: {e.reason}"
    ),
}


def describe(event: crabnet.Event) -> str:
    """One line per event: its description, or its type for the kinds not described."""
    say = DESCRIPTIONS.get(type(event))
    return say(event) if say else event.type


def main() -> None:
    hub = crabnet.MemoryHub()
    printing = threading.Lock()
    fast = {"network": {"tick_ms": 50}}
    with tempfile.TemporaryDirectory(prefix="crabnet-example-") as base:
        names = ["alice", "bob", "carol"]
        nodes: List[crabnet.Node] = [
            crabnet.Node(fast, data_dir=Path(base) / name, name=name, hub=hub) for name in names
        ]
        for node in nodes:
            node.start()
        try:
            alice, bob, carol = nodes
            # Nodes accept messages only from peers whose signed hello they verified.
            for node in nodes:
                known = node.wait_for_peers(len(nodes) - 1, timeout=10)
                print(f"{node.name} knows {', '.join(sorted(p.name for p in known))}")
            for node in nodes:

                def show(event: crabnet.Event, name: str = node.name) -> None:
                    with printing:
                        print(f"[{name:<5}] #{event.seq:<3} {describe(event)}")

                node.on_event(show)

            with bob.events() as bob_events, carol.events() as carol_events:
                view = alice.publish(
                    "echo 'the answer is' $((6 * 7))", min_price=10, max_price=50, max_bids=2
                )
                seed_id = view.id
                for bidder, stream, price in ((bob, bob_events, 30), (carol, carol_events, 20)):
                    stream.wait_for(
                        lambda e: isinstance(e, crabnet.SeedPublished) and e.seed_id == seed_id, 10
                    )
                    bidder.bid(seed_id, price)

                closed = carol_events.wait_for(
                    lambda e: isinstance(e, crabnet.BiddingClosed) and e.seed_id == seed_id, 10
                )
                assert isinstance(closed, crabnet.BiddingClosed)
                winner = next(n for n in nodes if n.node_id == closed.winner_node)
                winner.claim(seed_id)
                done = winner.run(seed_id)

            with alice.events() as alice_events:
                if alice.seed(seed_id).status != crabnet.SeedStatus.COMPLETED:
                    alice_events.wait_for(
                        lambda e: isinstance(e, crabnet.StatusChanged)
                        and e.to == crabnet.SeedStatus.COMPLETED,
                        10,
                    )
            final = alice.settle(seed_id, accept=True, note="thanks")
        finally:
            for node in nodes:
                node.stop()

    assert done.result is not None and final.settlement is not None
    print()
    print(f"{winner.name} ran the task: {done.result.output_excerpt.strip()!r}")
    print(f"alice settled: {final.settlement.outcome}, {final.settlement.amount} due")


if __name__ == "__main__":
    main()
