//! The events a stream or a reader hands to Python. Every class is immutable; LSNs are
//! integers (`wal2arrow.format_lsn` writes them as PostgreSQL does, `X/Y`), times are
//! timezone-aware `datetime`s in UTC (and `*_us`: microseconds since the Unix epoch).

use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule, PyTuple};
use wal2arrow_consumer::{AckToken, ChangeBatch as RustBatch, Event, Relation as RustRelation};

use crate::arrow_ffi;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Begin>()?;
    m.add_class::<Relation>()?;
    m.add_class::<ChangeBatch>()?;
    m.add_class::<Truncate>()?;
    m.add_class::<Message>()?;
    m.add_class::<Commit>()?;
    m.add_class::<SnapshotProgress>()?;
    m.add_class::<Restarted>()?;
    m.add_function(wrap_pyfunction!(batches_stream, m)?)?;
    m.add_function(wrap_pyfunction!(same_schema, m)?)?;
    Ok(())
}

/// `datetime` in UTC for microseconds since the Unix epoch.
fn utc(py: Python<'_>, us: i64) -> PyResult<Bound<'_, PyAny>> {
    let dt = py.import("datetime")?;
    let epoch = dt
        .getattr("datetime")?
        .call_method1("fromtimestamp", (0, dt.getattr("timezone")?.getattr("utc")?))?;
    let delta = dt.getattr("timedelta")?.call1((0, 0, us))?;
    epoch.call_method1("__add__", (delta,))
}

/// An acknowledgement token of a reader's delivery.
#[derive(Debug, Default)]
pub(crate) struct Ack(Mutex<Option<AckToken>>);

impl Ack {
    pub(crate) fn new(token: Option<AckToken>) -> Ack {
        Ack(Mutex::new(token))
    }

    /// Acknowledges the delivery; again is harmless.
    fn ack(&self) {
        if let Some(token) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            token.ack();
        }
    }
}

/// A transaction begins; its changes follow, up to its `Commit`.
#[pyclass(module = "wal2arrow", frozen)]
#[derive(Debug)]
pub(crate) struct Begin {
    /// Transaction ID.
    #[pyo3(get)]
    xid: u32,
    /// LSN of the commit record.
    #[pyo3(get)]
    commit_lsn: u64,
    /// Commit time, microseconds since the Unix epoch.
    #[pyo3(get)]
    commit_time_us: i64,
    /// The replication origin the transaction was replayed from, if any.
    #[pyo3(get)]
    origin: Option<String>,
}

#[pymethods]
impl Begin {
    /// Commit time (UTC).
    #[getter]
    fn commit_time<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc(py, self.commit_time_us)
    }

    fn __repr__(&self) -> String {
        format!("Begin(xid={}, commit_lsn={})", self.xid, lsn(self.commit_lsn))
    }
}

/// A table's schema: sent before its first batch and whenever its definition changes.
#[pyclass(module = "wal2arrow", frozen)]
#[derive(Debug)]
pub(crate) struct Relation {
    relation: Arc<RustRelation>,
}

#[pymethods]
impl Relation {
    /// `schema.table`.
    #[getter]
    fn table(&self) -> &str {
        &self.relation.qualified_name
    }

    /// The table's OID.
    #[getter]
    fn relid(&self) -> u32 {
        self.relation.relid
    }

    /// The primary key's columns.
    #[getter]
    fn primary_key(&self) -> Vec<String> {
        self.relation.primary_key.clone()
    }

    /// The column names of the batches (the table's, then `_op`, `_lsn`, `_missing`,
    /// `_unrepresentable`).
    #[getter]
    fn column_names(&self) -> Vec<String> {
        self.relation.schema.fields().iter().map(|f| f.name().clone()).collect()
    }

    /// The batches' Arrow schema (Arrow PyCapsule interface).
    fn __arrow_c_schema__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        arrow_ffi::schema_capsule(py, &self.relation.schema)
    }

    fn __repr__(&self) -> String {
        format!(
            "Relation({:?}, {} columns)",
            self.relation.qualified_name,
            self.relation.schema.fields().len()
        )
    }
}

/// Changed rows of one table, from one transaction: an Arrow record batch (Arrow PyCapsule
/// interface: `pyarrow.record_batch(b)`, `polars.DataFrame(b)`, DuckDB's `FROM b`). Columns:
/// the table's, then `_op` (`insert`, `update`, `delete`, `read`…), `_lsn`, `_missing`,
/// `_unrepresentable`.
#[pyclass(module = "wal2arrow", frozen)]
#[derive(Debug)]
pub(crate) struct ChangeBatch {
    relation: Arc<RustRelation>,
    batch: RecordBatch,
    /// Transaction ID.
    #[pyo3(get)]
    xid: u32,
    /// LSN of the transaction's commit record.
    #[pyo3(get)]
    commit_lsn: u64,
    /// Commit time, microseconds since the Unix epoch.
    #[pyo3(get)]
    commit_time_us: i64,
    /// Position of the batch within its transaction (0, 1, …): with `commit_lsn` it names the
    /// batch exactly, across restarts.
    #[pyo3(get)]
    ordinal: u32,
    /// The replication origin, if any (`None` for a reader's batches, which do not carry it).
    #[pyo3(get)]
    origin: Option<String>,
    ack: Option<Ack>,
}

impl ChangeBatch {
    pub(crate) fn from_stream(c: RustBatch) -> ChangeBatch {
        ChangeBatch {
            relation: c.relation,
            batch: c.batch,
            xid: c.xid,
            commit_lsn: c.commit_lsn.0,
            commit_time_us: c.commit_time_us,
            ordinal: c.ordinal,
            origin: c.origin.map(|o| o.to_string()),
            ack: None,
        }
    }

    pub(crate) fn from_reader(b: wal2arrow_consumer::RoutedBatch, token: AckToken) -> ChangeBatch {
        ChangeBatch {
            relation: b.relation,
            batch: b.batch,
            xid: b.xid,
            commit_lsn: b.position.commit_lsn.0,
            commit_time_us: b.commit_time_us,
            ordinal: b.position.ordinal,
            origin: None,
            ack: Some(Ack::new(Some(token))),
        }
    }
}

#[pymethods]
impl ChangeBatch {
    /// `schema.table`.
    #[getter]
    fn table(&self) -> &str {
        &self.relation.qualified_name
    }

    /// Commit time (UTC).
    #[getter]
    fn commit_time<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc(py, self.commit_time_us)
    }

    /// Number of rows.
    #[getter]
    fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The column names.
    #[getter]
    fn column_names(&self) -> Vec<String> {
        self.batch.schema().fields().iter().map(|f| f.name().clone()).collect()
    }

    fn __len__(&self) -> usize {
        self.batch.num_rows()
    }

    /// The batch's Arrow schema (Arrow PyCapsule interface).
    fn __arrow_c_schema__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        arrow_ffi::schema_capsule(py, self.batch.schema_ref())
    }

    /// The batch as an Arrow struct array and its schema (Arrow PyCapsule interface). A
    /// requested schema is not honoured: the batch comes as it is.
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let _ = requested_schema;
        let (schema, array) = arrow_ffi::array_capsules(py, &self.batch)?;
        PyTuple::new(py, [schema, array])
    }

    /// The batch as a stream of one batch (Arrow PyCapsule interface), for libraries that
    /// read streams (Polars' and DuckDB's constructors).
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema;
        arrow_ffi::stream_capsule(py, self.batch.schema(), vec![self.batch.clone()])
    }

    /// A `pyarrow.RecordBatch` (imports pyarrow; the data is not copied).
    fn to_pyarrow<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("pyarrow")?.call_method1("record_batch", (slf,))
    }

    /// Acknowledges a reader's batch: once every delivery of its transaction is acknowledged
    /// (on every reader), the slot may pass it. A stream's batches are acknowledged with their
    /// transaction instead (`stream.ack(commit.end_lsn)`).
    fn ack(&self, py: Python<'_>) -> PyResult<()> {
        match &self.ack {
            Some(a) => {
                a.ack();
                Ok(())
            }
            None => Err(stream_item_ack(py, "batch")),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "ChangeBatch({:?}, {} rows, xid={}, commit_lsn={}, ordinal={})",
            self.relation.qualified_name,
            self.batch.num_rows(),
            self.xid,
            lsn(self.commit_lsn),
            self.ordinal
        )
    }
}

/// An Arrow C stream over batches of one schema (`wal2arrow.TableReader.__arrow_c_stream__`).
#[pyfunction]
pub(crate) fn batches_stream<'py>(
    py: Python<'py>,
    batches: Vec<PyRef<'py, ChangeBatch>>,
) -> PyResult<Bound<'py, PyCapsule>> {
    let Some(first) = batches.first() else {
        return Err(crate::errors::config(
            py,
            "an Arrow stream needs at least one batch (for its schema)",
        ));
    };
    let schema = first.batch.schema();
    if let Some(other) = batches.iter().find(|b| b.batch.schema() != schema) {
        return Err(crate::errors::config(
            py,
            format!(
                "batches of one Arrow stream share a schema: {} changed",
                other.relation.qualified_name
            ),
        ));
    }
    let batches = batches.iter().map(|b| b.batch.clone()).collect();
    arrow_ffi::stream_capsule(py, schema, batches)
}

/// Whether two batches have the same schema (a reader's stream ends before a change).
#[pyfunction]
pub(crate) fn same_schema(a: PyRef<'_, ChangeBatch>, b: PyRef<'_, ChangeBatch>) -> bool {
    a.batch.schema() == b.batch.schema()
}

fn stream_item_ack(py: Python<'_>, what: &str) -> PyErr {
    crate::errors::config(
        py,
        format!(
            "a stream's {what} is acknowledged with its transaction: call \
             stream.ack(commit.end_lsn) once the Commit is handled (ack() on an item is for \
             readers' deliveries)"
        ),
    )
}

/// Tables were truncated (after the rows before it, in the same transaction).
#[pyclass(module = "wal2arrow", frozen)]
#[derive(Debug)]
pub(crate) struct Truncate {
    /// The tables, `schema.table`.
    #[pyo3(get)]
    tables: Vec<String>,
    /// `TRUNCATE … CASCADE` (`None` when the plugin does not say: wal2json).
    #[pyo3(get)]
    cascade: Option<bool>,
    /// `TRUNCATE … RESTART IDENTITY` (`None` when the plugin does not say).
    #[pyo3(get)]
    restart_identity: Option<bool>,
    /// Transaction ID (`None` for a reader's truncate: readers name transactions by
    /// `commit_lsn`).
    #[pyo3(get)]
    xid: Option<u32>,
    /// LSN of the transaction's commit record.
    #[pyo3(get)]
    commit_lsn: u64,
    /// Position within the transaction.
    #[pyo3(get)]
    ordinal: u32,
    ack: Option<Ack>,
}

#[pymethods]
impl Truncate {
    /// Acknowledges a reader's truncate (see `ChangeBatch.ack`).
    fn ack(&self, py: Python<'_>) -> PyResult<()> {
        match &self.ack {
            Some(a) => {
                a.ack();
                Ok(())
            }
            None => Err(stream_item_ack(py, "truncate")),
        }
    }

    fn __repr__(&self) -> String {
        format!("Truncate({:?}, commit_lsn={})", self.tables, lsn(self.commit_lsn))
    }
}

/// A logical decoding message (`pg_logical_emit_message`).
#[pyclass(module = "wal2arrow", frozen)]
#[derive(Debug)]
pub(crate) struct Message {
    /// Whether it belongs to its transaction (arrives at its commit) or not (at once).
    #[pyo3(get)]
    transactional: bool,
    /// The message's LSN.
    #[pyo3(get)]
    lsn: u64,
    /// The prefix.
    #[pyo3(get)]
    prefix: String,
    content: Vec<u8>,
    /// For transactional messages: the transaction's ID.
    #[pyo3(get)]
    xid: Option<u32>,
    /// For transactional messages: the transaction's commit LSN.
    #[pyo3(get)]
    commit_lsn: Option<u64>,
    /// What to acknowledge once a non-transactional message is handled (just past it);
    /// a transactional one is acknowledged with its transaction.
    #[pyo3(get)]
    ack_lsn: u64,
    ack: Option<Ack>,
}

#[pymethods]
impl Message {
    /// The content.
    #[getter]
    fn content<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.content)
    }

    /// Acknowledges a reader's message (see `ChangeBatch.ack`); a stream's messages are
    /// acknowledged with `stream.ack(message.ack_lsn)`.
    fn ack(&self, py: Python<'_>) -> PyResult<()> {
        match &self.ack {
            Some(a) => {
                a.ack();
                Ok(())
            }
            None => Err(stream_item_ack(py, "message")),
        }
    }

    fn __repr__(&self) -> String {
        format!("Message({:?}, {} bytes, lsn={})", self.prefix, self.content.len(), lsn(self.lsn))
    }
}

/// The transaction committed: all its batches were delivered. Acknowledge `end_lsn` once
/// they are durably handled.
#[pyclass(module = "wal2arrow", frozen)]
#[derive(Debug)]
pub(crate) struct Commit {
    /// Transaction ID.
    #[pyo3(get)]
    xid: u32,
    /// LSN of the commit record.
    #[pyo3(get)]
    commit_lsn: u64,
    /// LSN just past the commit: `stream.ack(commit.end_lsn)`.
    #[pyo3(get)]
    end_lsn: u64,
    /// Commit time, microseconds since the Unix epoch.
    #[pyo3(get)]
    commit_time_us: i64,
    /// How many events (batches, truncates, transactional messages) the transaction had.
    #[pyo3(get)]
    batches: u32,
}

#[pymethods]
impl Commit {
    /// Commit time (UTC).
    #[getter]
    fn commit_time<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc(py, self.commit_time_us)
    }

    fn __repr__(&self) -> String {
        format!("Commit(xid={}, end_lsn={}, batches={})", self.xid, lsn(self.end_lsn), self.batches)
    }
}

/// Progress of an initial snapshot or a backfill: `kind` is `started`, `table_started`,
/// `table_done`, `chunk_done`, `backfill_started`, `backfill_done` or `done`.
#[pyclass(module = "wal2arrow", frozen)]
#[derive(Debug)]
pub(crate) struct SnapshotProgress {
    /// What happened.
    #[pyo3(get)]
    kind: String,
    /// The table, where the event is about one.
    #[pyo3(get)]
    table: Option<String>,
    /// A description of the event.
    #[pyo3(get)]
    detail: String,
}

#[pymethods]
impl SnapshotProgress {
    fn __repr__(&self) -> String {
        format!("SnapshotProgress({:?}, table={:?})", self.kind, self.table)
    }
}

/// The connection was lost and re-established: everything after the acknowledged position
/// `from_lsn` comes again, starting with a Begin. Drop any transaction received only in part.
#[pyclass(module = "wal2arrow", frozen)]
#[derive(Debug)]
pub(crate) struct Restarted {
    /// The position the stream resumed from.
    #[pyo3(get)]
    from_lsn: u64,
    /// Why the connection was lost.
    #[pyo3(get)]
    reason: String,
}

#[pymethods]
impl Restarted {
    fn __repr__(&self) -> String {
        format!("Restarted(from_lsn={}, reason={:?})", lsn(self.from_lsn), self.reason)
    }
}

fn lsn(v: u64) -> String {
    wal2arrow_consumer::Lsn(v).to_string()
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The Python object for a stream's event (`None` for kinds Python does not see).
pub(crate) fn to_py(py: Python<'_>, event: Event) -> PyResult<Option<Py<PyAny>>> {
    Ok(Some(match event {
        Event::Begin(b) => Py::new(
            py,
            Begin {
                xid: b.xid,
                commit_lsn: b.commit_lsn.0,
                commit_time_us: b.commit_time_us,
                origin: b.origin,
            },
        )?
        .into_any(),
        Event::Relation(relation) => Py::new(py, Relation { relation })?.into_any(),
        Event::Change(c) => Py::new(py, ChangeBatch::from_stream(c))?.into_any(),
        Event::Truncate(t) => Py::new(
            py,
            Truncate {
                tables: t.relations.iter().map(|r| r.qualified_name.clone()).collect(),
                cascade: t.cascade,
                restart_identity: t.restart_identity,
                xid: Some(t.xid),
                commit_lsn: t.commit_lsn.0,
                ordinal: t.ordinal,
                ack: None,
            },
        )?
        .into_any(),
        Event::Message(m) => Py::new(py, message(m, None))?.into_any(),
        Event::Commit(c) => Py::new(
            py,
            Commit {
                xid: c.xid,
                commit_lsn: c.commit_lsn.0,
                end_lsn: c.end_lsn.0,
                commit_time_us: c.commit_time_us,
                batches: c.batches,
            },
        )?
        .into_any(),
        Event::Snapshot(s) => {
            let debug = format!("{s:?}");
            let kind = snake(debug.split([' ', '{', '(']).next().unwrap_or_default());
            let table = snapshot_table(&s);
            Py::new(py, SnapshotProgress { kind, table, detail: debug })?.into_any()
        }
        Event::Restarted { from, reason } => {
            Py::new(py, Restarted { from_lsn: from.0, reason })?.into_any()
        }
        // In-progress delivery is not offered in Python (transactions come whole).
        _ => return Ok(None),
    }))
}

fn snapshot_table(s: &wal2arrow_consumer::SnapshotEvent) -> Option<String> {
    use wal2arrow_consumer::SnapshotEvent as S;
    match s {
        S::ChunkDone { relation, .. }
        | S::TableStarted { relation, .. }
        | S::TableDone { relation, .. }
        | S::BackfillStarted { relation, .. } => Some(relation.qualified_name.clone()),
        _ => None,
    }
}

pub(crate) fn message(m: wal2arrow_consumer::LogicalMessage, token: Option<AckToken>) -> Message {
    Message {
        transactional: m.transactional,
        lsn: m.lsn.0,
        ack_lsn: m.ack_lsn().0,
        prefix: m.prefix,
        content: m.content.as_slice().to_vec(),
        xid: m.txn.map(|t| t.0),
        commit_lsn: m.txn.map(|t| t.1.0),
        ack: token.map(|t| Ack::new(Some(t))),
    }
}

/// A reader's truncate.
pub(crate) fn reader_truncate(
    relation: &RustRelation,
    position: wal2arrow_consumer::Position,
    cascade: Option<bool>,
    restart_identity: Option<bool>,
    token: AckToken,
) -> Truncate {
    Truncate {
        tables: vec![relation.qualified_name.clone()],
        cascade,
        restart_identity,
        xid: None,
        commit_lsn: position.commit_lsn.0,
        ordinal: position.ordinal,
        ack: Some(Ack::new(Some(token))),
    }
}
