#!/usr/bin/env bash
# Checks the shipped Prometheus rules (ops/prometheus/crabnet-rules.yml) with promtool: the
# file is valid and its unit tests (crabnet-rules.test.yml) pass. Installs Debian's
# `prometheus` package (which ships promtool) when promtool is missing; fails, never skips,
# when it cannot. A unit test in crabnet-core (web::metrics) checks that every metric the rules
# use is one the node exports.
set -euo pipefail
cd "$(dirname "$0")/../.."

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo > /dev/null; then
        sudo "$@"
    else
        echo "tests/prometheus: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

PROMTOOL="${PROMTOOL:-promtool}"
if ! command -v "$PROMTOOL" > /dev/null; then
    echo "tests/prometheus: installing Debian's prometheus (for promtool)"
    if ! { as_root apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus > /dev/null; }; then
        echo "tests/prometheus: cannot install the Debian package prometheus, which provides" \
            "promtool; install it (or set PROMTOOL) to check ops/prometheus" >&2
        exit 1
    fi
fi
"$PROMTOOL" --version 2>&1 | head -1
"$PROMTOOL" check rules ops/prometheus/crabnet-rules.yml
"$PROMTOOL" test rules ops/prometheus/crabnet-rules.test.yml
