"""`crabnet.demo()` and `python -m crabnet demo`: the CLI's local demo network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import crabnet


def test_demo_runs_a_whole_lifecycle() -> None:
    lines: List[str] = []
    report = crabnet.demo(say=lines.append)
    assert isinstance(report, crabnet.DemoReport)
    assert report.converged and len(report.digests) == 3
    assert [name for name, _ in report.digests] == ["alice", "bob", "carol"]
    assert report.seed.status is crabnet.SeedStatus.SETTLED
    assert report.seed.seed.command == crabnet.DEFAULT_DEMO_COMMAND
    assert report.seed.result is not None and "5 squared is 25" in report.seed.result.output_excerpt
    assert report.base_dir is None
    assert any("published seed" in line for line in lines)
    assert lines[-1] == "alice settled: accepted"


def test_demo_options(tmp_path: Path) -> None:
    report = crabnet.demo(nodes=4, command="echo hi", base_dir=tmp_path, say=None)
    assert report.converged and len(report.digests) == 4
    assert report.seed.result is not None and report.seed.result.output_excerpt == "hi\n"
    assert report.base_dir == str(tmp_path) and (tmp_path / "dave" / "crabnet.db").exists()
    with pytest.raises(crabnet.ValidationError, match="at least 3 nodes"):
        crabnet.demo(nodes=2, say=None)


def test_an_exception_in_say_is_raised_after_the_demo() -> None:
    def say(line: str) -> None:
        raise OSError("the terminal went away")

    with pytest.raises(OSError, match="terminal went away"):
        crabnet.demo(say=say)


def test_python_dash_m_crabnet_demo() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crabnet", "demo"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "published seed" in done.stdout and "3 nodes agree" in done.stdout
    assert "status      settled" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "crabnet", "demo", "--json", "--nodes", "3", "--command", "true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["converged"] and report["status"] == "settled" and len(report["digests"]) == 3
    bad = subprocess.run(
        [sys.executable, "-m", "crabnet", "demo", "--nodes", "1"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and bad.stderr.startswith("error: the demo needs at least 3 nodes")
