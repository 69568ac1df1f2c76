"""Every exception class: raised by a real failure where one can be provoked, with the core's
message, its kind and (for lifecycle errors) the violated rule."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Type

import pytest
from helpers import MakeNode, claimed, free_udp_port, make_pair, wait_for_seed

import crabnet
from crabnet import _crabnet

CLASSES: Dict[str, Type[crabnet.CrabnetError]] = {
    "validation": crabnet.ValidationError,
    "state": crabnet.StateError,
    "not_found": crabnet.NotFoundError,
    "store": crabnet.StoreError,
    "network": crabnet.NetworkError,
    "crypto": crabnet.CryptoError,
    "runner": crabnet.RunnerError,
    "busy": crabnet.BusyError,
    "config": crabnet.ConfigError,
    "io": crabnet.IoError,
    "stopped": crabnet.StoppedError,
    "internal": crabnet.InternalError,
}


def test_one_class_per_core_error_kind() -> None:
    assert issubclass(crabnet.CrabnetError, Exception)
    for kind, cls in CLASSES.items():
        assert issubclass(cls, crabnet.CrabnetError)
        assert cls.kind == kind
        assert cls.__module__ == "crabnet"
        exc = _crabnet._exception_for_kind(kind, f"a {kind} problem")
        assert type(exc) is cls
        assert str(exc) == f"a {kind} problem" and exc.kind == kind and exc.violation is None
    with pytest.raises(crabnet.ValidationError, match="unknown error kind"):
        _crabnet._exception_for_kind("nonsense", "x")
    # Every kind the core has (ErrorKind::ALL) has its own class.
    assert set(_crabnet.ERROR_KINDS) == set(CLASSES)


def test_validation_errors(make_node: MakeNode) -> None:
    node, runner = make_pair(make_node)
    with pytest.raises(crabnet.ValidationError, match="invalid SeedId") as bad_id:
        node.seed("not-an-id")
    assert bad_id.value.kind == "validation"
    with pytest.raises(crabnet.ValidationError, match="command must not be empty"):
        node.publish("   ")
    with pytest.raises(crabnet.ValidationError, match="min price 9 is above max price 2"):
        node.publish("true", min_price=9, max_price=2)
    with pytest.raises(crabnet.ValidationError, match="max_bids must be between 0 and"):
        node.publish("true", max_bids=2**32)
    with pytest.raises(crabnet.ValidationError, match="price must be between"):
        node.bid("0" * 32, -1)
    seed = node.publish("true", min_price=5, max_price=10)
    wait_for_seed(runner, seed.id)
    with pytest.raises(crabnet.ValidationError, match="outside the range 5..=10") as out:
        runner.bid(seed, 11)
    assert out.value.violation is not None
    assert out.value.violation.rule == "price_out_of_range"
    assert out.value.violation.details["price"] == 11
    with pytest.raises(crabnet.ValidationError, match="unknown transport"):
        crabnet.Node(transport="carrier-pigeon")
    with pytest.raises(crabnet.ValidationError, match="needs hub"):
        crabnet.Node(transport="memory")
    with pytest.raises(crabnet.ValidationError, match="timeout must be"):
        node.events(timeout=-1)
    with pytest.raises(crabnet.ValidationError, match="unknown seed status .*expected one of open"):
        node.seeds("almost-done")
    with pytest.raises(TypeError):
        runner.bid(seed, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        node.seed(42)  # type: ignore[arg-type]


def test_state_errors_carry_the_violated_rule(trio: list[crabnet.Node]) -> None:
    alice, bob, _ = trio
    seed = alice.publish("true", max_bids=2)
    wait_for_seed(bob, seed.id)
    with pytest.raises(crabnet.StateError, match="only the publisher") as not_publisher:
        bob.cancel(seed)
    violation = not_publisher.value.violation
    assert isinstance(violation, crabnet.Violation) and violation.rule == "not_publisher"
    assert violation.details["seed_id"] == seed.id and violation.details["action"] == "cancel"
    with pytest.raises(crabnet.StateError, match="still open") as still_open:
        bob.claim(seed)
    assert still_open.value.kind == "state"
    with pytest.raises(crabnet.StateError, match="may not bid on it") as own_seed:
        alice.bid(seed, 10)
    assert own_seed.value.violation is not None
    assert own_seed.value.violation.rule == "own_seed"
    assert own_seed.value.violation.details["seed_id"] == seed.id
    bob.bid(seed, 10)
    with pytest.raises(crabnet.StateError, match="already bid"):
        bob.bid(seed, 9)


def test_not_found(make_node: MakeNode) -> None:
    node = make_node("n")
    with pytest.raises(crabnet.NotFoundError, match="unknown seed") as missing:
        node.seed("0123456789abcdef0123456789abcdef")
    assert missing.value.violation is not None and missing.value.violation.rule == "unknown_seed"


def test_store_error_on_a_corrupt_database(tmp_path: Path) -> None:
    data = tmp_path / "corrupt"
    data.mkdir()
    (data / "crabnet.db").write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(crabnet.StoreError, match="database"):
        crabnet.Node(data_dir=data).start()


def test_network_error_when_the_port_is_taken(make_node: MakeNode, tmp_path: Path) -> None:
    port = free_udp_port()
    make_node("first", bind=f"127.0.0.1:{port}")
    with pytest.raises(crabnet.NetworkError, match="cannot bind UDP socket"):
        crabnet.Node(data_dir=tmp_path / "second", bind=f"127.0.0.1:{port}").start()


def test_runner_error_when_the_work_directory_cannot_be_made(
    make_node: MakeNode, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    publisher, node = make_pair(make_node, {"runner": {"work_root": work}})
    seed = claimed(publisher, node, "true")
    shutil.rmtree(work, ignore_errors=True)
    work.write_text("a file where the work directories go")
    with pytest.raises(crabnet.RunnerError, match="cannot run seed"):
        node.run(seed)


def test_busy_when_two_networked_nodes_share_a_data_directory(
    make_node: MakeNode, tmp_path: Path
) -> None:
    hub = crabnet.MemoryHub()
    make_node("shared", hub=hub)
    with pytest.raises(crabnet.BusyError, match="already listening"):
        crabnet.Node(data_dir=tmp_path / "shared", hub=hub).start()


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(crabnet.ConfigError, match="nmae"):
        crabnet.Node({"nmae": "typo"}, data_dir=tmp_path / "a").start()
    with pytest.raises(crabnet.ConfigError, match="bus_capacity"):
        crabnet.Node({"events": {"bus_capacity": 0}}, data_dir=tmp_path / "b").start()
    with pytest.raises(crabnet.ConfigError, match="line 3"):
        crabnet.config_from_toml('name = "x"\n[network]\ntick_ms = "fast"')
    with pytest.raises(crabnet.ConfigError, match="cannot read config file"):
        crabnet.load_config(tmp_path / "missing.toml")
    with pytest.raises(crabnet.ConfigError, match="invalid UDP settings"):
        crabnet.Node(data_dir=tmp_path / "c", bind="not an address").start()


def test_io_error_when_the_data_directory_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(crabnet.IoError, match="cannot create data directory"):
        crabnet.Node(data_dir=blocker / "node").start()


def test_stopped(make_node: MakeNode) -> None:
    node = make_node("n")
    seed = node.publish("true")
    stream = node.events()
    node.stop()
    for call in (node.overview, lambda: node.seed(seed), lambda: node.on_event(print)):
        with pytest.raises(crabnet.StoppedError):
            call()
    assert list(stream) == []  # the stream ends
    with pytest.raises(crabnet.StoppedError):
        stream.get(0)
