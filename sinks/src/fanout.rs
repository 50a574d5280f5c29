//! Several sinks fed from one stream (`--sink kafka --sink parquet`), as the source design
//! chains `.to_kafka(…)` and `.to_parquet(…)`.
//!
//! Every sink gets every event, and a flush flushes them all: the runner acknowledges a
//! position only once every sink has made it durable. A sink that keeps a record of what it
//! holds (Parquet's checkpoint) may hold more than another after a crash between their
//! flushes; the stream then resumes from the position all of them hold, and each sink is
//! spared the transactions its own record covers, so the Parquet sink stays exactly-once while
//! the others get the transactions again (at-least-once).

use wal2arrow_consumer::Event;
use wal2arrow_schema::Lsn;

use crate::error::Result;
use crate::{Durable, Sink};

/// One stream into several sinks.
pub struct Fanout {
    sinks: Vec<Member>,
}

struct Member {
    sink: Box<dyn Sink>,
    durable: Durable,
    /// The transaction being written is one this sink holds already.
    skipping: bool,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("sinks", &self.sinks.len()).finish()
    }
}

impl Fanout {
    /// Feeds `sinks`, in this order.
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Fanout {
        Fanout {
            sinks: sinks
                .into_iter()
                .map(|sink| Member { durable: sink.durable(), sink, skipping: false })
                .collect(),
        }
    }
}

impl Sink for Fanout {
    /// What every sink holds: the runner skips only what all of them have.
    fn durable(&self) -> Durable {
        let min = |f: fn(&Durable) -> Lsn| {
            self.sinks.iter().map(|m| f(&m.durable)).min().unwrap_or(Lsn::INVALID)
        };
        Durable { commit_lsn: min(|d| d.commit_lsn), ack_lsn: min(|d| d.ack_lsn) }
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        for m in &mut self.sinks {
            let held = |lsn: Lsn| !m.durable.commit_lsn.is_invalid() && lsn <= m.durable.commit_lsn;
            match event {
                Event::Begin(b) => m.skipping = held(b.commit_lsn),
                Event::Message(msg) if !msg.transactional && msg.lsn < m.durable.ack_lsn => {
                    continue;
                }
                Event::Commit(_) if m.skipping => {
                    m.skipping = false;
                    continue;
                }
                _ => {}
            }
            if !m.skipping {
                m.sink.write(event)?;
            }
        }
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.sinks.iter().any(|m| m.sink.wants_flush())
    }

    fn flush(&mut self) -> Result<()> {
        for m in &mut self.sinks {
            m.sink.flush()?;
        }
        Ok(())
    }

    /// Takes back what each sink can. When one could, the runner replays everything since
    /// the last flush (that sink needs it again); the sinks that could not get copies, as
    /// at-least-once sinks do anyway. Never `true` without one having taken back, never
    /// `false` with one having done so: either way no sink misses a transaction.
    fn rollback(&mut self) -> Result<bool> {
        let mut any = false;
        for m in &mut self.sinks {
            any |= m.sink.rollback()?;
        }
        Ok(any)
    }
}
