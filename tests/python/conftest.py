"""Shared fixtures: nodes in temporary data directories, networked through an in-memory hub
(or UDP on 127.0.0.1 only), stopped after each test."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from helpers import MakeNode, make_pair

import crabnet

# Quick background work so that tests do not wait for the default 250 ms ticks, 30 s hellos
# and 10 s sync rounds.
FAST: Dict[str, Any] = {
    "network": {
        "tick_ms": 20,
        "retry_base_ms": 20,
        "retry_max_ms": 500,
        "hello_interval_secs": 1,
        "sync_interval_secs": 1,
    }
}

def merged(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[MakeNode]:
    """Starts a node named `name` in `tmp_path/name`; every node is stopped after the test."""
    nodes: List[crabnet.Node] = []

    def make(name: str, config: Optional[Dict[str, Any]] = None, **kwargs: Any) -> crabnet.Node:
        node = crabnet.Node(
            merged(FAST, config or {}), data_dir=tmp_path / name, name=name, **kwargs
        )
        nodes.append(node)
        return node.start()

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def trio(make_node: MakeNode) -> List[crabnet.Node]:
    """Three nodes on one in-memory hub, alice, bob and carol, that know each other (nodes
    accept messages only from peers whose hello they verified)."""
    hub = crabnet.MemoryHub()
    nodes = [make_node(name, hub=hub) for name in ("alice", "bob", "carol")]
    for node in nodes:
        node.wait_for_peers(2, timeout=10)
    return nodes


@pytest.fixture
def pair(make_node: MakeNode) -> Tuple[crabnet.Node, crabnet.Node]:
    """A publisher and a runner on one in-memory hub that know each other (a node may not bid
    on its own seed)."""
    return make_pair(make_node)
