#!/usr/bin/env bash
# The C ABI suite:
#  1. include/crabnet.h compiles as C99 and as C++ with -Wall -Wextra -Werror -pedantic, and
#     the shared library exports only crabnet_* symbols, all declared in it;
#  2. the library installs into a temporary prefix, and the examples (examples/c) and the
#     README's C program build with the README's pkg-config line and run;
#  3. the C tests (tests/c/*.c) run linked with the static library under AddressSanitizer,
#     LeakSanitizer and UndefinedBehaviorSanitizer (any finding fails), then linked with the
#     shared library under valgrind memcheck with `--leak-check=full --error-exitcode=1` (any
#     error and any leak, also "possibly lost", fails; no suppressions; the nodes run tasks
#     without the task sandbox there, see below), and so does the README's C program. Tests
#     that start libp2p pass too: libp2p's timers run on each node's runtime, which ends
#     when the node is freed (vendor/futures-timer/PATCHED.md).
# Needs gcc and g++ (CC and CXX override them), pkg-config, nm and valgrind; installs
# Debian's valgrind package when valgrind is missing, and fails, never skips, when it cannot.
# Honors CARGO_TARGET_DIR; builds the debug library.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
SUITE=tests/c
. "$root/tests/debian.sh"
if ! command -v valgrind > /dev/null; then
    echo "tests/c: installing Debian's valgrind"
    if ! apt_install --no-install-recommends valgrind || ! command -v valgrind > /dev/null; then
        echo "tests/c: cannot install valgrind, which the memcheck runs need; install it" >&2
        exit 1
    fi
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
CC=${CC:-gcc}
CXX=${CXX:-g++}
out=$CARGO_TARGET_DIR/c-tests
lib=$CARGO_TARGET_DIR/debug
include=$root/include
tests=(errors lifecycle callbacks udp runs web logs replication)
warn=(-Wall -Wextra -Werror)

step() { printf -- '--> %s\n' "$*"; }

rm -rf "$out"
mkdir -p "$out"

step "build the library (debug)"
cargo build --quiet --manifest-path "$root/Cargo.toml" -p crabnet-ffi

step "the header compiles as C99 and C++ (-Wall -Wextra -Werror -pedantic)"
printf '#include "crabnet.h"\nint main(void) { return crabnet_version() == NULL; }\n' \
    > "$out/header.c"
"$CC" -std=c99 -pedantic "${warn[@]}" -I"$include" -c "$out/header.c" -o "$out/header-c99.o"
"$CXX" -std=c++11 -pedantic "${warn[@]}" -x c++ -I"$include" -c "$out/header.c" \
    -o "$out/header-cxx11.o"
"$CXX" -std=c++17 -pedantic "${warn[@]}" -x c++ -I"$include" -c "$out/header.c" \
    -o "$out/header-cxx17.o"

step "the shared library exports only crabnet_* symbols, each declared in the header"
exports=$(nm -D --defined-only "$lib/libcrabnet_ffi.so" | awk '$2 == "T" { print $3 }')
[ -n "$exports" ]
for symbol in $exports; do
    case $symbol in
        crabnet_*) ;;
        *) echo "exported symbol without the crabnet_ prefix: $symbol" >&2; exit 1 ;;
    esac
    grep -qE "[ *]$symbol\(" "$include/crabnet.h" \
        || { echo "exported but not in crabnet.h: $symbol" >&2; exit 1; }
done

step "install into a temporary prefix; build the examples with pkg-config"
prefix=$out/prefix
PROFILE=debug NO_BUILD=1 "$root/crabnet-ffi/install.sh" "$prefix" > /dev/null
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
rpath=-Wl,-rpath,$prefix/lib
# shellcheck disable=SC2046 # pkg-config output is meant to be split into words
"$CC" -std=c99 "${warn[@]}" "$root/examples/c/events.c" $(pkg-config --cflags --libs crabnet) \
    "$rpath" -o "$out/events"
# shellcheck disable=SC2046
"$CXX" -std=c++17 "${warn[@]}" "$root/examples/c/raii.cpp" $(pkg-config --cflags --libs crabnet) \
    "$rpath" -o "$out/raii"
# The publish loop that scripts/bench-bindings.sh times against the Rust API and Python.
# shellcheck disable=SC2046
"$CC" -std=c99 "${warn[@]}" "$root/examples/c/publish_bench.c" $(pkg-config --cflags --libs crabnet) \
    "$rpath" -o "$out/publish_bench"
# The README's C program (the ```c block), built exactly as the README says.
awk '/^```c$/ { inside = 1; next } /^```$/ { inside = 0 } inside' "$root/README.md" \
    > "$out/readme.c"
[ -s "$out/readme.c" ]
# shellcheck disable=SC2046
"$CC" "${warn[@]}" "$out/readme.c" $(pkg-config --cflags --libs crabnet) "$rpath" \
    -o "$out/readme"
# The static library links with the documented line too.
# shellcheck disable=SC2046
"$CC" -std=c99 "${warn[@]}" "$root/examples/c/events.c" $(pkg-config --cflags crabnet) \
    "$prefix/lib/libcrabnet_ffi.a" $(pkg-config --variable=static_libs crabnet) \
    -o "$out/events-static"

step "run the examples"
"$out/events" > "$out/events.log"
grep -q 'seed_cancelled' "$out/events.log"
"$out/events-static" > "$out/events-static.log"
grep -q 'published seed' "$out/events-static.log"
"$out/raii" > "$out/raii.log"
grep -q 'alice settled: accepted' "$out/raii.log"
mkdir -p "$out/tmp"
"$out/publish_bench" "$out/tmp/publish-bench" 5 > "$out/publish_bench.log"
grep -qE '^c 5 [0-9]+$' "$out/publish_bench.log"
TMPDIR=$out/tmp "$out/readme" > "$out/readme.log"
grep -q 'seed_published' "$out/readme.log"

san=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# shellcheck disable=SC2207
static_libs=($(pkg-config --variable=static_libs crabnet))
for t in "${tests[@]}"; do
    step "tests/c/$t.c under AddressSanitizer + LeakSanitizer + UndefinedBehaviorSanitizer"
    "$CC" -std=c99 -D_XOPEN_SOURCE=700 -g -O1 "${warn[@]}" "${san[@]}" -I"$include" \
        -I"$root/tests/c" "$root/tests/c/$t.c" "$lib/libcrabnet_ffi.a" "${static_libs[@]}" \
        -o "$out/$t-asan"
    "$out/$t-asan"
done

# Valgrind cannot host the task sandbox: it does not implement the Landlock system calls,
# and the sandbox's namespace set-up processes (which exit without exec) count as leaking
# under it. The nodes run tasks without a sandbox here (runner.sandbox = "none": only the
# task's guard process is forked, and it ends by exec); the sanitizer runs above use the full
# sandbox.
export CRABNET_TEST_SANDBOX=none
for t in "${tests[@]}"; do
    step "tests/c/$t.c under valgrind memcheck"
    "$CC" -std=c99 -D_XOPEN_SOURCE=700 -g "${warn[@]}" -I"$include" -I"$root/tests/c" \
        "$root/tests/c/$t.c" -L"$lib" -lcrabnet_ffi -Wl,-rpath,"$lib" -o "$out/$t-plain"
    # Exactly the default memcheck flags, no suppressions.
    valgrind -q --error-exitcode=1 --leak-check=full "$out/$t-plain"
done
step "the README's C program under valgrind memcheck"
TMPDIR=$out/tmp valgrind -q --error-exitcode=1 --leak-check=full "$out/readme" \
    > "$out/readme-valgrind.log"
grep -q 'seed_published' "$out/readme-valgrind.log"

step "C ABI suite passed"
