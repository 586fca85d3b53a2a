//! An HTTP exchange read by the guest: its response head, then its body chunk by chunk.
//!
//! The whole exchange runs on a thread of its own (connect, send, the response head, then the
//! body), which hands the head and then the chunks over a small channel. So a guest can wait
//! for the head and for each chunk *with a timeout* (`http_stream_head`, `http_stream_wait`)
//! and look at other things in between: the LLM provider checks for a cancelled turn while a
//! model has not even answered yet. Closing the stream shuts the exchange down (the socket is
//! shut at once, also while the thread is still waiting for the head), which is how a cancelled
//! request stops on the server's side too. A server that goes silent is cut off by the socket's
//! idle (per-read) timeout, so no thread outlives that.
//!
//! Secrets are redacted here, on the guest's side of the channel: bytes at the end of what has
//! arrived that could be the start of a secret wait for the next chunk (a secret split across
//! reads is still caught); nothing else waits, so events reach the guest as they arrive. The
//! head arrives redacted already.

use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::host_http::{HttpStatus, MAX_REQUEST_TIME};
use super::net_policy::redact;
use super::wait::{block_on_timeout, unless_stopped};

/// Bytes read from the socket at a time.
const CHUNK: usize = 64 * 1024;
/// Chunks read ahead of the guest (bounds the memory a fast server can make us hold).
const READ_AHEAD: usize = 8;

/// What the exchange's thread hands over, in this order: the head (or why there is none),
/// then chunks (empty at the end of the body) or why the body failed.
#[derive(Debug)]
enum Delivery {
    Head(Vec<u8>),
    Chunk(Vec<u8>),
    Failed(HttpStatus),
}

/// The exchange a stream's thread performs: connect, send, and return the response head
/// (`{status, headers}` JSON, redacted) with a reader of its body.
pub(super) type Exchange = Box<dyn FnOnce() -> Result<(Vec<u8>, Box<dyn Read + Send>), HttpStatus> + Send>;

/// Ends the exchange from outside, wherever it is (waiting for the head included).
pub(super) type HangUp = Box<dyn FnOnce() + Send>;

/// An exchange in flight.
pub(super) struct Stream {
    deliveries: mpsc::Receiver<Delivery>,
    secrets: Vec<String>,
    /// The response head, once it arrived.
    head: Option<Vec<u8>>,
    /// Bytes held back so a secret split across two chunks is still redacted.
    carry: Vec<u8>,
    /// The body is over (or failed with the status kept here) once `carry` is drained.
    finished: Option<Result<(), HttpStatus>>,
    /// The longest silence the reader accepts; bounds a wait without a timeout of its own.
    idle: Duration,
    hang_up: Option<HangUp>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("head", &self.head.is_some())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(hang_up) = self.hang_up.take() {
            hang_up();
        }
    }
}

impl Stream {
    /// Starts `exchange` on a thread of its own, which holds a clone of `live` for as long as
    /// it runs (a closed stream's thread may still be connecting: its owner counts them).
    /// `idle` is the read timeout its socket was given; `hang_up` ends it from outside (on
    /// close, and when the stream is dropped).
    pub(super) fn spawn(
        exchange: Exchange,
        secrets: Vec<String>,
        idle: Duration,
        hang_up: Option<HangUp>,
        live: Arc<()>,
    ) -> std::io::Result<Self> {
        let (sender, deliveries) = mpsc::channel(READ_AHEAD);
        std::thread::Builder::new().name("astrid-http-stream".to_owned()).spawn(move || {
            let _live = live;
            match exchange() {
                Ok((head, body)) => {
                    if sender.blocking_send(Delivery::Head(head)).is_ok() {
                        read_body(body, &sender);
                    }
                }
                Err(status) => {
                    let _ = sender.blocking_send(Delivery::Failed(status));
                }
            }
        })?;
        Ok(Self { deliveries, secrets, head: None, carry: Vec::new(), finished: None, idle, hang_up })
    }

    /// The response head (`{status, headers}` JSON), as often as asked. Waits at most `wait`
    /// (then [`HttpStatus::Pending`]; `None`: as long as connecting and the idle timeout
    /// allow) and never past `stopped` (then [`HttpStatus::Closed`]); a failed exchange is its
    /// status.
    pub(super) fn next_head(
        &mut self,
        wait: Option<Duration>,
        stopped: impl Future<Output = ()>,
    ) -> Result<Vec<u8>, HttpStatus> {
        let deadline = Instant::now() + wait.unwrap_or(self.idle + MAX_REQUEST_TIME + Duration::from_secs(5));
        let mut stopped = std::pin::pin!(stopped);
        loop {
            if let Some(head) = &self.head {
                return Ok(head.clone());
            }
            if let Some(Err(status)) = self.finished {
                return Err(status);
            }
            self.receive(deadline, wait.is_some(), stopped.as_mut())?;
        }
    }

    /// The next redacted chunk of the body (after the head, which it waits for too); empty
    /// once the body is over. Waits at most `wait` (then [`HttpStatus::Pending`]; `None`: as
    /// long as the reader may) and never past `stopped` (then [`HttpStatus::Closed`]).
    pub(super) fn next_chunk(
        &mut self,
        wait: Option<Duration>,
        stopped: impl Future<Output = ()>,
    ) -> Result<Vec<u8>, HttpStatus> {
        let limit = match (wait, &self.head) {
            (Some(wait), _) => wait,
            (None, Some(_)) => self.idle + Duration::from_secs(5),
            (None, None) => self.idle * 2 + MAX_REQUEST_TIME + Duration::from_secs(5),
        };
        let deadline = Instant::now() + limit;
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
            self.receive(deadline, wait.is_some(), stopped.as_mut())?;
        }
    }

    /// Takes the next delivery (waiting until `deadline`) into the stream's state.
    fn receive(
        &mut self,
        deadline: Instant,
        pending: bool,
        stopped: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), HttpStatus> {
        let left = deadline.saturating_duration_since(Instant::now());
        match block_on_timeout(unless_stopped(self.deliveries.recv(), stopped), left) {
            Some(Some(Some(Delivery::Head(head)))) if self.head.is_none() => self.head = Some(head),
            Some(Some(Some(Delivery::Chunk(chunk)))) if self.head.is_some() && chunk.is_empty() => {
                self.finished = Some(Ok(()));
            }
            Some(Some(Some(Delivery::Chunk(chunk)))) if self.head.is_some() => self.carry.extend_from_slice(&chunk),
            Some(Some(Some(Delivery::Failed(status)))) => self.finished = Some(Err(status)),
            // Out of order, or the thread ended without a word: it cannot, short of a panic.
            Some(Some(_)) => self.finished = Some(Err(HttpStatus::Connection)),
            Some(None) => return Err(HttpStatus::Closed),
            None if pending => return Err(HttpStatus::Pending),
            None => return Err(HttpStatus::Timeout),
        }
        Ok(())
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

/// The body, read on the exchange's thread: chunks until the end, an error, or nobody
/// listening any more.
fn read_body(mut body: Box<dyn Read + Send>, sender: &mpsc::Sender<Delivery>) {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let delivery = match body.read(&mut buffer) {
            Ok(n) => Delivery::Chunk(buffer[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Delivery::Failed(read_failure(e)),
        };
        let last = !matches!(&delivery, Delivery::Chunk(chunk) if !chunk.is_empty());
        if sender.blocking_send(delivery).is_err() || last {
            return;
        }
    }
}

/// What a failed read of the body means for the guest: the idle timeout, or a broken
/// connection.
fn read_failure(error: std::io::Error) -> HttpStatus {
    if matches!(error.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
        return HttpStatus::Timeout;
    }
    match ureq::Error::from(error) {
        ureq::Error::Timeout(_) => HttpStatus::Timeout,
        ureq::Error::Io(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
            HttpStatus::Timeout
        }
        _ => HttpStatus::Connection,
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
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An exchange whose head is there at once, with `body`.
    fn answered(body: impl Read + Send + 'static) -> Exchange {
        Box::new(move || Ok((br#"{"status":200}"#.to_vec(), Box::new(body) as Box<dyn Read + Send>)))
    }

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

    /// How long a test waits for something that must happen before calling it hung (a guard
    /// only: no test asserts how fast anything is).
    const HANG_GUARD: Duration = Duration::from_secs(60);

    /// A server that sends one chunk, then nothing, until its socket's read timeout: that
    /// comes when the test says so (`timeout`), so the silence lasts exactly as the test needs.
    struct Silent {
        first: Option<&'static [u8]>,
        timeout: std::sync::mpsc::Receiver<()>,
    }

    impl Silent {
        fn new(first: Option<&'static [u8]>) -> (Self, std::sync::mpsc::Sender<()>) {
            let (time_out, timeout) = std::sync::mpsc::channel();
            (Self { first, timeout }, time_out)
        }
    }

    impl Read for Silent {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            if let Some(first) = self.first.take() {
                buffer[..first.len()].copy_from_slice(first);
                return Ok(first.len());
            }
            let _ = self.timeout.recv();
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
            let reader = Trickle(body.bytes().collect());
            let mut stream = Stream::spawn(
                answered(reader),
                vec!["sk-test-42".to_owned()],
                Duration::from_secs(5),
                None,
                Arc::new(()),
            )
            .expect("spawn");
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
        let (reader, time_out) = Silent::new(Some(b"data: 1\n\n"));
        // An idle timeout far past the guard: a wait that ignored its own timeout would wait
        // for this one, and the guard fails it as hung.
        let idle = HANG_GUARD * 2;
        let mut stream = Stream::spawn(answered(reader), Vec::new(), idle, None, Arc::new(())).expect("spawn");
        assert_eq!(stream.next_chunk(Some(HANG_GUARD), never()), Ok(b"data: 1\n\n".to_vec()));
        let started = Instant::now();
        assert_eq!(stream.next_chunk(Some(Duration::from_millis(50)), never()), Err(HttpStatus::Pending));
        assert!(started.elapsed() < HANG_GUARD, "hung: a pending wait did not return at its timeout");
        time_out.send(()).expect("time out");
        assert_eq!(stream.next_chunk(None, never()), Err(HttpStatus::Timeout), "silence past the idle timeout");
        assert_eq!(stream.next_chunk(None, never()), Err(HttpStatus::Timeout), "and it stays failed");
    }

    #[test]
    fn a_stop_ends_a_wait_at_once() {
        // The server stays silent and its read never times out: only the stop can end the
        // wait, and Closed (not Timeout) says it did.
        let (reader, _never_times_out) = Silent::new(None);
        let mut stream = Stream::spawn(answered(reader), Vec::new(), HANG_GUARD, None, Arc::new(())).expect("spawn");
        assert_eq!(stream.next_chunk(None, std::future::ready(())), Err(HttpStatus::Closed));
    }

    #[test]
    fn the_head_is_awaited_in_slices_and_a_dropped_stream_hangs_up_while_it_is_awaited() {
        let (answer, waiting) = std::sync::mpsc::channel::<()>();
        let hung_up = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&hung_up);
        // The head comes when the test says so (a server that thinks before answering).
        let exchange: Exchange = Box::new(move || {
            waiting.recv().map_err(|_| HttpStatus::Connection)?;
            Ok((
                br#"{"status":200}"#.to_vec(),
                Box::new(Trickle(b"ok".iter().copied().collect())) as Box<dyn Read + Send>,
            ))
        });
        let hang_up: HangUp = Box::new(move || flag.store(true, Ordering::SeqCst));
        let mut stream =
            Stream::spawn(exchange, Vec::new(), Duration::from_secs(5), Some(hang_up), Arc::new(())).expect("spawn");
        assert_eq!(stream.next_head(Some(Duration::from_millis(20)), never()), Err(HttpStatus::Pending));
        assert_eq!(stream.next_chunk(Some(Duration::from_millis(20)), never()), Err(HttpStatus::Pending));
        answer.send(()).expect("answer");
        assert_eq!(stream.next_head(Some(HANG_GUARD), never()), Ok(br#"{"status":200}"#.to_vec()));
        assert_eq!(stream.next_head(Some(Duration::from_millis(1)), never()), Ok(br#"{"status":200}"#.to_vec()));
        let mut body = Vec::new();
        loop {
            let chunk = stream.next_chunk(None, never()).expect("chunk");
            if chunk.is_empty() {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        assert_eq!(body, b"ok");
        assert!(!hung_up.load(Ordering::SeqCst));
        drop(stream);
        assert!(hung_up.load(Ordering::SeqCst), "closing hangs up");

        // Dropped before any head: hung up all the same.
        let hung_up = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&hung_up);
        let (_never_answered, waiting) = std::sync::mpsc::channel::<()>();
        let exchange: Exchange = Box::new(move || {
            let _ = waiting.recv();
            Err(HttpStatus::Connection)
        });
        let hang_up: HangUp = Box::new(move || flag.store(true, Ordering::SeqCst));
        let mut stream =
            Stream::spawn(exchange, Vec::new(), Duration::from_secs(5), Some(hang_up), Arc::new(())).expect("spawn");
        assert_eq!(stream.next_head(Some(Duration::from_millis(20)), never()), Err(HttpStatus::Pending));
        drop(stream);
        assert!(hung_up.load(Ordering::SeqCst));
    }

    #[test]
    fn a_failed_exchange_is_its_status_for_the_head_and_the_body() {
        let exchange: Exchange = Box::new(|| Err(HttpStatus::AddressRefused));
        let mut stream =
            Stream::spawn(exchange, Vec::new(), Duration::from_secs(5), None, Arc::new(())).expect("spawn");
        assert_eq!(stream.next_head(None, never()), Err(HttpStatus::AddressRefused));
        assert_eq!(stream.next_chunk(Some(Duration::from_millis(10)), never()), Err(HttpStatus::AddressRefused));
        assert_eq!(stream.next_head(Some(Duration::from_millis(10)), never()), Err(HttpStatus::AddressRefused));
    }

    #[test]
    fn the_thread_holds_its_live_token_until_the_exchange_is_over() {
        let live = Arc::new(());
        let (answer, waiting) = std::sync::mpsc::channel::<()>();
        let exchange: Exchange = Box::new(move || {
            let _ = waiting.recv();
            Err(HttpStatus::Connection)
        });
        let stream =
            Stream::spawn(exchange, Vec::new(), Duration::from_secs(5), None, Arc::clone(&live)).expect("spawn");
        drop(stream);
        assert_eq!(Arc::strong_count(&live), 2, "closed, but still connecting");
        answer.send(()).expect("answer");
        let deadline = Instant::now() + HANG_GUARD;
        while Arc::strong_count(&live) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(Arc::strong_count(&live), 1, "the thread ended and let go");
    }
}
