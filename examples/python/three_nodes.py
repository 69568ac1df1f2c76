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
from typing import List

import crabnet


def describe(event: crabnet.Event) -> str:
    """One line per event, with the details that matter for each kind."""
    if isinstance(event, crabnet.SeedPublished):
        return f"seed {event.seed_id[:8]} published: {event.command}"
    if isinstance(event, crabnet.BidPlaced):
        return f"bid of {event.price} by {event.bidder[:8]}"
    if isinstance(event, crabnet.BiddingClosed):
        return f"bidding closed: {event.winner_node and event.winner_node[:8]} wins at {event.price}"
    if isinstance(event, crabnet.StatusChanged):
        return f"seed {event.seed_id[:8]}: {event.from_status or '-'} -> {event.to}"
    if isinstance(event, crabnet.ResultRecorded):
        return f"result: success={event.success} exit={event.exit_code} in {event.duration_ms} ms"
    if isinstance(event, crabnet.SeedSettled):
        return f"settled: {event.outcome}, {event.amount} due"
    if isinstance(event, crabnet.PeerDiscovered):
        return f"peer {event.name} ({event.node_id[:8]}) at {', '.join(event.addresses)}"
    if isinstance(event, crabnet.MessageRejected):
        return f"rejected a message from {event.sender and event.sender[:8]}: {event.reason}"
    return event.type


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
