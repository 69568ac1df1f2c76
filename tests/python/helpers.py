"""Helpers shared by the tests."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

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


_handed_out: Set[int] = set()


def _test_ports() -> range:
    """Ports below the kernel's ephemeral range: one released for a node to bind cannot be
    taken meanwhile by an outgoing connection or a port-0 bind, where the kernel picks ports."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_start = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_start = 32768
    return range(10000, max(ephemeral_start, 11000))


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that is free right now and not handed out before by this
    process, from below the ephemeral range; the search starts at a place drawn from the
    process id so that two test runs on one machine start far apart."""
    ports = _test_ports()
    start = (os.getpid() * 7919 + time.monotonic_ns()) % len(ports)
    for i in range(len(ports)):
        port = ports[(start + i) % len(ports)]
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free UDP port in {ports}")


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
