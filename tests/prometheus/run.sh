#!/usr/bin/env bash
# Checks the shipped Prometheus rules (ops/prometheus/crabnet-rules.yml) with promtool: the
# file is valid and its unit tests (crabnet-rules.test.yml) pass. Installs Debian's
# `prometheus` package (which ships promtool) when promtool is missing; fails, never skips,
# when it cannot. A unit test in crabnet-core (web::metrics) checks that every metric the rules
# use is one the node exports.
set -euo pipefail
cd "$(dirname "$0")/../.."
SUITE=tests/prometheus
. tests/debian.sh

PROMTOOL="${PROMTOOL:-promtool}"
if ! command -v "$PROMTOOL" > /dev/null; then
    echo "tests/prometheus: installing Debian's prometheus (for promtool)"
    if ! apt_install --no-install-recommends prometheus; then
        echo "tests/prometheus: cannot install the Debian package prometheus, which provides" \
            "promtool; install it (or set PROMTOOL) to check ops/prometheus" >&2
        exit 1
    fi
fi
"$PROMTOOL" --version 2>&1 | head -1
"$PROMTOOL" check rules ops/prometheus/crabnet-rules.yml
"$PROMTOOL" test rules ops/prometheus/crabnet-rules.test.yml
