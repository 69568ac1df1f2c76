#!/usr/bin/env bash
# Builds, in release, the three publish loops that scripts/bench-bindings.py compares (the
# Rust API, the C ABI, Python) and runs it; arguments go to bench-bindings.py:
#
#   scripts/bench-bindings.sh [--rounds 9] [--count 300]
#
# - Rust: the publish_bench example (examples/rust/publish_bench.rs);
# - C: examples/c/publish_bench.c against the release libcrabnet_ffi.so (the header and the
#   link line of tests/c/run.sh; that suite builds and runs the program too, in debug);
# - Python: the release wheel (tests/python/build-wheel.sh) in a temporary virtualenv.
# Honors CARGO_TARGET_DIR and PYTHON (an interpreter 3.9+). Everything temporary is removed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
lib=$CARGO_TARGET_DIR/release
work=$(mktemp -d "${TMPDIR:-/tmp}/crabnet-bench-bindings.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "--> cargo build --release (crabnet-ffi, the publish_bench example)"
cargo build --quiet --release --workspace --lib --example publish_bench
echo "--> cc examples/c/publish_bench.c"
"${CC:-gcc}" -std=c99 -O2 -Wall -Wextra -Werror -I"$root/include" \
    "$root/examples/c/publish_bench.c" -L"$lib" -lcrabnet_ffi -Wl,-rpath,"$lib" \
    -o "$work/publish_bench"
echo "--> the release wheel, in a temporary virtualenv"
"${PYTHON:-python3}" -m venv "$work/venv"
py=$work/venv/bin/python
"$py" -m pip install --quiet --disable-pip-version-check 'maturin>=1.16,<2' ziglang
CRABNET_PY_PROFILE=release PYTHON="$py" ./tests/python/build-wheel.sh "$work/dist" > /dev/null
"$py" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
    "$work"/dist/crabnet-*.whl
echo "--> scripts/bench-bindings.py"
"$py" "$root/scripts/bench-bindings.py" --rust "$lib/examples/publish_bench" \
    --c "$work/publish_bench" "$@"
