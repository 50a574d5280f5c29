"""Async iteration, per-table readers, interrupting a blocked wait."""

import asyncio
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest
from conftest import popen

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


def test_a_cancelled_await_loses_no_event_and_no_error(db):
    db.sql("CREATE TABLE c (id int8 PRIMARY KEY)")
    db.sql("""CREATE PROCEDURE fill() LANGUAGE plpgsql AS $$
              BEGIN FOR t IN 0..99 LOOP
                  INSERT INTO c SELECT g FROM generate_series(t * 200 + 1, t * 200 + 200) g; COMMIT;
                  PERFORM pg_sleep(0.005);
              END LOOP; END $$""")

    async def main():
        stream = wal2arrow.stream(db.dsn, slot="cancel", snapshot="never", batch_rows=50)
        try:
            # The transactions come 5 ms apart, while the loop below waits 0.5 ms at a time:
            # waits are cancelled between them (always) and during fetches (when they meet one).
            filler = asyncio.get_running_loop().run_in_executor(None, db.sql, "CALL fill()")
            ids, cancelled = [], 0
            while len(ids) < 20000:
                try:
                    ev = await asyncio.wait_for(stream.__anext__(), 0.0005)
                except asyncio.TimeoutError:
                    cancelled += 1
                    continue
                if isinstance(ev, wal2arrow.ChangeBatch):
                    ids += pa.record_batch(ev).column("id").to_pylist()
            await filler
            return ids, cancelled
        finally:
            stream.close()

    ids, cancelled = asyncio.run(asyncio.wait_for(main(), 120))
    assert ids == list(range(1, 20001)), "every row once, in order"
    assert cancelled >= 50, cancelled

    # An error met by a wait whose await was cancelled is raised by the next one.
    async def failing():
        wal2arrow.create_slot("cancel_error", db.dsn)
        stream = wal2arrow.stream(db.dsn, slot="cancel_error", snapshot="never", create_slot=False)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(stream.__anext__(), 0.05)
            db.sql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'cancel_error'")
            db.sql("SELECT pg_drop_replication_slot('cancel_error')")
            while True:
                try:
                    ev = await asyncio.wait_for(stream.__anext__(), 0.01)
                except asyncio.TimeoutError:
                    continue
                if isinstance(ev, wal2arrow.Restarted):
                    continue
        finally:
            stream.close()

    with pytest.raises(wal2arrow.Wal2ArrowError) as e:
        asyncio.run(asyncio.wait_for(failing(), 120))
    assert "cancel_error" in str(e.value)


def test_per_table_readers_run_concurrently_and_ack_independently(db):
    db.sql("CREATE TABLE users (id int8 PRIMARY KEY, name text)")
    db.sql("CREATE TABLE orders (id int8 PRIMARY KEY, user_id int8, total numeric(10,2))")
    readers = wal2arrow.readers(db.dsn, slot="readers", snapshot="never", max_poll_interval=0.2,
                                tables=["public.users", "public.orders"])
    for i in range(10):
        db.sql(f"""BEGIN; INSERT INTO users SELECT g, 'u' || g FROM generate_series({i * 100 + 1}, {i * 100 + 100}) g;
                   INSERT INTO orders SELECT g, g, g * 2 FROM generate_series({i * 300 + 1}, {i * 300 + 300}) g; COMMIT""")

    async def read(table, expect):
        ids, batches = [], []
        async for batch in readers[table].read_batches(auto_ack=False):
            assert batch.table == table
            ids += pa.record_batch(batch).column("id").to_pylist()
            batches.append(batch)
            if len(ids) >= expect:
                break
        return ids, batches

    async def main():
        return await asyncio.wait_for(asyncio.gather(read("public.users", 1000), read("public.orders", 3000)), 60)

    (users, user_batches), (orders, order_batches) = asyncio.run(main())
    assert users == list(range(1, 1001))
    assert orders == list(range(1, 3001))
    last = max(b.commit_lsn for b in user_batches)
    confirmed = lambda: wal2arrow.parse_lsn(db.slot_confirmed("readers"))
    # Everything acknowledged but the last transaction's orders: the slot stays before it.
    for b in user_batches + [b for b in order_batches if b.commit_lsn != last]:
        b.ack()
    deadline = time.monotonic() + 10
    while confirmed() < max(b.commit_lsn for b in user_batches if b.commit_lsn != last):
        assert time.monotonic() < deadline, "the acknowledged transactions pass"
        time.sleep(0.1)
    time.sleep(1.0)
    assert confirmed() < last, "a transaction one reader has not acknowledged holds the slot"
    for b in order_batches:
        b.ack()
    while confirmed() <= last:
        assert time.monotonic() < deadline + 10, "acknowledged by both readers: the slot passes it"
        time.sleep(0.1)
    readers.close()

    # A table read through the Arrow C stream interface.
    readers = wal2arrow.readers(db.dsn, slot="readers2", snapshot="never", max_poll_interval=0.2,
                                tables=["public.users"])
    db.sql("INSERT INTO users SELECT g, 'x' FROM generate_series(5001, 5100) g")
    (after_first,) = db.sql("SELECT pg_current_wal_lsn()::text")[0]
    users = readers["public.users"]
    users.idle_timeout = 0.5
    table = pa.RecordBatchReader.from_stream(users).read_all()
    assert table.column("id").to_pylist() == list(range(5001, 5101))
    time.sleep(1.0)
    assert wal2arrow.parse_lsn(db.slot_confirmed("readers2")) < wal2arrow.parse_lsn(after_first), \
        "handed over, not yet acknowledged"
    # DuckDB asks for the schema first (__arrow_c_schema__ takes nothing), then the stream:
    # each query sees exactly the batches that came since the last one, and acknowledges
    # what the one before it read.
    import duckdb

    db.sql("INSERT INTO users SELECT g, 'y' FROM generate_series(6001, 6150) g")
    db.sql("INSERT INTO users SELECT g, 'y' FROM generate_series(6151, 6200) g")
    assert duckdb.sql("SELECT count(*), min(id), max(id) FROM users").fetchall() == [(200, 6001, 6200)]
    deadline = time.monotonic() + 10
    while wal2arrow.parse_lsn(db.slot_confirmed("readers2")) < wal2arrow.parse_lsn(after_first):
        assert time.monotonic() < deadline, "the first read is acknowledged by the second"
        time.sleep(0.1)
    db.sql("INSERT INTO users SELECT g, 'z' FROM generate_series(7001, 7020) g")
    assert duckdb.sql("SELECT count(*), min(id), max(id) FROM users").fetchall() == [(20, 7001, 7020)]
    # A truncate is not folded into rows: it is said, and taken as a delivery.
    db.sql("TRUNCATE users")
    db.sql("INSERT INTO users VALUES (1, 'after')")
    with pytest.raises(wal2arrow.TruncateNext, match="public.users"):
        pa.RecordBatchReader.from_stream(users)
    t = users.next_delivery(timeout=10)
    assert isinstance(t, wal2arrow.Truncate) and t.tables == ["public.users"]
    t.ack()
    assert pa.RecordBatchReader.from_stream(users).read_all().column("id").to_pylist() == [1]
    users.ack()
    readers.close()


@pytest.mark.parametrize("how", ["stream", "next_event", "reader"])
def test_ctrl_c_interrupts_a_blocked_wait_promptly(db, how):
    db.sql("CREATE TABLE quiet (id int)")
    wait = {
        "stream": "for ev in wal2arrow.stream(DSN, slot='ctrl_c', snapshot='never'):\n        pass",
        "next_event": "wal2arrow.stream(DSN, slot='ctrl_c', snapshot='never').next_event(timeout=600)",
        "reader": "for b in wal2arrow.readers(DSN, slot='ctrl_c', snapshot='never', tables='public.quiet')['public.quiet']:\n        pass",
    }[how]
    code = f"""
import sys, wal2arrow
DSN = {db.dsn!r}
print("ready", flush=True)
try:
    {wait}
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(0)
"""
    proc = popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    time.sleep(2.0)  # connected, blocked in the wait, nothing to read
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 3, "interrupted within a fraction of a second"
    assert proc.returncode == 0, err
    assert out.strip() == "interrupted"
