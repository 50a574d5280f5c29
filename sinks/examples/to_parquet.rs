//! Streams tables into a Parquet directory, exactly once, until nothing has happened for 10
//! seconds; run it again and it resumes where it stopped, writing nothing twice.
//!
//! ```sh
//! cargo run -p wal2arrow-sinks --example to_parquet -- \
//!     'postgresql://cdc_user:cdc_password@localhost:5433/app' ./cdc 'public.*'
//! ```

use std::time::Duration;

use wal2arrow_consumer::Consumer;
use wal2arrow_sinks::parquet::{ParquetOptions, ParquetSink};
use wal2arrow_sinks::{RunOptions, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), wal2arrow_sinks::Error> {
    let mut args = std::env::args().skip(1);
    let dsn = args.next().unwrap_or_else(|| "host=localhost user=postgres dbname=postgres".into());
    let out = args.next().unwrap_or_else(|| "cdc-parquet".into());
    let tables: Vec<String> = args.collect();
    let consumer = Consumer::builder().dsn(&dsn)?.slot("example_parquet").tables(tables).build()?;
    // The directory remembers its source: pointing another slot at it is refused.
    let sink = ParquetSink::open(&out, "example_parquet", ParquetOptions::default())?;
    let mut stream = consumer.start().await?;
    let options =
        RunOptions { idle_timeout: Some(Duration::from_secs(10)), ..RunOptions::default() };
    let mut shown = None;
    let report = run(&mut stream, sink, &options, std::future::pending(), &mut |p| {
        if shown != Some(p.transactions) {
            shown = Some(p.transactions);
            eprintln!("{} transactions, {} rows", p.transactions, p.total_rows());
        }
    })
    .await?;
    stream.close().await;
    eprintln!(
        "stopped ({:?}); acknowledged up to {}",
        report.stopped, report.progress.acknowledged
    );
    Ok(())
}
