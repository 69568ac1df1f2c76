"""Threads, the GIL and signals: cleanup after stop, other Python threads running during
blocking calls, Ctrl-C in blocking waits."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest
from helpers import (
    MakeNode,
    claimed,
    eventually,
    open_files_under,
    os_thread_count,
    wait_for_seed,
)

import crabnet


def test_context_manager_stops_threads_and_closes_the_database(tmp_path: Path) -> None:
    python_threads = threading.active_count()
    os_threads = os_thread_count()
    hub = crabnet.MemoryHub()
    seen: List[crabnet.Event] = []
    with crabnet.Node(data_dir=tmp_path / "a", name="a", hub=hub) as a, crabnet.Node(
        data_dir=tmp_path / "b", name="b", hub=hub
    ) as b:
        a.wait_for_peers(1, timeout=10)
        b.wait_for_peers(1, timeout=10)
        a.on_event(seen.append)
        with b.events(timeout=5) as stream:
            seed = a.publish("true", max_bids=1)
            stream.wait_for(lambda e: isinstance(e, crabnet.SeedPublished), 5)
            b.bid(seed, 1)
            stream.wait_for(lambda e: isinstance(e, crabnet.BiddingClosed), 5)
        b.claim(seed)
        b.run(seed)
        assert os_thread_count() > os_threads
        assert any(p.endswith("crabnet.db") for p in open_files_under(tmp_path))
    assert not a.running and not b.running
    assert seen[-1].type == "node_stopped"
    assert eventually(lambda: os_thread_count() == os_threads), (
        f"{os_thread_count() - os_threads} threads left after stop"
    )
    assert threading.active_count() == python_threads
    assert open_files_under(tmp_path) == []
    # The data directory is free again: a new node may listen on it.
    with crabnet.Node(data_dir=tmp_path / "a", hub=hub) as again:
        assert again.node_id == a.node_id


def test_a_stream_left_open_releases_the_node_once_it_ends(tmp_path: Path) -> None:
    os_threads = os_thread_count()
    node = crabnet.Node(data_dir=tmp_path / "n").start()
    stream = node.events()
    node.stop()
    assert list(stream) == []
    assert eventually(lambda: os_thread_count() == os_threads)
    assert open_files_under(tmp_path) == []


def busy_counter() -> Iterator[Callable[[], int]]:
    """A Python thread counting as fast as it can while it holds the GIL."""
    count = 0
    done = threading.Event()

    def spin() -> None:
        nonlocal count
        while not done.is_set():
            count += 1

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        yield lambda: count
    finally:
        done.set()
        thread.join()


@pytest.fixture
def counter() -> Iterator[Callable[[], int]]:
    yield from busy_counter()


def test_other_threads_run_during_blocking_calls(
    make_node: MakeNode, pair: Tuple[crabnet.Node, crabnet.Node], counter: Callable[[], int]
) -> None:
    publisher, node = pair
    seed = claimed(publisher, node, "sleep 1")

    before = counter()
    node.run(seed)  # about one second in the task
    during_run = counter() - before

    # An offline node has no events to deliver while the wait lasts.
    stream = make_node("idle").events()
    before = counter()
    assert stream.get(0.5) is None
    during_wait = counter() - before

    # Without releasing the GIL the counter would barely move (a few switch intervals).
    assert during_run > 100_000, during_run
    assert during_wait > 50_000, during_wait


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Python's own SIGINT handler (raising KeyboardInterrupt) for the test, restored after it.

    A process started with SIGINT ignored (any background job of a non-interactive shell)
    keeps it ignored: Python installs its handler only over the default disposition. The tests
    that send themselves SIGINT install it themselves, so they pass wherever the suite runs."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupt_soon(delay: float = 0.3) -> threading.Timer:
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.usefixtures("default_sigint")
def test_ctrl_c_interrupts_event_waits(make_node: MakeNode) -> None:
    node = make_node("n")
    stream = node.events()
    for wait in (lambda: stream.get(30), lambda: list(stream), lambda: stream.get()):
        interrupt_soon()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            wait()
        assert time.monotonic() - started < 1.5
    assert node.running


@pytest.mark.usefixtures("default_sigint")
def test_ctrl_c_interrupts_a_run_and_the_result_is_still_recorded(
    pair: Tuple[crabnet.Node, crabnet.Node],
) -> None:
    publisher, node = pair
    seed = claimed(publisher, node, "sleep 1; echo late")
    stream = node.events()
    interrupt_soon(0.2)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        node.run(seed)
    assert time.monotonic() - started < 0.9
    recorded = stream.wait_for(lambda e: isinstance(e, crabnet.ResultRecorded), 10)
    assert isinstance(recorded, crabnet.ResultRecorded) and recorded.success
    view = wait_for_seed(node, seed.id, lambda v: v.status == "completed")
    assert view.result is not None and view.result.output_excerpt == "late\n"


def test_nodes_may_be_used_from_many_threads(trio: List[crabnet.Node]) -> None:
    alice, bob, carol = trio
    errors: List[BaseException] = []
    seeds: List[crabnet.SeedView] = []

    def publish_many() -> None:
        try:
            for _ in range(10):
                seeds.append(alice.publish("true"))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    workers = [threading.Thread(target=publish_many) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert len({s.id for s in seeds}) == 40
    assert eventually(lambda: len(carol.seeds()) == 40 and len(bob.seeds()) == 40, 10)


def test_a_forgotten_node_is_stopped_when_collected(tmp_path: Path) -> None:
    os_threads = os_thread_count()
    node = crabnet.Node(data_dir=tmp_path / "n").start()
    node.publish("true")
    assert open_files_under(tmp_path)
    del node
    gc.collect()
    assert eventually(lambda: os_thread_count() == os_threads)
    assert open_files_under(tmp_path) == []


def test_nodes_left_running_are_stopped_at_exit(tmp_path: Path) -> None:
    script = (
        "import crabnet, sys\n"
        f"node = crabnet.Node(data_dir={str(tmp_path / 'n')!r}, hub=crabnet.MemoryHub()).start()\n"
        "node.on_event(lambda e: print(e.type, flush=True))\n"
        "node.publish('true')\n"
        "print('exiting', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[-1] == "node_stopped", done.stdout  # the last event reached the callback
    assert "exiting" in done.stdout and done.stderr == ""


@pytest.mark.usefixtures("default_sigint")
def test_ctrl_c_leaving_a_with_block_kills_the_run_and_records_it_as_interrupted(
    make_node: MakeNode, tmp_path: Path
) -> None:
    config = {"network": {"tick_ms": 20}}
    hub = crabnet.MemoryHub()
    publisher = make_node("publisher", hub=hub)
    node = crabnet.Node(config, data_dir=tmp_path / "n", name="n", hub=hub)
    with pytest.raises(KeyboardInterrupt):
        with node:
            for n in (publisher, node):
                n.wait_for_peers(1, timeout=10)
            seed = claimed(publisher, node, "echo started; sleep 30")
            stream = node.events()

            def interrupt_once_started() -> None:
                stream.wait_for(lambda e: isinstance(e, crabnet.TaskStarted), 20)
                os.kill(os.getpid(), signal.SIGINT)

            threading.Thread(target=interrupt_once_started).start()
            node.run(seed)  # blocks until the interrupt leaves the `with` block
    assert not node.running
    recorded = stream.wait_for(lambda e: isinstance(e, crabnet.ResultRecorded), 10)
    assert isinstance(recorded, crabnet.ResultRecorded)
    assert recorded.interrupted and not recorded.success

    # Started again, the node knows the run was interrupted and does not run it again.
    with crabnet.Node(config, data_dir=tmp_path / "n", name="n") as node:
        view = node.seed(seed.id)
        assert view.status == "completed"
        assert view.result is not None and view.result.interrupted
        with pytest.raises(crabnet.StateError):
            node.run(seed)
