# Sourced by the test scripts that install what they need from Debian (tests/prometheus/run.sh,
# tests/web/run.sh, tests/c/run.sh). Set SUITE (e.g. "tests/web") first: it prefixes the messages.

# as_root CMD...: runs CMD as root (directly when root, else with sudo); fails when neither.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo > /dev/null; then
        sudo "$@"
    else
        echo "$SUITE: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# apt_install [APT-GET OPTIONS] PACKAGE...: installs Debian packages quietly.
apt_install() {
    as_root apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" > /dev/null
}
