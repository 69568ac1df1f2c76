#!/usr/bin/env bash
# Builds the portable wheel of crabnet-py and its sdist, then checks them (check_wheel.py):
#
#   tests/python/build-wheel.sh [OUT_DIR]        # default OUT_DIR: <cargo target dir>/wheels
#
# - The wheel is abi3 (CPython 3.9+) for manylinux2014 (manylinux_2_17: glibc 2.17 and newer,
#   e.g. RHEL/CentOS 7+, Debian 9+, Ubuntu 18.04+), with a stripped extension module.
# - maturin builds it; zig (PyPI package `ziglang`) links the extension module against the
#   symbol versions of glibc 2.17 (`maturin zig cc -target <arch>-linux-gnu.2.17`). Only that
#   final link goes through zig: the crates are compiled as `cargo build` compiles them, so a
#   build after `cargo build`/`cargo test` recompiles only pyo3 (maturin enables its
#   `extension-module` feature) and crabnet-py. (`maturin build --zig` would instead build the
#   whole dependency tree a second time for an explicit `--target`.) C code compiled against
#   the build machine's newer glibc headers calls fcntl64 (glibc 2.28+): glibc-compat.c supplies
#   it, and check_wheel.py fails on any other symbol that glibc 2.17 lacks.
# - The checks: wheel tags, stripped module, newest required glibc symbol <= 2.17, and no
#   unversioned libc reference; the sdist holds Cargo.lock, the crabnet-core sources and the
#   Python package.
#
# Environment: PYTHON, an interpreter (3.9+) with maturin and ziglang installed (default
# python3; when either is missing, they are installed into a temporary virtualenv);
# CRABNET_PY_PROFILE, the cargo profile (default release; tests/run-all.sh uses dev, which
# reuses what `cargo test` compiled); CARGO_TARGET_DIR as for cargo.
# Prints the paths of the wheel and the sdist as its last two lines (`wheel: ...`, `sdist: ...`).
set -euo pipefail
cd "$(dirname "$0")/../.."

TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
OUT="${1:-$TARGET_DIR/wheels}"
PROFILE="${CRABNET_PY_PROFILE:-release}"
PY="${PYTHON:-python3}"
ARCH="$(uname -m)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/crabnet-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

if ! "$PY" -c 'import maturin, ziglang' 2>/dev/null; then
    echo "build-wheel: no maturin or ziglang for $PY; installing both into a temporary venv"
    "$PY" -m venv "$WORK/venv"
    PY="$WORK/venv/bin/python"
    "$PY" -m pip install --quiet --disable-pip-version-check 'maturin>=1.16,<2' ziglang
fi
SCRIPTS="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
MATURIN="$SCRIPTS/maturin"
# maturin finds zig as `python -m ziglang` of the first python3 on PATH.
export PATH="$SCRIPTS:$PATH"

# The linker: zig's cc for glibc 2.17, called the way cargo-zigbuild (maturin --zig) calls it,
# plus glibc-compat.c (fcntl64 for glibc < 2.28). Both stay at a fixed place in the target dir:
# their paths are part of crabnet-py's rustc arguments, so a rebuild without changes is a no-op.
LINK_DIR="$TARGET_DIR/crabnet-wheel"
mkdir -p "$LINK_DIR"
printf '#!/bin/sh\nexec "%s" zig cc -- -fno-sanitize=all -target %s "$@"\n' \
    "$MATURIN" "$ARCH-linux-gnu.2.17" > "$LINK_DIR/zigcc"
chmod +x "$LINK_DIR/zigcc"
"$LINK_DIR/zigcc" -O2 -fPIC -c tests/python/glibc-compat.c -o "$LINK_DIR/glibc-compat.o"

mkdir -p "$OUT"
rm -f "$OUT"/crabnet-*.whl "$OUT"/crabnet-*.tar.gz

start=$SECONDS
# `-- -C linker=...` reaches only crabnet-py's own rustc call (maturin runs `cargo rustc`).
CARGO_TARGET_DIR="$TARGET_DIR" "$MATURIN" build --manifest-path crabnet-py/Cargo.toml \
    --profile "$PROFILE" --compatibility manylinux2014 --strip --out "$OUT" \
    -- -C "linker=$LINK_DIR/zigcc" -C "link-arg=$LINK_DIR/glibc-compat.o"
echo "build-wheel: wheel built in $((SECONDS - start)) s (profile $PROFILE)"
"$MATURIN" sdist --manifest-path crabnet-py/Cargo.toml --out "$OUT"

WHEEL="$(ls "$OUT"/crabnet-*.whl)"
SDIST="$(ls "$OUT"/crabnet-*.tar.gz)"
"$PY" tests/python/check_wheel.py "$WHEEL" "$SDIST"
echo "wheel: $WHEEL"
echo "sdist: $SDIST"
