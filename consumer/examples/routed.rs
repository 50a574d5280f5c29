//! Reads two tables in parallel, each at its own pace: a slow reader of one table does not
//! hold up the other (its queue spills to disk past its memory budget).
//!
//! ```sh
//! cargo run -p wal2arrow-consumer --example routed -- \
//!     'postgresql://cdc_user:cdc_password@localhost:5433/wal2arrow'
//! ```

use wal2arrow_consumer::{Consumer, Routed, Router, RouterOptions};

#[tokio::main]
async fn main() -> Result<(), wal2arrow_consumer::Error> {
    let dsn = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "host=localhost user=postgres dbname=postgres".into());
    let consumer = Consumer::builder()
        .dsn(&dsn)?
        .slot("example_routed")
        .tables(["public.users", "public.orders"])
        .build()?;
    let router = Router::start(consumer.start().await?, RouterOptions::default())?;
    let mut readers = Vec::new();
    for table in ["public.users", "public.orders"] {
        let mut reader = router.table(table);
        readers.push(tokio::spawn(async move {
            while let Some(delivery) = reader.next().await {
                let delivery = delivery?;
                if let Routed::Batch(b) = &delivery.routed {
                    println!("{}: {} rows", b.table(), b.batch.num_rows());
                }
                // Acknowledge once handled: the slot advances past a transaction when every
                // reader has acknowledged its part.
                delivery.ack.ack();
            }
            Ok::<_, wal2arrow_consumer::Error>(())
        }));
    }
    for r in readers {
        r.await.expect("reader task")?;
    }
    Ok(())
}
