//! A durable sink for the crash tests: streams a slot with the high-level consumer and appends
//! `R <commit_lsn> <ordinal> <id>` for each row (column 0 as int8) to a file. At each commit it
//! writes the transaction's lines, fsyncs, acknowledges the commit, tells the server
//! (`sync_acks`) and records `A <end_lsn>`.
//! A restart drops a transaction received only in part.
//!
//! Usage: cdc_sink <dsn> <slot> <output file>

use std::io::Write;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use wal2arrow_consumer::{Consumer, Event};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dsn, slot, path] = args.as_slice() else {
        eprintln!("usage: cdc_sink <dsn> <slot> <output file>");
        std::process::exit(2);
    };
    let consumer = Consumer::builder()
        .dsn(dsn)
        .and_then(|b| b.slot(slot).max_poll_interval(std::time::Duration::from_millis(200)).build())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut stream = consumer.start().await.unwrap_or_else(|e| panic!("{e}"));
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    let mut pending = String::new();
    while let Some(event) = stream.next().await {
        match event.unwrap_or_else(|e| panic!("{e}")) {
            Event::Change(c) => {
                for id in c.batch.column(0).as_primitive::<Int64Type>().values() {
                    pending.push_str(&format!("R {} {} {id}\n", c.commit_lsn, c.ordinal));
                }
            }
            Event::Restarted { .. } => pending.clear(),
            Event::Commit(c) => {
                out.write_all(pending.as_bytes()).unwrap();
                out.sync_data().unwrap();
                pending.clear();
                stream.ack(c.end_lsn);
                if stream.sync_acks().await.is_err() {
                    continue; // reconnecting: the position goes out with the next status update
                }
                writeln!(out, "A {}", c.end_lsn).unwrap();
                out.sync_data().unwrap();
            }
            _ => {}
        }
    }
}
