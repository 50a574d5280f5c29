#!/bin/sh
# Starts PostgreSQL ready for logical decoding with wal2arrow.
#
# Servers with Debian's `output_plugin_libraries` setting (15.20 and later Debian builds)
# refuse output plugins it does not list, even for superusers; servers without the setting
# refuse to start if it is given. So it is added only when this server knows it.
set -e
extra=""
if postgres --describe-config 2>/dev/null | grep -q '^output_plugin_libraries'; then
    extra="-c output_plugin_libraries=pgoutput,test_decoding,wal2arrow,wal2json"
fi
# shellcheck disable=SC2086
exec docker-entrypoint.sh postgres \
    -c wal_level=logical \
    -c max_replication_slots=10 \
    -c max_wal_senders=10 \
    $extra "$@"
