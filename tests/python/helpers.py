"""Helpers shared by the tests."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable, List, Optional

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
