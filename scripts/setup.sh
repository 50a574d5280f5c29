#!/usr/bin/env bash
# Installs what building and testing wal2arrow needs on Debian 12, if it is missing:
# PostgreSQL 15 with its server headers (pgrx builds against them), wal2json (the fallback
# plugin), libclang (pgrx's bindgen), and pyarrow (the test that reads the plugin's output with
# Arrow C++), and the de_DE.UTF-8 locale (the test that a server answering in German is
# understood the same), and python3-venv (the Python package's tests run in a virtual
# environment). Safe to run again: it only installs what is absent.
set -euo pipefail

pyarrow_version=26.0.1
if ! python3 -c "import pyarrow, sys; sys.exit(pyarrow.__version__ != '$pyarrow_version')" 2>/dev/null; then
    echo "wal2arrow setup: installing pyarrow $pyarrow_version (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "pyarrow==$pyarrow_version"
fi

packages=(postgresql-15 postgresql-server-dev-15 postgresql-15-wal2json libclang-dev clang locales python3-venv)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

sudo=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && [ ${#sudo[@]} -eq 0 ]; then
        echo "wal2arrow setup: missing packages: ${missing[*]}" >&2
        echo "Install them as root: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "wal2arrow setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
    echo "wal2arrow setup: done ($(/usr/lib/postgresql/15/bin/postgres --version))" >&2
fi

# A locale PostgreSQL has translations for: the server's messages in German (lc_messages).
locales=$(locale -a)
if ! grep -qix 'de_DE.utf8' <<<"$locales"; then
    echo "wal2arrow setup: generating the de_DE.UTF-8 locale" >&2
    "${sudo[@]}" localedef -i de_DE -f UTF-8 de_DE.UTF-8
fi
