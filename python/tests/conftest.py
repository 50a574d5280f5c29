"""Fixtures: a scratch PostgreSQL for the session (started by the workspace's
`scratch_postgres` program, which the Rust tests' harness backs: the plugin built from this
workspace, wal2json where installed), and a fresh database per test."""

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import psycopg
import pytest


def _scratch_bin():
    path = os.environ.get("WAL2ARROW_SCRATCH_BIN")
    if not path:
        pytest.exit("WAL2ARROW_SCRATCH_BIN is not set: run the suite with scripts/python.sh", 2)
    return path


class Cluster:
    def __init__(self, info):
        self.host = info["host"]
        self.port = info["port"]
        self.user = info["user"]
        self.socket_dir = info["socket_dir"]
        self.wal2json = info["wal2json"]

    def dsn(self, dbname):
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"


@pytest.fixture(scope="session")
def cluster():
    proc = subprocess.Popen([_scratch_bin()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        pytest.exit(f"the scratch PostgreSQL did not start (exit {proc.returncode})", 2)
    yield Cluster(json.loads(line))
    proc.stdin.close()
    proc.wait(timeout=60)


class Database:
    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.dsn = cluster.dsn(name)

    def sql(self, query, params=None):
        """Runs `query` in its own transaction; returns the rows, if any."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else None

    def env(self):
        """libpq's variables naming this database (for code run as written)."""
        env = dict(os.environ)
        env.update(PGHOST=self.cluster.host, PGPORT=str(self.cluster.port),
                   PGUSER=self.cluster.user, PGDATABASE=self.name)
        return env

    def slot_confirmed(self, slot):
        rows = self.sql("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return rows[0][0] if rows else None


_counter = itertools.count()


@pytest.fixture
def db(cluster, request):
    name = f"py{next(_counter)}_{request.node.name[:40].lower()}".replace("[", "_").replace("]", "_").replace("-", "_")
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database = Database(cluster, name)
    yield database
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        # Slots of the database go first (a test may leave one behind on failure).
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)).fetchall():
            for _ in range(50):
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    break
                except psycopg.errors.ObjectInUse:
                    conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                    time.sleep(0.1)
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pinned(name):
    """The version of `name` pinned in requirements-test.txt."""
    here = os.path.dirname(__file__)
    with open(os.path.join(here, "..", "requirements-test.txt")) as f:
        for line in f:
            if line.split("==")[0].split("[")[0].strip() == name:
                return line.strip()
    raise KeyError(name)


@pytest.fixture(scope="session")
def make_venv(tmp_path_factory):
    """make_venv(label, *packages) → the python of a new virtual environment holding only the
    wheel under test ($WAL2ARROW_WHEEL, built by scripts/python.sh) and `packages` (names of
    requirements-test.txt, installed at their pinned versions)."""
    wheel = os.environ.get("WAL2ARROW_WHEEL")
    if not wheel:
        pytest.exit("WAL2ARROW_WHEEL is not set: run the suite with scripts/python.sh", 2)

    def make(label, *packages):
        path = tmp_path_factory.mktemp(label)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        python = str(path / "bin" / "python")
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel,
                        *[_pinned(p) for p in packages]], check=True)
        return python

    return make


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(args, **kwargs):
    """subprocess.Popen, with SIGINT's default action restored in the child: a job started in
    the background by a non-interactive shell (as CI may be) inherits SIGINT ignored, and a
    Python that starts with it ignored never raises KeyboardInterrupt."""
    kwargs.setdefault("cwd", tempfile.gettempdir())
    return subprocess.Popen(args, preexec_fn=_default_sigint, **kwargs)


def run_python(code, env=None, timeout=120, python=sys.executable):
    """Runs `code` in a new interpreter, in a directory of its own (not python/, whose
    wal2arrow sources would shadow the installed package); returns the completed process."""
    return subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=tempfile.gettempdir())
