//! Length-prefixed frames: a `u32` big-endian length, then that many bytes of UTF-8 JSON.
//! Both directions, handshake included.
//!
//! The length is checked against the limit before a single byte of the body is buffered,
//! so a peer claiming 4 GiB costs us nothing. [`FrameReader`] keeps partial frames across
//! reads and its [`FrameReader::next_frame`] is cancel-safe: a `select!` that abandons it
//! never loses bytes (the reference proxy's partial-header timeout did, and desynchronized
//! the stream).

use std::io::{self, Read, Write};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest handshake frame the server reads (and the client accepts).
pub const MAX_HANDSHAKE_FRAME: usize = 4096;
/// Largest frame a client may send after the handshake.
pub const MAX_CLIENT_FRAME: usize = 10 * 1024 * 1024;
/// Largest frame a client accepts from the daemon.
pub const MAX_SERVER_FRAME: usize = 50 * 1024 * 1024;

const HEADER: usize = 4;
const READ_CHUNK: usize = 16 * 1024;
/// The least room an async read is given (a management request is a few hundred bytes).
const MIN_READ: usize = 1024;
/// The most a reader keeps allocated between frames.
const KEPT_CAPACITY: usize = READ_CHUNK;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame we had.
        buffered: usize,
    },
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads frames from an async stream, buffering partial ones.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buffer: Vec<u8>,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames of at most `max` bytes from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        Self { inner, buffer: Vec::new(), max }
    }

    /// Changes the limit (after the handshake, frames may be larger).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The next complete frame; `Ok(None)` on a clean end of stream between frames.
    ///
    /// Cancel-safe: bytes already read stay in the buffer for the next call.
    pub async fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            // Read straight into the buffer's spare capacity: a zeroed chunk per call (16 KiB
            // of memset) was a sixth of the daemon's instructions per GetStatus.
            // As much room as the frame still needs, within bounds: an idle connection
            // holds a small buffer, a large frame is read in 16 KiB steps.
            let missing = announced_len(&self.buffer).map_or(0, |len| (HEADER + len).saturating_sub(self.buffer.len()));
            self.buffer.reserve(missing.clamp(MIN_READ, READ_CHUNK));
            let n = self.inner.read_buf(&mut self.buffer).await?;
            if n == 0 {
                return match self.buffer.len() {
                    0 => Ok(None),
                    buffered => Err(FrameError::Truncated { buffered }),
                };
            }
        }
    }

    fn take_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let frame = take_frame(&mut self.buffer, self.max)?;
        // A connection that sent one large frame does not keep its megabytes while it idles.
        if self.buffer.is_empty() && self.buffer.capacity() > KEPT_CAPACITY {
            self.buffer = Vec::new();
        }
        Ok(frame)
    }
}

/// The first complete frame of `buffer`, taken out of it.
fn take_frame(buffer: &mut Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = announced_len(buffer) else { return Ok(None) };
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buffer.len() < HEADER + len {
        return Ok(None);
    }
    let frame = buffer[HEADER..HEADER + len].to_vec();
    buffer.drain(..HEADER + len);
    Ok(Some(frame))
}

/// The blocking twin of [`FrameReader`], for the CLI and capsule hosts (no async runtime):
/// the stream is read through it with a read timeout, and a timeout or a signal (`EINTR`, as
/// when Ctrl-C arrives during a wait) in the middle of a frame loses nothing: the bytes read
/// so far wait in the buffer for the next call. Reading a frame with exact reads instead would
/// drop them and desynchronize the stream.
#[derive(Debug, Default)]
pub struct BlockingFrames {
    buffer: Vec<u8>,
    /// What each read lands in, zeroed once rather than per frame.
    chunk: Vec<u8>,
}

impl BlockingFrames {
    /// The next frame of at most `max` bytes from `reader`; `Ok(None)` on a clean end of
    /// stream between frames. A timeout of the reader is `FrameError::Io` (`WouldBlock` or
    /// `TimedOut`) and may be retried.
    pub fn next_frame<R: Read>(&mut self, reader: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
        self.chunk.resize(READ_CHUNK, 0);
        loop {
            if let Some(frame) = take_frame(&mut self.buffer, max)? {
                return Ok(Some(frame));
            }
            match reader.read(&mut self.chunk) {
                Ok(0) if self.buffer.is_empty() => return Ok(None),
                Ok(0) => return Err(FrameError::Truncated { buffered: self.buffer.len() }),
                Ok(n) => self.buffer.extend_from_slice(&self.chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn announced_len(buffer: &[u8]) -> Option<usize> {
    let header: [u8; HEADER] = buffer.get(..HEADER)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(header)).ok()
}

/// The 4-byte header plus `payload`, ready to be written in one call.
pub fn encode(payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame longer than 4 GiB"))?;
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, payload: &[u8]) -> io::Result<()> {
    writer.write_all(&encode(payload)?).await?;
    writer.flush().await
}

/// Blocking twin of [`write_frame`], for the CLI (which runs no async runtime).
pub fn write_frame_blocking<W: Write>(writer: &mut W, payload: &[u8]) -> io::Result<()> {
    writer.write_all(&encode(payload)?)?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_across_writes_are_reassembled() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server, 1024);
        let mut bytes = encode(b"{\"a\":1}").expect("encode");
        bytes.extend(encode(b"[]").expect("encode"));
        tokio::spawn(async move {
            for byte in bytes {
                client.write_all(&[byte]).await.expect("write");
            }
        });
        assert_eq!(reader.next_frame().await.expect("first"), Some(b"{\"a\":1}".to_vec()));
        assert_eq!(reader.next_frame().await.expect("second"), Some(b"[]".to_vec()));
        assert!(reader.next_frame().await.expect("eof").is_none());
    }

    #[tokio::test]
    async fn oversize_is_refused_from_the_header_alone() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        let mut reader = FrameReader::new(server, MAX_HANDSHAKE_FRAME);
        let err = reader.next_frame().await.expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize));
        assert!(reader.buffer.capacity() <= MIN_READ, "no allocation for the announced body");
    }

    #[tokio::test]
    async fn a_large_frame_is_not_kept_allocated_once_it_is_read() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let big = vec![b'x'; 1024 * 1024];
        let frames = [encode(&big).expect("encode"), encode(b"{}").expect("encode")].concat();
        tokio::spawn(async move { client.write_all(&frames).await.expect("write") });
        let mut reader = FrameReader::new(server, MAX_CLIENT_FRAME);
        assert_eq!(reader.next_frame().await.expect("big").map(|f| f.len()), Some(big.len()));
        assert_eq!(reader.next_frame().await.expect("small"), Some(b"{}".to_vec()));
        assert!(reader.buffer.capacity() <= KEPT_CAPACITY, "kept {} bytes", reader.buffer.capacity());
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&[0, 0, 0, 9, b'{']).await.expect("write");
        drop(client);
        let mut reader = FrameReader::new(server, 1024);
        assert!(matches!(reader.next_frame().await, Err(FrameError::Truncated { buffered: 5 })));
    }

    #[test]
    fn blocking_round_trip() {
        let mut wire = Vec::new();
        write_frame_blocking(&mut wire, b"hello").expect("write");
        let mut cursor = io::Cursor::new(wire);
        let mut frames = BlockingFrames::default();
        assert_eq!(frames.next_frame(&mut cursor, 16).expect("read"), Some(b"hello".to_vec()));
        assert!(frames.next_frame(&mut cursor, 16).expect("eof").is_none());
    }

    /// A socket that delivers a byte at a time, with a timeout and a signal between bytes.
    struct Stuttering {
        bytes: std::collections::VecDeque<u8>,
        calls: usize,
    }

    impl Read for Stuttering {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            match self.calls % 3 {
                0 => Err(io::ErrorKind::WouldBlock.into()),
                1 => Err(io::ErrorKind::Interrupted.into()),
                _ => match (self.bytes.pop_front(), buffer.first_mut()) {
                    (Some(byte), Some(slot)) => {
                        *slot = byte;
                        Ok(1)
                    }
                    _ => Ok(0),
                },
            }
        }
    }

    #[test]
    fn a_timeout_or_a_signal_in_the_middle_of_a_frame_loses_nothing() {
        let mut wire = encode(b"first").expect("encode");
        wire.extend(encode(b"second").expect("encode"));
        let mut socket = Stuttering { bytes: wire.into_iter().collect(), calls: 0 };
        let mut frames = BlockingFrames::default();
        let mut got = Vec::new();
        let mut timeouts = 0;
        while got.len() < 2 {
            match frames.next_frame(&mut socket, 64) {
                Ok(Some(frame)) => got.push(frame),
                Ok(None) => panic!("ended early"),
                Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => timeouts += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, [b"first".to_vec(), b"second".to_vec()]);
        assert!(timeouts > 5, "timeouts came in the middle of frames");
    }
}
