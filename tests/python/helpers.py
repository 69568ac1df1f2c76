"""Helpers shared by the tests."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import crabnet

MakeNode = Callable[..., crabnet.Node]
"""The `make_node` fixture: `make_node(name, config=None, **node_kwargs)`."""


def wait_for_seed(
    node: crabnet.Node,
    seed_id: str,
    done: Callable[[crabnet.SeedView], bool] = lambda v: True,
    timeout: float = 10.0,
) -> crabnet.SeedView:
    """Polls `node` until it knows the seed in a state for which `done` is true."""
    deadline = time.monotonic() + timeout
    view: Optional[crabnet.SeedView] = None
    while True:
        try:
            view = node.seed(seed_id)
        except crabnet.NotFoundError:
            view = None
        if view is not None and done(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.name} did not reach the state in {timeout} s: {view!r}")
        time.sleep(0.01)


def make_pair(
    make_node: MakeNode,
    runner_config: Optional[Dict[str, Any]] = None,
    runner: str = "runner",
    publisher: str = "publisher",
) -> Tuple[crabnet.Node, crabnet.Node]:
    """A publisher (named `publisher`) and a runner (named `runner`, with `runner_config`) on
    one in-memory hub that know each other. A node may not bid on its own seed, so a
    lifecycle needs both."""
    hub = crabnet.MemoryHub()
    nodes = (make_node(publisher, hub=hub), make_node(runner, runner_config, hub=hub))
    for node in nodes:
        node.wait_for_peers(1, timeout=10)
    return nodes


def claimed(
    publisher: crabnet.Node, runner: crabnet.Node, command: str, price: int = 1
) -> crabnet.SeedView:
    """`publisher` publishes `command` (one bid closes bidding), `runner` bids `price`, wins
    and claims; returns the runner's view after the claim."""
    seed = publisher.publish(command, max_bids=1)
    wait_for_seed(runner, seed.id)
    runner.bid(seed, price)
    wait_for_seed(runner, seed.id, lambda v: v.award is not None)
    return runner.claim(seed)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def os_thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def open_files_under(path: Path) -> List[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
