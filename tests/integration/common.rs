//! Helpers shared by the integration tests.

use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use wal2arrow_consumer::{ChangeBatch, ChangeStream, Config, Event, TxnBegin, TxnCommit};
use wal2arrow_harness::TestDb;

/// Consumer settings for the test database, as the superuser.
pub(crate) fn config(db: &TestDb<'_>) -> Config {
    Config::from_dsn(&db.dsn()).expect("harness DSN parses")
}

/// An ordinary SQL connection to the test database.
pub(crate) async fn sql(db: &TestDb<'_>) -> tokio_postgres::Client {
    wal2arrow_consumer::sql_client(&config(db)).await.expect("SQL connection")
}

/// The slot's `confirmed_flush_lsn`: how far the server knows changes were acknowledged.
pub(crate) fn confirmed_flush(db: &TestDb<'_>, slot: &str) -> wal2arrow_consumer::Lsn {
    let lsn = db.psql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    lsn.trim().parse().unwrap_or_else(|e| panic!("slot {slot}: {lsn:?}: {e}"))
}

/// Waits until `ready` holds, checking every 50 ms; fails the test after `timeout`.
pub(crate) async fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One transaction as the stream delivered it.
#[derive(Debug)]
pub(crate) struct Txn {
    pub(crate) begin: TxnBegin,
    /// Every event between Begin and Commit, in order.
    pub(crate) events: Vec<Event>,
    pub(crate) batches: Vec<ChangeBatch>,
    pub(crate) commit: TxnCommit,
}

/// Reads events until `n` transactions have committed, failing after `timeout`. Events outside
/// transactions (non-transactional messages) are skipped.
pub(crate) async fn read_txns(stream: &mut ChangeStream, n: usize, timeout: Duration) -> Vec<Txn> {
    let mut out = Vec::new();
    let mut open: Option<(TxnBegin, Vec<Event>)> = None;
    let read = async {
        while out.len() < n {
            let event = stream.next_event().await.expect("stream event").expect("stream open");
            match event {
                Event::Begin(b) => {
                    assert!(open.is_none(), "Begin inside a transaction");
                    open = Some((b, Vec::new()));
                }
                Event::Commit(commit) => {
                    let (begin, events) = open.take().expect("Commit after Begin");
                    let batches = events
                        .iter()
                        .filter_map(
                            |e| if let Event::Change(c) = e { Some(c.clone()) } else { None },
                        )
                        .collect();
                    out.push(Txn { begin, events, batches, commit });
                }
                e => {
                    if let Some((_, events)) = open.as_mut() {
                        events.push(e);
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
        panic!("only {} of {n} transactions arrived within {timeout:?}", out.len())
    });
    out
}

/// Reads events until `done` says so, failing after `timeout`.
pub(crate) async fn read_events(
    stream: &mut ChangeStream,
    timeout: Duration,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut out = Vec::new();
    let read = async {
        while !done(&out) {
            out.push(stream.next_event().await.expect("stream event").expect("stream open"));
        }
    };
    tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
        panic!("the expected events did not arrive within {timeout:?}: {out:#?}")
    });
    out
}

/// Starts replication on `slot`, retrying while the slot is still held by a walsender that is
/// ending (SQLSTATE 55006): PostgreSQL reports a failed START_REPLICATION to the client before
/// its error cleanup releases the slot.
pub(crate) async fn start_retrying(
    config: &wal2arrow_consumer::Config,
    slot: &str,
    options: &[(&str, Option<&str>)],
) -> wal2arrow_client::Result<ChangeStream> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let client = wal2arrow_consumer::ReplicationClient::connect(config).await?;
        match client.start_with_pairs(slot, wal2arrow_consumer::Lsn::INVALID, options).await {
            Err(e) if e.code() == Some("55006") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Peeks at a slot's pending changes through the SQL interface with these plugin options and
/// decodes them: the same bytes a replication connection would get, without consuming them.
pub(crate) async fn peek(
    client: &tokio_postgres::Client,
    slot: &str,
    options: &[(&str, &str)],
) -> Result<Vec<wal2arrow_schema::Message>, tokio_postgres::Error> {
    let flat: Vec<String> =
        options.iter().flat_map(|(k, v)| [k.to_string(), v.to_string()]).collect();
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, VARIADIC $2::text[])",
            &[&slot, &flat],
        )
        .await?;
    let mut decoder = wal2arrow_schema::Decoder::new();
    let mut out = Vec::new();
    for r in &rows {
        let bytes: Vec<u8> = r.get(0);
        // One message, or a Bundle of a transaction's messages.
        decoder
            .decode_into(&arrow_buffer::Buffer::from_slice_ref(&bytes), &mut out)
            .expect("decodes");
    }
    Ok(out.into_iter().map(|(m, _)| m).collect())
}

/// Each row of a batch as (op, rendered values of the table's columns, missing columns).
pub(crate) fn rows(batch: &RecordBatch) -> Vec<(String, Vec<Option<String>>, Vec<String>)> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt8Type;
    let schema = batch.schema();
    let n = schema
        .fields()
        .iter()
        .position(|f| f.metadata().contains_key("wal2arrow:system"))
        .expect("system columns");
    let ops = batch.column(n).as_dictionary::<UInt8Type>();
    let op_names = ops.values().as_string::<i32>();
    let missing = batch.column_by_name("_missing").expect("_missing").as_list::<i32>();
    let fmt = arrow_cast::display::FormatOptions::default();
    let formatters: Vec<_> = (0..n)
        .map(|c| {
            arrow_cast::display::ArrayFormatter::try_new(batch.column(c).as_ref(), &fmt).unwrap()
        })
        .collect();
    (0..batch.num_rows())
        .map(|r| {
            let values = (0..n)
                .map(|c| (!batch.column(c).is_null(r)).then(|| formatters[c].value(r).to_string()))
                .collect();
            let missing = if missing.is_null(r) {
                Vec::new()
            } else {
                let m = missing.value(r);
                m.as_string::<i32>().iter().map(|s| s.unwrap().to_owned()).collect()
            };
            (op_names.value(ops.keys().value(r) as usize).to_owned(), values, missing)
        })
        .collect()
}

/// Concatenates batches of one schema.
pub(crate) fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    arrow_select::concat::concat_batches(schema, batches).expect("batches share the schema")
}
