"""The node's log records reach Python's `logging` (loggers `crabnet.*`), filtered by
`CRABNET_LOG`."""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

import pytest
from helpers import MakeNode

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
