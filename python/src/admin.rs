//! The preflight check and slot management: `wal2arrow.check()`, `list_slots()`,
//! `create_slot()`, `drop_slot()`.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use wal2arrow_consumer::{Outcome, OutputPlugin, PreflightReport};

use crate::errors::convert;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Report>()?;
    m.add_class::<Check>()?;
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(list_slots, m)?)?;
    m.add_function(wrap_pyfunction!(create_slot, m)?)?;
    m.add_function(wrap_pyfunction!(drop_slot, m)?)?;
    Ok(())
}

/// One check of the preflight report.
#[pyclass(module = "wal2arrow", frozen)]
#[derive(Clone, Debug)]
pub(crate) struct Check {
    /// What was checked (`wal_level`, `replication privilege`, `slot`, …).
    #[pyo3(get)]
    name: String,
    /// `"pass"`, `"warn"`, `"fail"` or `"skipped"`.
    #[pyo3(get)]
    status: String,
    /// What was found (for a pass or a skip), or the problem.
    #[pyo3(get)]
    detail: String,
    /// For a warning or a failure: exactly what to do.
    #[pyo3(get)]
    fix: Option<String>,
}

#[pymethods]
impl Check {
    fn __repr__(&self) -> String {
        format!("Check({:?}, {:?}, {:?})", self.name, self.status, self.detail)
    }
}

/// What the preflight check found: every check, and the fix of each failure.
#[pyclass(module = "wal2arrow", frozen)]
#[derive(Debug)]
pub(crate) struct Report {
    /// Every check, in order.
    #[pyo3(get)]
    checks: Vec<Check>,
    /// The tables the patterns matched, `schema.table`.
    #[pyo3(get)]
    tables: Vec<String>,
    text: String,
}

impl From<&PreflightReport> for Report {
    fn from(r: &PreflightReport) -> Report {
        let checks = r
            .checks
            .iter()
            .map(|c| {
                let (status, detail, fix) = match &c.outcome {
                    Outcome::Pass(d) => ("pass", d.clone(), None),
                    Outcome::Warn { problem, fix } => ("warn", problem.clone(), Some(fix.clone())),
                    Outcome::Fail { problem, fix } => ("fail", problem.clone(), Some(fix.clone())),
                    Outcome::Skipped(d) => ("skipped", d.clone(), None),
                };
                Check { name: c.name.to_owned(), status: status.to_owned(), detail, fix }
            })
            .collect();
        Report {
            checks,
            tables: r.tables.iter().map(|(s, t)| format!("{s}.{t}")).collect(),
            text: r.to_string(),
        }
    }
}

#[pymethods]
impl Report {
    /// Whether no check failed.
    #[getter]
    fn ok(&self) -> bool {
        !self.checks.iter().any(|c| c.status == "fail")
    }

    /// The failed checks.
    #[getter]
    fn failures(&self) -> Vec<Check> {
        self.checks.iter().filter(|c| c.status == "fail").cloned().collect()
    }

    fn __bool__(&self) -> bool {
        self.ok()
    }

    fn __str__(&self) -> &str {
        &self.text
    }

    fn __repr__(&self) -> String {
        format!("Report(ok={}, {} checks)", self.ok(), self.checks.len())
    }
}

fn kwargs_of<'py>(
    py: Python<'py>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    match kwargs {
        Some(k) => k.copy(),
        None => Ok(PyDict::new(py)),
    }
}

/// Checks the server for streaming with these settings (the options of `stream()`),
/// without changing anything.
#[pyfunction]
#[pyo3(signature = (dsn = None, **kwargs))]
fn check(
    py: Python<'_>,
    dsn: Option<&str>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Report> {
    let kwargs = kwargs_of(py, kwargs)?;
    let consumer =
        crate::options::consumer(py, dsn, &kwargs)?.build().map_err(|e| convert(py, &e))?;
    let report =
        crate::wait(py, async move { consumer.check().await })?.map_err(|e| convert(py, &e))?;
    Ok(Report::from(&report))
}

/// The server's replication slots, as dicts.
#[pyfunction]
#[pyo3(signature = (dsn = None, **kwargs))]
fn list_slots<'py>(
    py: Python<'py>,
    dsn: Option<&str>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let kwargs = kwargs_of(py, kwargs)?;
    let config = crate::options::connection(py, dsn, &kwargs)?;
    crate::options::no_others(py, &kwargs, &[])?;
    let slots = crate::wait(py, async move { wal2arrow_consumer::list_slots(&config).await })?
        .map_err(|e| convert(py, &e.into()))?;
    slots
        .into_iter()
        .map(|s| {
            let d = PyDict::new(py);
            d.set_item("name", s.name)?;
            d.set_item("plugin", s.plugin)?;
            d.set_item("slot_type", s.slot_type)?;
            d.set_item("database", s.database)?;
            d.set_item("temporary", s.temporary)?;
            d.set_item("active_pid", s.active_pid)?;
            d.set_item("restart_lsn", s.restart_lsn.map(|l| l.0))?;
            d.set_item("confirmed_flush_lsn", s.confirmed_flush_lsn.map(|l| l.0))?;
            d.set_item("wal_status", s.wal_status)?;
            d.set_item("lag_bytes", s.lag_bytes)?;
            d.set_item("retained_bytes", s.retained_bytes)?;
            d.set_item("lag_seconds", s.lag_time.map(|t| t.as_secs_f64()))?;
            Ok(d)
        })
        .collect()
}

/// Creates a persistent logical slot for `plugin` (`"wal2arrow"` or `"wal2json"`); returns
/// its consistent point (the first LSN it streams from).
#[pyfunction]
#[pyo3(signature = (name, dsn = None, plugin = "wal2arrow", **kwargs))]
fn create_slot(
    py: Python<'_>,
    name: String,
    dsn: Option<&str>,
    plugin: &str,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<u64> {
    let kwargs = kwargs_of(py, kwargs)?;
    let config = crate::options::connection(py, dsn, &kwargs)?;
    crate::options::no_others(py, &kwargs, &["plugin"])?;
    let plugin = match plugin {
        "wal2arrow" => OutputPlugin::Wal2Arrow,
        "wal2json" => OutputPlugin::Wal2Json,
        other => {
            return Err(crate::errors::config(
                py,
                format!("`plugin` must be 'wal2arrow' or 'wal2json', not {other:?}"),
            ));
        }
    };
    let created = crate::wait(py, async move {
        wal2arrow_consumer::create_slot_with(&config, &name, plugin).await
    })?
    .map_err(|e| convert(py, &e.into()))?;
    Ok(created.consistent_point.0)
}

/// Drops a slot. A slot in use is an error unless `force`, which ends the session using it.
#[pyfunction]
#[pyo3(signature = (name, dsn = None, force = false, **kwargs))]
fn drop_slot(
    py: Python<'_>,
    name: String,
    dsn: Option<&str>,
    force: bool,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let kwargs = kwargs_of(py, kwargs)?;
    let config = crate::options::connection(py, dsn, &kwargs)?;
    crate::options::no_others(py, &kwargs, &["force"])?;
    crate::wait(py, async move { wal2arrow_consumer::drop_slot(&config, &name, force).await })?
        .map_err(|e| convert(py, &e.into()))
}
