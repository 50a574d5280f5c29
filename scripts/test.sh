#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests against a real scratch PostgreSQL
# (started and removed by the tests themselves; the system cluster is never touched).
#
#   scripts/test.sh [--pg N] [cargo test arguments…]
#
# The Rust tests (cargo test, to which the other arguments go), then the Python package's
# (scripts/python.sh). --pg N runs the suite against PostgreSQL N (14 to 18): Debian's for 15
# (the default), else a server scripts/postgres.sh installs, with the plugin built for that
# major. Those servers have no wal2json, so the fallback's tests skip it there (they say so);
# against Debian's 15 they never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

pg=15
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --pg) pg=${2:?"--pg needs a major version (14 to 18)"}; shift 2 ;;
        --pg=*) pg=${1#--pg=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done

scripts/setup.sh
# The tests build the plugin themselves (cargo build -p wal2arrow --release) unless
# WAL2ARROW_PLUGIN names a library to load instead.
if [ "$pg" = 15 ]; then
    export WAL2ARROW_REQUIRE_WAL2JSON=1
else
    bindir=$(scripts/postgres.sh "$pg")
    target="${CARGO_TARGET_DIR:-target}/pg$pg"
    echo "test.sh: building the plugin for PostgreSQL $pg ($bindir)" >&2
    PGRX_PG_CONFIG_PATH="$bindir/pg_config" cargo build --release -p wal2arrow \
        --no-default-features --features "pg$pg" --target-dir "$target"
    export PG_BINDIR="$bindir" WAL2ARROW_PLUGIN="$PWD/$target/release/libwal2arrow.so"
    case "$target" in /*) WAL2ARROW_PLUGIN="$target/release/libwal2arrow.so" ;; esac
fi

# Scratch clusters live here; each one's watchdog removes it when the test process ends.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/wal2arrow-tests.XXXXXX")
chmod 755 "$scratch"
export WAL2ARROW_SCRATCH_ROOT="$scratch"

status=0
# --all-targets covers unit, integration and bench targets (benches run once, as tests);
# doctests (the README's examples among them) need their own run.
cargo test --workspace --all-targets ${args[@]+"${args[@]}"} || status=$?
cargo test --workspace --exclude wal2arrow --doc ${args[@]+"${args[@]}"} || status=$?
# The Python package: its wheel, built and installed into a virtual environment, and its
# pytest suite against a scratch PostgreSQL of the same server and plugin.
scripts/python.sh || status=$?

# Wait for the watchdogs to stop their servers, then make sure nothing is left.
for _ in $(seq 1 100); do
    [ -z "$(ls -A "$scratch")" ] && break
    sleep 0.1
done
if [ -n "$(ls -A "$scratch")" ]; then
    echo "test.sh: scratch clusters still present in $scratch" >&2
    status=1
fi
rm -rf "$scratch"
exit "$status"
