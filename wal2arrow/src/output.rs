//! Writing messages into the walsender's output buffer.
//!
//! Each write is one `OutputPluginPrepareWrite` … `OutputPluginWrite` pair, so it reaches the
//! consumer as one XLogData payload. In between, the plugin appends to `ctx->out`, a
//! PostgreSQL `StringInfo`, through [`StringInfoWriter`].
//!
//! [`Output`] gathers a transaction's messages into a Bundle and writes it at commit (or
//! whenever [`BUNDLE_LIMIT`] bytes have gathered): one server write, one XLogData and one
//! `send` per small transaction instead of one per message. Messages outside a transaction
//! (non-transactional logical messages) are written on their own, and so are batches of
//! [`DIRECT_BYTES`] or more, which would otherwise be copied once more into the Bundle.

use std::io::{self, Write};

use pgrx::pg_sys;
use wal2arrow_schema::wire::{
    BUNDLE_ENTRY_HEADER, IPC_ALIGNMENT, write_bundle_entry_header, write_bundle_header,
};

/// A bundle is written once this much has gathered, even before the commit.
pub(crate) const BUNDLE_LIMIT: usize = 1 << 20;

/// A message expected to be at least this large is written as its own payload (after a
/// Bundle of what gathered before it) rather than copied into the Bundle: one copy of its
/// bytes less, for one more server write, which is cheap at this size.
pub(crate) const DIRECT_BYTES: usize = 64 << 10;

/// Where the plugin's messages go: straight to the walsender, or gathered into a Bundle.
pub(crate) struct Output {
    /// A transaction is open: its messages are gathered.
    gathering: bool,
    /// The entries gathered: entry header, message, padding — each.
    staged: Vec<u8>,
    count: u32,
}

impl Output {
    pub(crate) fn new() -> Output {
        Output { gathering: false, staged: Vec::new(), count: 0 }
    }

    /// Starts gathering a transaction's messages.
    pub(crate) fn begin_transaction(&mut self) {
        self.gathering = true;
        self.staged.clear();
        self.count = 0;
    }

    /// Writes one message: into the bundle being gathered, or as its own payload. `last` is
    /// the callback's last write (see [`write_message`]). On error nothing of the message is
    /// kept; the caller raises an ERROR.
    ///
    /// # Safety
    ///
    /// `ctx` must be the decoding context passed to the current output plugin callback.
    pub(crate) unsafe fn message<T, E: From<io::Error>>(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        last: bool,
        body: impl FnOnce(&mut dyn Write) -> Result<T, E>,
    ) -> Result<T, E> {
        if !self.gathering {
            // SAFETY: the caller's contract.
            return unsafe { write_message(ctx, last, |out| body(out)) };
        }
        let start = self.staged.len();
        self.staged.extend_from_slice(&[0; BUNDLE_ENTRY_HEADER]);
        let value = match body(&mut self.staged) {
            Ok(v) => v,
            Err(e) => {
                self.staged.truncate(start);
                return Err(e);
            }
        };
        let len = self.staged.len() - start - BUNDLE_ENTRY_HEADER;
        let mut header = Vec::with_capacity(BUNDLE_ENTRY_HEADER);
        write_bundle_entry_header(
            &mut header,
            u32::try_from(len).map_err(|_| io::Error::other("a message over 4 GiB"))?,
        )?;
        self.staged[start..start + BUNDLE_ENTRY_HEADER].copy_from_slice(&header);
        self.staged.resize(self.staged.len().div_ceil(IPC_ALIGNMENT) * IPC_ALIGNMENT, 0);
        self.count += 1;
        if self.staged.len() >= BUNDLE_LIMIT {
            // SAFETY: the caller's contract.
            unsafe { self.write_bundle(ctx, last)? };
        }
        Ok(value)
    }

    /// Writes one message expected to be at least [`DIRECT_BYTES`] long as its own payload:
    /// first what was gathered (in order), then the message straight into the walsender's
    /// buffer. `last` and errors as for [`Output::message`].
    ///
    /// # Safety
    ///
    /// `ctx` must be the decoding context passed to the current output plugin callback.
    pub(crate) unsafe fn large_message<T, E: From<io::Error>>(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        last: bool,
        body: impl FnOnce(&mut dyn Write) -> Result<T, E>,
    ) -> Result<T, E> {
        if self.gathering {
            // SAFETY: the caller's contract.
            unsafe { self.write_bundle(ctx, false)? };
        }
        // SAFETY: the caller's contract.
        unsafe { write_message(ctx, last, |out| body(out)) }
    }

    /// Writes the gathered messages as one Bundle, if there are any.
    ///
    /// # Safety
    ///
    /// `ctx` must be the decoding context passed to the current output plugin callback.
    pub(crate) unsafe fn write_bundle(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        last: bool,
    ) -> io::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let (staged, count) = (&self.staged, self.count);
        // SAFETY: the caller's contract.
        let written = unsafe {
            write_message(ctx, last, |out| {
                write_bundle_header(out, count)?;
                out.write_all(staged)
            })
        };
        self.staged.clear();
        self.count = 0;
        written
    }

    /// Ends the transaction: writes what was gathered (the last write of the callback).
    ///
    /// # Safety
    ///
    /// `ctx` must be the decoding context passed to the current output plugin callback.
    pub(crate) unsafe fn end_transaction(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
    ) -> io::Result<()> {
        // SAFETY: the caller's contract.
        let written = unsafe { self.write_bundle(ctx, true) };
        self.gathering = false;
        written
    }
}

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
