"""The node's log records reach Python's `logging` (loggers `crabnet.*`), filtered by
`CRABNET_LOG`."""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

import pytest
from helpers import MakeNode, claimed, make_pair

import crabnet


def wait_record(
    caplog: pytest.LogCaptureFixture, matches: Callable[[logging.LogRecord], bool]
) -> logging.LogRecord:
    """The first captured record that `matches`; the records come from Crabnet's log thread."""
    deadline = time.monotonic() + 20
    while True:
        for record in caplog.records:
            if matches(record):
                return record
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.01)


@pytest.fixture
def forwarding(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forwarding with the default filter, and again so after the test."""
    monkeypatch.delenv("CRABNET_LOG", raising=False)
    crabnet.forward_logs()
    yield
    monkeypatch.delenv("CRABNET_LOG", raising=False)
    crabnet.forward_logs()


def test_core_warning_reaches_logging(
    forwarding: None, make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="crabnet")
    # A node on a network that runs other nodes' tasks without a sandbox warns at start.
    make_node("loner", {"runner": {"sandbox": "none"}}, hub=crabnet.MemoryHub())
    record = wait_record(caplog, lambda r: 'runner.sandbox = "none"' in r.getMessage())
    assert record.name == "crabnet.core.node"
    assert record.levelno == logging.WARNING
    assert crabnet.logs_dropped() == 0


def test_crabnet_log_is_read(
    forwarding: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="crabnet")
    monkeypatch.setenv("CRABNET_LOG", "crabnet_core=loud")
    crabnet.forward_logs()
    record = wait_record(caplog, lambda r: "CRABNET_LOG" in r.getMessage())
    assert record.name == "crabnet.core.logging"
    assert record.levelno == logging.WARNING


def test_forwarding_stops_and_restarts(
    forwarding: None, make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="crabnet")
    crabnet.forward_logs(False)
    crabnet.forward_logs(False)
    crabnet.forward_logs()
    make_node("again", {"runner": {"sandbox": "none"}}, hub=crabnet.MemoryHub())
    wait_record(caplog, lambda r: r.name == "crabnet.core.node")


def test_crabnet_log_debug_reaches_logging_and_the_default_does_not(
    forwarding: None,
    make_node: MakeNode,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="crabnet")
    publisher, runner = make_pair(make_node)

    def debug_records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno == logging.DEBUG]

    # The default filter (warnings): a run's debug records stay in the core. Records arrive in
    # order, so once a later warning is here an earlier debug record would be too.
    runner.run(claimed(publisher, runner, "true"))
    make_node("marker", {"runner": {"sandbox": "none"}}, hub=crabnet.MemoryHub())
    wait_record(caplog, lambda r: 'runner.sandbox = "none"' in r.getMessage())
    assert debug_records() == []

    # CRABNET_LOG=crabnet_core=debug: the next run's debug records reach `logging`.
    monkeypatch.setenv("CRABNET_LOG", "crabnet_core=debug")
    crabnet.forward_logs()
    runner.run(claimed(publisher, runner, "true"))
    record = wait_record(
        caplog, lambda r: r.levelno == logging.DEBUG and r.name == "crabnet.core.runner"
    )
    assert "task" in record.getMessage()
