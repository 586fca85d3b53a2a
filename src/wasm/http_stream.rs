//! An open HTTP response body, read chunk by chunk by the guest.
//!
//! The body is read on a thread of its own that hands chunks over a small channel, so a
//! guest can wait for the next chunk *with a timeout* (`http_stream_wait`) and look at other
//! things in between: the LLM provider checks for a cancelled turn while a model is still
//! thinking. Closing the stream drops the channel; the reader thread then ends at its next
//! chunk, dropping the connection, which is how a cancelled request stops on the server's side
//! too. A server that goes silent is cut off by the socket's idle (read) timeout, so no reader
//! thread outlives that.
//!
//! Secrets are redacted here, on the guest's side of the channel: bytes at the end of what has
//! arrived that could be the start of a secret wait for the next chunk (a secret split across
//! reads is still caught); nothing else waits, so events reach the guest as they arrive.

use std::future::Future;
use std::io::Read;
use std::time::Duration;

use tokio::sync::mpsc;

use super::host_http::HttpStatus;
use super::net_policy::redact;
use super::wait::{block_on_timeout, unless_stopped};

/// Bytes read from the socket at a time.
const CHUNK: usize = 64 * 1024;
/// Chunks read ahead of the guest (bounds the memory a fast server can make us hold).
const READ_AHEAD: usize = 8;

/// What the reader thread hands over: a chunk (empty at the end of the body) or why it failed.
type Delivery = Result<Vec<u8>, HttpStatus>;

/// An open response body.
pub(super) struct Stream {
    chunks: mpsc::Receiver<Delivery>,
    secrets: Vec<String>,
    /// Bytes held back so a secret split across two chunks is still redacted.
    carry: Vec<u8>,
    /// The body is over (or failed with the status kept here) once `carry` is drained.
    finished: Option<Result<(), HttpStatus>>,
    /// The longest silence the reader accepts; bounds a wait without a timeout of its own.
    idle: Duration,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("finished", &self.finished).finish_non_exhaustive()
    }
}

impl Stream {
    /// Starts reading `body` on a thread of its own. `idle` is the read timeout the body's
    /// socket was given.
    pub(super) fn spawn(body: Box<dyn Read + Send>, secrets: Vec<String>, idle: Duration) -> std::io::Result<Self> {
        let (sender, chunks) = mpsc::channel(READ_AHEAD);
        std::thread::Builder::new().name("astrid-http-body".to_owned()).spawn(move || read_body(body, &sender))?;
        Ok(Self { chunks, secrets, carry: Vec::new(), finished: None, idle })
    }

    /// The next redacted chunk; empty once the body is over. Waits at most `wait` (then
    /// [`HttpStatus::Pending`]; `None`: as long as the reader may) and never past `stopped`
    /// (then [`HttpStatus::Closed`]).
    pub(super) fn next_chunk(
        &mut self,
        wait: Option<Duration>,
        stopped: impl Future<Output = ()>,
    ) -> Result<Vec<u8>, HttpStatus> {
        let limit = wait.unwrap_or(self.idle + Duration::from_secs(5));
        let mut stopped = std::pin::pin!(stopped);
        loop {
            match self.finished {
                Some(Ok(())) => {
                    let rest = std::mem::take(&mut self.carry);
                    return Ok(redact(&rest, &self.secrets));
                }
                Some(Err(status)) => return Err(status),
                None => {}
            }
            if self.carry.len() > pending_prefix(&self.carry, &self.secrets) {
                return Ok(self.emit());
            }
            match block_on_timeout(unless_stopped(self.chunks.recv(), stopped.as_mut()), limit) {
                Some(Some(Some(Ok(chunk)))) if chunk.is_empty() => self.finished = Some(Ok(())),
                Some(Some(Some(Ok(chunk)))) => self.carry.extend_from_slice(&chunk),
                Some(Some(Some(Err(status)))) => self.finished = Some(Err(status)),
                // The reader ended without a word: it cannot, short of a panic.
                Some(Some(None)) => self.finished = Some(Err(HttpStatus::Connection)),
                Some(None) => return Err(HttpStatus::Closed),
                None if wait.is_some() => return Err(HttpStatus::Pending),
                None => return Err(HttpStatus::Timeout),
            }
        }
    }

    /// Everything but the held tail; a whole secret that straddles the cut goes with the head
    /// (redacted), never split. The head is never empty, so an empty chunk always means the
    /// end of the body.
    fn emit(&mut self) -> Vec<u8> {
        let cut = self.carry.len() - pending_prefix(&self.carry, &self.secrets);
        let mut emit = cut;
        for secret in self.secrets.iter().map(String::as_bytes).filter(|s| !s.is_empty()) {
            for start in cut.saturating_sub(secret.len() - 1)..cut {
                if self.carry[start..].starts_with(secret) {
                    emit = emit.max(start + secret.len());
                }
            }
        }
        let head: Vec<u8> = self.carry.drain(..emit).collect();
        redact(&head, &self.secrets)
    }
}

/// The reader thread: chunks until the end, an error, or nobody listening any more.
fn read_body(mut body: Box<dyn Read + Send>, sender: &mpsc::Sender<Delivery>) {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let delivery = match body.read(&mut buffer) {
            Ok(n) => Ok(buffer[..n].to_vec()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
                Err(HttpStatus::Timeout)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => Err(HttpStatus::Connection),
        };
        let last = !matches!(&delivery, Ok(chunk) if !chunk.is_empty());
        if sender.blocking_send(delivery).is_err() || last {
            return;
        }
    }
}

/// How many bytes at the end of `carry` could be the start of a secret (the longest suffix
/// that is a proper prefix of one): only those must wait for the next read.
fn pending_prefix(carry: &[u8], secrets: &[String]) -> usize {
    secrets
        .iter()
        .map(String::as_bytes)
        .filter_map(|secret| (1..secret.len()).rev().find(|&k| carry.ends_with(&secret[..k])))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::Instant;

    /// Reads one byte per call: the worst case for a secret split across reads.
    struct Trickle(VecDeque<u8>);

    impl Read for Trickle {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.pop_front(), buffer.first_mut()) {
                (Some(byte), Some(slot)) => {
                    *slot = byte;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    /// A server that sends one chunk, then nothing, until the read times out.
    struct Silent {
        first: Option<&'static [u8]>,
        silence: Duration,
    }

    impl Read for Silent {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            if let Some(first) = self.first.take() {
                buffer[..first.len()].copy_from_slice(first);
                return Ok(first.len());
            }
            std::thread::sleep(self.silence);
            Err(std::io::ErrorKind::TimedOut.into())
        }
    }

    fn never() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[test]
    fn only_a_possible_start_of_a_secret_waits_for_the_next_read() {
        let secrets = vec!["sk-test-42".to_owned()];
        assert_eq!(pending_prefix(b"data: {}\n\n", &secrets), 0, "an event ending is not held back");
        assert_eq!(pending_prefix(b"token sk-te", &secrets), 5);
        assert_eq!(pending_prefix(b"token sk-test-42", &secrets), 0, "a whole secret is redacted, not held");
        assert_eq!(pending_prefix(b"anything", &[]), 0);
    }

    #[test]
    fn a_secret_split_across_reads_is_still_redacted_and_only_the_end_is_empty() {
        for body in ["you sent: Bearer sk-test-42; bye", "sk-test-42", "x", "", "sk-test-4sk-test-42sk-test-42"] {
            let reader = Box::new(Trickle(body.bytes().collect()));
            let mut stream =
                Stream::spawn(reader, vec!["sk-test-42".to_owned()], Duration::from_secs(5)).expect("spawn");
            let mut out = Vec::new();
            loop {
                let chunk = stream.next_chunk(None, never()).expect("chunk");
                if chunk.is_empty() {
                    break;
                }
                out.extend_from_slice(&chunk);
            }
            assert_eq!(String::from_utf8(out).expect("utf8"), body.replace("sk-test-42", "[REDACTED]"), "{body:?}");
            assert_eq!(stream.next_chunk(None, never()), Ok(Vec::new()), "the end stays the end");
        }
    }

    #[test]
    fn a_wait_with_a_timeout_is_pending_while_the_server_is_silent_then_the_idle_timeout_ends_it() {
        let reader = Box::new(Silent { first: Some(b"data: 1\n\n"), silence: Duration::from_millis(300) });
        let mut stream = Stream::spawn(reader, Vec::new(), Duration::from_millis(300)).expect("spawn");
        assert_eq!(stream.next_chunk(Some(Duration::from_secs(5)), never()), Ok(b"data: 1\n\n".to_vec()));
        let started = Instant::now();
        assert_eq!(stream.next_chunk(Some(Duration::from_millis(50)), never()), Err(HttpStatus::Pending));
        assert!(started.elapsed() < Duration::from_millis(250), "a pending wait returns at its timeout");
        assert_eq!(stream.next_chunk(None, never()), Err(HttpStatus::Timeout), "silence past the idle timeout");
        assert_eq!(stream.next_chunk(None, never()), Err(HttpStatus::Timeout), "and it stays failed");
    }

    #[test]
    fn a_stop_ends_a_wait_at_once() {
        let reader = Box::new(Silent { first: None, silence: Duration::from_secs(2) });
        let mut stream = Stream::spawn(reader, Vec::new(), Duration::from_secs(2)).expect("spawn");
        let started = Instant::now();
        assert_eq!(stream.next_chunk(None, std::future::ready(())), Err(HttpStatus::Closed));
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
