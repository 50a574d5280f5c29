//! `wal2arrow.readers()`: one stream spread over per-table readers (the consumer's router),
//! each read by its own loop or task, with bounded memory per table (spilling to disk).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use wal2arrow_consumer::{Reader, Routed, Router, RouterOptions};

use crate::errors::convert;
use crate::{SLICE, runtime};

/// Opens a stream and routes it by table (see `wal2arrow.readers`).
#[pyfunction]
#[pyo3(signature = (dsn = None, **kwargs))]
pub(crate) fn open_router(
    py: Python<'_>,
    dsn: Option<&str>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<NativeRouter> {
    let kwargs = match kwargs {
        Some(k) => k.copy()?,
        None => PyDict::new(py),
    };
    let mut options = RouterOptions::default();
    if let Some(v) = kwargs.get_item("memory_per_queue_mb")? {
        kwargs.del_item("memory_per_queue_mb")?;
        let mb: usize =
            v.extract().ok().filter(|mb| (1..=1 << 20).contains(mb)).ok_or_else(|| {
                crate::errors::config(
                    py,
                    format!(
                        "`memory_per_queue_mb` must be an integer from 1 to {}, not {v}",
                        1 << 20
                    ),
                )
            })?;
        options.memory_per_queue = mb << 20;
    }
    if let Some(v) = kwargs.get_item("router_spill_dir")? {
        kwargs.del_item("router_spill_dir")?;
        let dir: String = v.extract().map_err(|_| {
            crate::errors::config(
                py,
                format!("`router_spill_dir` must be a directory path, not {v}"),
            )
        })?;
        options.spill_dir = dir.into();
    }
    let consumer =
        crate::options::consumer(py, dsn, &kwargs)?.build().map_err(|e| convert(py, &e))?;
    let router = crate::wait(py, async move {
        let stream = consumer.start().await?;
        Router::start(stream, options)
    })?
    .map_err(|e| convert(py, &e))?;
    Ok(NativeRouter { router: Arc::new(router) })
}

/// A stream routed by table.
#[pyclass(module = "wal2arrow._native", frozen)]
pub(crate) struct NativeRouter {
    router: Arc<Router>,
}

#[pymethods]
impl NativeRouter {
    /// The reader of one table's deliveries (`schema.table`). Each table has one queue: take
    /// one reader per table.
    fn reader(&self, table: &str) -> NativeReader {
        let _guard = runtime().enter();
        NativeReader {
            reader: Mutex::new(self.router.table(table)),
            table: table.to_owned(),
            _router: Arc::clone(&self.router),
        }
    }

    /// The reader of logical messages.
    fn messages(&self) -> NativeReader {
        let _guard = runtime().enter();
        NativeReader {
            reader: Mutex::new(self.router.messages()),
            table: String::new(),
            _router: Arc::clone(&self.router),
        }
    }

    /// Each queue's counters, as text: `{queue: "QueueStats { … }"}`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, s) in self.router.stats() {
            d.set_item(name, format!("{s:?}"))?;
        }
        Ok(d)
    }

    /// Stops the stream; readers end once they have read what was routed.
    fn stop(&self) {
        let _guard = runtime().enter();
        self.router.stop();
    }
}

/// One queue of a router.
#[pyclass(module = "wal2arrow._native", frozen)]
pub(crate) struct NativeReader {
    reader: Mutex<Reader>,
    table: String,
    /// The router runs while one of its readers is alive (`readers(...)["t"]` alone keeps it).
    _router: Arc<Router>,
}

enum Step {
    Got(Vec<wal2arrow_consumer::Delivery>),
    Failed(wal2arrow_consumer::Error),
    Quiet,
    Ended,
}

#[pymethods]
impl NativeReader {
    /// The table read.
    #[getter]
    fn table(&self) -> &str {
        &self.table
    }

    /// The next deliveries (at most `max`): `ChangeBatch`, `Truncate` or `Message`, each to
    /// `ack()` once handled. As `NativeStream.next_events` for `timeout` and the result.
    #[pyo3(signature = (timeout = None, max = 64))]
    fn next_deliveries(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        max: usize,
    ) -> PyResult<Option<Vec<Py<PyAny>>>> {
        let deadline = match timeout {
            Some(t) if t.is_finite() && t >= 0.0 => {
                Some(Instant::now() + Duration::from_secs_f64(t))
            }
            Some(_) => {
                return Err(crate::errors::config(
                    py,
                    "`timeout` must be a number of seconds ≥ 0, or None",
                ));
            }
            None => None,
        };
        loop {
            let slice =
                deadline.map_or(SLICE, |d| d.saturating_duration_since(Instant::now()).min(SLICE));
            let step = py.detach(|| {
                let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
                let rt = runtime();
                let first =
                    match rt.block_on(async { tokio::time::timeout(slice, reader.next()).await }) {
                        Err(_) => return Step::Quiet,
                        Ok(None) => return Step::Ended,
                        Ok(Some(Err(e))) => return Step::Failed(e),
                        Ok(Some(Ok(d))) => d,
                    };
                let mut got = vec![first];
                while got.len() < max.max(1) {
                    match rt.block_on(async {
                        tokio::time::timeout(Duration::ZERO, reader.next()).await
                    }) {
                        Ok(Some(Ok(d))) => got.push(d),
                        // An error or the end stays for the next call.
                        _ => break,
                    }
                }
                Step::Got(got)
            });
            match step {
                Step::Got(deliveries) => {
                    let mut out = Vec::with_capacity(deliveries.len());
                    for d in deliveries {
                        out.push(match d.routed {
                            Routed::Batch(b) => {
                                Py::new(py, crate::events::ChangeBatch::from_reader(b, d.ack))?
                                    .into_any()
                            }
                            Routed::Truncate { relation, position, cascade, restart_identity } => {
                                Py::new(
                                    py,
                                    crate::events::reader_truncate(
                                        &relation,
                                        position,
                                        cascade,
                                        restart_identity,
                                        d.ack,
                                    ),
                                )?
                                .into_any()
                            }
                            Routed::Message(m) => {
                                Py::new(py, crate::events::message(m, Some(d.ack)))?.into_any()
                            }
                        });
                    }
                    return Ok(Some(out));
                }
                Step::Failed(e) => return Err(convert(py, &e)),
                Step::Ended => return Ok(None),
                Step::Quiet => {}
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Some(Vec::new()));
            }
        }
    }
}
