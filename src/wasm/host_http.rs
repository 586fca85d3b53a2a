//! HTTP host functions: one request, or a response read as a stream of chunks.
//!
//! Order of checks, each refusal a value for the guest and an audit entry: the request
//! parses (method, `http`/`https` URL with a host) → the host is in the capsule's `net`
//! grant → secret templates in headers are filled (declared secrets only) → the host name is
//! resolved and every address vetted ([`super::net_policy`]); the connection goes to exactly
//! those addresses, so a second DNS answer cannot swap them. Redirects are not followed (a
//! 3xx goes back to the guest, whose next request is checked again). A response that echoes
//! a secret has it redacted before the guest sees it.
//!
//! A stream is opened in two steps, so that a guest can give up before the server answers:
//! `http_stream_open` makes the checks that need no network and returns a handle at once;
//! the stream's thread then resolves and vets the host, connects, sends and waits for the
//! head, which the guest awaits in slices with `http_stream_head`. Closing the handle shuts
//! the connection at once, wherever the exchange is.
//!
//! Waiting on the network is not charged to the call's CPU deadline (like `ipc_recv`); each
//! request has its own timeout, at most the call's deadline.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use ureq::http;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use super::context::CapsuleContext;
use super::host_call::HostReply;
use super::http_stream::{Exchange, HangUp, Stream};
use super::net_policy::{fill_secrets, is_public, redact};
use super::sandbox::KernelAccess;
use crate::audit::{Actor, Decision};
use crate::kernel::capability::Capability;

/// Largest request or response body.
pub const MAX_BODY: usize = 10 * 1024 * 1024;
/// Longest any request may take.
pub const MAX_REQUEST_TIME: Duration = Duration::from_secs(30);
/// Open response streams per instance.
pub const MAX_STREAMS: usize = 4;
/// A stream's default idle timeout: a model may think for a while before its next token.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(120);
/// The longest idle timeout a stream may ask for.
pub const MAX_IDLE: Duration = Duration::from_secs(600);
/// The longest `http_stream_wait` or `http_stream_head`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Largest request description (`{method, url, headers, …}`).
pub(super) const MAX_REQUEST_JSON: usize = 64 * 1024;

/// How long a request may take.
#[derive(Debug, Clone, Copy)]
enum Timing {
    /// A whole response read at once: one deadline for all of it.
    Whole,
    /// A streamed body: a connect timeout and an idle timeout per read, however long the
    /// body goes on (a model may stream for minutes). The idle timeout is the stream's.
    Streamed,
}

/// What an HTTP host function returns on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum HttpStatus {
    /// The request (or a chunk) took too long.
    Timeout = -1,
    /// Malformed request: method, URL, headers, unknown secret.
    InvalidRequest = -2,
    /// The host is not in the `net` grant (audited).
    CapabilityDenied = -3,
    /// Too many open streams.
    Quota = -4,
    /// No such stream.
    Closed = -5,
    /// A body over 10 MiB.
    TooLarge = -6,
    /// Connection, TLS or protocol failure.
    Connection = -7,
    /// The host name does not resolve.
    DnsError = -8,
    /// The host resolves to a private, loopback or otherwise internal address (audited).
    AddressRefused = -9,
    /// `http_stream_wait`, `http_stream_head`: nothing arrived within the wait; the stream
    /// goes on.
    Pending = -10,
}

#[derive(Deserialize)]
struct Request {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Streams only: the longest silence between two chunks (and before the response head)
    /// before the request fails with `Timeout`; default [`DEFAULT_IDLE`].
    #[serde(default)]
    idle_timeout_ms: Option<u64>,
}

fn get() -> String {
    "GET".to_owned()
}

/// Resolves like the system does, then refuses the whole answer if any address is internal.
#[derive(Debug)]
struct VettedResolver {
    allow_private: bool,
    refused: Arc<Mutex<Option<String>>>,
}

impl Resolver for VettedResolver {
    fn resolve(
        &self,
        uri: &http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let netloc = uri
            .scheme()
            .zip(uri.authority())
            .and_then(|(scheme, authority)| DefaultResolver::host_and_port(scheme, authority))
            .ok_or(ureq::Error::HostNotFound)?;
        let addresses: Vec<SocketAddr> = netloc.to_socket_addrs().map_err(|_| ureq::Error::HostNotFound)?.collect();
        if !self.allow_private
            && let Some(internal) = addresses.iter().find(|a| !is_public(a.ip()))
        {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(internal.ip().to_string());
            return Err(ureq::Error::Io(std::io::Error::other(format!(
                "{netloc} resolves to the internal address {}",
                internal.ip()
            ))));
        }
        let mut vetted = self.empty();
        for address in addresses {
            if vetted.try_push(address).is_err() {
                break;
            }
        }
        if vetted.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(vetted)
    }
}

/// A request that passed every check that needs no network (method, URL, grant, secrets),
/// ready to be sent: DNS and the address check happen when it is sent.
struct Prepared {
    agent: ureq::Agent,
    request: http::Request<Vec<u8>>,
    host: String,
    capsule: String,
    access: KernelAccess,
    refused: Arc<Mutex<Option<String>>>,
    /// The secrets filled into its headers (redacted from the response).
    secrets: Vec<String>,
    /// The stream's idle timeout.
    idle: Duration,
}

/// Checks the guest's request and prepares it (no I/O yet).
fn prepare(context: &CapsuleContext, raw: &[u8], body: &[u8], timing: Timing) -> Result<Prepared, HttpStatus> {
    let Some(access) = &context.kernel else { return Err(HttpStatus::CapabilityDenied) };
    if raw.len() > MAX_REQUEST_JSON || body.len() > MAX_BODY {
        return Err(HttpStatus::TooLarge);
    }
    let Ok(request) = serde_json::from_slice::<Request>(raw) else { return Err(HttpStatus::InvalidRequest) };
    let method = request.method.to_ascii_uppercase();
    if !["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"].contains(&method.as_str()) {
        return Err(HttpStatus::InvalidRequest);
    }
    let Ok(url) = url::Url::parse(&request.url) else { return Err(HttpStatus::InvalidRequest) };
    let host = match (url.scheme(), url.host_str()) {
        ("http" | "https", Some(host)) if url.username().is_empty() && url.password().is_none() => {
            host.trim_start_matches('[').trim_end_matches(']').to_owned()
        }
        _ => return Err(HttpStatus::InvalidRequest),
    };
    let capsule = context.capsule.clone();
    let scope = context.audit_scope();
    if !access.kernel.check_capability_for(scope, &access.principal, &capsule, &Capability::Net(&host)) {
        return Err(HttpStatus::CapabilityDenied);
    }
    let mut used = Vec::new();
    let mut outgoing = http::Request::builder().method(method.as_str()).uri(url.as_str());
    for (name, template) in &request.headers {
        match fill_secrets(template, &context.secrets, &mut used) {
            Ok(value) => outgoing = outgoing.header(name.as_str(), value),
            Err(reason) => {
                log::warn!("capsule {capsule}: HTTP header {name} refused: {reason}");
                return Err(HttpStatus::InvalidRequest);
            }
        }
    }
    let Ok(outgoing) = outgoing.body(body.to_vec()) else { return Err(HttpStatus::InvalidRequest) };
    let refused = Arc::new(Mutex::new(None));
    let allow_private = context.allow_private_network || context.private_hosts.contains(&host);
    let resolver = VettedResolver { allow_private, refused: Arc::clone(&refused) };
    let limit = MAX_REQUEST_TIME.min(context.deadline);
    let idle =
        request.idle_timeout_ms.map_or(DEFAULT_IDLE, Duration::from_millis).clamp(Duration::from_millis(100), MAX_IDLE);
    // No proxy from the environment (the connection goes to the vetted addresses, nowhere
    // else), no redirects (a 3xx goes back to the guest), statuses are answers, not errors.
    let config = ureq::Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0);
    let config = match timing {
        Timing::Whole => config.timeout_global(Some(limit)),
        Timing::Streamed => config
            .timeout_connect(Some(limit))
            .timeout_send_request(Some(limit))
            .timeout_send_body(Some(limit))
            .timeout_per_read(Some(idle)),
    }
    .build();
    let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), resolver);
    Ok(Prepared { agent, request: outgoing, host, capsule, access: access.clone(), refused, secrets: used, idle })
}

impl Prepared {
    /// Sends the request (resolving and vetting the host first) and returns the response.
    fn send(self) -> Result<(http::Response<ureq::Body>, Vec<String>), HttpStatus> {
        let Self { agent, request, host, capsule, access, refused, secrets, .. } = self;
        match agent.run(request) {
            Ok(response) => Ok((response, secrets)),
            Err(error) => {
                if let Some(address) = refused.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    access.kernel.record(
                        &access.principal,
                        Actor::Capsule { name: capsule },
                        "net.connect",
                        &format!("{host} ({address})"),
                        Decision::Deny,
                        "internal address refused (SSRF guard)",
                    );
                    return Err(HttpStatus::AddressRefused);
                }
                log::info!("capsule {capsule}: HTTP to {host} failed: {error}");
                Err(match error {
                    ureq::Error::HostNotFound => HttpStatus::DnsError,
                    ureq::Error::Timeout(_) => HttpStatus::Timeout,
                    ureq::Error::Io(e)
                        if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) =>
                    {
                        HttpStatus::Timeout
                    }
                    ureq::Error::Http(_) | ureq::Error::BadUri(_) => HttpStatus::InvalidRequest,
                    _ => HttpStatus::Connection,
                })
            }
        }
    }
}

/// `{status, headers}` of a response, with secrets redacted from header values (the first
/// value of each header, names in lower case).
fn meta(response: &http::Response<ureq::Body>, secrets: &[String]) -> serde_json::Value {
    let headers = response.headers();
    let headers: BTreeMap<String, String> = headers
        .keys()
        .filter_map(|name| {
            let value = headers.get(name)?;
            Some((name.as_str().to_owned(), String::from_utf8_lossy(&redact(value.as_bytes(), secrets)).into_owned()))
        })
        .collect();
    json!({"status": response.status().as_u16(), "headers": headers})
}

fn reply(status: HttpStatus) -> HostReply {
    HostReply::value(status as i32)
}

/// `http_request`: `[u32 BE length of the JSON head][head][body]`, secrets redacted.
pub(super) fn request(context: &CapsuleContext, raw: &[u8], body: &[u8]) -> HostReply {
    let (response, secrets) = match prepare(context, raw, body, Timing::Whole).and_then(Prepared::send) {
        Ok(sent) => sent,
        Err(status) => return reply(status),
    };
    let meta = serde_json::to_vec(&meta(&response, &secrets)).unwrap_or_default();
    let mut body = Vec::new();
    if let Err(e) = response.into_body().into_reader().take(MAX_BODY as u64 + 1).read_to_end(&mut body) {
        return reply(match ureq::Error::from(e) {
            ureq::Error::Timeout(_) => HttpStatus::Timeout,
            _ => HttpStatus::Connection,
        });
    }
    if body.len() > MAX_BODY {
        return reply(HttpStatus::TooLarge);
    }
    let meta_len = u32::try_from(meta.len()).unwrap_or(u32::MAX);
    let mut out = meta_len.to_be_bytes().to_vec();
    out.extend_from_slice(&meta);
    out.extend_from_slice(&redact(&body, &secrets));
    HostReply::bytes(out)
}

/// `http_stream_open`: the checks that need no network, then a handle at once; connecting,
/// sending and the response head happen on the stream's thread (`http_stream_head`).
pub(super) fn stream_open(context: &mut CapsuleContext, raw: &[u8], body: &[u8]) -> HostReply {
    match open(context, raw, body) {
        Ok(handle) => HostReply::value(i64::from(handle)),
        Err(status) => reply(status),
    }
}

fn open(context: &mut CapsuleContext, raw: &[u8], body: &[u8]) -> Result<i32, HttpStatus> {
    // Open handles, and exchanges still running: a closed stream's thread ends at once unless
    // it is still resolving or connecting (up to the connect timeout), and a guest that opens
    // and closes in a loop must not pile such threads up.
    let running = Arc::strong_count(&context.exchanges) - 1;
    if context.streams.iter().filter(|s| s.is_some()).count() >= MAX_STREAMS || running >= 2 * MAX_STREAMS {
        return Err(HttpStatus::Quota);
    }
    let prepared = prepare(context, raw, body, Timing::Streamed)?;
    let (idle, secrets) = (prepared.idle, prepared.secrets.clone());
    // Shutting the agent down interrupts the exchange wherever it is: waiting for the head,
    // or for the next chunk. The server sees the connection close at once.
    let agent = prepared.agent.clone();
    let hang_up: HangUp = Box::new(move || agent.shutdown());
    let exchange: Exchange = Box::new(move || {
        let (response, secrets) = prepared.send()?;
        let head = serde_json::to_vec(&meta(&response, &secrets)).unwrap_or_default();
        Ok((head, Box::new(response.into_body().into_reader()) as Box<dyn Read + Send>))
    });
    let live = Arc::clone(&context.exchanges);
    let stream = Stream::spawn(exchange, secrets, idle, Some(hang_up), live).map_err(|e| {
        log::error!("capsule {}: cannot start an HTTP exchange: {e}", context.capsule);
        HttpStatus::Connection
    })?;
    let streams = &mut context.streams;
    let handle = match streams.iter().position(Option::is_none) {
        Some(index) => {
            streams[index] = Some(stream);
            index
        }
        None => {
            streams.push(Some(stream));
            streams.len() - 1
        }
    };
    i32::try_from(handle).map_err(|_| HttpStatus::Quota)
}

/// `http_stream_head`: the response head `{status, headers}` (as often as asked), `Pending`
/// when `wait` passed first, or why the exchange failed.
pub(super) fn stream_head(context: &mut CapsuleContext, handle: i32, wait: Option<Duration>) -> HostReply {
    let stopped = context.lifecycle.stopped();
    let Some(Some(stream)) = usize::try_from(handle).ok().and_then(|i| context.streams.get_mut(i)) else {
        return reply(HttpStatus::Closed);
    };
    stream.next_head(wait.map(|w| w.min(MAX_WAIT)), stopped).map_or_else(reply, HostReply::bytes)
}

/// `http_stream_start` (the ABI before `http_stream_open`, kept for built modules): open,
/// then wait for the head; `{status, headers, handle}`. A failed start frees its handle.
pub(super) fn stream_start(context: &mut CapsuleContext, raw: &[u8], body: &[u8]) -> HostReply {
    let handle = match open(context, raw, body) {
        Ok(handle) => handle,
        Err(status) => return reply(status),
    };
    let head = match stream_head(context, handle, None) {
        HostReply::Bytes(head) => head,
        failed => {
            stream_close(context, handle);
            return failed;
        }
    };
    let mut meta: serde_json::Value = serde_json::from_slice(&head.0).unwrap_or_else(|_| json!({}));
    meta["handle"] = json!(handle);
    HostReply::bytes(serde_json::to_vec(&meta).unwrap_or_default())
}

/// `http_stream_read` (`wait` None) and `http_stream_wait`: the next redacted chunk, empty
/// at the end of the body; `Pending` when `wait` passed first, `Closed` on a stop.
pub(super) fn stream_read(context: &mut CapsuleContext, handle: i32, wait: Option<Duration>) -> HostReply {
    let stopped = context.lifecycle.stopped();
    let Some(Some(stream)) = usize::try_from(handle).ok().and_then(|i| context.streams.get_mut(i)) else {
        return reply(HttpStatus::Closed);
    };
    stream.next_chunk(wait.map(|w| w.min(MAX_WAIT)), stopped).map_or_else(reply, HostReply::bytes)
}

/// `http_stream_close`: frees the handle and hangs up on the server (before its head too).
pub(super) fn stream_close(context: &mut CapsuleContext, handle: i32) -> HostReply {
    match usize::try_from(handle).ok().and_then(|i| context.streams.get_mut(i)) {
        Some(slot @ Some(_)) => {
            *slot = None;
            HostReply::value(0)
        }
        _ => reply(HttpStatus::Closed),
    }
}
