//! The `print` sink: each transaction's batches as tables on standard output, for people.

use std::io::Write;

use wal2arrow_consumer::Event;
use wal2arrow_sinks::{Error, Result, Sink};

/// A failed write to standard output (a closed pipe, a full disk behind a redirect).
fn stdout_error(e: std::io::Error) -> Error {
    Error::sink("-", "cannot write to", e)
}

/// Prints events as they come; nothing to make durable.
#[derive(Debug, Default)]
pub(super) struct PrintSink;

impl Sink for PrintSink {
    fn write(&mut self, event: &Event) -> Result<()> {
        let table = match event {
            Event::Change(c) => {
                Some(arrow_cast::pretty::pretty_format_batches(std::slice::from_ref(&c.batch))?)
            }
            _ => None,
        };
        let mut out = std::io::stdout().lock();
        let mut print = || -> std::io::Result<()> {
            match event {
                Event::Begin(b) => {
                    writeln!(out, "BEGIN xid {} (commit LSN {})", b.xid, b.commit_lsn)?
                }
                Event::Change(c) => {
                    writeln!(out, "{} — {} rows", c.table(), c.num_rows())?;
                    if let Some(table) = &table {
                        writeln!(out, "{table}")?;
                    }
                }
                Event::Truncate(t) => {
                    let names: Vec<&str> =
                        t.relations.iter().map(|r| r.qualified_name.as_str()).collect();
                    writeln!(
                        out,
                        "TRUNCATE {}{}{}",
                        names.join(", "),
                        if t.restart_identity == Some(true) { " RESTART IDENTITY" } else { "" },
                        if t.cascade == Some(true) { " CASCADE" } else { "" }
                    )?;
                }
                Event::Message(m) => writeln!(
                    out,
                    "MESSAGE {}prefix {:?}: {}",
                    if m.transactional { "(transactional) " } else { "" },
                    m.prefix,
                    String::from_utf8_lossy(m.content.as_slice())
                )?,
                Event::Commit(c) => writeln!(
                    out,
                    "COMMIT xid {} at {} ({} events)\n",
                    c.xid, c.commit_lsn, c.batches
                )?,
                _ => {}
            }
            Ok(())
        };
        print().map_err(stdout_error)
    }

    fn wants_flush(&self) -> bool {
        true
    }

    fn flush(&mut self) -> Result<()> {
        std::io::stdout().flush().map_err(stdout_error)
    }

    fn rollback(&mut self) -> Result<bool> {
        Ok(false)
    }
}
