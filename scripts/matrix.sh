#!/usr/bin/env bash
# The whole test suite against every supported PostgreSQL major, one after the other, and a
# Markdown table of the outcome (the README's matrix is this script's output).
#
#   scripts/matrix.sh [MAJOR…]        (default: 14 15 16 17 18)
#
# Each run's full log is kept in ${MATRIX_LOGS:-target/matrix}/pgN.log.
set -uo pipefail
cd "$(dirname "$0")/.."

majors=("$@")
[ ${#majors[@]} -eq 0 ] && majors=(14 15 16 17 18)
logs=${MATRIX_LOGS:-target/matrix}
mkdir -p "$logs"

rows=()
for pg in "${majors[@]}"; do
    log="$logs/pg$pg.log"
    echo "matrix.sh: PostgreSQL $pg (log: $log)" >&2
    start=$(date +%s)
    bash scripts/test.sh --pg "$pg" >"$log" 2>&1
    status=$?
    secs=$(( $(date +%s) - start ))
    # Every test binary's summary line, added up.
    summary=$(grep -E '^test result: ' "$log" \
        | awk '{ p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d ignored", p, f, i }')
    version=$(grep -oE 'installed postgres \(PostgreSQL\) [0-9.]+' "$log" | awk '{print $4}' | tail -1)
    if [ -z "$version" ]; then
        bindir=$( [ "$pg" = 15 ] && echo /usr/lib/postgresql/15/bin || scripts/postgres.sh "$pg" 2>/dev/null )
        version=$("$bindir/postgres" --version | awk '{print $3}')
    fi
    result=$([ $status -eq 0 ] && echo "passed" || echo "FAILED (exit $status)")
    note=$([ "$pg" = 15 ] && echo "wal2json included" || echo "no wal2json in this build: its parts skipped")
    rows+=("| $pg | $version | $result — $summary ($note) | ${secs} s |")
done

echo "| major | server | result | time |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
