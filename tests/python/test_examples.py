"""The examples run (they wait for peers before publishing, as every networked script must)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import crabnet

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"


def test_three_nodes_example() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "three_nodes.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alice knows bob, carol" in done.stdout
    assert "ran the task: 'the answer is 42'" in done.stdout
    assert "alice settled: accepted, 20 due" in done.stdout


def test_notebook_example() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import notebook
    finally:
        sys.path.remove(str(EXAMPLES))
    views = notebook.market_round(["echo one", "exit 1"], bidders=2)
    assert [v.status for v in views] == [crabnet.SeedStatus.SETTLED] * 2
    assert notebook.summary(views)[0][:3] == ("echo one", "settled", "one")
    assert sum(notebook.earnings(views).values()) == 10
