#!/usr/bin/env bash
# The demo: builds the plugin and the wal2arrow command, starts a scratch PostgreSQL with the
# plugin loaded, creates `users` and `orders`, makes changes, streams them to Parquet in
# ./demo-output (the `stream --sink parquet` code), prints a per-table summary and rows read
# back from the files, then stops and removes everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --quiet --release -p wal2arrow-cli --bin wal2arrow -- demo "$@"
