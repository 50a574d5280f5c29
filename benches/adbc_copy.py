"""Reads a table into Arrow with Apache Arrow's ADBC PostgreSQL driver (which turns
`COPY … TO STDOUT (FORMAT binary)` into Arrow), for the e2e benchmark's snapshot comparison.

usage: python3 adbc_copy.py CONNINFO TABLE  ->  prints "<rows> <seconds>"

The time runs from connecting to the last batch in hand, as the other contenders' do (a
wal2arrow snapshot's includes connecting its workers and planning; raw COPY's, connecting).
"""

import sys
import time

import adbc_driver_postgresql.dbapi as dbapi

conninfo, table = sys.argv[1], sys.argv[2]
started = time.perf_counter()
with dbapi.connect(conninfo) as conn:
    cur = conn.cursor()
    cur.execute(f"SELECT * FROM {table}")
    rows = 0
    reader = cur.fetch_record_batch()
    for batch in reader:
        rows += batch.num_rows
    elapsed = time.perf_counter() - started
print(rows, elapsed)
