//! HTTP, within the capsule's `net` grant. The host refuses private and loopback addresses
//! (after DNS, and for IP literals), does not follow redirects, and fills `{{secret:NAME}}`
//! in header values with the capsule's declared secret, so the secret never has to enter
//! guest memory; a response that echoes it back arrives redacted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::abi;
use crate::error::{Error, Result};

/// A request. Header values may contain `{{secret:NAME}}`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// An `http` or `https` URL.
    pub url: String,
    /// Header names and values.
    pub headers: BTreeMap<String, String>,
    /// Streams only: the longest silence the server may keep between two chunks (default
    /// 120 s, at most 600 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// The body (not serialized: it travels as raw bytes).
    #[serde(skip)]
    pub body: Vec<u8>,
}

impl Request {
    /// A request with `method` for `url`.
    pub fn new(method: &str, url: &str) -> Self {
        Self { method: method.to_owned(), url: url.to_owned(), ..Self::default() }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Streams only: fail with [`Error::Timeout`] once the server is silent this long.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout_ms = Some(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends it and reads the whole response (at most 10 MiB).
    pub fn send(&self) -> Result<Response> {
        let json = serde_json::to_vec(self).map_err(|_| Error::InvalidInput)?;
        // SAFETY: valid buffers for the duration of the call.
        let packed = unsafe { abi::http_request(json.as_ptr(), json.len(), self.body.as_ptr(), self.body.len()) };
        let bytes = abi::unpack(packed).map_err(Error::http)?;
        let head_len =
            bytes.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or(Error::InvalidInput)?;
        let head: Head =
            bytes.get(4..4 + head_len).and_then(|h| serde_json::from_slice(h).ok()).ok_or(Error::InvalidInput)?;
        Ok(Response { status: head.status, headers: head.headers, body: bytes[4 + head_len..].to_vec() })
    }

    /// Starts the exchange and returns at once: connecting, sending and the server's answer
    /// happen on the host while the capsule waits for the head with [`Opening::wait`], in
    /// slices if it must notice other things meanwhile (a cancelled request). Dropping the
    /// [`Opening`] hangs up, even before the server answered.
    pub fn open(&self) -> Result<Opening> {
        let json = serde_json::to_vec(self).map_err(|_| Error::InvalidInput)?;
        // SAFETY: valid buffers for the duration of the call.
        let handle = unsafe { abi::http_stream_open(json.as_ptr(), json.len(), self.body.as_ptr(), self.body.len()) };
        if handle < 0 {
            return Err(Error::http(i64::from(handle)));
        }
        Ok(Opening { handle: Some(handle) })
    }

    /// Sends it and returns the response head, with the body to read in chunks. Waits for
    /// the head as long as the server may stay silent; [`Request::open`] can give up sooner.
    pub fn stream(&self) -> Result<Stream> {
        let json = serde_json::to_vec(self).map_err(|_| Error::InvalidInput)?;
        // SAFETY: valid buffers for the duration of the call.
        let packed = unsafe { abi::http_stream_start(json.as_ptr(), json.len(), self.body.as_ptr(), self.body.len()) };
        let bytes = abi::unpack(packed).map_err(Error::http)?;
        let head: StreamHead = serde_json::from_slice(&bytes).map_err(|_| Error::InvalidInput)?;
        Ok(Stream { handle: head.handle, status: head.head.status, headers: head.head.headers })
    }
}

#[derive(Deserialize)]
struct Head {
    status: u16,
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct StreamHead {
    handle: i32,
    #[serde(flatten)]
    head: Head,
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
}

/// A response whose body is read chunk by chunk (server-sent events, large downloads).
#[derive(Debug)]
pub struct Stream {
    handle: i32,
    /// The status code.
    pub status: u16,
    /// Header names and values.
    pub headers: BTreeMap<String, String>,
}

/// A streamed exchange whose response head has not arrived yet.
#[derive(Debug)]
pub struct Opening {
    /// `None` once the head arrived and the handle went to the [`Stream`].
    handle: Option<i32>,
}

impl Opening {
    /// The response, once its head arrived, waiting at most `timeout` (at most a minute):
    /// `Ok(None)` while the server has not answered; [`Error::Timeout`] once it stayed silent
    /// past the request's idle timeout; the connection's failure otherwise.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<Stream>> {
        let Some(handle) = self.handle else { return Err(Error::Closed) };
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        match abi::unpack(abi::http_stream_head(handle, timeout_ms)) {
            Ok(bytes) => {
                let head: Head = serde_json::from_slice(&bytes).map_err(|_| Error::InvalidInput)?;
                self.handle = None;
                Ok(Some(Stream { handle, status: head.status, headers: head.headers }))
            }
            Err(PENDING) => Ok(None),
            Err(code) => Err(Error::http(code)),
        }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(handle) = self.handle {
            abi::http_stream_close(handle);
        }
    }
}

/// What [`Stream::wait`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// The next bytes of the body.
    Data(Vec<u8>),
    /// Nothing arrived within the wait; the stream goes on.
    Pending,
    /// The body is over.
    End,
}

/// `http_stream_wait`'s and `http_stream_head`'s code for "nothing yet".
const PENDING: i64 = -10;

impl Stream {
    /// The next chunk of the body; `None` once it is over. Waits as long as the server may
    /// stay silent (the request's `idle_timeout_ms`, then [`Error::Timeout`]).
    pub fn read(&mut self) -> Result<Option<Vec<u8>>> {
        let chunk = abi::unpack(abi::http_stream_read(self.handle)).map_err(Error::http)?;
        Ok(if chunk.is_empty() { None } else { Some(chunk) })
    }

    /// The next chunk, waiting at most `timeout` (at most a minute): a capsule that must
    /// notice other things while a server is slow (a cancelled request) waits in slices.
    pub fn wait(&mut self, timeout: Duration) -> Result<Chunk> {
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        match abi::unpack(abi::http_stream_wait(self.handle, timeout_ms)) {
            Ok(chunk) if chunk.is_empty() => Ok(Chunk::End),
            Ok(chunk) => Ok(Chunk::Data(chunk)),
            Err(PENDING) => Ok(Chunk::Pending),
            Err(code) => Err(Error::http(code)),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        abi::http_stream_close(self.handle);
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response> {
    Request::new("GET", url).send()
}
