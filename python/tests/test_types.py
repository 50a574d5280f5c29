"""Every supported type, streamed into Python and compared with the same rows read by SELECT
(psycopg), value by value, through pyarrow."""

import decimal
import math
import struct
import uuid

import psycopg
import pyarrow as pa
import pytest

import wal2arrow

ROWS = 1500

# (column, type, value of row g as SQL (NULL when g % 17 is the column's index), the SELECT
# expression giving what pyarrow's to_pylist() gives for our Arrow type)
COLUMNS = [
    ("c_bool", "bool", "g % 2 = 0", None),
    ("c_int2", "int2", "(g % 30000 - 15000)::int2", None),
    ("c_int4", "int4", "(g * 7919 - 5000000)::int4", None),
    ("c_int8", "int8", "CASE WHEN g % 97 = 1 THEN -9223372036854775808 ELSE g::int8 * 1000000007 END", None),
    ("c_oid", "oid", "(g * 3)::oid", "{c}::int8"),
    ("c_float4", "float4", "CASE WHEN g % 97 = 2 THEN 'NaN' WHEN g % 97 = 3 THEN '-Infinity' ELSE (g / 7.0)::text END::float4", None),
    ("c_float8", "float8", "CASE WHEN g % 97 = 2 THEN 'NaN' WHEN g % 97 = 3 THEN 'Infinity' ELSE (g / 3.0)::text END::float8", None),
    ("c_numeric", "numeric(12,2)", "g * 1.25 - 900", None),
    ("c_numeric_free", "numeric", "(g / 7.0)::numeric", "{c}::text"),
    ("c_money", "money", "(g * 1.5)::numeric::money", "({c}::numeric * 100)::int8"),
    ("c_text", "text", "CASE WHEN g % 97 = 4 THEN repeat('x', 5000) ELSE 'héllo ✓ ' || g END", None),
    ("c_varchar", "varchar(20)", "'v' || g", None),
    ("c_bpchar", "char(8)", "(g % 1000)::text", None),
    ("c_name", "name", "'n' || g", None),
    ("c_char", "\"char\"", "chr(65 + g % 26)", "{c}::text"),
    ("c_bytea", "bytea", "int4send(g)", None),
    ("c_date", "date", "date '2000-01-01' + g", None),
    ("c_time", "time", "time '00:00:01.000001' + g * interval '37 seconds 1 microsecond'", None),
    ("c_timetz", "timetz", "(time '10:00' + g * interval '1 minute')::timetz", None),
    ("c_timestamp", "timestamp", "timestamp '2000-01-01' + g * interval '1 day 1 second 1 microsecond'", None),
    ("c_timestamptz", "timestamptz", "timestamptz '2024-02-29 12:00:00+00' - g * interval '3 days 1 minute 7 microseconds'", None),
    ("c_interval", "interval", "g * interval '1 mon 2 days 3 hours 4.000005 seconds' - interval '40 years'", None),
    ("c_uuid", "uuid", "md5(g::text)::uuid", None),
    ("c_json", "json", "json_build_object('g', g, 'a', json_build_array(1, 'x'))", "{c}::text"),
    ("c_jsonb", "jsonb", "jsonb_build_object('g', g, 'b', true)", "{c}::text"),
    ("c_inet", "inet", "('10.0.' || (g % 256) || '.1/24')::inet", "{c}::text"),
    ("c_cidr", "cidr", "('10.' || (g % 256) || '.0.0/16')::cidr", "{c}::text"),
    ("c_macaddr", "macaddr", "'08:00:2b:01:02:03'::macaddr", "{c}::text"),
    ("c_macaddr8", "macaddr8", "'08:00:2b:01:02:03:04:05'::macaddr8", "{c}::text"),
    ("c_bit", "bit(4)", "(g % 16)::bit(4)", "{c}::text"),
    ("c_varbit", "varbit", "(g % 64)::bit(6)::varbit", "{c}::text"),
    ("c_enum", "mood", "(ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood", "{c}::text"),
    ("c_domain", "posint", "g", "{c}::int4"),
    ("c_int4_arr", "int4[]", "ARRAY[g, NULL, -g]", None),
    ("c_text_arr", "text[]", "ARRAY['a' || g, '', NULL]", None),
    ("c_int2d", "int4[][]", "ARRAY[ARRAY[g, 1], ARRAY[2, NULL]]", None),
    ("c_num_arr", "numeric(6,2)[]", "ARRAY[g / 100.0, NULL]", None),
    ("c_uuid_arr", "uuid[]", "ARRAY[md5(g::text)::uuid]", None),
    ("c_range", "int4range", "int4range(g, g + 10)", "{c}::text"),
    ("c_composite", "pair", "ROW(g, 'p' || g)::pair", "{c}::text"),
    ("c_tsvector", "tsvector", "('word' || g || ' other')::tsvector", "{c}::text"),
]

EXTENSIONS = {"c_uuid": "arrow.uuid", "c_json": "arrow.json", "c_jsonb": "arrow.json",
              "c_range": "arrow.opaque", "c_composite": "arrow.opaque", "c_tsvector": "arrow.opaque"}


def setup(db):
    ddl = ", ".join(f"{c} {t}" for c, t, _, _ in COLUMNS)
    db.sql("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    db.sql("CREATE DOMAIN posint AS int4 CHECK (VALUE > 0)")
    db.sql("CREATE TYPE pair AS (a int4, b text)")
    db.sql(f"CREATE TABLE every_type (id int4 PRIMARY KEY, {ddl})")


def insert(db, first, last):
    values = ", ".join(
        f"CASE WHEN g % 17 = {i % 17} AND g % 3 = {i % 3} THEN NULL ELSE {v} END" for i, (_, _, v, _) in enumerate(COLUMNS))
    db.sql(f"INSERT INTO every_type SELECT g, {values} FROM generate_series({first}, {last}) g")


def selected(db):
    """The rows by SELECT, in the form of our Arrow types' Python values."""
    exprs = []
    for c, _, _, sel in COLUMNS:
        if c == "c_timetz":
            exprs += [f"{c}::time", f"extract(timezone FROM {c})::int", f"{c} IS NULL"]
        elif c == "c_interval":
            exprs += [f"(extract(year FROM {c}) * 12 + extract(month FROM {c}))::int",
                      f"extract(day FROM {c})::int",
                      f"(extract(hour FROM {c}) * 3600000000 + extract(minute FROM {c}) * 60000000"
                      f" + extract(microseconds FROM {c}))::int8 * 1000"]
        else:
            exprs.append((sel or "{c}").format(c=c))
    with psycopg.connect(db.dsn) as conn:
        conn.execute("SET TIME ZONE 'Asia/Kolkata'")  # compared as instants, whatever the zone
        rows = conn.execute(f"SELECT id, {', '.join(exprs)} FROM every_type ORDER BY id").fetchall()
    out = {}
    for r in rows:
        it = iter(r[1:])
        row = {}
        for c, _, _, _ in COLUMNS:
            if c == "c_timetz":
                t, off, null = next(it), next(it), next(it)
                row[c] = None if null else {"time": t, "offset_seconds": off}
            elif c == "c_interval":
                m, d, ns = next(it), next(it), next(it)
                row[c] = None if m is None else (m, d, ns)
            else:
                row[c] = next(it)
        out[r[0]] = row
    return out


def norm(c, v, plugin="wal2arrow"):
    """One value, comparable across the two sides."""
    if v is None:
        return None
    if plugin == "wal2json" and c in ("c_float4", "c_float8") and not math.isfinite(v):
        # wal2json 2.5 writes NaN and ±Infinity as JSON null (README: the fallback's limits).
        return None
    if c == "c_float4":
        return "NaN" if math.isnan(v) else struct.unpack("f", struct.pack("f", v))[0]
    if c == "c_float8":
        return "NaN" if math.isnan(v) else v
    if c == "c_interval":
        return tuple(v)
    if c == "c_uuid":
        return v.bytes if isinstance(v, uuid.UUID) else bytes(v)
    if c == "c_uuid_arr":
        return [None if u is None else (u.bytes if isinstance(u, uuid.UUID) else bytes(u)) for u in v]
    if c == "c_num_arr":
        return [None if x is None else decimal.Decimal(x) for x in v]
    return v


@pytest.mark.parametrize("plugin", ["wal2arrow", "wal2json"])
def test_every_type_streamed_equals_select(db, plugin):
    if plugin == "wal2json" and not db.cluster.wal2json:
        pytest.skip("wal2json is not installed on this server (it is on Debian's 15, which CI runs)")
    setup(db)
    stream = wal2arrow.stream(db.dsn, slot=f"types_{plugin}", snapshot="never", plugin=plugin, batch_rows=400)
    try:
        assert stream.output_plugin == plugin
        for first in range(1, ROWS + 1, 500):
            insert(db, first, first + 499)
        batches, commits = [], 0
        while commits < 3:
            ev = stream.next_event(timeout=60)
            assert ev is not None, "the three transactions arrive"
            if isinstance(ev, wal2arrow.ChangeBatch):
                assert ev.table == "public.every_type"
                batches.append(pa.record_batch(ev))
            elif isinstance(ev, wal2arrow.Commit):
                commits += 1
                stream.ack(ev.end_lsn)
    finally:
        stream.close()

    table = pa.Table.from_batches(batches)
    assert table.num_rows == ROWS
    schema = table.schema
    for c, t, _, _ in COLUMNS:
        field = schema.field(c)
        assert b"ADBC:postgresql:typname" in (field.metadata or {}), f"{c}: {field}"
        if c in EXTENSIONS:
            ext = getattr(field.type, "extension_name", None) or (field.metadata or {}).get(b"ARROW:extension:name", b"").decode()
            assert ext == EXTENSIONS[c], f"{c}: {field.type} {field.metadata}"
    assert set(table.column("_op").to_pylist()) == {"insert"}
    assert all(not m for m in table.column("_unrepresentable").to_pylist())

    expected = selected(db)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == list(range(1, ROWS + 1))
    for c, _, _, _ in COLUMNS:
        got = table.column(c).to_pylist()
        assert any(v is None for v in got) and any(v is not None for v in got), c
        for id_, v in zip(ids, got):
            assert norm(c, v) == norm(c, expected[id_][c], plugin), f"{c} of row {id_}: streamed {v!r}, SELECT {expected[id_][c]!r}"
