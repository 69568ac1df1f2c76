"""The type information shipped with the package: `py.typed`, the stubs of the native module
(checked against it by stubtest) and `mypy --strict` on the examples."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import crabnet

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(crabnet.__file__).parent

mypy_api = pytest.importorskip("mypy.api")


def mypy(tmp_path: Path, *targets: str) -> tuple[str, int]:
    out, err, status = mypy_api.run(
        ["--strict", "--cache-dir", str(tmp_path / "mypy-cache"), *targets]
    )
    return out + err, status


def test_package_ships_type_information() -> None:
    assert (PACKAGE / "py.typed").exists()
    assert (PACKAGE / "_crabnet.pyi").exists()


def test_examples_pass_mypy_strict(tmp_path: Path) -> None:
    output, status = mypy(tmp_path, str(ROOT / "examples" / "python"))
    assert status == 0, output


def test_stubs_make_mypy_catch_misuse(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "import crabnet\n"
        "node = crabnet.Node(data_dir='/tmp/x', hub='not a hub')\n"
        "view = node.publish('true', max_bids='many')\n"
        "view.status = crabnet.SeedStatus.OPEN\n"
        "node.bid(view)\n"
        "price: str = view.seed.max_price\n"
        "crabnet.MemoryHub().set_isolated('a')\n"
    )
    output, status = mypy(tmp_path, str(wrong))
    assert status == 1, output
    for line in (2, 3, 4, 5, 6, 7):
        assert f"wrong.py:{line}: error" in output, output


def test_stubs_match_the_native_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "crabnet._crabnet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_pure_python_parts_are_python_3_9() -> None:
    # The wheel is abi3 for CPython 3.9+; mypy no longer checks 3.9, the parser still does.
    for path in PACKAGE.glob("*.py"):
        ast.parse(path.read_text(), str(path), feature_version=(3, 9))
