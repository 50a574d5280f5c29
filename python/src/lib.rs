//! `wal2arrow._native`: the Python bindings of the wal2arrow consumer, built by maturin into
//! the `wal2arrow` package (python/wal2arrow/__init__.py is the public API over this module).
//!
//! The consumer runs on a Tokio runtime of its own threads; Python threads wait for it with
//! the GIL released, in slices of [`SLICE`], checking for signals between slices so that
//! Ctrl-C interrupts a blocking call promptly. Batches leave as Arrow PyCapsules
//! (`__arrow_c_array__`, `__arrow_c_schema__`, `__arrow_c_stream__`): no copy, and no pyarrow
//! needed.

mod admin;
mod arrow_ffi;
mod errors;
mod events;
mod options;
mod readers;
mod stream;

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;

/// How long a Python thread waits for the runtime before it checks for signals.
pub(crate) const SLICE: Duration = Duration::from_millis(100);

/// The runtime every stream, router and call of the module runs on (two worker threads).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wal2arrow")
            .enable_all()
            .build()
            .expect("the wal2arrow runtime starts")
    })
}

/// Runs `fut` on the runtime and waits for it with the GIL released; a signal (Ctrl-C) seen
/// between slices cancels it and raises (KeyboardInterrupt).
pub(crate) fn wait<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut task = runtime().spawn(fut);
    loop {
        let done = py
            .detach(|| runtime().block_on(async { tokio::time::timeout(SLICE, &mut task).await }));
        match done {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(e)) => {
                return Err(errors::Wal2ArrowError::new_err(format!(
                    "a wal2arrow task failed: {e} (please report it as a bug)"
                )));
            }
            Err(_) => {
                if let Err(interrupt) = py.check_signals() {
                    task.abort();
                    return Err(interrupt);
                }
            }
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    events::register(m)?;
    m.add_class::<stream::NativeStream>()?;
    m.add_class::<readers::NativeRouter>()?;
    m.add_class::<readers::NativeReader>()?;
    m.add_function(wrap_pyfunction!(stream::open_stream, m)?)?;
    m.add_function(wrap_pyfunction!(readers::open_router, m)?)?;
    admin::register(m)?;
    m.add("PLUGIN_NAME", wal2arrow_consumer::PLUGIN_NAME)?;
    Ok(())
}
