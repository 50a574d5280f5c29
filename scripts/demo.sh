#!/usr/bin/env bash
# The demo: builds the plugin and the wal2arrow command, starts a scratch PostgreSQL with the
# plugin loaded, creates `users` and `orders`, makes changes, prints them as the consumer
# receives them (Arrow RecordBatches), then stops and removes everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --quiet --release -p wal2arrow-consumer --bin wal2arrow -- demo "$@"
