//! Reading backend messages off the socket, with XLogData payloads landing in aligned
//! allocations.
//!
//! A backend message is a type byte, a big-endian `u32` length (counting itself) and a body.
//! During replication the payloads arrive as `CopyData` (`d`) messages whose body starts with
//! a sub-type: `w` (XLogData: start LSN, end LSN, send time, then the plugin's bytes) or `k`
//! (primary keepalive). See [the protocol docs][proto].
//!
//! The reader reads ahead into a 64 KiB buffer, so a burst of small messages — a transaction
//! of one row is three — costs one `read` call rather than several each. An XLogData payload
//! is then copied once, from that buffer into a fresh 64-byte-aligned [`MutableBuffer`] of
//! exactly its size; a payload of [`DIRECT`] bytes or more is read straight from the socket
//! into its aligned allocation instead, so a large batch is copied only by the kernel. Either
//! way the Arrow arrays decoded from a payload point into that allocation.
//!
//! [`FrameReader::read`] is cancel safe: its progress lives in the reader, so a `read` dropped
//! in a `select!` loses nothing and the next call resumes. So are [`FrameReader::try_frame`]
//! (no I/O) and [`FrameReader::fill`].
//!
//! A message's length word is checked against the reader's maximum message size before
//! anything is allocated for it ([`FrameError::TooLarge`]), and bytes that break the framing
//! are [`FrameError::Malformed`]: a definite error, never mistaken for a dropped connection.
//!
//! [proto]: https://www.postgresql.org/docs/15/protocol-replication.html

use std::io;

use arrow_buffer::{Buffer, MutableBuffer};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use wal2arrow_schema::Lsn;

/// Bytes of a message beyond the plugin's payload: XLogData's header.
const OVERHEAD: usize = 1024;

/// Why reading a frame failed.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The connection failed or closed.
    Io(io::Error),
    /// The bytes break the protocol's framing.
    Malformed(String),
    /// A message's length word exceeds the maximum message size.
    TooLarge {
        /// The length the message announced.
        size: usize,
        /// The maximum.
        max: usize,
    },
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Bytes before an XLogData payload: type, length, `w`, start, end, time.
const XLOG_HEAD: usize = 1 + 4 + 1 + 8 + 8 + 8;

/// How much is read ahead at a time.
const READ_AHEAD: usize = 64 * 1024;

/// Payloads at least this large are read straight into their own allocation.
pub(crate) const DIRECT: usize = 64 * 1024;

/// One message from the server.
#[derive(Debug)]
pub(crate) enum Frame {
    /// `CopyData` / `w`: a chunk of the plugin's output.
    XLogData {
        /// WAL position the data starts at (0 for a plugin's non-final writes).
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The payload, 64-byte aligned.
        payload: Buffer,
    },
    /// `CopyData` / `k`: the server's position; it wants a status update if `reply`.
    Keepalive {
        /// The server's WAL end: everything before it that concerned us was sent.
        wal_end: Lsn,
        /// A status update is requested now.
        reply: bool,
    },
    /// `CopyBothResponse`: replication started.
    CopyBoth,
    /// Any other message, whole (type, length, body), for `postgres-protocol` to parse.
    Other(BytesMut),
}

/// A large XLogData payload being read straight into its allocation.
#[derive(Debug)]
struct Direct {
    wal_start: Lsn,
    wal_end: Lsn,
    payload: MutableBuffer,
    filled: usize,
}

/// Reads [`Frame`]s; see the module docs.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: BytesMut,
    direct: Option<Direct>,
    /// The largest plugin payload accepted (plus [`OVERHEAD`] for the message's header).
    max_message: usize,
}

impl FrameReader {
    /// A reader accepting messages of up to `max_message_size` bytes of payload.
    pub(crate) fn new(max_message_size: usize) -> FrameReader {
        FrameReader {
            buf: BytesMut::with_capacity(READ_AHEAD),
            direct: None,
            max_message: max_message_size.saturating_add(OVERHEAD),
        }
    }

    /// The next message, if the bytes read so far hold all of it. No I/O.
    ///
    /// # Errors
    ///
    /// A message too large, or too short for its type.
    pub(crate) fn try_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(d) = &self.direct {
            if d.filled < d.payload.len() {
                return Ok(None);
            }
            let d = self.direct.take().expect("checked above");
            return Ok(Some(Frame::XLogData {
                wal_start: d.wal_start,
                wal_end: d.wal_end,
                payload: d.payload.into(),
            }));
        }
        let Some(total) = self.frame_len()? else { return Ok(None) };
        let is_xlog = self.buf[0] == b'd' && total > 5 && self.buf.get(5) == Some(&b'w');
        if self.buf[0] == b'd' && total > 5 && self.buf.len() < 6 {
            return Ok(None); // the sub-type decides
        }
        if is_xlog {
            if total < XLOG_HEAD {
                return Err(malformed("XLogData message shorter than its header".into()));
            }
            if self.buf.len() < XLOG_HEAD {
                return Ok(None);
            }
            let wal_start = Lsn(be_u64(&self.buf[6..14]));
            let wal_end = Lsn(be_u64(&self.buf[14..22]));
            let payload_len = total - XLOG_HEAD;
            if self.buf.len() < total && payload_len >= DIRECT {
                // Large: what is buffered goes first, the rest straight from the socket.
                let mut payload = MutableBuffer::from_len_zeroed(payload_len);
                let have = self.buf.len() - XLOG_HEAD;
                payload.as_slice_mut()[..have].copy_from_slice(&self.buf[XLOG_HEAD..]);
                self.buf.clear();
                self.direct = Some(Direct { wal_start, wal_end, payload, filled: have });
                return self.try_frame();
            }
            if self.buf.len() < total {
                return Ok(None);
            }
            let mut payload = MutableBuffer::new(payload_len);
            payload.extend_from_slice(&self.buf[XLOG_HEAD..total]);
            self.buf.advance(total);
            return Ok(Some(Frame::XLogData { wal_start, wal_end, payload: payload.into() }));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        classify(self.buf.split_to(total)).map(Some)
    }

    /// The length of the message at the head of the buffer, type byte included, once its
    /// length word is in.
    fn frame_len(&self) -> Result<Option<usize>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes")) as usize;
        if len < 4 {
            return Err(malformed(format!(
                "message of type {:?} with impossible length {len}",
                self.buf[0] as char
            )));
        }
        if len > self.max_message {
            return Err(FrameError::TooLarge {
                size: len.saturating_sub(XLOG_HEAD - 1),
                max: self.max_message - OVERHEAD,
            });
        }
        Ok(Some(1 + len))
    }

    /// Takes bytes as if read from the socket: into a large payload being read, the rest into
    /// the read-ahead buffer (the fuzz targets feed the reader this way, without I/O). Call
    /// [`try_frame`](Self::try_frame) until it has no more frames after each push.
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        if let Some(d) = &mut self.direct {
            let n = (d.payload.len() - d.filled).min(bytes.len());
            d.payload.as_slice_mut()[d.filled..d.filled + n].copy_from_slice(&bytes[..n]);
            d.filled += n;
            bytes = &bytes[n..];
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Reads more from `io`: into the read-ahead buffer, or into a large payload.
    ///
    /// # Errors
    ///
    /// I/O errors and an unexpected end of stream.
    pub(crate) async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Result<(), FrameError> {
        if let Some(d) = &mut self.direct {
            let n = io.read(&mut d.payload.as_slice_mut()[d.filled..]).await?;
            if n == 0 {
                return Err(eof_mid_message().into());
            }
            d.filled += n;
            return Ok(());
        }
        // Room for the rest of a message bigger than the read-ahead, or for more messages.
        let want = match self.frame_len()? {
            Some(total) if total > self.buf.len() => (total - self.buf.len()).max(READ_AHEAD / 4),
            _ => READ_AHEAD / 4,
        };
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want.max(READ_AHEAD));
        }
        let n = io.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(FrameError::Io(if self.buf.is_empty() {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")
            } else {
                eof_mid_message()
            }));
        }
        Ok(())
    }

    /// Reads the next message. Cancel safe (see the module docs).
    ///
    /// # Errors
    ///
    /// I/O errors, an unexpected end of stream, or a message too large or too short for its
    /// type.
    pub(crate) async fn read<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Result<Frame, FrameError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(frame);
            }
            self.fill(io).await?;
        }
    }
}

fn classify(msg: BytesMut) -> Result<Frame, FrameError> {
    match (msg[0], msg.get(5)) {
        (b'd', Some(b'k')) => {
            if msg.len() != 5 + 1 + 8 + 8 + 1 {
                return Err(malformed(format!("keepalive of {} bytes", msg.len())));
            }
            Ok(Frame::Keepalive { wal_end: Lsn(be_u64(&msg[6..14])), reply: msg[22] != 0 })
        }
        (b'd', Some(b'w')) => Err(malformed("XLogData message shorter than its header".into())),
        (b'W', _) => Ok(Frame::CopyBoth),
        _ => Ok(Frame::Other(msg)),
    }
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn malformed(msg: String) -> FrameError {
    FrameError::Malformed(msg)
}

fn eof_mid_message() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection mid-message")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_MAX_MESSAGE_SIZE;

    fn xlog(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![b'd'];
        m.extend_from_slice(&((4 + 25 + payload.len()) as u32).to_be_bytes());
        m.push(b'w');
        m.extend_from_slice(&7u64.to_be_bytes());
        m.extend_from_slice(&9u64.to_be_bytes());
        m.extend_from_slice(&0i64.to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn keepalive(reply: bool) -> Vec<u8> {
        let mut m = vec![b'd'];
        m.extend_from_slice(&22u32.to_be_bytes());
        m.push(b'k');
        m.extend_from_slice(&11u64.to_be_bytes());
        m.extend_from_slice(&0i64.to_be_bytes());
        m.push(reply as u8);
        m
    }

    /// A reader that hands out at most `chunk` bytes per read, to exercise partial reads.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let n = self.chunk.min(buf.remaining()).min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn reads_every_kind_of_frame_across_partial_reads() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut stream = Vec::new();
        stream.extend(xlog(&payload));
        stream.extend(keepalive(true));
        stream.extend([b'W', 0, 0, 0, 7, 0, 0, 0]);
        stream.extend([b'Z', 0, 0, 0, 5, b'I']);
        stream.extend(xlog(&[]));
        for chunk in [1, 3, 29, 4096] {
            let mut io = Trickle { data: stream.clone(), at: 0, chunk };
            let mut r = FrameReader::new(DEFAULT_MAX_MESSAGE_SIZE);
            match r.read(&mut io).await.unwrap() {
                Frame::XLogData { wal_start, wal_end, payload: p } => {
                    assert_eq!((wal_start, wal_end), (Lsn(7), Lsn(9)));
                    assert_eq!(p.as_slice(), &payload[..]);
                    assert_eq!(p.as_ptr() as usize % 64, 0, "payload is 64-byte aligned");
                }
                f => panic!("{f:?}"),
            }
            assert!(matches!(
                r.read(&mut io).await.unwrap(),
                Frame::Keepalive { wal_end: Lsn(11), reply: true }
            ));
            assert!(matches!(r.read(&mut io).await.unwrap(), Frame::CopyBoth));
            assert!(
                matches!(r.read(&mut io).await.unwrap(), Frame::Other(m) if m[..] == [b'Z', 0, 0, 0, 5, b'I'])
            );
            assert!(
                matches!(r.read(&mut io).await.unwrap(), Frame::XLogData { payload, .. } if payload.is_empty())
            );
            let e = r.read(&mut io).await.unwrap_err();
            assert!(matches!(e, FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));
        }
    }

    #[tokio::test]
    async fn large_payloads_are_read_straight_into_their_allocation() {
        let big: Vec<u8> = (0..=250u8).cycle().take(3 * DIRECT + 17).collect();
        let mut stream = xlog(&[1, 2, 3]);
        stream.extend(xlog(&big));
        stream.extend(keepalive(false));
        for chunk in [7, 4096, 1 << 20] {
            let mut io = Trickle { data: stream.clone(), at: 0, chunk };
            let mut r = FrameReader::new(DEFAULT_MAX_MESSAGE_SIZE);
            assert!(
                matches!(r.read(&mut io).await.unwrap(), Frame::XLogData { payload, .. } if payload.as_slice() == [1, 2, 3])
            );
            match r.read(&mut io).await.unwrap() {
                Frame::XLogData { payload, .. } => {
                    assert_eq!(payload.as_slice(), &big[..]);
                    assert_eq!(payload.as_ptr() as usize % 64, 0);
                }
                f => panic!("{f:?}"),
            }
            assert!(matches!(
                r.read(&mut io).await.unwrap(),
                Frame::Keepalive { reply: false, .. }
            ));
        }
    }

    #[tokio::test]
    async fn malformed_frames_are_errors() {
        for bad in [
            vec![b'd', 0, 0, 0, 3],                       // length below 4
            vec![b'd', 0, 0, 0, 10, b'w', 0, 0, 0, 0, 0], // XLogData shorter than its header
            vec![b'd', 0, 0, 0, 6, b'k', 0],              // short keepalive
        ] {
            let mut io = Trickle { data: bad.clone(), at: 0, chunk: 64 };
            let e = FrameReader::new(DEFAULT_MAX_MESSAGE_SIZE).read(&mut io).await.unwrap_err();
            assert!(matches!(e, FrameError::Malformed(_)), "{bad:?}: {e:?}");
        }
        let mut io = Trickle { data: xlog(&[1, 2, 3])[..31].to_vec(), at: 0, chunk: 64 };
        let e = FrameReader::new(DEFAULT_MAX_MESSAGE_SIZE).read(&mut io).await.unwrap_err();
        assert!(matches!(e, FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[tokio::test]
    async fn a_length_over_the_maximum_is_refused_before_anything_is_allocated() {
        // An XLogData announcing 1 GiB: with a 1 MiB limit the reader stops at the length word.
        let mut head = vec![b'd'];
        head.extend_from_slice(&(1u32 << 30).to_be_bytes());
        head.push(b'w');
        let mut io = Trickle { data: head, at: 0, chunk: 64 };
        let mut r = FrameReader::new(1 << 20);
        match r.read(&mut io).await.unwrap_err() {
            FrameError::TooLarge { size, max } => {
                assert!(size > 1 << 29, "{size}");
                assert_eq!(max, 1 << 20);
            }
            e => panic!("{e:?}"),
        }
        assert!(r.buf.capacity() < 1 << 20, "nothing the size of the message was reserved");
        // Just under the limit passes.
        let payload = vec![7u8; 1000];
        let mut io = Trickle { data: xlog(&payload), at: 0, chunk: 4096 };
        assert!(FrameReader::new(1000).read(&mut io).await.is_ok());
    }
}
