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

/// One transaction as the stream delivered it.
#[derive(Debug)]
pub(crate) struct Txn {
    pub(crate) begin: TxnBegin,
    pub(crate) batches: Vec<ChangeBatch>,
    pub(crate) commit: TxnCommit,
}

/// Reads events until `n` transactions have committed, failing after `timeout`.
pub(crate) async fn read_txns(stream: &mut ChangeStream, n: usize, timeout: Duration) -> Vec<Txn> {
    let mut out = Vec::new();
    let mut open: Option<(TxnBegin, Vec<ChangeBatch>)> = None;
    let read = async {
        while out.len() < n {
            let event = stream.next_event().await.expect("stream event").expect("stream open");
            match event {
                Event::Begin(b) => {
                    assert!(open.is_none(), "Begin inside a transaction");
                    open = Some((b, Vec::new()));
                }
                Event::Relation(_) => {}
                Event::Change(c) => open.as_mut().expect("batch inside a transaction").1.push(c),
                Event::Commit(commit) => {
                    let (begin, batches) = open.take().expect("Commit after Begin");
                    out.push(Txn { begin, batches, commit });
                }
            }
        }
    };
    tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
        panic!("only {} of {n} transactions arrived within {timeout:?}", out.len())
    });
    out
}

/// Concatenates batches of one schema.
pub(crate) fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    arrow_select::concat::concat_batches(schema, batches).expect("batches share the schema")
}
