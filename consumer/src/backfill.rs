//! Backfills while streaming: a table's existing rows read again, in chunks in key order,
//! while its changes keep streaming — no lock, no second slot, no signal table.
//!
//! This is DBLog's watermark algorithm (the one Debezium's incremental snapshots use). For each
//! chunk the backfill writes a *low watermark* into the WAL
//! (`pg_logical_emit_message(true, 'wal2arrow.watermark', …)`, in a transaction of its own),
//! reads the chunk (`SELECT … WHERE key > last ORDER BY key LIMIT n`), then writes a *high
//! watermark*. The stream meets the watermarks in commit order. A change to the table that
//! commits between them may be newer than what the chunk read, so the stream remembers the keys
//! it sees changed in that window and, at the high watermark, drops the chunk's rows with those
//! keys (the changes themselves are in the stream). The chunk's other rows are delivered in
//! place of the high watermark, inside its transaction, as `read` rows with `_lsn` = the low
//! watermark's position: after every change they could have missed, before every later one.
//! Replaying the stream therefore gives each key its latest value.
//!
//! Commit order and visibility can differ in PostgreSQL: a transaction whose commit record
//! comes before the low watermark may not yet be visible when the chunk's snapshot is taken
//! (its end not yet published; a synchronous standby's confirmation holds it there). The chunk
//! is therefore read in a `REPEATABLE READ` transaction whose snapshot is taken again while it
//! misses an already committed transaction, and the keys changed by any transaction that
//! snapshot did not see (by xid) count as changed in the window too.
//!
//! A backfill is asked for with a *signal*, another logical message
//! ([`SIGNAL_PREFIX`], see [`request`]): the stream reading the named slot acts on it when it
//! meets it, whether it was running when the signal was written or started later. The
//! builder's `backfill` and `wal2arrow snapshot --tables` send one.
//!
//! Limits: the table needs the key its deletes carry — a primary key (with `REPLICA IDENTITY
//! DEFAULT` or `FULL`) or a `REPLICA IDENTITY USING INDEX` index — to read it in order and to
//! recognise changed rows. A `TRUNCATE` of the table ends its backfill (every row after it is
//! in the stream). Chunks are read one at a time, `chunk_rows` rows each:
//! memory holds one chunk. When the connection is lost, chunks whose transactions were not
//! acknowledged are read again (their old watermarks, replayed, are ignored); a consumer that
//! dies does not resume its backfills chunk by chunk — with a sink that keeps the record of the
//! tables it holds ([`crate::coverage`]) the next start backfills the table again, whole;
//! otherwise ask again (rows already delivered arrive again as `read` rows, which replicas
//! applying by key absorb).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::{Array, BooleanArray, RecordBatch};
use arrow_row::{RowConverter, SortField};
use tokio::task::JoinHandle;
use wal2arrow_client::snapshot::{
    CatalogCache, CopyTable, copy_fields, copy_rows, describe_table, sql_name,
};
use wal2arrow_client::sql::{quote_ident, quote_literal};
use wal2arrow_client::{ChangeBatch, Config, Event, LogicalMessage, SnapshotEvent, sql_client};
use wal2arrow_schema::{Lsn, PluginOptions, TableFilter, TablePattern};

use crate::error::{Error, Result};

/// Prefix of the watermark messages a backfill writes.
pub const WATERMARK_PREFIX: &str = "wal2arrow.watermark";
/// Prefix of the messages that ask a stream for a backfill ([`request`]).
pub const SIGNAL_PREFIX: &str = "wal2arrow.signal";
/// Default rows per chunk.
pub const DEFAULT_CHUNK_ROWS: u32 = 10_000;

/// Asks the stream reading `slot` (in `config`'s database) to backfill the tables matching
/// `patterns` (those its own table patterns include). Checks first that each table exists and
/// has a key to read it by. Returns the tables the signal names.
///
/// # Errors
///
/// [`Error::Config`] for a pattern that is malformed or matches no table, or a matched table
/// without a primary key; connection and SQL errors.
pub async fn request(config: &Config, slot: &str, patterns: &[String]) -> Result<Vec<String>> {
    let filter = TableFilter::new(
        patterns
            .iter()
            .map(|p| TablePattern::parse(p).map_err(|e| Error::Config(format!("tables: {e}"))))
            .collect::<Result<Vec<_>>>()?,
    );
    let sql = sql_client(config).await?;
    let tables = keyed_tables(&sql, &filter).await?;
    if tables.is_empty() {
        return Err(Error::Config(format!(
            "no table matches {}: nothing to backfill",
            patterns.join(", ")
        )));
    }
    let keyless: Vec<&str> =
        tables.iter().filter(|(_, keyed)| !keyed).map(|(n, _)| n.as_str()).collect();
    if !keyless.is_empty() {
        return Err(Error::Config(no_key_message(&keyless.join(", "))));
    }
    let names: Vec<String> = tables.into_iter().map(|(n, _)| n).collect();
    let payload = format!("{slot}\n{}", names.join("\n"));
    sql.execute("SELECT pg_logical_emit_message(true, $1, $2)", &[&SIGNAL_PREFIX, &payload])
        .await?;
    Ok(names)
}

fn no_key_message(tables: &str) -> String {
    format!(
        "cannot backfill {tables}: a backfill reads a table in key order and recognises the rows \
         changed meanwhile by the key its deletes carry, so it needs a primary key (with \
         REPLICA IDENTITY DEFAULT or FULL) or REPLICA IDENTITY USING INDEX; add one, or copy \
         the table whole with a snapshot (wal2arrow stream --snapshot only)"
    )
}

/// The tables `filter` matches (`schema.table`, quoted as patterns need), each with whether it
/// has a key to be backfilled by.
async fn keyed_tables(
    sql: &tokio_postgres::Client,
    filter: &TableFilter,
) -> Result<Vec<(String, bool)>> {
    let rows = sql
        .query(
            // The key deletes carry: the primary key (DEFAULT, FULL) or the identity index.
            "SELECT n.nspname::text, c.relname::text, \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND CASE c.relreplident \
                 WHEN 'i' THEN i.indisreplident WHEN 'n' THEN false ELSE i.indisprimary END) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') \
               AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
             ORDER BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter(|r| filter.includes(r.get(0), r.get(1)))
        .map(|r| (qualified(r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// `schema.table` as a table pattern that matches exactly this table.
fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", sql_name(schema), sql_name(table))
}

/// A watermark's content: `run epoch seq low|high`.
fn watermark(run: &str, epoch: u64, seq: u64, high: bool) -> String {
    format!("{run} {epoch} {seq} {}", if high { "high" } else { "low" })
}

/// The table being backfilled.
struct Current {
    /// As a pattern (`schema.table`).
    name: String,
    table: Arc<CopyTable>,
    /// `SELECT` list and source: `cols FROM [ONLY] schema.table`.
    from: String,
    /// Key column names, and their positions among the table's columns.
    key: Vec<String>,
    key_at: Vec<usize>,
    /// The last key read (its values as text), `None` before the first chunk.
    after: Option<Vec<Option<String>>>,
    rows: u64,
    started: bool,
    /// Chunk reads that failed in a row.
    failures: u32,
}

/// What a chunk read brought back.
struct Chunk {
    batches: Vec<RecordBatch>,
    /// The last row's key; `None` when the chunk was empty.
    last: Option<Vec<Option<String>>>,
    rows: usize,
    /// The transactions the chunk's snapshot did not see.
    unseen: Unseen,
}

/// The transactions a snapshot does not see (`pg_current_snapshot()`): those in progress when
/// it was taken and those that began after. By 32-bit xid, as the stream reports them.
#[derive(Debug, Default)]
struct Unseen {
    xmax: u32,
    xip: HashSet<u32>,
}

impl Unseen {
    /// Parses `xmin:xmax:xip,…` (64-bit, as `pg_current_snapshot()::text` prints it).
    fn parse(text: &str) -> Option<Unseen> {
        let mut parts = text.split(':');
        let _xmin = parts.next()?;
        let xmax = parts.next()?.parse::<u64>().ok()? as u32;
        let xip = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse::<u64>().map(|x| x as u32))
            .collect::<std::result::Result<_, _>>()
            .ok()?;
        Some(Unseen { xmax, xip })
    }

    /// Whether the snapshot did not see `xid` (0 — xids not reported — counts as unseen).
    fn contains(&self, xid: u32) -> bool {
        xid == 0 || self.xip.contains(&xid) || (xid.wrapping_sub(self.xmax) as i32) >= 0
    }
}

/// The chunk being read.
struct Flight {
    seq: u64,
    task: Option<JoinHandle<Result<Chunk>>>,
    result: Option<Result<Chunk>>,
    /// Keys changed since the low watermark (row-encoded); `None` before it.
    window: Option<HashSet<Box<[u8]>>>,
    /// Keys changed before the low watermark, by transaction: a transaction committed just
    /// before it may still have been invisible to the chunk's snapshot (its commit record
    /// written, its end not yet published; sync replication waits there), and then its
    /// changes count as in the window. Kept from the previous chunk's low watermark on.
    before: Vec<(u32, Vec<Box<[u8]>>)>,
    /// Where the chunk starts.
    from: Option<Vec<Option<String>>>,
}

/// A chunk delivered in a transaction not yet known to be durable.
struct Delivered {
    table: String,
    from: Option<Vec<Option<String>>>,
    /// Its transaction's commit LSN, once the Commit went by.
    commit: Option<Lsn>,
}

/// A stream's backfills: the tables asked for, the chunk in flight, and what the stream's
/// events mean for them (see the module docs). Owned by the stream's driver, which hands every
/// event through [`on_event`](Self::on_event).
pub(crate) struct Backfill {
    config: Config,
    options: PluginOptions,
    slot: String,
    chunk_rows: u32,
    run: String,
    epoch: u64,
    seq: u64,
    catalog: CatalogCache,
    queue: VecDeque<String>,
    current: Option<Current>,
    flight: Option<Flight>,
    delivered: Vec<Delivered>,
    /// A chunk was delivered in the open transaction.
    chunk_in_txn: bool,
    /// The open transaction's commit time.
    commit_time_us: i64,
    /// After a rewind: the table to take again and the key to take it again after.
    resume: Option<(String, Option<Vec<Option<String>>>)>,
    /// The open transaction's xid.
    xid: u32,
    /// Keys of the table being read changed since the previous chunk's high watermark, by
    /// transaction, while no chunk is in flight (handed to the next chunk as its `before`).
    history: Vec<(u32, Vec<Box<[u8]>>)>,
    /// The stream reports partitions as their root (so a partitioned table can be read whole).
    partitions_as_root: bool,
    /// Added to the open transaction's event count at its Commit (watermarks and signals
    /// taken out, chunk batches put in).
    delta: i64,
    /// Failed reads of the table taken again next (after [`abandon`](Self::abandon)).
    failures: u32,
}

impl Backfill {
    pub(crate) fn new(
        config: &Config,
        options: &PluginOptions,
        slot: &str,
        chunk_rows: u32,
    ) -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Backfill {
            config: config.clone(),
            options: options.clone(),
            slot: slot.to_owned(),
            chunk_rows: chunk_rows.max(1),
            run: format!("{:x}-{:x}", std::process::id(), nanos),
            epoch: 0,
            seq: 0,
            catalog: CatalogCache::default(),
            queue: VecDeque::new(),
            current: None,
            flight: None,
            delivered: Vec::new(),
            chunk_in_txn: false,
            commit_time_us: 0,
            resume: None,
            xid: 0,
            history: Vec::new(),
            partitions_as_root: options.publish_via_root,
            delta: 0,
            failures: 0,
        }
    }

    /// What the stream reads: a partitioned table can be backfilled only when its
    /// partitions' rows are reported as its own.
    pub(crate) fn set_wal2json(&mut self, wal2json: bool) {
        self.partitions_as_root = self.options.publish_via_root && !wal2json;
    }

    /// Drops what is known about chunks whose transactions are acknowledged (durable).
    pub(crate) fn prune(&mut self, acknowledged: Lsn) {
        self.delivered.retain(|d| d.commit.is_none_or(|c| c >= acknowledged));
    }

    /// Whether events must go through [`on_event`](Self::on_event): a table is being copied
    /// or waits, or the open transaction carries a chunk, a watermark or a signal.
    pub(crate) fn busy(&self) -> bool {
        self.has_work() || self.delta != 0 || self.chunk_in_txn
    }

    fn has_work(&self) -> bool {
        self.current.is_some() || !self.queue.is_empty()
    }

    /// Whether a chunk's read is running (its task can be awaited with [`join`](Self::join)).
    pub(crate) fn reading(&self) -> bool {
        self.flight.as_ref().is_some_and(|f| f.task.is_some())
    }

    /// Waits for the running chunk read to end and keeps its result for the high watermark.
    /// A failed read ends the table's backfill with a warning: the stream goes on.
    ///
    /// Cancel-safe (the driver polls it in a `select!`): the task's handle stays in place
    /// until it has finished.
    pub(crate) async fn join(&mut self) {
        let Some(task) = self.flight.as_mut().and_then(|f| f.task.as_mut()) else {
            return std::future::pending().await;
        };
        let result = task.await.unwrap_or_else(|e| Err(Error::Config(format!("backfill: {e}"))));
        if let Err(e) = &result {
            self.abandon(e);
            return;
        }
        if let Some(f) = self.flight.as_mut() {
            f.task = None;
            f.result = Some(result);
        }
    }

    /// After a chunk's read failed: tries it again (from the same key, with new watermarks)
    /// up to three times, then gives the table up with a warning; the stream goes on.
    fn abandon(&mut self, e: &Error) {
        self.flight = None;
        self.history.clear();
        let Some(current) = self.current.take() else { return };
        if current.failures + 1 < 3 {
            // Described again (the table may have been altered), from the same key.
            tracing::warn!(table = %current.name, error = %e, "backfill chunk failed; reading it again");
            self.failures = current.failures + 1;
            self.resume = Some((current.name.clone(), current.after));
            self.queue.push_front(current.name);
            return;
        }
        tracing::warn!(table = %current.name, error = %e, "backfill failed three times; the table is skipped (ask again)");
    }

    /// Starts the next chunk when none is in flight and there is work.
    pub(crate) async fn tick(&mut self) {
        if self.flight.is_some() || !self.has_work() {
            return;
        }
        while self.current.is_none() {
            let Some(name) = self.queue.pop_front() else { return };
            match self.describe(&name).await {
                Ok(Some(mut current)) => {
                    if let Some((_, after)) = self.resume.take_if(|(t, _)| *t == name) {
                        current.after = after;
                        current.failures = std::mem::take(&mut self.failures);
                    }
                    self.history.clear();
                    self.current = Some(current);
                }
                Ok(None) => {
                    self.resume.take_if(|(t, _)| *t == name);
                    tracing::warn!(table = %name, "backfill: no such table; skipped");
                }
                Err(e) => {
                    self.resume.take_if(|(t, _)| *t == name);
                    tracing::warn!(table = %name, error = %e, "backfill skipped");
                }
            }
        }
        let Some(current) = &self.current else { return };
        self.seq += 1;
        let seq = self.seq;
        let (config, table) = (self.config.clone(), Arc::clone(&current.table));
        let (low, high) = (
            watermark(&self.run, self.epoch, seq, false),
            watermark(&self.run, self.epoch, seq, true),
        );
        let copy =
            chunk_sql(&current.from, &current.key, current.after.as_deref(), self.chunk_rows);
        let key_at = current.key_at.clone();
        let task = tokio::spawn(async move {
            let sql = sql_client(&config).await?;
            let emit = "SELECT pg_logical_emit_message(true, $1, $2)::text";
            let row = sql.query_one(emit, &[&WATERMARK_PREFIX, &low]).await?;
            let lsn: Lsn = row.get::<_, String>(0).parse().unwrap_or(Lsn::INVALID);
            let unseen = chunk_snapshot(&sql).await?;
            let copied = copy_rows(&sql, &table, &copy, lsn).await;
            sql.batch_execute("COMMIT").await?;
            let (batches, _bytes, last) = copied?;
            let rows = batches.iter().map(RecordBatch::num_rows).sum();
            let last = last.map(|line| {
                let fields = copy_fields(&line);
                key_at
                    .iter()
                    .map(|&i| {
                        fields.get(i).cloned().flatten().map(|f| String::from_utf8_lossy(&f).into())
                    })
                    .collect()
            });
            // The chunk is in hand before the high watermark is written.
            sql.execute(emit, &[&WATERMARK_PREFIX, &high]).await?;
            Ok(Chunk { batches, last, rows, unseen })
        });
        self.flight = Some(Flight {
            seq,
            task: Some(task),
            result: None,
            window: None,
            before: std::mem::take(&mut self.history),
            from: current.after.clone(),
        });
    }

    async fn describe(&mut self, name: &str) -> Result<Option<Current>> {
        let pattern = TablePattern::parse(name).map_err(|e| Error::Config(e.to_string()))?;
        let Some((schema, table)) = pattern.exact() else {
            return Err(Error::Config(format!("backfill: {name:?} is not one table's name")));
        };
        let sql = sql_client(&self.config).await?;
        let row = sql
            .query_opt(
                "SELECT n.nspname::text, c.relname::text, c.relkind::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND n.nspname = $1 AND c.relname = $2",
                &[&schema, &table],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (schema, table, kind): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let Some(copy) =
            describe_table(&sql, &mut self.catalog, &schema, &table, &self.options).await?
        else {
            return Ok(None);
        };
        let desc = copy.desc();
        // The key deletes carry, which the window matches rows by.
        use wal2arrow_schema::ReplicaIdentity as R;
        let key = match desc.replica_identity {
            R::Index => desc.identity_key.clone(),
            R::Nothing => Vec::new(),
            _ => desc.primary_key.clone(),
        };
        if key.is_empty() {
            return Err(Error::Config(no_key_message(name)));
        }
        if kind == "p" && !self.partitions_as_root {
            return Err(Error::Config(format!(
                "cannot backfill the partitioned table {name} here: this stream reports its rows \
                 under its partitions' names (publish-via-root off, or the wal2json fallback); \
                 backfill the partitions instead"
            )));
        }
        let key_at: Vec<usize> =
            key.iter().filter_map(|k| desc.columns.iter().position(|c| &c.name == k)).collect();
        let columns: Vec<String> = desc.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let only = if kind == "p" { "" } else { "ONLY " };
        let from = format!(
            "{} FROM {only}{}.{}",
            columns.join(", "),
            quote_ident(&schema),
            quote_ident(&table)
        );
        Ok(Some(Current {
            name: name.to_owned(),
            table: Arc::new(copy),
            from,
            key,
            key_at,
            after: None,
            rows: 0,
            started: false,
            failures: 0,
        }))
    }

    /// Queues a table (pattern form, one table) unless it is queued or being read already.
    pub(crate) fn enqueue(&mut self, name: &str) {
        if !self.queue.iter().any(|q| q == name)
            && self.current.as_ref().is_none_or(|c| c.name != name)
        {
            self.queue.push_back(name.to_owned());
        }
    }

    /// Queues the tables a signal names, when it is for this stream's slot and the stream's
    /// patterns include them.
    fn on_signal(&mut self, content: &[u8]) {
        let text = String::from_utf8_lossy(content);
        let mut lines = text.lines();
        if lines.next() != Some(self.slot.as_str()) {
            return;
        }
        for name in lines {
            let included = TablePattern::parse(name)
                .ok()
                .and_then(|p| p.exact().map(|(s, t)| self.options.tables.includes(s, t)))
                .unwrap_or(false);
            if !included {
                tracing::warn!(table = %name, "backfill asked for a table this stream does not capture; skipped");
            } else if !self.queue.iter().any(|q| q == name)
                && self.current.as_ref().is_none_or(|c| c.name != name)
            {
                tracing::info!(table = %name, "backfill requested");
                self.queue.push_back(name.to_owned());
            }
        }
    }

    /// Hands one event of the stream through: watermarks and signals are taken out, changes
    /// inside a chunk's window are noted, the chunk's rows take its high watermark's place.
    pub(crate) async fn on_event(&mut self, event: Event) -> Vec<Event> {
        match event {
            Event::Message(m) if m.prefix == SIGNAL_PREFIX || m.prefix == WATERMARK_PREFIX => {
                if m.transactional {
                    self.delta -= 1;
                }
                if m.prefix == SIGNAL_PREFIX {
                    self.on_signal(&m.content);
                    return Vec::new();
                }
                self.on_watermark(&m).await
            }
            Event::Begin(b) => {
                self.commit_time_us = b.commit_time_us;
                self.xid = b.xid;
                vec![Event::Begin(b)]
            }
            Event::Change(c) => {
                self.note_change(&c);
                vec![Event::Change(c)]
            }
            Event::Truncate(t) => {
                let truncated = self.current.as_ref().is_some_and(|c| {
                    let name = &c.table.relation().qualified_name;
                    t.relations.iter().any(|r| &r.qualified_name == name)
                });
                let mut out = vec![Event::Truncate(t)];
                if truncated {
                    // The rows a chunk read may be gone; every row from here on is a change
                    // in the stream: the table's backfill is over.
                    if let Some(task) = self.flight.take().and_then(|f| f.task) {
                        task.abort();
                    }
                    self.history.clear();
                    if let Some(c) = self.current.take() {
                        tracing::info!(table = %c.name, "table truncated: its backfill ends");
                        out.push(Event::Snapshot(SnapshotEvent::BackfillDone {
                            relation: Arc::clone(c.table.relation()),
                            rows: c.rows,
                        }));
                    }
                }
                out
            }
            Event::Commit(mut commit) => {
                let delta = std::mem::take(&mut self.delta);
                commit.batches = u32::try_from(i64::from(commit.batches) + delta).unwrap_or(0);
                if std::mem::take(&mut self.chunk_in_txn)
                    && let Some(d) = self.delivered.last_mut()
                {
                    d.commit = Some(commit.commit_lsn);
                }
                vec![Event::Commit(commit)]
            }
            other => vec![other],
        }
    }

    /// Notes the keys a change batch of the table being read touches, inside a window.
    fn note_change(&mut self, c: &ChangeBatch) {
        let Some(current) = &self.current else { return };
        if c.relation.qualified_name != current.table.relation().qualified_name {
            return;
        }
        let Some(keys) = key_rows(&c.batch, &current.key) else { return };
        match self.flight.as_mut() {
            Some(Flight { window: Some(window), .. }) => window.extend(keys),
            Some(flight) => flight.before.push((c.xid, keys)),
            None => self.history.push((c.xid, keys)),
        }
    }

    async fn on_watermark(&mut self, m: &LogicalMessage) -> Vec<Event> {
        let text = String::from_utf8_lossy(&m.content).into_owned();
        let parts: Vec<&str> = text.split(' ').collect();
        let [run, epoch, seq, which] = parts[..] else { return Vec::new() };
        let ours = run == self.run
            && epoch.parse() == Ok(self.epoch)
            && self.flight.as_ref().is_some_and(|f| seq.parse() == Ok(f.seq));
        if !ours {
            // Another stream's, or one from before a restart: replayed, and read again anew.
            return Vec::new();
        }
        if which == "low" {
            if let Some(f) = self.flight.as_mut() {
                f.window = Some(HashSet::new());
            }
            return Vec::new();
        }
        // High: the chunk, less the rows changed in the window, in the watermark's place.
        if self.reading() {
            self.join().await;
        }
        let Some(flight) = self.flight.take() else { return Vec::new() };
        let Some(Ok(chunk)) = flight.result else { return Vec::new() };
        let Some(current) = self.current.as_mut() else { return Vec::new() };
        let mut window = flight.window.unwrap_or_default();
        for (xid, keys) in flight.before {
            if chunk.unseen.contains(xid) {
                window.extend(keys);
            }
        }
        let (xid, commit_lsn, ordinal) = m.txn.unwrap_or((0, m.lsn, 0));
        let relation = Arc::clone(current.table.relation());
        let mut out = Vec::new();
        if !current.started {
            current.started = true;
            out.push(Event::Relation(Arc::clone(&relation)));
            out.push(Event::Snapshot(SnapshotEvent::BackfillStarted {
                relation: Arc::clone(&relation),
            }));
        }
        let mut batches = 0u32;
        for batch in chunk.batches {
            let batch = drop_changed(batch, &current.key, &window);
            if batch.num_rows() == 0 {
                continue;
            }
            current.rows += batch.num_rows() as u64;
            out.push(Event::Change(ChangeBatch::new(
                Arc::clone(&relation),
                batch,
                xid,
                commit_lsn,
                self.commit_time_us,
                ordinal + batches,
            )));
            batches += 1;
        }
        self.delta += i64::from(batches);
        self.chunk_in_txn = true;
        self.delivered.push(Delivered {
            table: current.name.clone(),
            from: flight.from,
            commit: None,
        });
        let finished = chunk.rows < self.chunk_rows as usize || chunk.last.is_none();
        if finished {
            out.push(Event::Snapshot(SnapshotEvent::BackfillDone { relation, rows: current.rows }));
            tracing::info!(table = %current.name, rows = current.rows, "backfill done");
            self.current = None;
            self.history.clear();
        } else {
            current.after = chunk.last;
            current.failures = 0;
        }
        out
    }

    /// After a reconnection that resumes from `from`: chunks delivered in transactions at or
    /// after it come again (with their old, now ignored, watermarks): read them again.
    pub(crate) fn rewind(&mut self, from: Lsn) {
        self.epoch += 1;
        self.delta = 0;
        self.chunk_in_txn = false;
        self.history.clear();
        if let Some(task) = self.flight.take().and_then(|f| f.task) {
            task.abort();
        }
        let first = self.delivered.iter().position(|d| d.commit.is_none_or(|c| c >= from));
        let Some(first) = first else {
            self.delivered.clear();
            // The chunk in flight (if any) starts again from the current key.
            return;
        };
        let redo: Vec<Delivered> = self.delivered.drain(first..).collect();
        self.delivered.clear();
        // Tables to take again, in order: the first from where its chunk began.
        let mut again: Vec<(String, Option<Vec<Option<String>>>)> = Vec::new();
        for d in redo {
            if !again.iter().any(|(t, _)| *t == d.table) {
                again.push((d.table, d.from));
            }
        }
        let current = self.current.take();
        if let Some(c) = &current
            && !again.iter().any(|(t, _)| *t == c.name)
        {
            self.queue.push_front(c.name.clone());
        }
        for (table, _) in again.iter().skip(1).rev() {
            self.queue.retain(|q| q != table);
            self.queue.push_front(table.clone());
        }
        let (table, from) = again.swap_remove(0);
        // The first table starts again where its first redone chunk began.
        self.queue.retain(|q| *q != table);
        self.queue.push_front(table.clone());
        self.resume = Some((table, from));
    }
}

/// Begins the chunk's transaction and takes its snapshot: what it does not see. A snapshot
/// that misses a transaction already committed (its end not yet published — a synchronous
/// standby's confirmation keeps it so) is taken again, a little later, for up to 10 s: such a
/// transaction may come before the low watermark in the stream.
async fn chunk_snapshot(sql: &tokio_postgres::Client) -> Result<Unseen> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        sql.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let row = sql
            .query_one(
                "SELECT pg_current_snapshot()::text, \
                   (SELECT count(*) FROM pg_snapshot_xip(pg_current_snapshot()) x \
                    WHERE pg_xact_status(x) = 'committed')",
                &[],
            )
            .await?;
        let committed: i64 = row.get(1);
        if committed == 0 || tokio::time::Instant::now() > deadline {
            let text: String = row.get(0);
            return Unseen::parse(&text)
                .ok_or_else(|| Error::Config(format!("backfill: unexpected snapshot {text:?}")));
        }
        sql.batch_execute("ROLLBACK").await?;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The `COPY` of the chunk of `from` (`columns FROM table`) after the key `after`.
fn chunk_sql(from: &str, key: &[String], after: Option<&[Option<String>]>, rows: u32) -> String {
    let keys: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    let keys = keys.join(", ");
    let after = match after {
        None => String::new(),
        Some(values) => {
            let values: Vec<String> = values
                .iter()
                .map(|v| v.as_deref().map_or_else(|| "NULL".to_owned(), quote_literal))
                .collect();
            format!(" WHERE ({keys}) > ({})", values.join(", "))
        }
    };
    format!("COPY (SELECT {from}{after} ORDER BY {keys} LIMIT {rows}) TO STDOUT")
}

/// The row-encoded keys of a batch (its `key` columns), or `None` when it lacks them.
fn key_rows(batch: &RecordBatch, key: &[String]) -> Option<Vec<Box<[u8]>>> {
    let columns: Vec<_> =
        key.iter().map(|k| batch.column_by_name(k).cloned()).collect::<Option<Vec<_>>>()?;
    let fields: Vec<SortField> =
        columns.iter().map(|c| SortField::new(c.data_type().clone())).collect();
    let converter = RowConverter::new(fields).ok()?;
    let rows = converter.convert_columns(&columns).ok()?;
    Some(rows.iter().map(|r| Box::<[u8]>::from(r.as_ref())).collect())
}

/// `batch` without the rows whose key is in `changed`.
fn drop_changed(batch: RecordBatch, key: &[String], changed: &HashSet<Box<[u8]>>) -> RecordBatch {
    if changed.is_empty() {
        return batch;
    }
    let Some(keys) = key_rows(&batch, key) else { return batch };
    let keep: BooleanArray = keys.iter().map(|k| Some(!changed.contains(k))).collect();
    arrow_select::filter::filter_record_batch(&batch, &keep).unwrap_or(batch)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray};

    use super::*;

    #[test]
    fn a_snapshot_does_not_see_what_is_in_progress_or_began_after_it() {
        let u = Unseen::parse("100:110:102,105").unwrap();
        assert!(!u.contains(99) && !u.contains(101) && !u.contains(109));
        assert!(u.contains(102) && u.contains(105) && u.contains(110) && u.contains(5000));
        // Without xids (include-xids off) every transaction counts as unseen.
        assert!(u.contains(0));
        // 64-bit xids compare by their low 32 bits, across wraparound.
        let w = Unseen::parse("4294967290:4294967300:").unwrap();
        assert!(w.contains(4) && !w.contains(u32::MAX - 10));
        assert!(Unseen::parse("garbage").is_none());
    }

    #[test]
    fn rows_changed_in_the_window_are_dropped_from_the_chunk_by_their_whole_key() {
        let batch = |k: Vec<&str>, n: Vec<i64>| {
            let k: ArrayRef = Arc::new(StringArray::from(k));
            let n: ArrayRef = Arc::new(Int64Array::from(n));
            RecordBatch::try_from_iter([("k", k), ("n", n)]).unwrap()
        };
        let key = ["k".to_owned(), "n".to_owned()];
        let chunk = batch(vec!["a", "a", "b", "b"], vec![1, 2, 1, 2]);
        // The stream changed (a, 2) and (b, 9); (b, 1) only shares a part of a key.
        let changed: HashSet<Box<[u8]>> =
            key_rows(&batch(vec!["a", "b"], vec![2, 9]), &key).unwrap().into_iter().collect();
        let kept = drop_changed(chunk, &key, &changed);
        assert_eq!(kept, batch(vec!["a", "b", "b"], vec![1, 1, 2]));
        // A batch without the key columns has no keys.
        assert!(key_rows(&batch(vec!["a"], vec![1]), &["x".to_owned()]).is_none());
    }

    #[test]
    fn chunks_continue_after_the_last_key_in_key_order() {
        let from = "\"k\", \"n\" FROM ONLY \"public\".\"t\"";
        let key = ["k".to_owned(), "n".to_owned()];
        assert_eq!(
            chunk_sql(from, &key, None, 100),
            "COPY (SELECT \"k\", \"n\" FROM ONLY \"public\".\"t\" ORDER BY \"k\", \"n\" LIMIT 100) TO STDOUT"
        );
        let after = [Some("it's".to_owned()), Some("7".to_owned())];
        assert_eq!(
            chunk_sql(from, &key, Some(&after), 100),
            "COPY (SELECT \"k\", \"n\" FROM ONLY \"public\".\"t\" WHERE (\"k\", \"n\") > ('it''s', '7') \
             ORDER BY \"k\", \"n\" LIMIT 100) TO STDOUT"
        );
    }
}
