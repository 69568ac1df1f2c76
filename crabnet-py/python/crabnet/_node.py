"""``Node``: a Crabnet node driven from Python, and its event streams and listeners."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import sys
import threading
import time
import weakref
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Type,
    TypeVar,
    Union,
)

from . import _crabnet
from ._crabnet import (
    MemoryHub,
    NativeNode,
    NativeSubscription,
    NativeWeb,
    StoppedError,
    ValidationError,
)
from ._model import Event, KeyRotation, Overview, PeerInfo, SandboxLevel, Seed, SeedStatus, SeedView

__all__ = [
    "EventListener",
    "EventStream",
    "Node",
    "NodeRef",
    "SeedRef",
    "WebServer",
    "config_from_toml",
    "default_config",
    "load_config",
]

SeedRef = Union[str, Seed, SeedView]
"""A seed given by id (32 hex digits) or as a ``Seed``/``SeedView`` object."""

NodeRef = Union[str, PeerInfo, "Node"]
"""A node given by id (64 hex digits), as a ``PeerInfo`` or as a (started) ``Node``."""

ConfigSource = Union[Mapping[str, Any], str, "os.PathLike[str]", None]

_TRANSPORTS = ("offline", "memory", "udp", "dht")

# Nodes still running at interpreter exit are stopped while threads can still run Python code,
# so the last events reach listeners and every database is closed cleanly.
_running: weakref.WeakSet[Node] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for node in list(_running):
        try:
            node.stop()
        except Exception as e:  # reported, and the other nodes still stop
            print(f"crabnet: stopping {node!r} at exit failed: {e}", file=sys.stderr)
    # Then the log thread ends, before the interpreter can no longer take its records.
    _crabnet.forward_logs(False)


def default_config() -> Dict[str, Any]:
    """The core's default configuration as a dict (sections as nested dicts, like the TOML)."""
    config: Dict[str, Any] = json.loads(_crabnet.default_config())
    return config


def load_config(path: Union[str, os.PathLike[str]]) -> Dict[str, Any]:
    """Reads a TOML configuration file (unknown keys are errors: ``ConfigError``)."""
    config: Dict[str, Any] = json.loads(_crabnet.config_from_file(os.fspath(path)))
    return config


def config_from_toml(text: str) -> Dict[str, Any]:
    """Parses TOML configuration text (unknown keys are errors: ``ConfigError``)."""
    config: Dict[str, Any] = json.loads(_crabnet.config_from_toml(text))
    return config


def _seed_id(seed: SeedRef) -> str:
    if isinstance(seed, str):
        return seed
    if isinstance(seed, SeedView):
        return seed.seed.id
    if isinstance(seed, Seed):
        return seed.id
    raise TypeError(f"expected a seed id (str), Seed or SeedView, got {type(seed).__name__}")


def _node_id(node: NodeRef) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, PeerInfo):
        return node.node_id
    if isinstance(node, Node):
        return node.node_id
    raise TypeError(f"expected a node id (str), PeerInfo or Node, got {type(node).__name__}")


def _strings(name: str, values: Iterable[str]) -> List[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not one string")
    out = list(values)
    for value in out:
        if not isinstance(value, str):
            raise TypeError(f"{name} must hold strings, got {type(value).__name__}")
    return out


def _json_value(value: object) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # type: ignore[no-any-return]
    raise TypeError(f"configuration values must be JSON-like or paths, got {value!r}")


# The native node checks the arguments of the operations (types, ranges) and returns the core's
# values as the objects their JSON decodes to (dicts, lists, ...); the records are built here.
_view = SeedView._from_json


_Self = TypeVar("_Self", bound="_WithBlock")


class _WithBlock:
    """A context manager whose ``with`` block ends with :meth:`_leave` (stop, close, remove)."""

    def _leave(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._leave()


class _Closeable(Protocol):
    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


class _Closing(_WithBlock):
    """A handle over a native object that closes: :attr:`closed`, :meth:`close`, and a
    ``with`` block that closes it."""

    _closer: _Closeable

    @property
    def closed(self) -> bool:
        """Whether the handle was closed (or ended)."""
        return self._closer.closed

    def close(self) -> None:
        """Closes the handle. Idempotent."""
        self._closer.close()

    def _leave(self) -> None:
        self.close()


class Node(_WithBlock):
    """A Crabnet node.

    ``config`` is a dict shaped like the TOML configuration (missing keys take the core's
    defaults), or the path of a TOML file; ``data_dir`` and ``name`` override its keys. The
    node's keys live in ``identity.key`` in its data directory, so its id survives restarts.

    The network is chosen by ``transport`` (or guessed from the other arguments, ``peers``
    that are multiaddresses meaning ``"dht"``):

    - ``"memory"``: ``hub``, an in-process :class:`MemoryHub` shared with other nodes of this
      process.
    - ``"udp"``: ``bind`` (``"host:port"``) and ``peers`` (``"host:port"`` strings), plus an
      opt-in ``broadcast`` address.
    - ``"dht"`` (libp2p: gossipsub, Kademlia, sync over request-response): ``listen``
      (multiaddresses; default TCP on 127.0.0.1 with a free port; add a ``/udp/PORT/quic-v1``
      address to listen on QUIC too), ``peers``
      (multiaddresses to dial, such as another node's TCP address from
      ``overview().addresses``), ``bootstrap`` (Kademlia nodes, multiaddresses ending in
      ``/p2p/<peer id>``), ``mdns`` (discovery on the local network, off by default) and
      ``udp_fallback`` (a ``"host:port"`` to bind for UDP when libp2p cannot start or has no
      peers) with ``udp_peers``.
    - ``"offline"`` (no network argument): operations wait in the outbox.

    Nodes accept messages only from peers whose hello they verified: on a network, call
    :meth:`wait_for_peers` before publishing to the others.

    The node runs between :meth:`start` and :meth:`stop`; as a context manager it starts on
    entry and stops on exit. Calls that wait release the GIL, so other Python threads run
    meanwhile; all methods may be called from any thread.
    """

    def __init__(
        self,
        config: ConfigSource = None,
        *,
        data_dir: Optional[Union[str, os.PathLike[str]]] = None,
        name: Optional[str] = None,
        transport: Optional[str] = None,
        hub: Optional[MemoryHub] = None,
        bind: Optional[str] = None,
        peers: Sequence[str] = (),
        broadcast: Optional[str] = None,
        listen: Optional[Sequence[str]] = None,
        bootstrap: Sequence[str] = (),
        mdns: bool = False,
        udp_fallback: Optional[str] = None,
        udp_peers: Sequence[str] = (),
    ) -> None:
        if config is None:
            settings: Dict[str, Any] = {}
        elif isinstance(config, Mapping):
            settings = json.loads(json.dumps(dict(config), default=_json_value))  # a deep copy
        elif isinstance(config, (str, os.PathLike)):
            settings = load_config(config)
        else:
            raise TypeError(
                f"config must be a mapping or the path of a TOML file, got {type(config).__name__}"
            )
        if data_dir is not None:
            settings["data_dir"] = os.fspath(data_dir)
        if name is not None:
            settings["name"] = name
        peer_list = _strings("peers", peers)
        udp_given = bind is not None or broadcast is not None
        dht_given = (
            listen is not None
            or bool(bootstrap)
            or bool(mdns)
            or udp_fallback is not None
            or bool(udp_peers)
        )
        if transport is None:
            if hub is not None:
                transport = "memory"
            elif dht_given or any(p.startswith("/") for p in peer_list):
                transport = "dht"  # also for peers given as multiaddresses
            elif udp_given or peer_list:
                transport = "udp"
            else:
                transport = "offline"
        if transport not in _TRANSPORTS:
            raise ValidationError(
                f"unknown transport {transport!r}; expected 'offline', 'memory', 'udp' or 'dht'"
            )
        if transport == "memory" and hub is None:
            raise ValidationError("transport 'memory' needs hub=crabnet.MemoryHub()")
        if transport != "memory" and hub is not None:
            raise ValidationError(f"a hub is only used with transport 'memory', not {transport!r}")
        if transport != "udp" and udp_given:
            raise ValidationError("bind and broadcast are only used with transport 'udp'")
        if transport != "dht" and dht_given:
            raise ValidationError(
                "listen, bootstrap, mdns, udp_fallback and udp_peers are only used with "
                "transport 'dht'"
            )
        if transport not in ("udp", "dht") and peer_list:
            raise ValidationError("peers are only used with transport 'udp' or 'dht'")
        if udp_peers and udp_fallback is None:
            raise ValidationError("udp_peers are the peers of udp_fallback: give udp_fallback too")
        self._config = settings
        self._transport = transport
        self._hub = hub
        self._udp: Optional[str] = None
        self._dht: Optional[str] = None
        if transport == "udp":
            udp: Dict[str, Any] = {"peers": peer_list, "broadcast": broadcast}
            if bind is not None:
                udp["bind"] = bind
            self._udp = json.dumps(udp)
        elif transport == "dht":
            dht: Dict[str, Any] = {
                "peers": peer_list,
                "bootstrap": _strings("bootstrap", bootstrap),
                "mdns": bool(mdns),
                "udp_fallback": None,
            }
            if listen is not None:
                dht["listen"] = _strings("listen", listen)
            if udp_fallback is not None:
                dht["udp_fallback"] = {
                    "bind": udp_fallback,
                    "peers": _strings("udp_peers", udp_peers),
                    "broadcast": None,
                }
            self._dht = json.dumps(dht)
        self._native: Optional[NativeNode] = None
        self._last_id: Optional[str] = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Node:
        """Starts the node (again, after :meth:`stop`: same data directory, same node id).
        Does nothing if it is running. Returns the node, so ``node = Node(...).start()``."""
        with self._lock:
            if self._native is None or not self._native.running:
                self._native = NativeNode.start(
                    json.dumps(self._config), self._transport, self._hub, self._udp, self._dht
                )
                self._last_id = self._native.node_id
                _running.add(self)
        return self

    def stop(self) -> None:
        """Stops the node: a task in progress (see :meth:`run`) gets ``runner.stop_grace_ms``
        to finish, then is killed and recorded as interrupted; then sends what is due, delivers
        the last events (listeners included), ends its threads and closes its database.
        Idempotent."""
        with self._lock:
            native = self._native
            _running.discard(self)
        if native is not None:
            native.stop()

    def __enter__(self) -> Node:
        return self.start()

    def _leave(self) -> None:
        self.stop()

    def _node(self) -> NativeNode:
        native = self._native
        if native is None:
            raise StoppedError("the node is not started: call start() or use it in a with block")
        return native

    @property
    def running(self) -> bool:
        """Whether the node is started and not stopped."""
        native = self._native
        return native is not None and native.running

    @property
    def node_id(self) -> str:
        """This node's id (64 hex digits), known once it has started."""
        if self._last_id is None:
            raise StoppedError("the node id is known once the node has started")
        return self._last_id

    @property
    def name(self) -> str:
        """The node's name (from the configuration)."""
        native = self._native
        return native.name if native is not None else str(self._config.get("name", "crabnet"))

    @property
    def transport(self) -> str:
        """The transport asked for: ``"offline"``, ``"memory"``, ``"udp"`` or ``"dht"`` (a
        ``"dht"`` node that fell back to UDP shows ``"udp"`` in :meth:`overview`)."""
        return self._transport

    def __repr__(self) -> str:
        node_id = self._last_id[:8] if self._last_id else None
        return (
            f"Node(name={self.name!r}, node_id={node_id!r}, transport={self._transport!r}, "
            f"running={self.running})"
        )

    # -- operations ------------------------------------------------------------------------

    def publish(
        self,
        command: str,
        *,
        description: Optional[str] = None,
        min_price: Optional[int] = None,
        max_price: Optional[int] = None,
        bid_window_secs: Optional[int] = None,
        max_bids: Optional[int] = None,
        timeout_secs: Optional[int] = None,
        private_to: Iterable[NodeRef] = (),
        network: bool = False,
        isolation: Union[SandboxLevel, str] = "full",
        claim_window_secs: Optional[int] = None,
        result_grace_secs: Optional[int] = None,
        settle_window_secs: Optional[int] = None,
        replicas: int = 1,
        quorum: Optional[int] = None,
        max_replicas: Optional[int] = None,
        hash_stdout: bool = False,
    ) -> SeedView:
        """Publishes a seed: a shell command the winning bidder runs. Terms left out take the
        core's defaults (price 1..=100, 30 s bid window, 5 bids, 60 s timeout).

        ``private_to`` makes the seed private to those nodes (ids, ``PeerInfo`` or ``Node``
        objects) and this one: every message about it is encrypted to them, and other nodes
        never see it. Their hellos must have arrived (see :meth:`wait_for_peers`), else
        ``NetworkError``.

        ``network=True`` says the command needs network access: only nodes whose
        ``runner.allow_network`` is set bid on it (others raise ``RunnerError``). ``isolation``
        is the strongest sandbox the command works under (``"full"``, ``"partial"`` or
        ``"none"``, see :class:`SandboxLevel`): a node bids only when the sandbox it would build
        is no stronger.

        Deadlines (each 1 s to 30 days, see :class:`Deadlines`): the winner has
        ``claim_window_secs`` (default 600) to claim, then this node moves the seed to the next
        best bid; the claimer has the timeout plus ``result_grace_secs`` (default 300) to
        report, then this node declares the round failed (:meth:`reassign` or :meth:`cancel`
        it); a result not settled within ``settle_window_secs`` (default 86400) is settled by
        this node: accepted if it succeeded, rejected otherwise.

        Replication (rule version 3, which older nodes refuse): ``replicas`` nodes run the
        command and the seed completes once ``quorum`` (default: a majority) report the same
        output hash and exit code; without a quorum this node awards more runners, up to
        ``max_replicas`` (default ``replicas``), or ends the seed ``inconclusive``.
        ``hash_stdout=True`` hashes stdout alone. Each runner's result and standing is in
        :attr:`SeedView.replicas`."""
        if isinstance(private_to, (str, PeerInfo, Node)):
            raise TypeError("private_to must be a sequence of nodes, not one node")
        return _view(
            self._node().publish(
                {
                    "command": command,
                    "description": description,
                    "min_price": min_price,
                    "max_price": max_price,
                    "bid_window_secs": bid_window_secs,
                    "max_bids": max_bids,
                    "timeout_secs": timeout_secs,
                    "private_to": [_node_id(n) for n in private_to],
                    "network": network,
                    "isolation": isolation,
                    "claim_secs": claim_window_secs,
                    "result_grace_secs": result_grace_secs,
                    "settle_secs": settle_window_secs,
                    "replicas": replicas,
                    "quorum": quorum,
                    "max_replicas": max_replicas,
                    "hash_stdout": hash_stdout,
                }
            )
        )

    def bid(self, seed: SeedRef, price: int) -> SeedView:
        """Bids ``price`` on a seed (within its price range, while bidding is open).

        Raises ``RunnerError`` when this node's runner policy cannot serve the seed (it asks for
        network access and ``runner.allow_network`` is off, it needs a weaker sandbox than this
        node builds, or ``runner.sandbox = "required"`` and the kernel lacks a feature)."""
        return _view(self._node().bid(_seed_id(seed), price))

    def claim(self, seed: SeedRef) -> SeedView:
        """Claims a seed this node won."""
        return _view(self._node().claim(_seed_id(seed)))

    def run(self, seed: SeedRef) -> SeedView:
        """Runs a seed this node claimed and reports its result. Waits for the command. The
        command runs in the node's task sandbox; :attr:`TaskResult.sandbox` says which.

        Ctrl-C (``KeyboardInterrupt``) interrupts the wait only: the command goes on in the
        node until the node stops. When the node stops while the command runs (:meth:`stop`,
        or leaving the ``with`` block, also through that ``KeyboardInterrupt``), the command
        gets ``runner.stop_grace_ms`` (default 0) to finish, then it is killed and the result
        is recorded and reported with :attr:`TaskResult.interrupted` true and ``success``
        false; :meth:`stop` returns after that, and no process of the task is left. A run
        cut short by a crash is recorded as interrupted when a node starts again on the data
        directory. A seed is never run again by itself: ``run`` on it then raises
        ``StateError``.

        Raises ``RunnerError`` when the runner policy cannot serve the seed (as for
        :meth:`bid`) or the command cannot be started."""
        return _view(self._node().run(_seed_id(seed)))

    def settle(self, seed: SeedRef, accept: bool = True, note: str = "") -> SeedView:
        """Settles a completed seed this node published: accept (the winning price is due) or
        reject (``accept=False``)."""
        return _view(self._node().settle(_seed_id(seed), accept, note))

    def cancel(self, seed: SeedRef) -> SeedView:
        """Cancels a seed this node published: while bidding is open, or once the winner let
        its claim window pass or its round failed."""
        return _view(self._node().cancel(_seed_id(seed)))

    def reassign(self, seed: SeedRef) -> SeedView:
        """Moves a seed this node published to the next best bid whose bidder has not had a
        round: after its round failed (status ``failed``), or once the winner let its claim
        window pass. With no bid left the seed expires."""
        return _view(self._node().reassign(_seed_id(seed)))

    def seed(self, seed: SeedRef) -> SeedView:
        """The current state of one seed (``NotFoundError`` if unknown here)."""
        return _view(self._node().seed(_seed_id(seed)))

    def seeds(self, status: Optional[Union[SeedStatus, str]] = None) -> List[SeedView]:
        """The seeds known here, newest first, optionally only those with ``status``."""
        wanted = status.value if isinstance(status, SeedStatus) else status
        return [_view(v) for v in self._node().seeds(wanted)]

    def overview(self) -> Overview:
        """A summary: seed counts, outbox, message counters, state digest, peer count,
        transport addresses and the task sandbox this node builds."""
        return Overview._from_json(self._node().overview())

    def rotate_keys(self) -> KeyRotation:
        """Rotates this node's keys: new signing and encryption keys for the next key epoch,
        announced to peers by a statement signed with the current keys. The node id stays
        the same; peers accept the old keys for ``trust.rotation_grace_secs`` after
        ``rotated_at``."""
        return KeyRotation._from_json(self._node().rotate_keys())

    def peers(self) -> List[PeerInfo]:
        """The nodes whose hello this node verified (it accepts messages only from them)."""
        return [PeerInfo._from_json(p) for p in self._node().peers()]

    def wait_for_peers(self, count: int, timeout: float = 30.0) -> List[PeerInfo]:
        """Waits until at least ``count`` peers are known (their hellos arrived) and returns
        them. Raises ``NetworkError`` after ``timeout`` seconds; Ctrl-C interrupts the wait."""
        return [PeerInfo._from_json(p) for p in self._node().wait_for_peers(count, timeout)]

    def events_after(self, seq: int = 0, limit: int = 1000) -> List[Event]:
        """Logged events with a sequence number above ``seq``, oldest first (at most ``limit``)."""
        return [Event._from_json(e) for e in self._node().events_after(seq, limit)]

    def serve_web(self, bind: str = "127.0.0.1:0", token: Optional[str] = None) -> WebServer:
        """Serves the monitoring API and dashboard of this node (the server ``crabnet listen``
        runs; routes in the README, "Monitoring") on ``bind`` (port 0: a free port, see
        :attr:`WebServer.url`). The node's ``[web]`` settings apply, with ``bind`` and, when
        given, ``token`` (required for a non-loopback address) replacing theirs. Serves until
        :meth:`WebServer.close` (or the end of its ``with`` block); after :meth:`stop`,
        ``/health`` answers 503."""
        if not isinstance(bind, str):
            raise TypeError(f"bind must be a str, got {type(bind).__name__}")
        overrides: Dict[str, Any] = {"bind": bind}
        if token is not None:
            overrides["token"] = token
        return WebServer(self._node().serve_web(json.dumps(overrides)))

    # -- events ----------------------------------------------------------------------------

    def events(self, timeout: Optional[float] = None) -> EventStream:
        """A stream of the events from now on, for ``for`` and ``async for`` loops.

        Iteration ends when no event arrives for ``timeout`` seconds (``None``: never) or when
        the node stops (after its last events). See :class:`EventStream`.
        """
        return EventStream(self._node().subscribe(), timeout)

    def on_event(self, callback: Callable[[Event], object]) -> EventListener:
        """Calls ``callback(event)`` for every event from now on, on the node's events thread.

        Callbacks run one at a time, in event order, never while the node holds a lock: they
        may call the node. An exception in a callback is reported through
        ``sys.unraisablehook`` (printed to stderr by default) and delivery goes on. After
        :meth:`stop` returns, no callback runs. Returns a handle whose ``remove()`` ends the
        delivery.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        native = self._node()
        listener_id = native.add_listener(callback, Event._from_json)
        return EventListener(native, listener_id, callback)


class WebServer(_Closing):
    """A running monitoring API and dashboard (see :meth:`Node.serve_web`); a context
    manager that closes it. :meth:`close` stops serving (open requests get up to 5 s to
    finish)."""

    def __init__(self, native: NativeWeb) -> None:
        self._native = native
        self._closer = native

    @property
    def url(self) -> str:
        """The dashboard's URL, e.g. ``http://127.0.0.1:7980/``."""
        return self._native.url

    def __repr__(self) -> str:
        return f"WebServer(url={self.url!r}, closed={self.closed})"


class EventStream(_Closing):
    """Events of one node, from the moment :meth:`Node.events` was called.

    - ``for event in stream`` waits for each event; the loop ends after ``timeout`` seconds
      without events, or when the node has stopped and every event was read.
    - ``async for event in stream`` does the same without blocking the event loop.
    - :meth:`get` waits for one event; :meth:`wait_for` for the first matching one.

    Waits release the GIL and Ctrl-C interrupts them (``KeyboardInterrupt``). A consumer that
    falls far behind gets one :class:`EventsDropped` event instead of the events it missed.
    Close the stream (or use it in a ``with`` block) to release it early; it is
    :attr:`closed` too once it ended.
    """

    # Longest single wait handed to a worker thread by the async iterator.
    _ASYNC_SLICE = 0.25

    def __init__(self, subscription: NativeSubscription, timeout: Optional[float]) -> None:
        if timeout is not None and not timeout >= 0:
            raise ValidationError(f"timeout must be a non-negative number or None, got {timeout}")
        self._sub = subscription
        self._closer = subscription
        self._timeout = timeout
        self._pending: Optional[asyncio.Future[Optional[Dict[str, Any]]]] = None

    @property
    def timeout(self) -> Optional[float]:
        """The idle timeout of iteration, in seconds."""
        return self._timeout

    def get(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, waiting up to ``timeout`` seconds (``None``: no limit); ``None`` on
        timeout. Raises ``StoppedError`` once the node has stopped and every event was read."""
        raw = self._sub.recv(timeout)
        return None if raw is None else Event._from_json(raw)

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float) -> Event:
        """The first event (from the stream's current position) for which ``predicate`` is
        true. Raises ``TimeoutError`` after ``timeout`` seconds, ``StoppedError`` if the node
        stops first."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.get(max(0.0, deadline - time.monotonic()))
            if event is not None and predicate(event):
                return event
            if event is None or time.monotonic() >= deadline:
                raise TimeoutError(f"no matching event within {timeout} s")

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        try:
            event = self.get(self._timeout)
        except StoppedError:
            raise StopIteration from None
        if event is None:
            raise StopIteration
        return event

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            event = await self.aget(self._timeout)
        except StoppedError:
            raise StopAsyncIteration from None
        if event is None:
            raise StopAsyncIteration
        return event

    async def aget(self, timeout: Optional[float] = None) -> Optional[Event]:
        """Like :meth:`get`, for asyncio: the wait runs in the loop's default executor in
        short slices, so the event loop is never blocked. Cancelling it loses no event."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._pending is None:
                remaining = self._ASYNC_SLICE if deadline is None else deadline - loop.time()
                wait = max(0.0, min(self._ASYNC_SLICE, remaining))
                self._pending = loop.run_in_executor(None, self._sub.recv, wait)
            # Shielded: if this coroutine is cancelled, the wait in progress is kept and its
            # event returned by the next call.
            pending = self._pending
            try:
                raw = await asyncio.shield(pending)
            finally:
                if pending.done():
                    self._pending = None
            if raw is not None:
                return Event._from_json(raw)
            if deadline is not None and loop.time() >= deadline:
                return None


class EventListener(_WithBlock):
    """A callback registered with :meth:`Node.on_event`."""

    def __init__(
        self, node: NativeNode, listener_id: int, callback: Callable[[Event], object]
    ) -> None:
        self._node = node
        self._id = listener_id
        self._callback = callback
        self._active = True

    @property
    def callback(self) -> Callable[[Event], object]:
        return self._callback

    @property
    def active(self) -> bool:
        """Whether the callback is still registered (and the node running)."""
        return self._active and self._node.running

    def remove(self) -> bool:
        """Stops delivery to the callback (an event being delivered may still reach it).
        Returns whether it was registered."""
        self._active = False
        return self._node.remove_listener(self._id)

    def _leave(self) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"EventListener(callback={self._callback!r}, active={self.active})"
