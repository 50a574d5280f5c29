#!/usr/bin/env bash
# The Python package (python/): builds its wheel with maturin, installs it into a virtual
# environment with the test dependencies (python/requirements-test.txt), and runs the pytest
# suite against a scratch PostgreSQL (started by the tests, as the Rust tests start theirs).
#
#   scripts/python.sh [pytest arguments…]
#
# The environment is $WAL2ARROW_PY_VENV, else <target>/python-venv; the wheel goes to
# <target>/wheels. PG_BINDIR and WAL2ARROW_PLUGIN choose the server and plugin as for the
# Rust tests.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
venv="${WAL2ARROW_PY_VENV:-$target/python-venv}"

if [ ! -x "$venv/bin/python" ]; then
    echo "python.sh: creating the virtual environment $venv" >&2
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r python/requirements-test.txt

echo "python.sh: building the wheel" >&2
rm -rf "$target/wheels"
"$venv/bin/maturin" build --quiet --release -m python/Cargo.toml --out "$target/wheels"
wheel=$(ls "$target"/wheels/wal2arrow-*.whl)
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall \
    --no-deps "$wheel"

cargo build --quiet -p wal2arrow-tests --bin scratch_postgres
export WAL2ARROW_SCRATCH_BIN="$target/debug/scratch_postgres" WAL2ARROW_WHEEL="$wheel"
cd python
# pytest, not `python -m pytest`: the source tree must not shadow the installed package.
exec "$venv/bin/pytest" tests "$@"
