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
from ._demo import DEFAULT_DEMO_COMMAND, DemoReport, demo
from ._model import (
    EVENT_TYPES,
    _Record,
    AlertFiring,
    AlertName,
    AlertResolved,
    Award,
    Bid,
    BiddingClosed,
    BidPlaced,
    Claim,
    Event,
    EventsDropped,
    KeyRotation,
    MessageAccepted,
    MessageDeferred,
    MessageRejected,
    NodeStarted,
    NodeStopped,
    Overview,
    PeerDiscovered,
    PeerInfo,
    RejectReason,
    ResultRecorded,
    SandboxInfo,
    SandboxLevel,
    SandboxPolicy,
    SandboxStatus,
    SchemaWarning,
    Deadlines,
    OutputHash,
    PastRound,
    ReplicaStanding,
    ReplicaView,
    Replication,
    Reputation,
    RoundEnd,
    Seed,
    SeedCancelled,
    SeedClaimed,
    SeedEscalated,
    SeedFailed,
    SeedReassigned,
    SeedPublished,
    SeedSettled,
    SeedStatus,
    SeedView,
    SendFailed,
    Settlement,
    SettlementOutcome,
    StatusChanged,
    TaskResult,
    TaskStarted,
    TransportStatus,
    UnknownEvent,
    Violation,
)
from ._node import (
    EventListener,
    EventStream,
    Node,
    NodeRef,
    SeedRef,
    WebServer,
    config_from_toml,
    default_config,
    load_config,
)

__all__ = [
    "DEFAULT_DEMO_COMMAND",
    "EVENT_TYPES",
    "AlertFiring",
    "AlertName",
    "AlertResolved",
    "Award",
    "Bid",
    "BidPlaced",
    "BiddingClosed",
    "BusyError",
    "Claim",
    "ConfigError",
    "CrabnetError",
    "CryptoError",
    "DemoReport",
    "Event",
    "EventListener",
    "EventStream",
    "EventsDropped",
    "InternalError",
    "IoError",
    "MemoryHub",
    "MessageAccepted",
    "MessageDeferred",
    "MessageRejected",
    "NetworkError",
    "Node",
    "NodeRef",
    "KeyRotation",
    "NodeStarted",
    "NodeStopped",
    "NotFoundError",
    "Overview",
    "PeerDiscovered",
    "PeerInfo",
    "RejectReason",
    "ResultRecorded",
    "RunnerError",
    "SandboxInfo",
    "SandboxLevel",
    "SandboxPolicy",
    "SandboxStatus",
    "SchemaWarning",
    "Deadlines",
    "OutputHash",
    "PastRound",
    "ReplicaStanding",
    "ReplicaView",
    "Replication",
    "Reputation",
    "RoundEnd",
    "Seed",
    "SeedCancelled",
    "SeedClaimed",
    "SeedEscalated",
    "SeedFailed",
    "SeedReassigned",
    "SeedPublished",
    "SeedRef",
    "SeedSettled",
    "SeedStatus",
    "SeedView",
    "SendFailed",
    "Settlement",
    "SettlementOutcome",
    "StateError",
    "StatusChanged",
    "StoppedError",
    "StoreError",
    "TaskResult",
    "TaskStarted",
    "TransportStatus",
    "UnknownEvent",
    "ValidationError",
    "Violation",
    "WebServer",
    "__version__",
    "config_from_toml",
    "default_config",
    "demo",
    "forward_logs",
    "load_config",
    "logs_dropped",
]


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
