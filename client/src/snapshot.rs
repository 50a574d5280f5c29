//! Initial snapshots: every row the tables held at a slot's consistent point, as the same
//! Arrow batches the stream carries, read in parallel.
//!
//! ## Why it is consistent
//!
//! `CREATE_REPLICATION_SLOT … LOGICAL … (SNAPSHOT 'export')` returns the slot's *consistent
//! point* and the name of a snapshot that sees exactly the transactions committed before it:
//! the slot streams every transaction that commits after it. Rows read in that snapshot and
//! changes streamed from that point are therefore each change once — no row missing, none
//! twice. The exported snapshot lives only while the replication connection that created it
//! stays idle (any command on it, or its end, destroys the snapshot), so the caller keeps that
//! connection untouched until [`Snapshot::run`] returns, and only then starts streaming on it.
//!
//! ## How the copy is cut
//!
//! A coordinator connection imports the snapshot
//! (`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT …`), lists the
//! tables the filter captures (ordinary, permanent tables: what logical decoding decodes),
//! checks `SELECT` on each, describes them from the catalog *as the snapshot sees it*, and cuts
//! each into ranges of `chunk_pages` heap blocks by its current size (a table only grows past
//! what the snapshot can see, so the last range is open-ended and rows on pages added since are
//! invisible anyway). `workers` connections import the same snapshot and take ranges from one
//! queue, table after table, each running
//! `COPY (SELECT columns FROM ONLY table WHERE ctid >= '(a,0)' AND ctid < '(b,0)') TO STDOUT
//! (FORMAT binary)` — a TID range scan from PostgreSQL 14 — and decoding the rows into batches
//! with [`wal2arrow_wal2json::copy`], the mapping of the stream's own values (columns whose
//! binary form is not the plugin's value are selected as `column::text` and parsed as text). No lock is taken:
//! MVCC keeps the snapshot's rows readable while writers go on. A worker holds at most one
//! batch (`batch-rows` rows, or about 8 MB) and the queue to the caller is bounded, so memory
//! is bounded by workers × batch size whatever the table's size.
//!
//! ## What the caller sees
//!
//! One pseudo-transaction: a [`Event::Begin`] whose commit LSN is the consistent point and
//! whose xid is 0, [`SnapshotEvent::Started`], then per table [`Event::Relation`],
//! [`SnapshotEvent::TableStarted`], its rows as [`Event::Change`] batches whose `_op` is
//! `read` (each naming its range, [`ChangeBatch::snapshot_chunk`]), a
//! [`SnapshotEvent::ChunkDone`] after each range's last batch, and
//! [`SnapshotEvent::TableDone`]; then [`Event::Commit`] (end LSN: the consistent point) and
//! [`SnapshotEvent::Complete`] — from there on the replica is whole. A sink that takes back
//! partial transactions (Parquet) therefore never publishes half a snapshot — except whole
//! ranges of a [`resumable`](Snapshot::resumable) one, which it records so that a later run
//! can [`resume`](Snapshot::resume) the snapshot without copying them again.
//!
//! If anything fails — a worker's connection, the server — the snapshot is abandoned (its
//! exported snapshot cannot be imported again once the workers are gone): the caller starts
//! over with a new slot, or resumes it from the ranges a sink made durable.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow_buffer::Buffer;
use futures_core::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wal2arrow_schema::{Lsn, PluginOptions, Relation};
pub use wal2arrow_wal2json::CatalogCache;
use wal2arrow_wal2json::Lookup;
use wal2arrow_wal2json::copy::{BinaryCopy, CopyEncoder};
pub use wal2arrow_wal2json::copy::{CopyTable, fields as copy_fields};

use crate::catalog::{table_info, types};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::event::{ChangeBatch, ChunkId, Event, TxnBegin, TxnCommit};
use crate::plugin::WAL2JSON_SESSION;
use crate::protocol::conn::{Connection, quote_ident, quote_literal};
use crate::sql::sql_client;

/// Default heap pages per copied range (32 MiB with 8 kB pages).
pub const DEFAULT_CHUNK_PAGES: u32 = 4096;

/// What a snapshot reports besides its rows.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SnapshotEvent {
    /// The snapshot begins: what it will copy.
    Started {
        /// The consistent point: the snapshot holds what committed before it, the stream
        /// what commits after.
        lsn: Lsn,
        /// The tables it copies.
        tables: usize,
        /// Their heap pages (of the ranges still to copy, when resumed).
        pages: u64,
        /// Heap pages per range ([`ChunkId`]s name ranges of this size).
        chunk_pages: u32,
        /// The slot outlives this run: a sink that records each finished range
        /// ([`ChunkDone`](SnapshotEvent::ChunkDone)) durably lets the next run resume the
        /// snapshot from there (the consumer's `resumable_snapshot`). When false, a snapshot
        /// cut short is taken again whole, and nothing of it may be kept.
        resumable: bool,
        /// Ranges an earlier run delivered, not copied again (resumed snapshots).
        skipped_chunks: usize,
    },
    /// Every row of one range of heap pages was delivered (its batches carry the same
    /// [`ChangeBatch::snapshot_chunk`]).
    ChunkDone {
        /// The table its rows were reported as.
        relation: Arc<Relation>,
        /// The range.
        chunk: Arc<ChunkId>,
    },
    /// A table's first rows follow.
    TableStarted {
        /// The table.
        relation: Arc<Relation>,
        /// Its heap pages when the copy began.
        pages: u64,
    },
    /// All of a table's rows were delivered.
    TableDone {
        /// The table.
        relation: Arc<Relation>,
        /// Rows copied.
        rows: u64,
        /// `COPY` bytes they came from.
        bytes: u64,
    },
    /// A backfill of a table begins while streaming (see the consumer's `backfill` module):
    /// its rows arrive in chunks, as `read` rows inside the transactions of the chunks' high
    /// watermarks, between other changes.
    BackfillStarted {
        /// The table.
        relation: Arc<Relation>,
    },
    /// Every row of a backfilled table was delivered (in this transaction and earlier ones).
    BackfillDone {
        /// The table.
        relation: Arc<Relation>,
        /// Rows delivered (rows changed while their chunk was read are left to the stream).
        rows: u64,
    },
    /// The tables whose existing rows the destination holds whole once what came before this
    /// event is durable: a sink that keeps this record hands it back at the next start (the
    /// consumer's `tables_held`), and the stream backfills the captured tables it lacks (see
    /// the consumer's `coverage` module). The whole record each time, not a change.
    TablesHeld {
        /// `schema.table` of each, as [`Relation::qualified_name`], sorted.
        tables: Arc<[String]>,
    },
    /// Every table's rows were delivered (the [`Event::Commit`] before this one closes the
    /// snapshot's pseudo-transaction): from here on, the tables are whole.
    Complete {
        /// The consistent point.
        lsn: Lsn,
        /// Tables copied.
        tables: usize,
        /// Rows copied.
        rows: u64,
        /// `COPY` bytes.
        bytes: u64,
    },
}

/// Counters of a running snapshot, for progress lines (shared; read them any time).
#[derive(Debug, Default)]
pub struct SnapshotProgress {
    /// Tables to copy.
    pub tables: AtomicU64,
    /// Tables whose rows were all delivered.
    pub tables_done: AtomicU64,
    /// Heap pages to read.
    pub pages: AtomicU64,
    /// Heap pages read.
    pub pages_done: AtomicU64,
    /// Rows delivered.
    pub rows: AtomicU64,
    /// `COPY` bytes delivered.
    pub bytes: AtomicU64,
    /// [`SnapshotEvent::Complete`] was delivered.
    pub complete: std::sync::atomic::AtomicBool,
}

/// An initial snapshot of the tables `options.tables` captures, read in an exported snapshot.
#[derive(Debug)]
pub struct Snapshot {
    config: Config,
    name: String,
    lsn: Lsn,
    options: PluginOptions,
    workers: usize,
    chunk_pages: u32,
    progress: Arc<SnapshotProgress>,
    resumable: bool,
    resume: Option<Resume>,
}

/// What a resumed snapshot leaves out, and where its rows go.
#[derive(Debug)]
struct Resume {
    /// The slot's consistent point, which the interrupted snapshot was taken at: the
    /// pseudo-transaction's commit LSN (the stream resumes there).
    commit_lsn: Lsn,
    done: std::collections::HashSet<ChunkId>,
    first_ordinal: u32,
}

/// One table of the plan.
#[derive(Debug)]
struct PlannedTable {
    table: Arc<CopyTable>,
    /// What holds its rows: the table itself, or (reported as their partition root) its leaf
    /// partitions.
    sources: Vec<Source>,
    pages: u64,
    chunks: usize,
}

/// A table whose heap is copied.
#[derive(Debug)]
struct Source {
    /// `schema.table` of the heap (the partition's own name), for [`ChunkId`]s.
    heap: String,
    /// Its `relfilenode`.
    file: u32,
    /// `COPY (SELECT columns FROM ONLY table WHERE ` — the ctid condition follows.
    select: String,
    pages: u64,
    chunks: usize,
}

/// One range of one table.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    table: usize,
    source: usize,
    id: usize,
    first: u64,
    /// Exclusive; `None`: to the end.
    end: Option<u64>,
}

/// What workers tell the coordinator.
enum Report {
    Batch { table: usize, chunk: usize, batch: arrow_array::RecordBatch, bytes: usize },
    ChunkDone { table: usize, chunk: usize, pages: u64 },
    Failed(Error),
}

impl Snapshot {
    /// A snapshot of the tables `options.tables` captures, as exported by the replication
    /// connection that created the slot (`name`, with its consistent point `lsn`); batches as
    /// `options` shape them (`batch-rows`, `include-lsn`, `numeric-as-string`).
    pub fn new(config: &Config, name: &str, lsn: Lsn, options: &PluginOptions) -> Snapshot {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4);
        Snapshot {
            config: config.clone(),
            name: name.to_owned(),
            lsn,
            options: options.clone(),
            workers,
            chunk_pages: DEFAULT_CHUNK_PAGES,
            progress: Arc::default(),
            resumable: false,
            resume: None,
        }
    }

    /// Says in [`SnapshotEvent::Started`] that the slot outlives this run, so sinks may make
    /// finished ranges durable before the snapshot ends (default false).
    #[must_use]
    pub fn resumable(mut self, resumable: bool) -> Snapshot {
        self.resumable = resumable;
        self
    }

    /// Resumes a snapshot an earlier run began at the slot's consistent point `commit_lsn`
    /// and cut short: the ranges in `done` (delivered durably then, with the same
    /// [`chunk_pages`](Self::chunk_pages)) are not copied again. The rest are read in this
    /// (later) exported snapshot — rows carry its LSN as `_lsn` — but delivered in a
    /// pseudo-transaction at `commit_lsn`, from whose end the slot then streams: the changes
    /// made between the two snapshots follow, so replaying the whole by key reaches the
    /// tables' state (see the README for the one case it cannot: a row moved by such an update
    /// out of a range not yet copied into one already copied, when a TOASTed value of it was
    /// left unchanged). Batch ordinals start at `first_ordinal`, after the earlier run's.
    #[must_use]
    pub fn resume(
        mut self,
        commit_lsn: Lsn,
        done: impl IntoIterator<Item = ChunkId>,
        first_ordinal: u32,
    ) -> Snapshot {
        self.resume = Some(Resume { commit_lsn, done: done.into_iter().collect(), first_ordinal });
        self.resumable = true;
        self
    }

    /// How many connections copy at once (default: the number of CPUs, at least 2, at most 4).
    #[must_use]
    pub fn workers(mut self, workers: usize) -> Snapshot {
        self.workers = workers.max(1);
        self
    }

    /// Heap pages per copied range (default [`DEFAULT_CHUNK_PAGES`]).
    #[must_use]
    pub fn chunk_pages(mut self, pages: u32) -> Snapshot {
        self.chunk_pages = pages.max(1);
        self
    }

    /// The counters, updated as the copy goes.
    pub fn progress(&self) -> Arc<SnapshotProgress> {
        Arc::clone(&self.progress)
    }

    /// Copies every table, handing each event to `emit` in order (it returns `false` when
    /// nobody listens any more: the copy stops). Returns how many rows were copied and
    /// delivered, [`SnapshotEvent::Complete`] included (0 when the copy stopped early).
    ///
    /// # Errors
    ///
    /// Connection and server errors; a table without `SELECT` privilege
    /// ([`Error::Snapshot`], naming the table and the `GRANT`); an exported snapshot that is
    /// gone ([`Error::SnapshotGone`], transient: its connection was used or closed, and a new
    /// slot's snapshot must be copied from the start).
    pub async fn run(self, mut emit: impl AsyncFnMut(Event) -> bool) -> Result<u64> {
        let coordinator = self.import().await?;
        // The workers connect and import the snapshot while the coordinator plans (their
        // transactions hold it too); those the plan has no range for are closed unused.
        let imports = async {
            let mut clients = Vec::with_capacity(self.workers);
            for _ in 0..self.workers {
                clients.push(self.import_worker().await?);
            }
            Ok::<_, Error>(clients)
        };
        let (planned, imported) = tokio::join!(self.plan(&coordinator), imports);
        let (mut plan, commit_time_us) = planned?;
        let mut clients = imported?;
        let step = u64::from(self.chunk_pages);
        let skip = |source: &Source, first: u64| {
            self.resume.as_ref().is_some_and(|r| {
                let id =
                    ChunkId { heap: source.heap.clone(), file: source.file, first_page: first };
                r.done.contains(&id)
            })
        };
        let mut ids: Vec<Arc<ChunkId>> = Vec::new();
        let mut chunks: VecDeque<Chunk> = VecDeque::new();
        let (mut skipped, mut pages) = (0usize, 0u64);
        for (i, t) in plan.iter_mut().enumerate() {
            let mut left = 0;
            for (source_index, source) in t.sources.iter().enumerate() {
                let n = source.chunks as u64;
                for c in 0..n {
                    let (first, end) = (c * step, (c + 1 < n).then_some((c + 1) * step));
                    if skip(source, first) {
                        skipped += 1;
                        continue;
                    }
                    pages += end.unwrap_or(source.pages.max(first)) - first;
                    left += 1;
                    ids.push(Arc::new(ChunkId {
                        heap: source.heap.clone(),
                        file: source.file,
                        first_page: first,
                    }));
                    chunks.push_back(Chunk {
                        table: i,
                        source: source_index,
                        id: ids.len() - 1,
                        first,
                        end,
                    });
                }
            }
            t.chunks = left;
        }
        // Tables an earlier run copied whole are done already.
        let mut done = plan.iter().filter(|t| t.chunks == 0).count();
        self.progress.tables.store(plan.len() as u64, Ordering::Relaxed);
        self.progress.tables_done.store(done as u64, Ordering::Relaxed);
        self.progress.pages.store(pages, Ordering::Relaxed);
        let plan = Arc::new(plan);
        let queue = Arc::new(Mutex::new(chunks));
        let (reports, mut inbox) = mpsc::channel::<Report>(self.workers * 2);
        let mut workers = JoinSet::new();
        // Every worker imported the snapshot before any copying starts; the coordinator's own
        // transaction stayed open until then, so the snapshot is held throughout.
        clients.truncate(queue.lock().map_or(1, |q| q.len()).max(1));
        drop(coordinator);
        for mut conn in clients {
            let (plan, queue, reports) = (Arc::clone(&plan), Arc::clone(&queue), reports.clone());
            let lsn = self.lsn;
            workers.spawn(async move {
                if let Err(e) = copy_chunks(&mut conn, &plan, &queue, lsn, &reports).await {
                    let _ = reports.send(Report::Failed(e)).await;
                }
            });
        }
        drop(reports);

        let commit_lsn = self.resume.as_ref().map_or(self.lsn, |r| r.commit_lsn);
        let started = SnapshotEvent::Started {
            lsn: commit_lsn,
            tables: plan.len(),
            pages,
            chunk_pages: self.chunk_pages,
            resumable: self.resumable,
            skipped_chunks: skipped,
        };
        if !emit(Event::Snapshot(started)).await {
            return Ok(0);
        }
        // The pseudo-transaction begins with the first row: a snapshot of empty tables has
        // none, and nothing to acknowledge.
        let mut begun = false;
        let first_ordinal = self.resume.as_ref().map_or(0, |r| r.first_ordinal);
        let mut ordinal = first_ordinal;
        let mut per_table: Vec<(bool, usize, u64, u64)> = vec![(false, 0, 0, 0); plan.len()];
        let (mut rows, mut bytes) = (0u64, 0u64);
        while done < plan.len() {
            let Some(report) = inbox.recv().await else {
                return Err(Error::Snapshot(
                    "the snapshot's workers stopped before copying every table".into(),
                ));
            };
            let (table, chunk, batch) = match report {
                Report::Failed(e) => return Err(e),
                Report::Batch { table, chunk, batch, bytes } => {
                    (table, chunk, Some((batch, bytes)))
                }
                Report::ChunkDone { table, chunk, pages } => {
                    self.progress.pages_done.fetch_add(pages, Ordering::Relaxed);
                    (table, chunk, None)
                }
            };
            let t = &plan[table];
            let relation = Arc::clone(t.table.relation());
            let state = &mut per_table[table];
            if !state.0 {
                state.0 = true;
                let started =
                    SnapshotEvent::TableStarted { relation: Arc::clone(&relation), pages: t.pages };
                if !emit(Event::Relation(Arc::clone(&relation))).await
                    || !emit(Event::Snapshot(started)).await
                {
                    return Ok(rows);
                }
            }
            match batch {
                Some((batch, n)) => {
                    let state = &mut per_table[table];
                    state.2 += batch.num_rows() as u64;
                    state.3 += n as u64;
                    rows += batch.num_rows() as u64;
                    bytes += n as u64;
                    self.progress.rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    let change = ChangeBatch {
                        relation,
                        xid: 0,
                        commit_lsn,
                        commit_time_us,
                        origin: None,
                        ordinal,
                        batch,
                        snapshot_chunk: Some(Arc::clone(&ids[chunk])),
                        in_progress: None,
                        payload: Buffer::from_vec(Vec::<u8>::new()),
                        source_bytes: n,
                    };
                    ordinal += 1;
                    if !begun {
                        begun = true;
                        let begin = TxnBegin { xid: 0, commit_lsn, commit_time_us, origin: None };
                        if !emit(Event::Begin(begin)).await {
                            return Ok(rows);
                        }
                    }
                    if !emit(Event::Change(change)).await {
                        return Ok(rows);
                    }
                }
                None => {
                    let chunk_done = SnapshotEvent::ChunkDone {
                        relation: Arc::clone(&relation),
                        chunk: Arc::clone(&ids[chunk]),
                    };
                    if begun && !emit(Event::Snapshot(chunk_done)).await {
                        return Ok(rows);
                    }
                    let state = &mut per_table[table];
                    state.1 += 1;
                    if state.1 == t.chunks {
                        done += 1;
                        self.progress.tables_done.fetch_add(1, Ordering::Relaxed);
                        let (r, b) = (state.2, state.3);
                        let event = SnapshotEvent::TableDone { relation, rows: r, bytes: b };
                        if !emit(Event::Snapshot(event)).await {
                            return Ok(rows);
                        }
                    }
                }
            }
        }
        workers.join_all().await;
        let commit = TxnCommit {
            xid: 0,
            commit_lsn,
            end_lsn: commit_lsn,
            commit_time_us,
            batches: ordinal - first_ordinal,
        };
        let complete = SnapshotEvent::Complete { lsn: commit_lsn, tables: plan.len(), rows, bytes };
        if (!begun || emit(Event::Commit(commit)).await) && emit(Event::Snapshot(complete)).await {
            self.progress.complete.store(true, Ordering::Relaxed);
            Ok(rows)
        } else {
            Ok(0)
        }
    }

    /// A worker's connection (ours, not tokio-postgres's: the `COPY` it reads arrives as one
    /// message per row, which it frames without a hand-over between tasks) in a transaction
    /// that sees the exported snapshot, with the session settings the text parsers expect.
    async fn import_worker(&self) -> Result<Connection> {
        let mut conn = Connection::connect_sql(&self.config).await?;
        conn.simple_query(WAL2JSON_SESSION).await?;
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&self.name)
        );
        match conn.simple_query(&sql).await {
            Ok(_) => Ok(conn),
            Err(e) if matches!(e.code(), Some("22023" | "42704")) => {
                Err(self.gone(e.db_error().map_or_else(|| e.to_string(), |d| d.message.clone())))
            }
            Err(e) => Err(e),
        }
    }

    /// The exported snapshot cannot be imported (any more).
    fn gone(&self, why: String) -> Error {
        Error::SnapshotGone(format!(
            "the exported snapshot {:?} is gone ({why}): the replication connection that \
             created the slot was closed or used before every worker had imported it; take it \
             again from a new slot (the consumer does so by itself)",
            self.name
        ))
    }

    /// A connection in a transaction that sees the exported snapshot, with the session
    /// settings the text parsers expect.
    async fn import(&self) -> Result<tokio_postgres::Client> {
        let client = sql_client(&self.config).await?;
        client.batch_execute(WAL2JSON_SESSION).await?;
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&self.name)
        );
        match client.batch_execute(&sql).await {
            Ok(()) => Ok(client),
            // invalid_parameter_value / undefined_object: no such snapshot (any more).
            Err(e) if matches!(e.code().map(|c| c.code()), Some("22023" | "42704")) => Err(self
                .gone(e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned()))),
            Err(e) => Err(e.into()),
        }
    }

    /// The tables to copy, described and sized in the snapshot; the snapshot's time.
    async fn plan(&self, client: &tokio_postgres::Client) -> Result<(Vec<PlannedTable>, i64)> {
        // Every table with a heap; a partition with its partition root's schema and name,
        // which its rows are reported as with publish-via-root (as the stream reports them).
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text, \
                   has_table_privilege(c.oid, 'SELECT'), \
                   (pg_relation_size(c.oid) / current_setting('block_size')::int8)::int8, \
                   (extract(epoch FROM now()) * 1000000)::int8, \
                   rn.nspname::text, r.relname::text, pg_relation_filenode(c.oid)::int8 \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   LEFT JOIN pg_class r ON c.relispartition AND r.oid = pg_partition_root(c.oid) \
                   LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace \
                 WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
                   AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
                 ORDER BY coalesce(rn.nspname, n.nspname), coalesce(r.relname, c.relname), 1, 2",
                &[],
            )
            .await?;
        let mut commit_time_us = 0;
        let mut catalog = CatalogCache::default();
        let mut plan: Vec<PlannedTable> = Vec::new();
        let mut denied = Vec::new();
        // The reported table of the last plan entry.
        let mut last: Option<(String, String)> = None;
        for row in rows {
            let (own_schema, own_name): (String, String) = (row.get(0), row.get(1));
            commit_time_us = row.get(4);
            let root: Option<(String, String)> = match (row.get(5), row.get(6)) {
                (Some(s), Some(n)) if self.options.publish_via_root => Some((s, n)),
                _ => None,
            };
            let (schema, name) = root.unwrap_or_else(|| (own_schema.clone(), own_name.clone()));
            if !self.options.tables.includes(&schema, &name) {
                continue;
            }
            if !row.get::<_, bool>(2) {
                denied.push(format!("{}.{}", sql_name(&own_schema), sql_name(&own_name)));
                continue;
            }
            let pages = u64::try_from(row.get::<_, i64>(3)).unwrap_or(0);
            let from = |t: &PlannedTable| {
                format!(
                    "COPY (SELECT {} FROM ONLY {}.{} WHERE ",
                    t.table.select_list(quote_ident),
                    quote_ident(&own_schema),
                    quote_ident(&own_name)
                )
            };
            let chunks = pages.div_ceil(u64::from(self.chunk_pages)).max(1) as usize;
            let heap = format!("{}.{}", sql_name(&own_schema), sql_name(&own_name));
            let file = u32::try_from(row.get::<_, Option<i64>>(7).unwrap_or(0)).unwrap_or(0);
            if last.as_ref() == Some(&(schema.clone(), name.clone())) {
                // Another partition of the same root.
                let t = plan.last_mut().expect("last is set with a plan entry");
                let select = from(t);
                t.sources.push(Source { heap, file, select, pages, chunks });
                t.pages += pages;
                t.chunks += chunks;
                continue;
            }
            let Some(table) =
                describe_table(client, &mut catalog, &schema, &name, &self.options).await?
            else {
                continue;
            };
            let mut t = PlannedTable { table: Arc::new(table), sources: Vec::new(), pages, chunks };
            t.sources.push(Source { heap, file, select: from(&t), pages, chunks });
            plan.push(t);
            last = Some((schema, name));
        }
        if !denied.is_empty() {
            return Err(Error::Snapshot(format!(
                "the snapshot cannot read {}: the role has no SELECT privilege on {}; grant it \
                 (GRANT SELECT ON {} TO {}) or leave the table out with --tables",
                denied.join(", "),
                if denied.len() == 1 { "it" } else { "them" },
                denied.join(", "),
                sql_name(&self.config.user)
            )));
        }
        Ok((plan, commit_time_us))
    }
}

/// Runs `sql`, a `COPY … TO STDOUT (FORMAT binary)`, on a new connection and discards what
/// it sends, through the reader the snapshot's workers use: the physical limit of copying, for
/// benchmarks. Returns the bytes received.
///
/// # Errors
///
/// Connection and server errors.
#[doc(hidden)]
pub async fn copy_to_nothing(config: &Config, sql: &str) -> Result<usize> {
    let mut conn = Connection::connect_sql(config).await?;
    conn.copy_out(sql).await?;
    let mut bytes = 0;
    while let Some(data) = conn.next_copy_data().await? {
        bytes += data.len();
    }
    Ok(bytes)
}

/// `schema.name` described from the catalog for copying its rows into `read` batches: the
/// same schema, field metadata and type mapping as its streamed changes (`catalog` keeps the
/// types learnt, for the next table). `None` when there is no such table.
///
/// # Errors
///
/// SQL errors; [`Error::Snapshot`] when the table cannot be described as Arrow.
pub async fn describe_table(
    client: &tokio_postgres::Client,
    catalog: &mut CatalogCache,
    schema: &str,
    name: &str,
    options: &PluginOptions,
) -> Result<Option<CopyTable>> {
    let Some(info) = table_info(client, schema, name).await? else { return Ok(None) };
    loop {
        match CopyTable::from_catalog(catalog, &info, schema, name, options) {
            Ok(t) => return Ok(Some(t)),
            Err(Ok(Lookup::Types(oids))) => {
                for (oid, ty) in types(client, &oids).await? {
                    catalog.put_type(oid, ty);
                }
            }
            Err(Ok(other)) => {
                return Err(Error::Snapshot(format!("unexpected catalog question {other:?}")));
            }
            Err(Err(e)) => return Err(Error::Snapshot(format!("{schema}.{name}: {e}"))),
        }
    }
}

/// Runs `copy` (a `COPY (SELECT …) TO STDOUT` of `table`'s columns, in order) and encodes its
/// rows as `read` batches with `_lsn` = `lsn`. Returns the batches, the `COPY` bytes, and the
/// last row's line (to continue from its key).
///
/// # Errors
///
/// SQL errors; [`Error::Snapshot`] for a row that does not fit the table.
pub async fn copy_rows(
    client: &tokio_postgres::Client,
    table: &Arc<CopyTable>,
    copy: &str,
    lsn: Lsn,
) -> Result<(Vec<arrow_array::RecordBatch>, u64, Option<Vec<u8>>)> {
    let stream = client.copy_out(copy).await?;
    let mut stream = std::pin::pin!(stream);
    let mut encoder = CopyEncoder::new(Arc::clone(table), lsn);
    let failed = |e: wal2arrow_wal2json::copy::CopyError| {
        Error::Snapshot(format!("{}: {e}", table.relation().qualified_name))
    };
    let (mut batches, mut bytes, mut partial) = (Vec::new(), 0u64, Vec::<u8>::new());
    let mut last: Option<Vec<u8>> = None;
    while let Some(data) = poll_fn(|cx| Pin::as_mut(&mut stream).poll_next(cx)).await {
        let data = data?;
        for piece in data.split_inclusive(|b| *b == b'\n') {
            partial.extend_from_slice(piece);
            if !piece.ends_with(b"\n") {
                continue;
            }
            encoder.push_row(&partial).map_err(failed)?;
            last = Some(std::mem::take(&mut partial));
            if encoder.is_full()
                && let Some((batch, n)) = encoder.finish_batch().map_err(failed)?
            {
                bytes += n as u64;
                batches.push(batch);
            }
        }
    }
    if !partial.is_empty() {
        encoder.push_row(&partial).map_err(failed)?;
        last = Some(partial);
    }
    if let Some((batch, n)) = encoder.finish_batch().map_err(failed)? {
        bytes += n as u64;
        batches.push(batch);
    }
    Ok((batches, bytes, last))
}

/// An identifier as SQL needs it written: quoted only when it must be.
pub fn sql_name(name: &str) -> String {
    let plain = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain { name.to_owned() } else { quote_ident(name) }
}

/// A worker: takes ranges off the queue until it is empty, copying each.
async fn copy_chunks(
    conn: &mut Connection,
    plan: &[PlannedTable],
    queue: &Mutex<VecDeque<Chunk>>,
    lsn: Lsn,
    reports: &mpsc::Sender<Report>,
) -> Result<()> {
    loop {
        let Some(chunk) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
            return Ok(());
        };
        let t = &plan[chunk.table];
        let source = &t.sources[chunk.source];
        let range = match chunk.end {
            Some(end) => format!(
                "ctid >= '({},0)'::tid AND ctid < '({end},0)'::tid) TO STDOUT (FORMAT binary)",
                chunk.first
            ),
            None => format!("ctid >= '({},0)'::tid) TO STDOUT (FORMAT binary)", chunk.first),
        };
        let sql = format!("{}{range}", source.select);
        conn.copy_out(&sql).await?;
        let mut encoder = CopyEncoder::new(Arc::clone(&t.table), lsn);
        let failed = |e: wal2arrow_wal2json::copy::CopyError| {
            Error::Snapshot(format!("{}: {e}", t.table.relation().qualified_name))
        };
        // The server sends about one row per message; the decoder keeps a row cut across
        // messages until the rest comes.
        let mut state = BinaryCopy::default();
        while let Some(data) = conn.next_copy_data().await? {
            encoder.push_binary(&mut state, &data).map_err(failed)?;
            if encoder.is_full() {
                send_batch(&mut encoder, &chunk, reports, t).await?;
            }
        }
        if state.has_partial_row() {
            return Err(failed(wal2arrow_wal2json::copy::CopyError(
                "the COPY stream ended inside a row".into(),
            )));
        }
        send_batch(&mut encoder, &chunk, reports, t).await?;
        let pages = match chunk.end {
            Some(end) => end - chunk.first,
            None => source.pages.saturating_sub(chunk.first),
        };
        let done = Report::ChunkDone { table: chunk.table, chunk: chunk.id, pages };
        if reports.send(done).await.is_err() {
            return Ok(());
        }
    }
}

async fn send_batch(
    encoder: &mut CopyEncoder,
    chunk: &Chunk,
    reports: &mpsc::Sender<Report>,
    t: &PlannedTable,
) -> Result<()> {
    let finished = encoder
        .finish_batch()
        .map_err(|e| Error::Snapshot(format!("{}: {e}", t.table.relation().qualified_name)))?;
    if let Some((batch, bytes)) = finished {
        // A closed channel: the coordinator stopped; the worker ends with the next range.
        let report = Report::Batch { table: chunk.table, chunk: chunk.id, batch, bytes };
        let _ = reports.send(report).await;
    }
    Ok(())
}
