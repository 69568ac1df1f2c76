"""Crabnet: a peer-to-peer compute-task marketplace node, scripted from Python.

A node publishes a *seed* (a shell command with a price range, a bid window and a bid limit);
other nodes *bid*; the publisher's node closes bidding and names the winner; the winner
*claims* the seed, *runs* it and reports the result; the publisher *settles*::

    import crabnet

    hub = crabnet.MemoryHub()                      # an in-process network
    with crabnet.Node(data_dir="/tmp/a", name="alice", hub=hub) as alice, \\
         crabnet.Node(data_dir="/tmp/b", name="bob", hub=hub) as bob:
        alice.wait_for_peers(1)                    # bob's hello (signed keys) arrived
        seed = alice.publish("echo hello", max_bids=1)
        ...

Domain objects (:class:`SeedView`, :class:`Seed`, :class:`PeerInfo`, ...) and events
(:class:`Event` and its subclasses) are frozen dataclasses. Errors are subclasses of
:class:`CrabnetError`, one per kind of core error. The node's warnings and diagnostics go to
:mod:`logging`, to loggers named ``crabnet.*`` (see :func:`forward_logs`).
"""

from ._crabnet import (
    BusyError,
    ConfigError,
    CrabnetError,
    CryptoError,
    InternalError,
    IoError,
    MemoryHub,
    NetworkError,
    NotFoundError,
    RunnerError,
    StateError,
    StoppedError,
    StoreError,
    ValidationError,
    __version__,
    forward_logs,
    logs_dropped,
)
from . import _demo, _model, _node
from ._demo import *
from ._model import *
from ._model import _Record
from ._node import *

# The native module's names, then those of the modules that list their own.
__all__ = [
    "BusyError",
    "ConfigError",
    "CrabnetError",
    "CryptoError",
    "InternalError",
    "IoError",
    "MemoryHub",
    "NetworkError",
    "NotFoundError",
    "RunnerError",
    "StateError",
    "StoppedError",
    "StoreError",
    "ValidationError",
    "__version__",
    "forward_logs",
    "logs_dropped",
]
__all__ += _demo.__all__
__all__ += _model.__all__
__all__ += _node.__all__

def _present_as_crabnet() -> None:
    """Public classes report `crabnet` as their module (reprs, docs, pickling), after their
    annotations were resolved in the modules that define them."""
    classes = [c for c in map(globals().get, __all__) if isinstance(c, type)]
    for cls in classes:
        if issubclass(cls, _Record):
            cls._field_types()
    for cls in classes:
        if cls.__module__.startswith("crabnet._") and cls.__module__ != "crabnet._crabnet":
            cls.__module__ = __name__


_present_as_crabnet()

# The node's log records go to `logging` (loggers `crabnet.*`) from import until exit (the
# exit hook in `_node` ends forwarding after stopping the nodes still running).
forward_logs()
