#!/usr/bin/env bash
# Runs every Crabnet test suite: formatting, lints, and the Rust unit, property, integration,
# CLI, crash and multi-process tests, the C ABI suite (tests/c/run.sh), the demo and the Rust
# examples, the Python package's suite, the shipped Prometheus rules (promtool), and the
# dashboard's browser test. Works on a fresh
# machine with the Rust toolchain, gcc/g++ and pkg-config (valgrind when present), Python 3.9+
# (packages come from PyPI) and Node.js 20+ (the browser test installs Chromium and
# playwright-core; the Prometheus step installs Debian's prometheus for promtool).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "Rust tests"
# mDNS and UDP broadcast are tested inside network namespaces (crabnet-core/tests/lan.rs); here
# a machine that cannot make them fails those tests instead of skipping them.
CRABNET_REQUIRE_NAMESPACES=1 cargo test --workspace

step "Prometheus rules: promtool check and test (tests/prometheus/run.sh; installs prometheus)"
./tests/prometheus/run.sh

step "C ABI: header, examples, C tests under sanitizers and valgrind (tests/c/run.sh)"
./tests/c/run.sh

step "demo and Rust examples"
cargo run --quiet --bin crabnet -- demo > /dev/null
cargo run --quiet -p crabnet-core --example three_nodes > /dev/null
cargo run --quiet -p crabnet-core --example blocking > /dev/null

# --- Python (crabnet-py) -----------------------------------------------------------------------
# A fresh virtualenv every run, with maturin, ziglang, pytest and mypy from PyPI.
# tests/python/build-wheel.sh builds the portable wheel (abi3, manylinux_2_17, stripped) and the
# sdist, and checks both (tags, stripping, glibc symbol versions, sdist contents); it builds into
# the workspace target dir with the dev profile, reusing what `cargo test` compiled
# (CRABNET_PY_PROFILE=release builds the release wheel users get). The suite then runs against
# that wheel, installed into the virtualenv: there is no second build.
step "Python: build and check the wheel and sdist (tests/python/build-wheel.sh)"
PY_VENV="$(mktemp -d "${TMPDIR:-/tmp}/crabnet-py-venv.XXXXXX")"
trap 'rm -rf "$PY_VENV"' EXIT
"${PYTHON:-python3}" -m venv "$PY_VENV"
PY="$PY_VENV/bin/python"
"$PY" -m pip install --quiet --disable-pip-version-check \
    'maturin>=1.16,<2' ziglang pytest mypy
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" CRABNET_PY_PROFILE="${CRABNET_PY_PROFILE:-dev}" \
    PYTHON="$PY" ./tests/python/build-wheel.sh "$PY_VENV/dist"

step "Python: install the built wheel in the fresh virtualenv"
"$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
    "$PY_VENV"/dist/crabnet-*.whl
# The suite must import the installed wheel, never a source tree.
"$PY" -c 'import sys, crabnet; assert crabnet.__file__.startswith(sys.prefix), crabnet.__file__'

step "Python: pytest tests/python"
"$PY" -m pytest tests/python

step "Python: mypy --strict on examples/python and tests/python"
"$PY" -m mypy --strict --cache-dir "$PY_VENV/mypy-cache" examples/python tests/python

step "web dashboard in headless Chromium (tests/web/run.sh; installs chromium and playwright-core)"
./tests/web/run.sh

printf '\nall suites passed\n'
