#!/usr/bin/env bash
# Builds the Crabnet C library and installs it with its header and pkg-config file:
#   PREFIX/include/crabnet.h
#   PREFIX/lib/libcrabnet_ffi.so, PREFIX/lib/libcrabnet_ffi.a
#   PREFIX/lib/pkgconfig/crabnet.pc
#
# Usage: crabnet-ffi/install.sh [PREFIX]        (default /usr/local)
# Environment: PROFILE=release|debug (default release); NO_BUILD=1 installs what is already
# built; CARGO_TARGET_DIR is honored.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
prefix=${1:-/usr/local}
profile=${PROFILE:-release}
target=${CARGO_TARGET_DIR:-$root/target}

case $profile in
    release) build_flags=(--release) ;;
    debug) build_flags=() ;;
    *) echo "PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --manifest-path "$root/Cargo.toml" -p crabnet-ffi "${build_flags[@]}"
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
libdir=$prefix/lib
install -d "$prefix/include" "$libdir/pkgconfig"
install -m 644 "$here/../include/crabnet.h" "$prefix/include/crabnet.h"
install -m 755 "$target/$profile/libcrabnet_ffi.so" "$libdir/libcrabnet_ffi.so"
install -m 644 "$target/$profile/libcrabnet_ffi.a" "$libdir/libcrabnet_ffi.a"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" "$here/crabnet.pc.in" \
    > "$libdir/pkgconfig/crabnet.pc"
echo "installed Crabnet $version into $prefix"
case ":${PKG_CONFIG_PATH:-}:" in
    *":$libdir/pkgconfig:"*) ;;
    *) echo "if pkg-config does not find it: export PKG_CONFIG_PATH=$libdir/pkgconfig" ;;
esac
