"""Bad arguments and failures raise the documented exceptions, with messages that say what
to fix; the preflight report and slot management."""

import socket

import pytest

import wal2arrow


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kwargs, message", [
    ({"slot_name": "x"}, "unknown option `slot_name`; the options are: dsn, host,"),
    ({"port": "abc"}, "`port` must be an integer from 1 to 65535, not str ('abc')"),
    ({"port": 70000}, "`port` must be an integer from 1 to 65535, not int (70000)"),
    ({"snapshot": "sometimes"}, "`snapshot` must be 'auto', 'initial', 'never' or 'only', not str ('sometimes')"),
    ({"plugin": "pgoutput"}, "`plugin` must be 'auto', 'wal2arrow' or 'wal2json', not str ('pgoutput')"),
    ({"batch_rows": 0}, "`batch_rows` must be an integer from 1 to"),
    ({"tables": 5}, "`tables` must be a pattern or a list of patterns ('public.*'), not int (5)"),
    ({"streaming": "yes"}, "`streaming` must be True or False, not str ('yes')"),
    ({"max_poll_interval": -1}, "`max_poll_interval` must be a positive number of seconds, not int (-1)"),
    ({"start_lsn": "12"}, "`start_lsn` must be an LSN: an integer or PostgreSQL's 'X/Y' form, not str ('12')"),
])
def test_bad_arguments_raise_config_error_naming_the_fix(kwargs, message):
    with pytest.raises(wal2arrow.ConfigError) as e:
        wal2arrow.stream("host=127.0.0.1 port=1", **kwargs)
    assert message in str(e.value)
    assert isinstance(e.value, wal2arrow.Wal2ArrowError)
    assert e.value.kind == "configuration" and e.value.transient is False


def test_a_bad_connection_string_names_the_keyword():
    with pytest.raises(wal2arrow.ConfigError, match="hots"):
        wal2arrow.stream("hots=localhost")
    with pytest.raises(wal2arrow.ConfigError) as e:
        wal2arrow.format_lsn(-1)
    assert "an LSN is an integer" in str(e.value)
    assert wal2arrow.parse_lsn("0/15D6B88") == 0x15D6B88
    assert wal2arrow.format_lsn(0x1_0000_00FF) == "1/FF"


def test_unreachable_servers_and_missing_databases(cluster):
    with pytest.raises(wal2arrow.ConnectError) as e:
        wal2arrow.stream(host="127.0.0.1", port=free_port(), user="postgres", dbname="x", connect_timeout=5)
    assert e.value.transient is True and e.value.kind == "transient"
    assert "127.0.0.1" in str(e.value)

    with pytest.raises(wal2arrow.ServerError) as e:
        wal2arrow.stream(cluster.dsn("no_such_database"))
    assert e.value.sqlstate == "3D000"
    assert "no_such_database" in str(e.value)


def test_preflight_report_and_error(db):
    db.sql("CREATE TABLE p (id int PRIMARY KEY)")
    report = wal2arrow.check(db.dsn, slot="pre", tables=["public.p"])
    assert report.ok, str(report)
    assert "public.p" in report.tables
    assert all(c.status in ("pass", "warn", "skipped") for c in report.checks)

    # A slot that must exist and does not: the report names it and the fix.
    report = wal2arrow.check(db.dsn, slot="missing_slot", create_slot=False)
    assert not report.ok
    (failure,) = report.failures
    assert "missing_slot" in failure.detail and failure.fix
    with pytest.raises(wal2arrow.PreflightError) as e:
        wal2arrow.stream(db.dsn, slot="missing_slot", create_slot=False)
    assert e.value.report.failures[0].name == failure.name
    assert failure.fix in str(e.value)


def test_slots_are_created_listed_and_dropped(db):
    lsn = wal2arrow.create_slot("managed", db.dsn)
    assert lsn > 0
    (slot,) = [s for s in wal2arrow.list_slots(db.dsn) if s["name"] == "managed"]
    assert slot["plugin"] == "wal2arrow" and slot["database"] == db.name and slot["active_pid"] is None
    with pytest.raises(wal2arrow.ServerError, match='replication slot "managed" already exists') as e:
        wal2arrow.create_slot("managed", db.dsn)
    assert e.value.sqlstate == "42710"
    wal2arrow.drop_slot("managed", db.dsn)
    assert "managed" not in [s["name"] for s in wal2arrow.list_slots(db.dsn)]
    with pytest.raises(wal2arrow.SlotError, match="managed"):
        wal2arrow.drop_slot("managed", db.dsn)
    with pytest.raises(wal2arrow.ConfigError, match="`plugin` must be 'wal2arrow' or 'wal2json'"):
        wal2arrow.create_slot("other", db.dsn, plugin="test_decoding")


def test_closed_streams_and_stream_items(db):
    db.sql("CREATE TABLE s (id int)")
    stream = wal2arrow.stream(db.dsn, slot="closing", snapshot="never")
    db.sql("INSERT INTO s VALUES (1)")
    while not isinstance(ev := stream.next_event(timeout=60), wal2arrow.ChangeBatch):
        pass
    with pytest.raises(wal2arrow.ConfigError, match=r"stream.ack\(commit.end_lsn\)"):
        ev.ack()
    with pytest.raises(wal2arrow.ConfigError, match="an LSN"):
        stream.ack("later")
    stream.close()
    stream.close()
    assert stream.closed
    with pytest.raises(wal2arrow.StreamEnded):
        stream.next_event(timeout=1)
    assert list(stream) == []
