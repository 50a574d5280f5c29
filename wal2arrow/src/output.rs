//! Writing messages into the walsender's output buffer.
//!
//! Each message is one `OutputPluginPrepareWrite` … `OutputPluginWrite` pair, so it reaches the
//! consumer as one XLogData payload. In between, the plugin appends to `ctx->out`, a
//! PostgreSQL `StringInfo`, through [`StringInfoWriter`].

use std::io;

use pgrx::pg_sys;

/// An [`io::Write`] that appends to a `StringInfo`.
pub(crate) struct StringInfoWriter {
    out: pg_sys::StringInfo,
}

impl io::Write for StringInfoWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = i32::try_from(buf.len()).map_err(|_| io::Error::other("write over 2 GiB"))?;
        // SAFETY: `out` is the decoding context's live StringInfo (see `write_message`), and
        // `buf` is valid for `len` bytes. appendBinaryStringInfo raises an ERROR (turned into a
        // Rust panic by pgrx's FFI guard) if the buffer would exceed 1 GB.
        unsafe { pg_sys::appendBinaryStringInfo(self.out, buf.as_ptr().cast(), len) };
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes one message: prepares the write, lets `body` append to the output, and sends it
/// if `body` succeeded. On error nothing is sent; the caller raises an ERROR.
///
/// `last` tells PostgreSQL whether this is the callback's last write (intermediate writes do
/// not report a WAL position to the walsender).
///
/// # Safety
///
/// `ctx` must be the decoding context passed to the current output plugin callback.
pub(crate) unsafe fn write_message<T, E>(
    ctx: *mut pg_sys::LogicalDecodingContext,
    last: bool,
    body: impl FnOnce(&mut StringInfoWriter) -> Result<T, E>,
) -> Result<T, E> {
    // SAFETY: the caller guarantees `ctx` is the live decoding context of this callback;
    // writes are only allowed from within callbacks, which is where we are.
    unsafe { pg_sys::OutputPluginPrepareWrite(ctx, last) };
    // SAFETY: OutputPluginPrepareWrite reset `ctx->out`, a valid StringInfo, for this message.
    let mut writer = StringInfoWriter { out: unsafe { (*ctx).out } };
    let value = body(&mut writer)?;
    // SAFETY: as above; the message in `ctx->out` is complete.
    unsafe { pg_sys::OutputPluginWrite(ctx, last) };
    Ok(value)
}
