#!/usr/bin/env bash
# Browser test of the monitoring dashboard: installs what it needs (Debian's chromium, the
# pinned playwright-core from npm), builds the CLI, and runs tests/web/dashboard.test.mjs with
# node's test runner. Everything talks to 127.0.0.1 only. The screenshot goes to
# $CRABNET_WEB_ARTIFACTS (default: <cargo target dir>/web-test/dashboard.png).
set -euo pipefail
cd "$(dirname "$0")/../.."
SUITE=tests/web
. tests/debian.sh

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    echo "tests/web: installing Debian's chromium"
    apt_install chromium
fi
"$CHROMIUM" --version

command -v node > /dev/null || { echo "tests/web: node (20 or later) is required" >&2; exit 1; }
# playwright-core only drives the system's chromium: it downloads no browser.
npm ci --prefix tests/web --no-audit --no-fund --loglevel=error

cargo build --quiet --bin crabnet
target_dir="$(cargo metadata --format-version 1 --no-deps |
    node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).target_directory))')"

export CHROMIUM
export CRABNET_BIN="$target_dir/debug/crabnet"
export CRABNET_WEB_ARTIFACTS="${CRABNET_WEB_ARTIFACTS:-$target_dir/web-test}"
node --test --test-reporter=spec tests/web/
