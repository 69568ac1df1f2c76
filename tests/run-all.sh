#!/usr/bin/env bash
# Runs every Crabnet test suite: formatting, lints, and the Rust unit, property, integration,
# CLI, crash and multi-process tests, the C ABI tests, and the dashboard's browser test. Works on
# a fresh machine with the Rust toolchain and Node.js (the browser test installs Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "Rust tests"
cargo test --workspace

step "C ABI: header, examples, C tests under sanitizers and valgrind (tests/c/run.sh)"
./tests/c/run.sh

step "demo and Rust examples"
cargo run --quiet --bin crabnet -- demo > /dev/null
cargo run --quiet -p crabnet-core --example three_nodes > /dev/null
cargo run --quiet -p crabnet-core --example blocking > /dev/null

step "web dashboard in headless Chromium (tests/web/run.sh; installs chromium and playwright-core)"
./tests/web/run.sh

printf '\nall suites passed\n'
