"""Async iteration, per-table readers, interrupting a blocked wait."""

import asyncio
import signal
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pytest

import wal2arrow


def test_async_iteration_delivers_in_order_without_blocking_the_loop(db):
    db.sql("CREATE TABLE a (id int8 PRIMARY KEY, v text)")

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        rows, commits = [], 0
        t = asyncio.create_task(ticker())
        async with wal2arrow.stream(db.dsn, slot="async", snapshot="never", batch_rows=100) as stream:
            # Waiting for an event that has not come yet leaves the loop free.
            first = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(0.5)
            assert not first.done() and ticks > 20, ticks
            db.sql("INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 1000) g")
            db.sql("UPDATE a SET v = 'w' WHERE id <= 10")
            assert isinstance(await asyncio.wait_for(first, 60), wal2arrow.Begin)
            async for ev in stream:
                if isinstance(ev, wal2arrow.ChangeBatch):
                    rb = pa.record_batch(ev)
                    rows += list(zip(rb.column("id").to_pylist(), rb.column("_op").to_pylist()))
                elif isinstance(ev, wal2arrow.Commit):
                    stream.ack(ev.end_lsn)
                    commits += 1
                    if commits == 2:
                        break
        t.cancel()
        return rows

    rows = asyncio.run(asyncio.wait_for(main(), 120))
    assert [r for r in rows if r[1] == "insert"] == [(g, "insert") for g in range(1, 1001)]
    assert [r for r in rows if r[1] == "update"] == [(g, "update") for g in range(1, 11)]


def test_a_cancelled_await_loses_no_event(db):
    db.sql("CREATE TABLE c (id int8 PRIMARY KEY)")

    async def main():
        stream = wal2arrow.stream(db.dsn, slot="cancel", snapshot="never")
        try:
            # Waits that time out (nothing to read yet) and are cancelled.
            for _ in range(5):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(stream.__anext__(), 0.05)
            db.sql("INSERT INTO c SELECT generate_series(1, 50)")
            ids = []
            while True:
                ev = await asyncio.wait_for(stream.__anext__(), 60)
                if isinstance(ev, wal2arrow.ChangeBatch):
                    ids += pa.record_batch(ev).column("id").to_pylist()
                if isinstance(ev, wal2arrow.Commit):
                    return ids
        finally:
            stream.close()

    assert asyncio.run(main()) == list(range(1, 51))


def test_per_table_readers_run_concurrently_and_ack_independently(db):
    db.sql("CREATE TABLE users (id int8 PRIMARY KEY, name text)")
    db.sql("CREATE TABLE orders (id int8 PRIMARY KEY, user_id int8, total numeric(10,2))")
    readers = wal2arrow.readers(db.dsn, slot="readers", snapshot="never",
                                tables=["public.users", "public.orders"])
    for i in range(10):
        db.sql(f"""BEGIN; INSERT INTO users SELECT g, 'u' || g FROM generate_series({i * 100 + 1}, {i * 100 + 100}) g;
                   INSERT INTO orders SELECT g, g, g * 2 FROM generate_series({i * 300 + 1}, {i * 300 + 300}) g; COMMIT""")

    async def read(table, expect):
        ids = []
        async for batch in readers[table].read_batches():
            assert batch.table == table
            ids += pa.record_batch(batch).column("id").to_pylist()
            if len(ids) >= expect:
                break
        return ids

    async def main():
        return await asyncio.wait_for(asyncio.gather(read("public.users", 1000), read("public.orders", 3000)), 60)

    users, orders = asyncio.run(main())
    assert users == list(range(1, 1001))
    assert orders == list(range(1, 3001))
    # Each reader's last batch is acknowledged on its next read; ack them by hand here.
    time.sleep(0.2)
    readers.close()

    # A table read through the Arrow C stream interface.
    readers = wal2arrow.readers(db.dsn, slot="readers2", snapshot="never", tables=["public.users"])
    db.sql("INSERT INTO users SELECT g, 'x' FROM generate_series(5001, 5100) g")
    users = readers["public.users"]
    users.idle_timeout = 0.5
    table = pa.RecordBatchReader.from_stream(users).read_all()
    assert table.column("id").to_pylist() == list(range(5001, 5101))
    # DuckDB asks for the schema first (__arrow_c_schema__ takes nothing), then the stream:
    # each query sees exactly the batches that came since the last one.
    import duckdb

    db.sql("INSERT INTO users SELECT g, 'y' FROM generate_series(6001, 6150) g")
    db.sql("INSERT INTO users SELECT g, 'y' FROM generate_series(6151, 6200) g")
    assert duckdb.sql("SELECT count(*), min(id), max(id) FROM users").fetchall() == [(200, 6001, 6200)]
    db.sql("INSERT INTO users SELECT g, 'z' FROM generate_series(7001, 7020) g")
    assert duckdb.sql("SELECT count(*), min(id), max(id) FROM users").fetchall() == [(20, 7001, 7020)]
    readers.close()


def test_ctrl_c_interrupts_a_blocked_iteration_promptly(db):
    db.sql("CREATE TABLE quiet (id int)")
    code = f"""
import sys, time, wal2arrow
stream = wal2arrow.stream({db.dsn!r}, slot="ctrl_c", snapshot="never")
print("ready", flush=True)
try:
    for ev in stream:
        pass
except KeyboardInterrupt:
    print("interrupted", flush=True)
    stream.close()
    sys.exit(0)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tempfile.gettempdir())
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    time.sleep(1.0)  # blocked in the wait, nothing to read
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 3, "interrupted within a fraction of a second"
    assert proc.returncode == 0, err
    assert out.strip() == "interrupted"
