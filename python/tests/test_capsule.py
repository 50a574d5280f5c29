"""Batches reach Polars and DuckDB through the Arrow PyCapsule interface, in a virtual
environment without pyarrow."""

import decimal
import json

from conftest import run_python

import wal2arrow

CHILD = """
import json, sys
import duckdb, polars as pl
import wal2arrow

stream = wal2arrow.stream(DSN, slot="capsule", create_slot=False, snapshot="never")
batches = []
while True:
    ev = stream.next_event(timeout=60)
    if isinstance(ev, wal2arrow.ChangeBatch):
        batches.append(ev)
    elif isinstance(ev, wal2arrow.Commit):
        stream.ack(ev.end_lsn)
        break
stream.close()

frames = [pl.DataFrame(b) for b in batches]
df = pl.concat(frames)
b = batches[0]
duck = duckdb.sql("SELECT count(*), sum(id), min(name), max(amount)::text FROM b").fetchall()
# Through the array capsule too (polars.from_arrow is stream-based; DuckDB scans arrays).
schema_names = [f for f in df.columns]
print(json.dumps({
    "rows": df.height,
    "ids": sorted(df["id"].to_list()),
    "names": sorted(df["name"].to_list()),
    "ops": sorted(set(df["_op"].cast(pl.Utf8).to_list())),
    "columns": schema_names,
    "duck_first": [duck[0][0], int(duck[0][1]), duck[0][2], duck[0][3]],
    "first_rows": b.num_rows,
    "first_ids": sorted(pl.DataFrame(b)["id"].to_list()),
    "pyarrow_imported": "pyarrow" in sys.modules,
}))
"""


def test_polars_and_duckdb_read_batches_without_pyarrow(db, make_venv):
    python = make_venv("no-pyarrow", "polars", "duckdb")
    assert run_python("import pyarrow", python=python).returncode != 0, "pyarrow is not installed there"
    db.sql("CREATE TABLE items (id int8 PRIMARY KEY, name text, amount numeric(10,2), at timestamptz, tags text[])")
    wal2arrow.create_slot("capsule", db.dsn)
    db.sql("""INSERT INTO items SELECT g, 'item ' || g, g * 1.5, now(), ARRAY['t' || g]
              FROM generate_series(1, 3000) g""")
    proc = run_python(f"DSN = {db.dsn!r}\n" + CHILD, python=python)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pyarrow_imported"] is False
    assert out["rows"] == 3000
    assert out["ids"] == list(range(1, 3001))
    assert out["names"] == sorted(f"item {g}" for g in range(1, 3001))
    assert out["ops"] == ["insert"]
    assert out["columns"][:5] == ["id", "name", "amount", "at", "tags"]
    assert out["columns"][5:7] == ["_op", "_lsn"]
    first = out["first_ids"]
    assert out["first_rows"] == len(first)
    assert out["duck_first"][:3] == [len(first), sum(first), min(f"item {g}" for g in first)]
    assert decimal.Decimal(out["duck_first"][3]) == max(first) * decimal.Decimal("1.5")


def test_the_capsules_are_the_arrow_c_interfaces(db):
    """With pyarrow: the schema capsule, the array capsule and the stream capsule each give
    the same batch, field metadata included."""
    import pyarrow as pa

    db.sql("CREATE TABLE t (id int8 PRIMARY KEY, u uuid, j jsonb)")
    with wal2arrow.stream(db.dsn, slot="capsules", snapshot="never") as stream:
        db.sql("INSERT INTO t SELECT g, md5(g::text)::uuid, jsonb_build_object('g', g) FROM generate_series(1, 10) g")
        while not isinstance(ev := stream.next_event(timeout=60), wal2arrow.ChangeBatch):
            assert ev is not None
    via_array = pa.record_batch(ev)
    via_stream = pa.RecordBatchReader.from_stream(ev).read_all()
    schema = pa.schema(ev)
    assert via_array.schema == schema
    assert via_stream.schema == schema
    assert pa.Table.from_batches([via_array]) == via_stream
    assert schema.field("u").metadata[b"ADBC:postgresql:typname"] == b"uuid"
    assert schema.metadata[b"wal2arrow:table"] == b"t"
    assert via_array.column("id").to_pylist() == list(range(1, 11))
    assert len(ev) == 10 and ev.num_rows == 10
