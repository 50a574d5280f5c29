//! Reading backend messages off the socket, with XLogData payloads landing in aligned
//! allocations.
//!
//! A backend message is a type byte, a big-endian `u32` length (counting itself) and a body.
//! During replication the payloads arrive as `CopyData` (`d`) messages whose body starts with
//! a sub-type: `w` (XLogData: start LSN, end LSN, send time, then the plugin's bytes) or `k`
//! (primary keepalive). See [the protocol docs][proto].
//!
//! The reader reads the 30 header bytes of an XLogData message, then reads its payload
//! straight from the socket into a fresh 64-byte-aligned [`MutableBuffer`] of exactly the
//! payload's size: the kernel's copy into that buffer is the only copy the payload ever sees,
//! and the Arrow arrays decoded from it point into it. The price is one more `read` call per
//! message than a read-ahead buffer would need.
//!
//! [`FrameReader::read`] is cancel safe: its progress lives in the reader, so a `read` dropped
//! in a `select!` loses nothing and the next call resumes.
//!
//! [proto]: https://www.postgresql.org/docs/15/protocol-replication.html

use std::io;

use arrow_buffer::{Buffer, MutableBuffer};
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use wal2arrow_schema::Lsn;

/// Largest message accepted: PostgreSQL caps a single output-plugin message at 1 GB.
const MAX_MESSAGE: usize = (1 << 30) + 1024;

/// Bytes before an XLogData payload: type, length, `w`, start, end, time.
const XLOG_HEAD: usize = 1 + 4 + 1 + 8 + 8 + 8;

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

#[derive(Debug)]
enum State {
    /// Reading the first `need()` bytes of a message into `head`.
    Head,
    /// Reading an XLogData payload.
    Payload { wal_start: Lsn, wal_end: Lsn, buf: MutableBuffer, filled: usize },
    /// Reading the rest of another message.
    Body { buf: BytesMut, len: usize },
}

/// Reads [`Frame`]s; see the module docs.
#[derive(Debug)]
pub(crate) struct FrameReader {
    head: [u8; XLOG_HEAD],
    filled: usize,
    state: State,
}

impl FrameReader {
    pub(crate) fn new() -> FrameReader {
        FrameReader { head: [0; XLOG_HEAD], filled: 0, state: State::Head }
    }

    /// How many header bytes decide what the message is.
    fn head_need(&self) -> usize {
        if self.filled < 5 {
            return 5;
        }
        let body = self.body_len();
        if self.head[0] == b'd' && body >= 1 {
            if self.filled < 6 {
                return 6;
            }
            if self.head[5] == b'w' && body >= XLOG_HEAD - 5 {
                return XLOG_HEAD;
            }
        }
        self.filled
    }

    fn body_len(&self) -> usize {
        (u32::from_be_bytes(self.head[1..5].try_into().expect("4 bytes")) as usize)
            .saturating_sub(4)
    }

    /// Reads the next message. Cancel safe (see the module docs).
    ///
    /// # Errors
    ///
    /// I/O errors, an unexpected end of stream, or a message too large or too short for its
    /// type.
    pub(crate) async fn read<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> io::Result<Frame> {
        loop {
            match &mut self.state {
                State::Head => {
                    if self.filled >= 5 {
                        let len = u32::from_be_bytes(self.head[1..5].try_into().expect("4 bytes"));
                        if len < 4 || len as usize > MAX_MESSAGE {
                            return Err(invalid(format!(
                                "message of type {:?} with impossible length {len}",
                                self.head[0] as char
                            )));
                        }
                    }
                    let need = self.head_need();
                    if self.filled < need {
                        let n = io.read(&mut self.head[self.filled..need]).await?;
                        if n == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the server closed the connection",
                            ));
                        }
                        self.filled += n;
                        continue;
                    }
                    if need == XLOG_HEAD {
                        let payload_len = self.body_len() - (XLOG_HEAD - 5);
                        self.state = State::Payload {
                            wal_start: Lsn(be_u64(&self.head[6..14])),
                            wal_end: Lsn(be_u64(&self.head[14..22])),
                            buf: MutableBuffer::from_len_zeroed(payload_len),
                            filled: 0,
                        };
                    } else {
                        let len = 1 + 4 + self.body_len();
                        let mut buf = BytesMut::with_capacity(len);
                        buf.put_slice(&self.head[..self.filled]);
                        self.state = State::Body { buf, len };
                    }
                    self.filled = 0;
                }
                State::Payload { buf, filled, .. } => {
                    if *filled < buf.len() {
                        let n = io.read(&mut buf.as_slice_mut()[*filled..]).await?;
                        if n == 0 {
                            return Err(eof_mid_message());
                        }
                        *filled += n;
                        continue;
                    }
                    let State::Payload { wal_start, wal_end, buf, .. } =
                        std::mem::replace(&mut self.state, State::Head)
                    else {
                        unreachable!("matched above")
                    };
                    return Ok(Frame::XLogData { wal_start, wal_end, payload: buf.into() });
                }
                State::Body { buf, len } => {
                    if buf.len() < *len {
                        let want = *len - buf.len();
                        let n = io.read_buf(&mut (&mut *buf).limit(want)).await?;
                        if n == 0 {
                            return Err(eof_mid_message());
                        }
                        continue;
                    }
                    let State::Body { buf, .. } = std::mem::replace(&mut self.state, State::Head)
                    else {
                        unreachable!("matched above")
                    };
                    return classify(buf);
                }
            }
        }
    }
}

fn classify(msg: BytesMut) -> io::Result<Frame> {
    match (msg[0], msg.get(5)) {
        (b'd', Some(b'k')) => {
            if msg.len() != 5 + 1 + 8 + 8 + 1 {
                return Err(invalid(format!("keepalive of {} bytes", msg.len())));
            }
            Ok(Frame::Keepalive { wal_end: Lsn(be_u64(&msg[6..14])), reply: msg[22] != 0 })
        }
        (b'd', Some(b'w')) => Err(invalid("XLogData message shorter than its header".into())),
        (b'W', _) => Ok(Frame::CopyBoth),
        _ => Ok(Frame::Other(msg)),
    }
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn eof_mid_message() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection mid-message")
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let mut r = FrameReader::new();
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
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        }
    }

    #[tokio::test]
    async fn malformed_frames_are_errors() {
        for bad in [
            vec![b'd', 0, 0, 0, 3],                       // length below 4
            vec![b'd', 0x7f, 0xff, 0xff, 0xff],           // over 1 GB
            vec![b'd', 0, 0, 0, 10, b'w', 0, 0, 0, 0, 0], // XLogData shorter than its header
            vec![b'd', 0, 0, 0, 6, b'k', 0],              // short keepalive
        ] {
            let mut io = Trickle { data: bad.clone(), at: 0, chunk: 64 };
            let e = FrameReader::new().read(&mut io).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        let mut io = Trickle { data: xlog(&[1, 2, 3])[..31].to_vec(), at: 0, chunk: 64 };
        let e = FrameReader::new().read(&mut io).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
