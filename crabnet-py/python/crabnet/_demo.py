"""``crabnet.demo()``: the local demo network of ``crabnet demo``, from Python."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

from . import _crabnet
from ._model import SeedView, _Record

__all__ = ["DEFAULT_DEMO_COMMAND", "DemoReport", "demo"]

DEFAULT_DEMO_COMMAND: str = _crabnet.DEFAULT_DEMO_COMMAND
"""The command the demo task runs unless another is given."""


@dataclass(frozen=True, repr=False)
class DemoReport(_Record):
    """What the demo produced."""

    seed: SeedView
    """The seed's final state on the publisher."""
    digests: Tuple[Tuple[str, str], ...]
    """Each node's name and state digest, in start order."""
    base_dir: Optional[str]
    """Where the node data was kept (``None``: it was deleted)."""

    @property
    def converged(self) -> bool:
        """Whether every node ended with the same state."""
        return len({digest for _, digest in self.digests}) == 1


def demo(
    *,
    nodes: int = 3,
    command: Optional[str] = None,
    base_dir: Optional[Union[str, os.PathLike[str]]] = None,
    keep: bool = False,
    step_timeout: float = 20.0,
    say: Optional[Callable[[str], object]] = print,
) -> DemoReport:
    """Runs the demo network: ``nodes`` nodes (at least 3) in this process on an in-memory hub
    publish a task, bid, claim, run and settle it. ``say`` receives each step as a line of
    text (``None``: quiet). Node data goes to a temporary directory that is deleted, unless
    ``base_dir`` is given or ``keep`` is true."""

    def quiet(line: str) -> None:
        pass

    raw = _crabnet.run_demo(
        say if say is not None else quiet,
        nodes,
        command,
        None if base_dir is None else os.fspath(base_dir),
        keep,
        step_timeout,
    )
    return DemoReport._from_json(json.loads(raw))
