//! The Arrow PyCapsule interface: a batch or a schema handed to any Arrow implementation
//! (pyarrow, Polars, DuckDB, nanoarrow) through the Arrow C data and C stream interfaces,
//! without copying and without importing pyarrow.
//!
//! A capsule owns the exported C struct; a consumer that imports it moves it out (marking it
//! released), and a capsule dropped unimported releases it (the struct's `Drop`).

use std::ffi::CString;

use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::{Array, RecordBatch, RecordBatchIterator, StructArray};
use arrow_data::ffi::FFI_ArrowArray;
use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::{ArrowError, Schema, SchemaRef};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

fn export_error(py: Python<'_>, e: ArrowError) -> PyErr {
    crate::errors::convert(py, &wal2arrow_consumer::Error::Arrow(e))
}

fn name(n: &str) -> Option<CString> {
    Some(CString::new(n).expect("capsule names have no NUL"))
}

/// `__arrow_c_schema__`: an `arrow_schema` capsule of `schema` (a struct, with the schema's
/// metadata and every field's).
pub(crate) fn schema_capsule<'py>(
    py: Python<'py>,
    schema: &Schema,
) -> PyResult<Bound<'py, PyCapsule>> {
    let ffi = FFI_ArrowSchema::try_from(schema).map_err(|e| export_error(py, e))?;
    PyCapsule::new(py, ffi, name("arrow_schema"))
}

/// `__arrow_c_array__`: the batch as a struct array, with its schema.
pub(crate) fn array_capsules<'py>(
    py: Python<'py>,
    batch: &RecordBatch,
) -> PyResult<(Bound<'py, PyCapsule>, Bound<'py, PyCapsule>)> {
    let schema = schema_capsule(py, batch.schema_ref())?;
    let data = StructArray::from(batch.clone()).into_data();
    let array = PyCapsule::new(py, FFI_ArrowArray::new(&data), name("arrow_array"))?;
    Ok((schema, array))
}

/// `__arrow_c_stream__` over batches already received (they all have `schema`).
pub(crate) fn stream_capsule(
    py: Python<'_>,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> PyResult<Bound<'_, PyCapsule>> {
    let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
    stream_of(py, Box::new(reader))
}

/// `__arrow_c_stream__` over any reader (the reader may block in `next`, waiting for batches
/// to arrive; it is called by the importing library, GIL or not, as that library decides).
pub(crate) fn stream_of(
    py: Python<'_>,
    reader: Box<dyn arrow_array::RecordBatchReader + Send>,
) -> PyResult<Bound<'_, PyCapsule>> {
    PyCapsule::new(py, FFI_ArrowArrayStream::new(reader), name("arrow_array_stream"))
}
