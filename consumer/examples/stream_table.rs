//! Streams the changes of some tables and prints each batch's size.
//!
//! ```sh
//! cargo run -p wal2arrow-consumer --example stream_table -- \
//!     'postgresql://cdc_user:cdc_password@localhost:5433/wal2arrow' 'public.*'
//! ```

use wal2arrow_consumer::{Consumer, Event};

#[tokio::main]
async fn main() -> Result<(), wal2arrow_consumer::Error> {
    let mut args = std::env::args().skip(1);
    let dsn = args.next().unwrap_or_else(|| "host=localhost user=postgres dbname=postgres".into());
    let tables: Vec<String> = args.collect();
    let consumer = Consumer::builder().dsn(&dsn)?.slot("example_stream").tables(tables).build()?;
    let mut stream = consumer.start().await?;
    while let Some(event) = stream.next().await {
        match event? {
            Event::Change(c) => {
                println!("{} rows of {} at {}", c.num_rows(), c.table(), c.commit_lsn)
            }
            Event::Commit(c) => stream.ack(c.end_lsn),
            _ => {}
        }
    }
    Ok(())
}
