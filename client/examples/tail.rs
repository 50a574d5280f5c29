//! Tails a slot with one [`ChangeStream`](wal2arrow_client::ChangeStream): no reconnection,
//! no preflight — the layer to build on when you manage those yourself. Creates the slot
//! (wal2arrow plugin) if it does not exist; prints each event; acknowledges each commit.
//!
//! ```sh
//! cargo run -p wal2arrow-client --example tail -- 'host=/var/run/postgresql dbname=app' app_tail
//! ```
//!
//! Connection settings not in the DSN come from libpq's `PG*` variables and the password file.

use wal2arrow_client::{Config, Event, StreamOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), wal2arrow_client::Error> {
    let mut args = std::env::args().skip(1);
    let config = match args.next() {
        Some(dsn) => Config::from_dsn(&dsn)?,
        None => Config::from_env()?,
    };
    let slot = args.next().unwrap_or_else(|| "wal2arrow_tail".into());
    let mut stream = wal2arrow_client::open(&config, &StreamOptions::new(&slot)).await?;
    eprintln!("tailing slot {slot} on {}", config.address());
    while let Some(event) = stream.next_event().await? {
        match event {
            Event::Begin(b) => println!("BEGIN xid {}", b.xid),
            Event::Relation(r) => {
                println!("  schema of {}: {} columns", r.qualified_name, r.table_columns())
            }
            Event::Change(c) => println!("  {}: {} rows", c.table(), c.num_rows()),
            Event::Commit(c) => {
                println!("COMMIT at {}", c.commit_lsn);
                stream.ack(c.end_lsn);
            }
            other => println!("  {other:?}"),
        }
    }
    Ok(())
}
