#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests against a real scratch PostgreSQL
# (started and removed by the tests themselves; the system cluster is never touched).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The tests build the plugin themselves (cargo build -p wal2arrow --release) unless
# WAL2ARROW_PLUGIN names a library to load instead.

# Scratch clusters live here; each one's watchdog removes it when the test process ends.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/wal2arrow-tests.XXXXXX")
chmod 755 "$scratch"
export WAL2ARROW_SCRATCH_ROOT="$scratch"

status=0
# --all-targets covers unit, integration and bench targets (benches run once, as tests);
# doctests (the README's examples among them) need their own run.
cargo test --workspace --all-targets "$@" || status=$?
cargo test --workspace --exclude wal2arrow --doc "$@" || status=$?

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
