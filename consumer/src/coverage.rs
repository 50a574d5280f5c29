//! Which tables' existing rows the destination holds, and backfills of the others.
//!
//! A slot streams changes; the rows a table held before it was captured reach the destination
//! only through a snapshot or a backfill. A table can start being captured later: the patterns
//! of an existing slot's stream grow, a table is renamed or moved into them, a backfill was cut
//! short by the consumer's death. A sink that records what it holds
//! ([`SnapshotEvent::TablesHeld`], the Parquet sink's checkpoint) hands that record back at the
//! next start ([`ConsumerBuilder::tables_held`](crate::ConsumerBuilder::tables_held)), and the
//! stream backfills:
//!
//! - at start, every table the patterns capture that the record lacks (after a snapshot taken
//!   by this run, or without a record, nothing: the tables are whole, or the baseline is set);
//! - while streaming, a table the stream shows for the first time under a name the record
//!   lacks, if it existed when the stream started (renamed or moved into the patterns, say).
//!   A table created since holds only rows the stream carries: it is recorded, not read.
//!
//! A backfill takes its table out of the record when it starts and puts it back when it ends,
//! so a consumer that dies in between backfills it again, whole, at the next start. Tables
//! without a key cannot be backfilled ([`crate::backfill`]): they are named in a warning.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use wal2arrow_client::snapshot::sql_name;
use wal2arrow_client::{Config, Event, Relation, SnapshotEvent, sql_client};
use wal2arrow_schema::TableFilter;

use crate::error::Result;

/// The record of the tables held, kept up to date as the stream runs.
#[derive(Debug)]
pub(crate) struct Coverage {
    /// `schema.table` (as [`Relation::qualified_name`]) of the tables held whole.
    held: BTreeSet<String>,
    /// Every table's OID when the stream started.
    existing: HashSet<u32>,
    /// Tables asked for (pattern form), once each per run.
    requested: HashSet<String>,
}

impl Coverage {
    /// Reads the catalog: the tables `filter` captures as the stream reports them (a partition
    /// as its root with `partitions_as_root`). Returns the record — `held` if given and no
    /// snapshot was just taken, else every captured table — and the tables to backfill
    /// (pattern form).
    ///
    /// # Errors
    ///
    /// Connection and SQL errors.
    pub(crate) async fn start(
        config: &Config,
        filter: &TableFilter,
        held: Option<&[String]>,
        snapshot_taken: bool,
        partitions_as_root: bool,
    ) -> Result<(Coverage, Vec<String>)> {
        let sql = sql_client(config).await?;
        let rows = sql
            .query(
                "SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text, \
                   c.relispartition, \
                   EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND CASE c.relreplident \
                     WHEN 'i' THEN i.indisreplident WHEN 'n' THEN false ELSE i.indisprimary END) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' \
                   AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
                 ORDER BY 2, 3",
                &[],
            )
            .await?;
        let mut coverage =
            Coverage { held: BTreeSet::new(), existing: HashSet::new(), requested: HashSet::new() };
        let mut captured = Vec::new();
        for row in &rows {
            let oid = u32::try_from(row.get::<_, i64>(0)).unwrap_or(0);
            coverage.existing.insert(oid);
            let (schema, name, kind): (String, String, String) =
                (row.get(1), row.get(2), row.get(3));
            let reported = if partitions_as_root { !row.get::<_, bool>(4) } else { kind == "r" };
            if reported && filter.includes(&schema, &name) {
                captured.push((schema, name, row.get::<_, bool>(5)));
            }
        }
        let baseline = snapshot_taken || held.is_none();
        let held: HashSet<&str> = held.unwrap_or_default().iter().map(String::as_str).collect();
        let mut backfill = Vec::new();
        let mut keyless = Vec::new();
        for (schema, name, keyed) in captured {
            let qualified = format!("{schema}.{name}");
            if baseline || held.contains(qualified.as_str()) {
                coverage.held.insert(qualified);
            } else if keyed {
                let pattern = format!("{}.{}", sql_name(&schema), sql_name(&name));
                coverage.requested.insert(pattern.clone());
                backfill.push(pattern);
            } else {
                keyless.push(qualified);
            }
        }
        if !keyless.is_empty() {
            tracing::warn!(
                tables = %keyless.join(", "),
                "these captured tables' existing rows are not in the output, and without a \
                 primary key (or REPLICA IDENTITY USING INDEX) they cannot be backfilled: add \
                 one and run `wal2arrow snapshot --tables …`, or copy them with \
                 `wal2arrow stream --snapshot only`"
            );
        }
        if !backfill.is_empty() {
            tracing::info!(
                tables = %backfill.join(", "),
                "backfilling the captured tables whose existing rows the output lacks"
            );
        }
        Ok((coverage, backfill))
    }

    /// The record, as the event sinks keep.
    pub(crate) fn event(&self) -> Event {
        let tables: Arc<[String]> = self.held.iter().cloned().collect();
        Event::Snapshot(SnapshotEvent::TablesHeld { tables })
    }

    /// Updates the record for an event the stream delivers: whether it changed, and a table
    /// to backfill (pattern form).
    pub(crate) fn observe(&mut self, event: &Event) -> (bool, Option<String>) {
        match event {
            Event::Relation(r) => self.relation(r),
            Event::Snapshot(SnapshotEvent::BackfillStarted { relation }) => {
                (self.held.remove(&relation.qualified_name), None)
            }
            Event::Snapshot(SnapshotEvent::BackfillDone { relation, .. }) => {
                (self.held.insert(relation.qualified_name.clone()), None)
            }
            _ => (false, None),
        }
    }

    fn relation(&mut self, r: &Relation) -> (bool, Option<String>) {
        if self.held.contains(&r.qualified_name) {
            return (false, None);
        }
        if r.relid != 0 && !self.existing.contains(&r.relid) {
            // Created since the stream started: every row it holds is in the stream.
            self.existing.insert(r.relid);
            return (self.held.insert(r.qualified_name.clone()), None);
        }
        let pattern = format!("{}.{}", sql_name(&r.namespace), sql_name(&r.name));
        if !self.requested.insert(pattern.clone()) {
            return (false, None);
        }
        tracing::info!(
            table = %r.qualified_name,
            "the stream shows a table that existed before it started but whose existing rows \
             the output lacks (renamed or moved into the patterns?): backfilling it"
        );
        (false, Some(pattern))
    }
}
