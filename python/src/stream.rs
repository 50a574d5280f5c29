//! `wal2arrow.stream()`: a consumer's events, in order, for a Python loop.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use wal2arrow_consumer::{AckHandle, CdcStream, Event};

use crate::errors::convert;
use crate::{SLICE, runtime};

/// Opens a stream (see `wal2arrow.stream` for the options).
#[pyfunction]
#[pyo3(signature = (dsn = None, **kwargs))]
pub(crate) fn open_stream(
    py: Python<'_>,
    dsn: Option<&str>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<NativeStream> {
    let kwargs = match kwargs {
        Some(k) => k.copy()?,
        None => PyDict::new(py),
    };
    let consumer =
        crate::options::consumer(py, dsn, &kwargs)?.build().map_err(|e| convert(py, &e))?;
    let stream =
        crate::wait(py, async move { consumer.start().await })?.map_err(|e| convert(py, &e))?;
    Ok(NativeStream::new(stream))
}

/// What one wait for the stream gave.
enum Step {
    Events(Vec<Event>),
    Failed(wal2arrow_consumer::Error),
    Quiet,
    Ended,
}

/// A running stream. Its methods may be called from any thread; waiting releases the GIL.
#[pyclass(module = "wal2arrow._native", frozen)]
pub(crate) struct NativeStream {
    inner: Mutex<Option<CdcStream>>,
    /// An error met after events that were returned first: raised by the next call.
    failed: Mutex<Option<wal2arrow_consumer::Error>>,
    /// Events taken from the stream but not handed to Python (a signal came first): the next
    /// call returns them first.
    kept: Mutex<std::collections::VecDeque<Event>>,
    acks: AckHandle,
    output_plugin: String,
    fallback_reason: Option<String>,
}

impl NativeStream {
    fn new(stream: CdcStream) -> NativeStream {
        NativeStream {
            acks: stream.ack_handle(),
            output_plugin: stream.output_plugin().to_string(),
            fallback_reason: stream.fallback_reason().map(str::to_owned),
            inner: Mutex::new(Some(stream)),
            failed: Mutex::new(None),
            kept: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `slice` for the first event, then takes up to `max` that are ready.
    fn step(&self, slice: Duration, max: usize) -> Step {
        let mut kept = Self::lock(&self.kept);
        if !kept.is_empty() {
            let n = kept.len().min(max);
            return Step::Events(kept.drain(..n).collect());
        }
        drop(kept);
        let mut guard = Self::lock(&self.inner);
        let Some(stream) = guard.as_mut() else { return Step::Ended };
        let rt = runtime();
        let first = match rt.block_on(async { tokio::time::timeout(slice, stream.next()).await }) {
            Err(_) => return Step::Quiet,
            Ok(None) => return Step::Ended,
            Ok(Some(Err(e))) => return Step::Failed(e),
            Ok(Some(Ok(event))) => event,
        };
        let mut events = vec![first];
        while events.len() < max {
            // A zero timeout still polls once: whatever is ready now.
            match rt.block_on(async { tokio::time::timeout(Duration::ZERO, stream.next()).await }) {
                Ok(Some(Ok(event))) => events.push(event),
                Ok(Some(Err(e))) => {
                    *Self::lock(&self.failed) = Some(e);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        Step::Events(events)
    }
}

#[pymethods]
impl NativeStream {
    /// The next events, in order (at most `max`): waits for the first up to `timeout`
    /// seconds (`None`: until one comes). Returns `[]` when none came in time, `None` once
    /// the stream has ended; raises the stream's error.
    #[pyo3(signature = (timeout = None, max = 1024))]
    fn next_events(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        max: usize,
    ) -> PyResult<Option<Vec<Py<PyAny>>>> {
        // A deferred error comes after the events kept before it.
        let kept_none = py.detach(|| Self::lock(&self.kept).is_empty());
        if kept_none && let Some(e) = Self::lock(&self.failed).take() {
            return Err(convert(py, &e));
        }
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
            match py.detach(|| self.step(slice, max.max(1))) {
                Step::Events(events) => {
                    // A Ctrl-C that came while waiting is raised now, the events kept for the
                    // next call: none is lost to the KeyboardInterrupt.
                    if let Err(interrupt) = py.check_signals() {
                        let mut kept = Self::lock(&self.kept);
                        for e in events.into_iter().rev() {
                            kept.push_front(e);
                        }
                        return Err(interrupt);
                    }
                    let mut out = Vec::with_capacity(events.len());
                    for e in events {
                        if let Some(obj) = crate::events::to_py(py, e)? {
                            out.push(obj);
                        }
                    }
                    if !out.is_empty() {
                        return Ok(Some(out));
                    }
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

    /// Acknowledges everything up to `lsn` (a `Commit.end_lsn`, or a non-transactional
    /// `Message.ack_lsn`): the slot may pass it, and a restart resumes after it.
    fn ack(&self, py: Python<'_>, lsn: &Bound<'_, PyAny>) -> PyResult<()> {
        self.acks.ack(crate::options::lsn(py, "lsn", lsn)?);
        Ok(())
    }

    /// The highest position acknowledged.
    #[getter]
    fn acknowledged(&self) -> u64 {
        self.acks.acknowledged().0
    }

    /// Sends the acknowledged position to the server now; returns it once written.
    fn sync_acks(&self, py: Python<'_>) -> PyResult<u64> {
        // Asked in slices, the stream's lock released between them (another thread may be
        // reading events) and Ctrl-C checked; a request cut short only sends a status twice.
        loop {
            let answer = py.detach(|| {
                let guard = Self::lock(&self.inner);
                match guard.as_ref() {
                    Some(s) => runtime()
                        .block_on(async { tokio::time::timeout(SLICE, s.sync_acks()).await })
                        .ok(),
                    None => Some(Err(wal2arrow_consumer::Error::Ended)),
                }
            });
            match answer {
                Some(lsn) => return lsn.map(|l| l.0).map_err(|e| convert(py, &e)),
                None => py.check_signals()?,
            }
        }
    }

    /// `"wal2arrow"` or `"wal2json"`.
    #[getter]
    fn output_plugin(&self) -> &str {
        &self.output_plugin
    }

    /// Why the stream reads wal2json rather than wal2arrow (`None` if it does not, or was
    /// asked to).
    #[getter]
    fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The counters so far.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let Some(s) = py.detach(|| Self::lock(&self.inner).as_ref().map(CdcStream::stats)) else {
            return Err(convert(py, &wal2arrow_consumer::Error::Ended));
        };
        let d = PyDict::new(py);
        d.set_item("events", s.events)?;
        d.set_item("batches", s.batches)?;
        d.set_item("rows", s.rows)?;
        d.set_item("bytes", s.bytes)?;
        d.set_item("transactions", s.transactions)?;
        d.set_item("reconnects", s.reconnects)?;
        d.set_item("heartbeats", s.heartbeats)?;
        d.set_item("server_wal_end", s.server_wal_end.0)?;
        if let Some(p) = s.snapshot {
            let snap = PyDict::new(py);
            snap.set_item("tables", p.tables)?;
            snap.set_item("tables_done", p.tables_done)?;
            snap.set_item("pages", p.pages)?;
            snap.set_item("pages_done", p.pages_done)?;
            snap.set_item("rows", p.rows)?;
            snap.set_item("complete", p.complete)?;
            d.set_item("snapshot", snap)?;
        }
        Ok(d)
    }

    /// Ends the stream: sends the acknowledged position to the server and closes the
    /// connection. Closing again does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let stream = py.detach(|| Self::lock(&self.inner).take());
        if let Some(stream) = stream {
            crate::wait(py, stream.close())?;
        }
        Ok(())
    }

    /// Whether the stream is closed.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| Self::lock(&self.inner).is_none())
    }
}
