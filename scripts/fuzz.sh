#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), on the stable toolchain (no sanitizer).
# New inputs go to a scratch corpus; the committed corpus in fuzz/corpus is read, not written.
# A crash stops the script with the target's output and the input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
cd fuzz
cargo fuzz build -s none -O
scratch=$(mktemp -d "${TMPDIR:-/tmp}/wal2arrow-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
for target in frames wire batch wal2json copy; do
    mkdir -p "$scratch/$target"
    echo "== fuzz $target for ${seconds}s" >&2
    if ! cargo fuzz run -s none -O "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$scratch/$target.log" 2>&1; then
        tail -n 60 "$scratch/$target.log" >&2
        echo "fuzz.sh: $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^Done|stat::number_of_executed_units' "$scratch/$target.log" >&2 || true
done
