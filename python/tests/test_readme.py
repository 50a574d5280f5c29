"""The README's Python examples, run as written in a fresh virtual environment holding the
wheel and what the README's install line adds (Polars), against libpq's PG* variables."""

import os
import queue
import re
import signal
import subprocess
import threading
import time

from conftest import popen

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def python_blocks():
    text = open(README).read()
    section = text[text.index("\n## Python\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


class Running:
    def __init__(self, python, code, env):
        self.proc = popen([python, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.seen = []

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, wanted, timeout=60):
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0 and self.proc.poll() is None, (
                f"waiting for {wanted!r}; printed {self.seen}; stderr: {self.proc.stderr.read() if self.proc.poll() is not None else ''}")
            try:
                self.seen.append(self.lines.get(timeout=min(left, 0.5)))
            except queue.Empty:
                pass

    def interrupt(self):
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=15)
        assert time.monotonic() - sent < 5, "Ctrl-C stops it promptly"
        assert "KeyboardInterrupt" in err, err


def test_the_readme_examples_run_as_written(db, make_venv):
    quick_start, per_table = python_blocks()
    python = make_venv("readme", "polars")
    db.sql("CREATE TABLE users (id int8 PRIMARY KEY, name text)")
    db.sql("CREATE TABLE orders (id int8 PRIMARY KEY, user_id int8)")
    db.sql("INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 5) g")

    run = Running(python, quick_start, db.env())
    try:
        quick_start_steps(db, run)
    finally:
        run.proc.kill()
    run = Running(python, per_table, db.env())
    try:
        run.expect("public.users: 7 rows")  # the initial snapshot of the new slot: 5 + 3 - 1
        db.sql("INSERT INTO orders SELECT g, g FROM generate_series(1, 4) g")
        run.expect("public.orders: 4 rows")
        run.interrupt()
    finally:
        run.proc.kill()


def quick_start_steps(db, run):
    run.expect("public.users: 5 read")
    db.sql("INSERT INTO users SELECT g, 'user ' || g FROM generate_series(6, 8) g")
    run.expect("public.users: 3 insert")
    (before,) = db.sql("SELECT pg_current_wal_lsn()")[0]
    db.sql("BEGIN; UPDATE users SET name = 'x' WHERE id = 1; DELETE FROM users WHERE id = 2; COMMIT")
    run.expect("public.users: 1 update")
    run.expect("public.users: 1 delete")
    # It acknowledges what it handled: the slot passes the last transaction.
    deadline = time.monotonic() + 15
    while not db.sql("SELECT confirmed_flush_lsn > %s::pg_lsn FROM pg_replication_slots "
                     "WHERE slot_name = 'quickstart'", (before,))[0][0]:
        assert time.monotonic() < deadline, "the quick start acknowledges the transaction"
        time.sleep(0.1)
    run.interrupt()

