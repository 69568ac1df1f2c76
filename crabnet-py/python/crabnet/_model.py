"""Typed, frozen domain objects built from the core's JSON (as decoded: the native module
hands over the dicts, lists, strings and ints ``json.loads`` would give, without JSON text).

Every class mirrors one serde type of ``crabnet-core`` field by field (same names, same
meaning), so the conversion is mechanical: :meth:`_Record._from_json` reads the dataclass
fields and their annotations. Ids are lowercase hex strings, times are Unix milliseconds,
prices are integers.

The core's types are described by ``docs/schema.json`` (generated from them; readable in
``docs/EVENTS.md``). ``tests/python/test_schema.py`` checks every class here against it: the
same fields, a default exactly for the fields the core may leave out, ``Optional`` exactly
for the fields that may be null. After a change in the core, regenerate the schema (see
``docs/EVENTS.md``) and change these classes until that test passes.
"""

from __future__ import annotations

import functools
import typing
import warnings
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from types import MappingProxyType
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Tuple,
    Type,
    TypeVar,
)

from ._crabnet import InternalError

__all__ = [
    "EVENT_TYPES",
    "AlertFiring",
    "AlertName",
    "AlertResolved",
    "Award",
    "Bid",
    "BidPlaced",
    "BiddingClosed",
    "Claim",
    "Event",
    "EventsDropped",
    "KeyRotation",
    "MessageAccepted",
    "MessageDeferred",
    "MessageRejected",
    "NodeStarted",
    "NodeStopped",
    "Overview",
    "PeerDiscovered",
    "PeerInfo",
    "RejectReason",
    "ResultRecorded",
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
    "SeedSettled",
    "SeedStatus",
    "SeedView",
    "SendFailed",
    "Settlement",
    "SettlementOutcome",
    "StatusChanged",
    "TaskResult",
    "TaskStarted",
    "TransportStatus",
    "UnknownEvent",
    "Violation",
]

_R = TypeVar("_R", bound="_Record")

# Strings longer than this are shortened in reprs (node ids, command output).
_REPR_MAX = 40


class SchemaWarning(UserWarning):
    """The core sent a field this version of the Python classes does not know (it is ignored).

    Emitted once per class and field; it means the package's Python and Rust parts are out of
    step, which the test suite treats as an error.
    """


_warned: set[tuple[str, str]] = set()


class _NamedEnum(str, Enum):
    """Base of the string enums: compares equal to its value, prints as it, and shows as
    ``Class.MEMBER`` in reprs."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __str__(self) -> str:
        return str(self.value)


class SeedStatus(_NamedEnum):
    """Lifecycle status of a seed. Compares equal to its name: ``status == "open"``."""

    OPEN = "open"
    """Accepting bids, or awarded and waiting for the winner's claim."""
    CLAIMED = "claimed"
    """The winning bidder claimed it."""
    COMPLETED = "completed"
    """The claimer reported a result."""
    SETTLED = "settled"
    """The publisher settled it (final)."""
    EXPIRED = "expired"
    """Bidding closed without bids (final)."""
    CANCELLED = "cancelled"
    """The publisher cancelled it (final)."""
    FAILED = "failed"
    """The claimer did not report a result in time; the publisher may reassign the seed to
    the next best bid or cancel it."""
    INCONCLUSIVE = "inconclusive"
    """A replicated seed whose results reached no quorum and no more runners could be
    awarded (final)."""


class RoundEnd(_NamedEnum):
    """How an earlier round of an awarded seed ended."""

    UNCLAIMED = "unclaimed"
    """The winner did not claim within the claim window."""
    FAILED = "failed"
    """The claimer did not report a result within the timeout plus the result grace."""


class OutputHash(_NamedEnum):
    """What a replicated seed's output hash covers."""

    COMBINED = "combined"
    """The combined stdout and stderr stream."""
    STDOUT = "stdout"
    """Stdout alone."""


class ReplicaStanding(_NamedEnum):
    """Where one replica (awarded runner) of a replicated seed stands."""

    AWARDED = "awarded"
    """Awarded, not claimed yet."""
    CLAIMED = "claimed"
    """Claimed, no result yet."""
    REPORTED = "reported"
    """Reported a result; no quorum (yet)."""
    AGREED = "agreed"
    """Its result agrees with the quorum."""
    DISSENTED = "dissented"
    """Its result differs from the quorum's."""
    LAPSED = "lapsed"
    """It let its claim or result deadline pass and an escalation ended its turn."""


class SettlementOutcome(_NamedEnum):
    """How the publisher judged a result."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


class SandboxLevel(_NamedEnum):
    """How strongly a task is isolated from the node that runs it. Levels are ordered:
    ``none`` < ``partial`` < ``full``. Compares equal to its name: ``level == "full"``."""

    NONE = "none"
    """No isolation: the task runs as the node's user with resource limits only."""
    PARTIAL = "partial"
    """Some isolation features were active, not all (see :attr:`SandboxInfo.features`)."""
    FULL = "full"
    """Every isolation feature: filesystem allow-list, private /tmp and /proc, PID, user and
    network namespaces, seccomp filter, no new privileges."""


class SandboxPolicy(_NamedEnum):
    """What a node does when its kernel cannot build the full task sandbox (the
    ``runner.sandbox`` setting). Compares equal to its name: ``policy == "required"``."""

    REQUIRED = "required"
    """Build the full sandbox or run nothing: the node refuses to bid and to run."""
    BEST_EFFORT = "best_effort"
    """Use every feature the kernel offers; run with a partial sandbox when some are missing."""
    NONE = "none"
    """No sandbox: tasks run as the node's user with resource limits only."""


class AlertName(_NamedEnum):
    """An alert rule (README, "Alerting"): :attr:`AlertFiring.alert`. Compares equal to its
    name: ``alert == "no_peers"``."""

    NO_PEERS = "no_peers"
    """No peer sent a verified hello recently, for ``alerts.no_peers_secs``."""
    OUTBOX_BACKLOG = "outbox_backlog"
    """At least ``alerts.outbox_backlog`` messages wait to be sent."""
    OUTBOX_STALE = "outbox_stale"
    """The oldest unsent message waits ``alerts.outbox_oldest_secs`` or more."""
    REJECT_RATE = "reject_rate"
    """At least ``alerts.reject_max`` messages were rejected within the rate window."""
    RUNNER_FAILURES = "runner_failures"
    """At least ``alerts.runner_failure_percent`` % of the tasks run within the rate window
    failed."""
    SYNC_LAG = "sync_lag"
    """A received message waits ``alerts.sync_lag_secs`` or more for one it depends on."""
    DISK_LOW = "disk_low"
    """Less than ``alerts.disk_free_min_bytes`` are free on the data directory's file
    system."""


class RejectReason(_NamedEnum):
    """Why a node rejected a received message (:attr:`MessageRejected.reason`); each reason
    has a counter ``rejected.<reason>`` in :attr:`Overview.counters`. Compares equal
    to its name: ``reason == "replay"``."""

    MALFORMED = "malformed"
    """It could not be decoded or its fields are invalid."""
    OVERSIZED = "oversized"
    """It was larger than allowed."""
    DUPLICATE = "duplicate"
    """A sync envelope that was already received (a replay). Copies of other envelopes are
    counted as ``messages.duplicate``, not rejected."""
    BAD_SIGNATURE = "bad_signature"
    """A signature does not verify with any of the sender's known keys (for a known sender,
    after ``network.unknown_sender_hold_ms`` without a key rotation of it arriving)."""
    UNKNOWN_SENDER = "unknown_sender"
    """No verified hello from the sender arrived within ``network.unknown_sender_hold_ms``
    (the node holds such messages until then)."""
    REPLAY = "replay"
    """It is older than the sender's replay floor: a replay of a forgotten message."""
    EXPIRED = "expired"
    """Its time to live is over, or it is dated too far in the future."""
    KEY_MISMATCH = "key_mismatch"
    """A hello whose node id does not match its keys, or a known node id with other keys."""
    RULE = "rule"
    """It breaks a lifecycle rule (see :attr:`MessageRejected.violation`)."""
    NOT_ADMITTED = "not_admitted"
    """Its author is not admitted by the node's trust policy (``[trust]`` in the config)."""
    RATE_LIMITED = "rate_limited"
    """Its transport source or claimed sender exceeded the node's rate limit."""
    LAMPORT_AHEAD = "lamport_ahead"
    """Its Lamport counter is more than ``network.lamport_window`` ahead of the node's clock."""
    ROTATED_KEY = "rotated_key"
    """It was signed with keys its sender replaced by a rotation, after their grace period."""


def _short(value: object) -> str:
    if isinstance(value, str) and len(value) > _REPR_MAX:
        return repr(value[:16] + "…")
    if isinstance(value, tuple):
        inner = ", ".join(_short(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, MappingProxyType):
        return "{" + ", ".join(f"{_short(k)}: {_short(v)}" for k, v in value.items()) + "}"
    return repr(value)


_Plan = Tuple[
    FrozenSet[str],
    FrozenSet[str],
    List[Tuple[str, Callable[[Any], Any]]],
    Dict[str, Any],
    List[Tuple[str, Callable[[], Any]]],
]


class _Record:
    """Base of the frozen domain classes: built from the core's JSON, with a compact repr."""

    __slots__ = ()
    _hints: ClassVar[Dict[str, Any]]
    _plan: ClassVar[_Plan]
    """Per class, worked out once: the field names, the required ones, the fields to convert
    with their converters (the others are taken as they are), the defaults and the default
    factories (building a record is on the path of every call that returns one, e.g. a
    publish)."""
    _JSON_NAMES: ClassVar[Mapping[str, str]] = MappingProxyType({})
    """JSON field names that are not valid Python names, mapped to the field's name."""

    @classmethod
    def _field_types(cls) -> Dict[str, Any]:
        hints: Optional[Dict[str, Any]] = cls.__dict__.get("_hints")
        if hints is None:
            hints = typing.get_type_hints(cls)
            cls._hints = hints
        return hints

    @classmethod
    def _from_json(cls: Type[_R], data: Mapping[str, Any]) -> _R:
        """Builds an instance from the core's JSON object."""
        return cls._from_fields(data)

    @classmethod
    def _fields_plan(cls) -> _Plan:
        plan: Optional[_Plan] = cls.__dict__.get("_plan")
        if plan is None:
            hints = cls._field_types()
            all_fields = fields(cls)  # type: ignore[arg-type]
            converters = [(f.name, _converter(hints[f.name])) for f in all_fields]
            plan = (
                frozenset(f.name for f in all_fields),
                frozenset(
                    f.name
                    for f in all_fields
                    if f.default is MISSING and f.default_factory is MISSING
                ),
                [(n, c) for n, c in converters if c is not _same],
                {f.name: f.default for f in all_fields if f.default is not MISSING},
                [
                    (f.name, f.default_factory)
                    for f in all_fields
                    if f.default_factory is not MISSING
                ],
            )
            cls._plan = plan
        return plan

    @classmethod
    def _from_fields(cls: Type[_R], data: Mapping[str, Any]) -> _R:
        if cls._JSON_NAMES:
            data = {cls._JSON_NAMES.get(k, k): v for k, v in data.items()}
        names, required, converted, defaults, factories = cls._fields_plan()
        # The core leaves out fields at their default (e.g. `Seed.network`); every other
        # field must be there.
        if not required.issubset(data):
            absent = required - set(data)
            all_fields = fields(cls)  # type: ignore[arg-type]
            missing = [f.name for f in all_fields if f.name in absent]
            raise InternalError(
                f"crabnet: the core sent a {cls.__name__} without {', '.join(missing)}"
            )
        if not names.issuperset(data):
            for extra in sorted(set(data) - names):
                if (cls.__name__, extra) not in _warned:
                    _warned.add((cls.__name__, extra))
                    warnings.warn(
                        f"crabnet: {cls.__name__} has no field {extra!r}; it is ignored",
                        SchemaWarning,
                        stacklevel=2,
                    )
            data = {n: v for n, v in data.items() if n in names}
        # What the generated `__init__` would do, without its frozen-attribute assignments one
        # by one (the records have no `__post_init__`).
        record = object.__new__(cls)
        values = record.__dict__
        values.update(defaults)
        for n, factory in factories:
            if n not in data:
                values[n] = factory()
        values.update(data)
        for n, convert in converted:
            if n in data:
                values[n] = convert(data[n])
        return record

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{f.name}={_short(getattr(self, f.name))}"
            for f in fields(self)  # type: ignore[arg-type]
            if f.repr
        )
        return f"{type(self).__name__}({parts})"


def _convert(tp: Any, value: Any) -> Any:
    """Converts one JSON value to the annotated type (records, enums, tuples, mappings)."""
    return _converter(tp)(value)


def _same(value: Any) -> Any:
    return value


@functools.lru_cache(maxsize=None)
def _converter(tp: Any) -> Callable[[Any], Any]:
    """The conversion of JSON values to the annotated type `tp`, worked out once per type."""
    if tp is Any:
        return _same
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        (inner,) = [a for a in args if a is not type(None)]
        convert_inner = _converter(inner)
        return lambda v: None if v is None else convert_inner(v)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            convert_item = _converter(args[0])
            if convert_item is _same:
                return tuple
            return lambda v: tuple(convert_item(x) for x in v)
        converters = [_converter(a) for a in args]
        return lambda v: tuple(c(x) for c, x in zip(converters, v))
    if origin is not None and origin.__name__ == "Mapping":
        convert_key, convert_value = (_converter(a) for a in args)
        return lambda v: MappingProxyType({convert_key(k): convert_value(x) for k, x in v.items()})
    if isinstance(tp, type) and issubclass(tp, _Record):
        return tp._from_json
    if isinstance(tp, type) and issubclass(tp, Enum):
        # The members by value, looked up directly (calling the class costs more than the
        # rest of a small record); other values raise as `tp(value)` does.
        members = tp._value2member_map_
        return lambda v: members[v] if v in members else tp(v)
    return _same


@dataclass(frozen=True, repr=False)
class Violation(_Record):
    """A lifecycle rule that an operation or a remote message broke.

    ``rule`` names it (``wrong_status``, ``not_publisher``, ``bid_window_closed``,
    ``price_out_of_range``, ``unknown_seed``, ...); ``details`` holds the rule's fields (e.g.
    ``seed_id``, ``status``, ``action``), as in ``docs/PROTOCOL.md``.
    """

    rule: str
    details: Mapping[str, Any] = field(hash=False)

    @classmethod
    def _from_fields(cls, data: Mapping[str, Any]) -> Violation:
        rest = {k: v for k, v in data.items() if k != "rule"}
        return cls(rule=str(data["rule"]), details=MappingProxyType(rest))


@dataclass(frozen=True, repr=False)
class Deadlines(_Record):
    """How long each later step of a seed may take, in seconds (rule version 2)."""

    claim_secs: int
    """The winner's time to claim after the award; then the next best bid wins."""
    result_grace_secs: int
    """Time beyond the timeout for the claimer to report; then the round fails."""
    settle_secs: int
    """The publisher's time to settle; then its node settles by the result."""


@dataclass(frozen=True, repr=False)
class PastRound(_Record):
    """An earlier round of an awarded seed: its winner did not claim, or its claim failed."""

    round: int
    winner: str
    winner_node: str
    claimed_at: Optional[int]
    ended: RoundEnd
    ended_at: int


@dataclass(frozen=True, repr=False)
class Replication(_Record):
    """Replicated execution (rule version 3): ``replicas`` runners run the command and the
    seed completes once ``quorum`` of them report the same output hash and exit code; without
    a quorum the publisher's node awards more runners, up to ``max_replicas``."""

    replicas: int
    quorum: int
    max_replicas: int
    hash: OutputHash = OutputHash.COMBINED
    """What the output hash covers."""


@dataclass(frozen=True, repr=False)
class Seed(_Record):
    """A task offered to the network: a shell command with a price range and a bid window."""

    id: str
    publisher: str
    """The publishing node; only it may close bidding, cancel and settle."""
    command: str
    description: str
    min_price: int
    max_price: int
    bid_window_secs: int
    max_bids: int
    """Bidding closes early when this many bids arrived."""
    timeout_secs: int
    created_at: int
    audience: Tuple[str, ...]
    """The nodes a private seed is sealed to, besides the publisher: every message about it is
    encrypted to them. Empty for a public seed."""
    network: bool = False
    """Whether the command needs network access: only nodes whose ``runner.allow_network`` is
    set bid on it; other tasks run without any network."""
    isolation: SandboxLevel = SandboxLevel.FULL
    """The strongest sandbox the command works under (default ``full``): a node bids only when
    the sandbox it would build is no stronger than this."""
    rules: int = 1
    """The lifecycle rule version: 1 (no deadlines), 2 (deadlines, see :class:`Deadlines`) or 3
    (deadlines and replication, see :class:`Replication`)."""
    deadlines: Optional[Deadlines] = None
    """The claim, result and settlement deadlines (rule version 2 and later)."""
    replication: Optional[Replication] = None
    """Replicated execution (rule version 3); ``None``: one runner."""

    @property
    def private(self) -> bool:
        """Whether the seed is private to an audience."""
        return bool(self.audience)


@dataclass(frozen=True, repr=False)
class Bid(_Record):
    """An offer to run a seed for a price, as part of the seed's state."""

    id: str
    seed_id: str
    bidder: str
    price: int
    placed_at: int


@dataclass(frozen=True, repr=False)
class Award(_Record):
    """The publisher's decision that closed bidding: a winner among the considered bids, or
    none (the seed expired)."""

    considered: Tuple[str, ...]
    winner: Optional[str]
    """The current round's winning bid (reassignments move it to the next best bid)."""
    winner_node: Optional[str]
    price: Optional[int]
    closed_at: int
    round: int
    """The current round: 0 for the award, one more for each reassignment."""
    round_started_at: int


@dataclass(frozen=True, repr=False)
class Claim(_Record):
    """The winning bidder's claim on a seed."""

    claimer: str
    bid_id: str
    claimed_at: int


@dataclass(frozen=True, repr=False)
class SandboxInfo(_Record):
    """The sandbox a task ran in, as recorded by its runner in the :class:`TaskResult`."""

    level: SandboxLevel
    features: Tuple[str, ...]
    """The isolation features that were active, by name (``landlock_fs``, ``seccomp``,
    ``pid_ns``, ``net_ns``, ``disk_quota``, ``uid_drop``, ...)."""
    network: bool
    """Whether the task had network access (the seed asked for it and the runner allowed it)."""


_UNKNOWN_SANDBOX = SandboxInfo(level=SandboxLevel.NONE, features=(), network=False)


@dataclass(frozen=True, repr=False)
class SandboxStatus(_Record):
    """The sandbox a node builds around the tasks it runs (:attr:`Overview.sandbox`)."""

    policy: SandboxPolicy
    """The configured policy (``runner.sandbox``)."""
    level: SandboxLevel
    """The level tasks run at; ``none`` when the policy is ``required`` and a kernel feature is
    missing (then nothing runs)."""
    features: Tuple[str, ...]
    """The isolation features tasks get."""
    missing: Tuple[str, ...]
    """Why the full sandbox is not available, one entry per missing kernel feature; empty at
    level ``full``."""
    allow_network: bool
    """Whether this node bids on and runs seeds that ask for network access."""
    can_run: bool
    """Whether this node can run tasks at all under its policy."""


@dataclass(frozen=True, repr=False)
class TaskResult(_Record):
    """What running a seed's command produced."""

    seed_id: str
    runner: str
    exit_code: Optional[int]
    signal: Optional[int]
    timed_out: bool
    success: bool
    """Exit code 0, no timeout and not interrupted."""
    duration_ms: int
    output_sha256: str
    """SHA-256 over the whole combined stdout+stderr, lowercase hex."""
    output_bytes: int
    output_excerpt: str
    """The first bytes of output (size-capped), decoded as UTF-8."""
    output_truncated: bool
    started_at: int
    finished_at: int
    sandbox: SandboxInfo = _UNKNOWN_SANDBOX
    """The sandbox the command ran in (level ``none`` with no features for results of nodes
    that do not report it)."""
    interrupted: bool = False
    """The run did not end on its own: its node stopped while the command ran and killed it
    (after ``runner.stop_grace_ms``), or found after a crash that the run's process was gone.
    The output fields cover what the command wrote until then."""


@dataclass(frozen=True, repr=False)
class Settlement(_Record):
    """The publisher's final word on a completed seed."""

    seed_id: str
    outcome: SettlementOutcome
    amount: int
    """The winning price when accepted (replicated seeds: the sum of the paid runners'
    prices), 0 when rejected."""
    note: str
    settled_at: int
    paid: Tuple[str, ...] = ()
    """Replicated seeds, accepted: the runners paid (each one whose result agrees with the
    quorum)."""


@dataclass(frozen=True, repr=False)
class ReplicaView(_Record):
    """One awarded runner of a replicated seed, with its claim, result and standing."""

    bid_id: str
    runner: str
    price: int
    step: int
    """0 when the award named it, ``n`` when the ``n``-th escalation did."""
    assigned_at: int
    claimed_at: Optional[int]
    reported_at: Optional[int]
    claim_message: Optional[str]
    """The claim message that counts for it."""
    result_message: Optional[str]
    """The result message that counts for it."""
    result: Optional[TaskResult]
    standing: ReplicaStanding


@dataclass(frozen=True, repr=False)
class SeedView(_Record):
    """Everything a node knows about one seed."""

    seed: Seed
    status: SeedStatus
    bids: Tuple[Bid, ...]
    """Valid bids, in placement order."""
    award: Optional[Award]
    claim: Optional[Claim]
    result: Optional[TaskResult]
    settlement: Optional[Settlement]
    cancelled_at: Optional[int]
    updated_at: int
    failed_at: Optional[int] = None
    """When the publisher declared the current round failed (status ``failed``)."""
    past_rounds: Tuple[PastRound, ...] = ()
    """Earlier rounds, oldest first."""
    replicas: Tuple[ReplicaView, ...] = ()
    """Replicated seeds: every awarded runner, in award order."""
    inconclusive_at: Optional[int] = None
    """When a replicated seed ended without a quorum (status ``inconclusive``)."""

    @property
    def id(self) -> str:
        """The seed's id (``self.seed.id``)."""
        return self.seed.id


@dataclass(frozen=True, repr=False)
class Overview(_Record):
    """A summary of a node's state."""

    node_id: str
    name: str
    data_dir: str
    transport: Optional[str]
    seeds_by_status: Mapping[SeedStatus, int] = field(hash=False)
    outbox_pending: int
    """Messages waiting to be sent."""
    counters: Mapping[str, int] = field(hash=False)
    """Accepted, deferred, sent and rejected (by reason) message counts."""
    last_event_seq: int
    events_pruned_through: int
    """Sequence number of the last event pruned by the bound on the durable log (0 when none
    was): a reader whose cursor is below it has missed events."""
    state_digest: str
    """Digest of the whole seed state: equal on converged replicas running one version (its
    value changed with schema version 14)."""
    peers: int
    """Number of peers whose hello this node verified."""
    addresses: Tuple[str, ...]
    """Where peers reach this node (transport addresses, e.g. libp2p multiaddresses)."""
    sandbox: SandboxStatus
    """The sandbox this node builds around the tasks it runs: policy, level, features and
    what is missing for the full sandbox."""


@dataclass(frozen=True, repr=False)
class Reputation(_Record):
    """What the signed messages a node holds say about a peer as a runner (never the peer's
    own claims)."""

    agreed: int
    """Replicated seeds where its result agreed with the quorum."""
    dissented: int
    """Replicated seeds where its result differed from the quorum's."""
    missed_deadlines: int
    """Awards it let pass (no claim, or no result, in time)."""
    settlements_accepted: int
    settlements_rejected: int


@dataclass(frozen=True, repr=False)
class PeerInfo(_Record):
    """A node whose hello (its signed keys, name and addresses) this node verified. Nodes
    accept domain messages only from such peers."""

    node_id: str
    name: str
    addresses: Tuple[str, ...]
    """Its announced transport addresses."""
    fingerprint: str
    """Fingerprint of its keys (the first 16 hex digits of its self-certifying id)."""
    key_epoch: int
    first_seen: int
    """Its first hello (Unix ms)."""
    last_seen: int
    """Its latest hello (Unix ms)."""
    reputation: Reputation
    """Its reputation as the signed history this node holds tells it."""


@dataclass(frozen=True, repr=False)
class KeyRotation(_Record):
    """What a key rotation did (:meth:`Node.rotate_keys`)."""

    node_id: str
    """The node (its id does not change)."""
    key_epoch: int
    """The new key epoch."""
    rotated_at: int
    """When the rotation took effect (Unix ms); the old keys' grace period starts here."""
    signing_public: str
    """The new Ed25519 + ML-DSA-44 public keys (hex)."""
    kem_public: str
    """The new X25519 + ML-KEM-768 public keys (hex)."""


@dataclass(frozen=True, repr=False)
class Event(_Record):
    """Something that happened in a node. Subclasses carry the details; ``type`` is the
    event's name as in the core's JSON and the ``events.ndjson`` log."""

    TYPE: ClassVar[str] = ""
    seq: int
    """Position in the node's event log (1, 2, ...); 0 for notices that are not logged."""
    at: int
    """When it happened (Unix ms)."""

    @property
    def type(self) -> str:
        """The event's type name (``"bid_placed"``, ...)."""
        return self.TYPE

    @classmethod
    def _from_json(cls, data: Mapping[str, Any]) -> Event:
        name = str(data["type"])
        rest = {k: v for k, v in data.items() if k != "type"}
        event_class = _EVENT_TYPES.get(name)
        if event_class is None:
            return UnknownEvent(
                seq=int(rest.pop("seq")),
                at=int(rest.pop("at")),
                name=name,
                fields=MappingProxyType(rest),
            )
        return event_class._from_fields(rest)


@dataclass(frozen=True, repr=False)
class UnknownEvent(Event):
    """An event of a type this version of the Python package does not know (newer core)."""

    name: str
    fields: Mapping[str, Any] = field(hash=False)

    @property
    def type(self) -> str:
        return self.name


@dataclass(frozen=True, repr=False)
class NodeStarted(Event):
    """The node started on a network."""

    TYPE: ClassVar[str] = "node_started"
    node_id: str
    transport: Optional[str]


@dataclass(frozen=True, repr=False)
class NodeStopped(Event):
    """The node stopped."""

    TYPE: ClassVar[str] = "node_stopped"
    node_id: str


@dataclass(frozen=True, repr=False)
class SeedPublished(Event):
    """A seed was published (here or by a remote node)."""

    TYPE: ClassVar[str] = "seed_published"
    seed_id: str
    publisher: str
    command: str


@dataclass(frozen=True, repr=False)
class BidPlaced(Event):
    """A bid was placed."""

    TYPE: ClassVar[str] = "bid_placed"
    seed_id: str
    bid_id: str
    bidder: str
    price: int


@dataclass(frozen=True, repr=False)
class BiddingClosed(Event):
    """The publisher closed bidding; no winner means the seed expired."""

    TYPE: ClassVar[str] = "bidding_closed"
    seed_id: str
    winner: Optional[str]
    winner_node: Optional[str]
    price: Optional[int]


@dataclass(frozen=True, repr=False)
class SeedClaimed(Event):
    """The winner claimed the seed."""

    TYPE: ClassVar[str] = "seed_claimed"
    seed_id: str
    claimer: str


@dataclass(frozen=True, repr=False)
class TaskStarted(Event):
    """This node started running a task."""

    TYPE: ClassVar[str] = "task_started"
    seed_id: str
    command: str


@dataclass(frozen=True, repr=False)
class ResultRecorded(Event):
    """A result was recorded."""

    TYPE: ClassVar[str] = "result_recorded"
    seed_id: str
    runner: str
    success: bool
    exit_code: Optional[int]
    duration_ms: int
    output_sha256: str
    interrupted: bool = False
    """The run was interrupted (see :attr:`TaskResult.interrupted`)."""


@dataclass(frozen=True, repr=False)
class SeedSettled(Event):
    """The publisher settled."""

    TYPE: ClassVar[str] = "seed_settled"
    seed_id: str
    outcome: SettlementOutcome
    amount: int


@dataclass(frozen=True, repr=False)
class SeedCancelled(Event):
    """The publisher cancelled."""

    TYPE: ClassVar[str] = "seed_cancelled"
    seed_id: str


@dataclass(frozen=True, repr=False)
class SeedReassigned(Event):
    """The publisher moved the seed to the next best bid (``winner`` is ``None`` when no bid
    was left and the seed expired)."""

    TYPE: ClassVar[str] = "seed_reassigned"
    seed_id: str
    round: int
    winner: Optional[str]
    winner_node: Optional[str]
    price: Optional[int]


@dataclass(frozen=True, repr=False)
class SeedFailed(Event):
    """The publisher declared a claimed round failed: no result within the deadline."""

    TYPE: ClassVar[str] = "seed_failed"
    seed_id: str
    round: int
    claimer: Optional[str]


@dataclass(frozen=True, repr=False)
class SeedEscalated(Event):
    """The publisher awarded a replicated seed to more runners (``winners``), or ended it
    inconclusive (``winners`` empty): its results reached no quorum."""

    TYPE: ClassVar[str] = "seed_escalated"
    seed_id: str
    step: int
    winners: Tuple[str, ...]


@dataclass(frozen=True, repr=False)
class StatusChanged(Event):
    """A seed's status changed (``from_status`` is ``None`` when the seed just became known)."""

    TYPE: ClassVar[str] = "status_changed"
    # `from` is a Python keyword: the field is `from_status`.
    _JSON_NAMES: ClassVar[Mapping[str, str]] = MappingProxyType({"from": "from_status"})
    seed_id: str
    from_status: Optional[SeedStatus]
    to: SeedStatus


@dataclass(frozen=True, repr=False)
class PeerDiscovered(Event):
    """A node's verified hello added it to the peer table."""

    TYPE: ClassVar[str] = "peer_discovered"
    node_id: str
    name: str
    addresses: Tuple[str, ...]


@dataclass(frozen=True, repr=False)
class MessageAccepted(Event):
    """A remote message was accepted and applied."""

    TYPE: ClassVar[str] = "message_accepted"
    message_id: str
    message_kind: str
    sender: str


@dataclass(frozen=True, repr=False)
class MessageDeferred(Event):
    """A remote message was stored but waits for another one before it takes effect."""

    TYPE: ClassVar[str] = "message_deferred"
    message_id: str
    message_kind: str
    sender: str
    reason: Violation


@dataclass(frozen=True, repr=False)
class MessageRejected(Event):
    """A received message was rejected; ``reason`` says why (see :class:`RejectReason`)."""

    TYPE: ClassVar[str] = "message_rejected"
    message_id: Optional[str]
    message_kind: Optional[str]
    sender: Optional[str]
    reason: RejectReason
    violation: Optional[Violation]
    detail: str
    source: Optional[str]
    """The transport address the frame came from (the relay, not necessarily ``sender``)."""
    count: int
    """How many rejections of this reason from this source the event stands for: 1, or more
    for the summary of an aggregation window (``network.reject_event_window_ms``)."""


@dataclass(frozen=True, repr=False)
class TransportStatus(Event):
    """The transport reported a change: started, connected to a peer, fell back to UDP..."""

    TYPE: ClassVar[str] = "transport_status"
    transport: str
    detail: str


@dataclass(frozen=True, repr=False)
class SendFailed(Event):
    """A message could not be sent; it stays in the outbox and is retried."""

    TYPE: ClassVar[str] = "send_failed"
    message_id: str
    detail: str


@dataclass(frozen=True, repr=False)
class AlertFiring(Event):
    """An alert rule's condition held long enough: the alert fires (README, "Alerting")."""

    TYPE: ClassVar[str] = "alert_firing"
    alert: AlertName
    """The rule."""
    value: int
    """The rule's value (peers, messages, seconds, percent or bytes; see the rule)."""
    threshold: int
    detail: str


@dataclass(frozen=True, repr=False)
class AlertResolved(Event):
    """A firing alert's condition stayed clear long enough: the alert is resolved."""

    TYPE: ClassVar[str] = "alert_resolved"
    alert: AlertName
    value: int
    threshold: int
    since: int
    """When the alert fired (Unix ms)."""
    detail: str


@dataclass(frozen=True, repr=False)
class EventsDropped(Event):
    """This subscriber fell behind and missed ``count`` events (``seq`` is 0)."""

    TYPE: ClassVar[str] = "events_dropped"
    count: int


_EVENT_TYPES: Dict[str, Type[Event]] = {
    c.TYPE: c
    for c in (
        NodeStarted,
        NodeStopped,
        SeedPublished,
        BidPlaced,
        BiddingClosed,
        SeedClaimed,
        TaskStarted,
        ResultRecorded,
        SeedSettled,
        SeedCancelled,
        SeedReassigned,
        SeedFailed,
        SeedEscalated,
        StatusChanged,
        PeerDiscovered,
        MessageAccepted,
        MessageDeferred,
        MessageRejected,
        TransportStatus,
        SendFailed,
        AlertFiring,
        AlertResolved,
        EventsDropped,
    )
}

EVENT_TYPES: FrozenSet[str] = frozenset(_EVENT_TYPES)
"""The event type names this version knows."""
