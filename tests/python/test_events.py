"""Event delivery: the blocking iterator, the asyncio iterator and push callbacks."""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest
from helpers import MakeNode, eventually, wait_for_seed

import crabnet


MONITOR_RS = Path(__file__).resolve().parents[2] / "crabnet-core" / "src" / "monitor.rs"


def test_every_core_event_type_has_a_class() -> None:
    # `EventKind` is non_exhaustive, so the binding cannot list it with a checked match: read
    # the names from `EventKind::name` in the core's source instead.
    names = set(re.findall(r'EventKind::\w+ \{ \.\. \} => "(\w+)"', MONITOR_RS.read_text()))
    assert len(names) >= 18
    assert names == set(crabnet.EVENT_TYPES)


def lifecycle_types(events: List[crabnet.Event]) -> List[str]:
    return [e.type for e in events]


def test_iterator_yields_typed_events_in_order(trio: List[crabnet.Node]) -> None:
    alice, bob, _ = trio
    with alice.events(timeout=1) as stream:
        seed = alice.publish("echo hi", max_bids=1)
        published = stream.wait_for(lambda e: isinstance(e, crabnet.SeedPublished), 5)
        assert isinstance(published, crabnet.SeedPublished)
        assert (published.seed_id, published.publisher, published.command) == (
            seed.id,
            alice.node_id,
            "echo hi",
        )
        opened = stream.get(5)
        assert isinstance(opened, crabnet.StatusChanged)
        assert opened.from_status is None and opened.to is crabnet.SeedStatus.OPEN
        assert opened.seq == published.seq + 1 and opened.at >= published.at

        wait_for_seed(bob, seed.id)
        bob.bid(seed, 3)
        closed = stream.wait_for(lambda e: isinstance(e, crabnet.BiddingClosed), 5)
        assert isinstance(closed, crabnet.BiddingClosed)
        assert closed.winner_node == bob.node_id and closed.price == 3

        # Iteration ends after `timeout` seconds without events.
        started = time.monotonic()
        rest = list(stream)
        assert 1 <= time.monotonic() - started < 4
        assert all(a.seq < b.seq for a, b in zip(rest, rest[1:]))
    assert stream.closed

    logged = alice.events_after(0)
    assert logged[0].type == "node_started" and isinstance(logged[0], crabnet.NodeStarted)
    assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
    assert {"seed_published", "bid_placed", "bidding_closed", "message_accepted"} <= {
        e.type for e in logged
    }
    assert alice.events_after(logged[-2].seq) == logged[-1:]
    assert all(e.type in crabnet.EVENT_TYPES for e in logged)


def test_get_returns_none_on_timeout_and_iteration_ends_when_the_node_stops(
    make_node: MakeNode,
) -> None:
    node = make_node("n", hub=crabnet.MemoryHub())
    stream = node.events()
    started = time.monotonic()
    assert stream.get(0.2) is None
    assert stream.get(0) is None
    assert 0.15 < time.monotonic() - started < 2
    with pytest.raises(TimeoutError):
        stream.wait_for(lambda e: True, 0.1)

    threading.Timer(0.3, node.stop).start()
    events = list(stream)  # no timeout: ends when the node stops, after its last events
    assert [e.type for e in events] == ["node_stopped"]
    assert stream.closed


def test_slow_consumer_is_told_how_many_events_it_missed(make_node: MakeNode) -> None:
    node = make_node("n", config={"events": {"bus_capacity": 4}})
    stream = node.events(timeout=1)
    for _ in range(4):
        node.publish("true")  # two events each
    first = stream.get(1)
    assert isinstance(first, crabnet.EventsDropped) and first.count == 4 and first.seq == 0
    assert len(list(stream)) == 4


def test_a_reader_learns_which_events_the_bound_on_the_log_pruned(make_node: MakeNode) -> None:
    node = make_node("n", config={"retention": {"events_max_rows": 100, "interval_secs": 1}})
    assert node.overview().events_pruned_through == 0
    for _ in range(60):
        node.publish("true")  # two events each
    assert eventually(lambda: node.overview().events_pruned_through > 0, timeout=20)
    through = node.overview().events_pruned_through
    kept = node.events_after(0, limit=1000)
    assert len(kept) <= 100 + 10  # the bound, and what came since the last pass
    assert kept[0].seq == through + 1  # a cursor at 0 has missed 1..through


def test_async_iterator_does_not_block_the_event_loop(trio: List[crabnet.Node]) -> None:
    alice, bob, _ = trio

    async def main() -> List[crabnet.Event]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        got: List[crabnet.Event] = []
        # Nothing happens for 0.3 s, then bob publishes (from another thread).
        threading.Timer(0.3, lambda: bob.publish("true")).start()
        async for event in alice.events(timeout=5):
            got.append(event)
            if isinstance(event, crabnet.StatusChanged):
                break
        assert ticks >= 5, f"the event loop was blocked: {ticks} ticks"

        # An idle stream ends after its timeout, still without blocking the loop.
        before = ticks
        started = time.monotonic()
        assert [e async for e in alice.events(timeout=0.3)] == []
        assert 0.25 < time.monotonic() - started < 3 and ticks - before >= 5
        task.cancel()
        return got

    got = asyncio.run(main())
    assert isinstance(got[0], crabnet.SeedPublished) and isinstance(got[-1], crabnet.StatusChanged)


def test_cancelled_async_waits_lose_no_event(make_node: MakeNode) -> None:
    node = make_node("n")

    async def main() -> crabnet.Event:
        stream = node.events()
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(stream.aget(), 0.02)
        await asyncio.get_running_loop().run_in_executor(None, node.publish, "true")
        event = await stream.aget(5)
        assert event is not None
        stream.close()
        return event

    assert isinstance(asyncio.run(main()), crabnet.SeedPublished)


def test_callbacks_run_in_order_on_a_crabnet_thread(trio: List[crabnet.Node]) -> None:
    alice, bob, _ = trio
    seen: List[crabnet.Event] = []
    threads = set()
    states: List[crabnet.SeedStatus] = []

    def record(event: crabnet.Event) -> None:
        seen.append(event)
        threads.add(threading.get_ident())
        if isinstance(event, crabnet.StatusChanged):
            states.append(alice.seed(event.seed_id).status)  # calling the node is fine

    listener = alice.on_event(record)
    assert listener.active and listener.callback is record
    seed = alice.publish("true", max_bids=1)
    wait_for_seed(bob, seed.id)
    bob.bid(seed, 1)
    assert eventually(lambda: any(isinstance(e, crabnet.BiddingClosed) for e in seen))
    assert threads and threading.get_ident() not in threads
    assert [e.seq for e in seen] == sorted(e.seq for e in seen)
    assert states[0] is crabnet.SeedStatus.OPEN

    assert listener.remove() and not listener.active
    count = len(seen)
    alice.publish("true")
    time.sleep(0.2)
    assert len(seen) == count
    assert not listener.remove()


def test_a_raising_callback_is_reported_and_delivery_goes_on(
    trio: List[crabnet.Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, _ = trio
    reported: List[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    calls: List[crabnet.Event] = []
    others: List[crabnet.Event] = []

    def fragile(event: crabnet.Event) -> None:
        calls.append(event)
        if isinstance(event, crabnet.SeedPublished):
            raise RuntimeError("callback bug")

    alice.on_event(fragile)
    alice.on_event(others.append)
    seed = alice.publish("true", max_bids=1)
    assert eventually(lambda: len(reported) == 1 and len(calls) >= 2)
    report = reported[0]
    assert report.exc_type is RuntimeError and str(report.exc_value) == "callback bug"
    assert report.object is fragile
    # Later events still reach both callbacks, and the node works as before.
    wait_for_seed(bob, seed.id)
    bob.bid(seed, 1)
    assert eventually(lambda: any(isinstance(e, crabnet.BiddingClosed) for e in calls))
    assert [e.seq for e in calls] == [e.seq for e in others][: len(calls)]
    assert alice.seed(seed).award is not None
    assert len(reported) == 1


def test_no_callback_runs_after_stop_returns(make_node: MakeNode) -> None:
    node = make_node("n", hub=crabnet.MemoryHub())
    seen: List[crabnet.Event] = []
    stopped = threading.Event()
    late: List[crabnet.Event] = []

    def slow(event: crabnet.Event) -> None:
        time.sleep(0.05)
        (late if stopped.is_set() else seen).append(event)

    node.on_event(slow)
    for _ in range(3):
        node.publish("true")
    node.stop()
    stopped.set()
    assert seen[-1].type == "node_stopped"  # the last events were delivered first
    assert len(seen) == 7
    time.sleep(0.2)
    assert late == []


def test_every_concurrent_stop_returns_after_the_last_callback(make_node: MakeNode) -> None:
    node = make_node("n", hub=crabnet.MemoryHub())
    seen: List[str] = []

    def slow(event: crabnet.Event) -> None:
        time.sleep(0.02)
        seen.append(event.type)

    node.on_event(slow)
    for _ in range(5):
        node.publish("true")
    after_stop: List[List[str]] = []

    def stop() -> None:
        node.stop()
        after_stop.append(list(seen))

    stoppers = [threading.Thread(target=stop) for _ in range(3)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    assert len(after_stop) == 3
    assert all(s[-1] == "node_stopped" and len(s) == 11 for s in after_stop), after_stop


def test_a_callback_may_stop_its_node(make_node: MakeNode) -> None:
    node = make_node("n")

    def stop_on_publish(event: crabnet.Event) -> None:
        if isinstance(event, crabnet.SeedPublished):
            node.stop()

    node.on_event(stop_on_publish)
    node.publish("true")
    assert eventually(lambda: not node.running)
    with pytest.raises(crabnet.StoppedError):
        node.publish("true")
