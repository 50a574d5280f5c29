import pyarrow as pa

import wal2arrow


def test_changes_arrive_as_batches_and_commits(db):
    db.sql("CREATE TABLE t (id int8 PRIMARY KEY, name text)")
    with wal2arrow.stream(db.dsn, slot="smoke", snapshot="never") as stream:
        db.sql("INSERT INTO t SELECT g, 'n' || g FROM generate_series(1, 100) g")
        seen = []
        for ev in stream:
            seen.append(ev)
            if isinstance(ev, wal2arrow.Commit):
                stream.ack(ev.end_lsn)
                break
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "Begin" and kinds[-1] == "Commit", kinds
    batches = [e for e in seen if isinstance(e, wal2arrow.ChangeBatch)]
    rb = pa.record_batch(batches[0])
    assert rb.num_rows == 100
