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
//! Waiting on the network is not charged to the call's CPU deadline (like `ipc_recv`); each
//! request has its own timeout, at most the call's deadline.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use wasmi::{Caller, Linker};

use super::context::CapsuleContext;
use super::host_call::{Blob, HostCall, HostReply};
use super::net_policy::{fill_secrets, is_public, redact};
use super::sandbox::{HOST_MODULE, HostState, forward, forward_status, read_guest};
use crate::audit::{Actor, Decision};
use crate::kernel::capability::Capability;

/// Largest request or response body.
pub const MAX_BODY: usize = 10 * 1024 * 1024;
/// Longest any request may take.
pub const MAX_REQUEST_TIME: Duration = Duration::from_secs(30);
/// Open response streams per instance.
pub const MAX_STREAMS: usize = 4;
const MAX_REQUEST_JSON: usize = 64 * 1024;
const CHUNK: usize = 64 * 1024;

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
}

#[derive(Deserialize)]
struct Request {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn get() -> String {
    "GET".to_owned()
}

/// An open response body.
pub(super) struct Stream {
    reader: Box<dyn Read + Send>,
    secrets: Vec<String>,
    /// Bytes held back so a secret split across two chunks is still redacted.
    carry: Vec<u8>,
    ended: bool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("ended", &self.ended).finish_non_exhaustive()
    }
}

/// Resolves like the system does, then refuses the whole answer if any address is internal.
struct VettedResolver {
    allow_private: bool,
    refused: Arc<Mutex<Option<String>>>,
}

impl ureq::Resolver for VettedResolver {
    fn resolve(&self, netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
        let addresses: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
        if !self.allow_private
            && let Some(internal) = addresses.iter().find(|a| !is_public(a.ip()))
        {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(internal.ip().to_string());
            return Err(std::io::Error::other(format!("{netloc} resolves to the internal address {}", internal.ip())));
        }
        Ok(addresses)
    }
}

/// Sends the guest's request after every check; the response and the secrets it used.
fn send(context: &CapsuleContext, raw: &[u8], body: &[u8]) -> Result<(ureq::Response, Vec<String>), HttpStatus> {
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
    if !access.kernel.check_capability(&access.principal, &capsule, &Capability::Net(&host)) {
        return Err(HttpStatus::CapabilityDenied);
    }
    let mut used = Vec::new();
    let mut headers = Vec::with_capacity(request.headers.len());
    for (name, template) in &request.headers {
        match fill_secrets(template, &context.secrets, &mut used) {
            Ok(value) => headers.push((name.clone(), value)),
            Err(reason) => {
                log::warn!("capsule {capsule}: HTTP header {name} refused: {reason}");
                return Err(HttpStatus::InvalidRequest);
            }
        }
    }
    let refused = Arc::new(Mutex::new(None));
    let allow_private = context.allow_private_network || context.private_hosts.contains(&host);
    let resolver = VettedResolver { allow_private, refused: Arc::clone(&refused) };
    let timeout = MAX_REQUEST_TIME.min(context.deadline);
    let agent = ureq::AgentBuilder::new().resolver(resolver).redirects(0).timeout(timeout).build();
    let mut outgoing = agent.request_url(&method, &url);
    for (name, value) in &headers {
        outgoing = outgoing.set(name, value);
    }
    let started = Instant::now();
    let result = outgoing.send_bytes(body);
    match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => Ok((response, used)),
        Err(ureq::Error::Transport(transport)) => {
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
            log::info!("capsule {capsule}: HTTP to {host} failed: {transport}");
            Err(match transport.kind() {
                ureq::ErrorKind::Dns => HttpStatus::DnsError,
                ureq::ErrorKind::Io if started.elapsed() >= timeout => HttpStatus::Timeout,
                ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme | ureq::ErrorKind::HTTP => {
                    HttpStatus::InvalidRequest
                }
                _ => HttpStatus::Connection,
            })
        }
    }
}

/// `{status, headers}` of a response, with secrets redacted from header values.
fn meta(response: &ureq::Response, secrets: &[String]) -> serde_json::Value {
    let headers: BTreeMap<String, String> = response
        .headers_names()
        .into_iter()
        .filter_map(|name| {
            let value = response.header(&name)?;
            Some((name, String::from_utf8_lossy(&redact(value.as_bytes(), secrets)).into_owned()))
        })
        .collect();
    json!({"status": response.status(), "headers": headers})
}

fn reply(status: HttpStatus) -> HostReply {
    HostReply::value(status as i32)
}

/// `http_request`: `[u32 BE length of the JSON head][head][body]`, secrets redacted.
pub(super) fn request(context: &CapsuleContext, raw: &[u8], body: &[u8]) -> HostReply {
    let (response, secrets) = match send(context, raw, body) {
        Ok(sent) => sent,
        Err(status) => return reply(status),
    };
    let meta = serde_json::to_vec(&meta(&response, &secrets)).unwrap_or_default();
    let mut body = Vec::new();
    if response.into_reader().take(MAX_BODY as u64 + 1).read_to_end(&mut body).is_err() {
        return reply(HttpStatus::Connection);
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

/// `http_stream_start`: `{status, headers, handle}`; the body is read with `http_stream_read`.
pub(super) fn stream_start(context: &mut CapsuleContext, raw: &[u8], body: &[u8]) -> HostReply {
    if context.streams.iter().filter(|s| s.is_some()).count() >= MAX_STREAMS {
        return reply(HttpStatus::Quota);
    }
    let (response, secrets) = match send(context, raw, body) {
        Ok(sent) => sent,
        Err(status) => return reply(status),
    };
    let mut meta = meta(&response, &secrets);
    let stream = Stream { reader: Box::new(response.into_reader()), secrets, carry: Vec::new(), ended: false };
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
    meta["handle"] = json!(handle);
    HostReply::bytes(serde_json::to_vec(&meta).unwrap_or_default())
}

/// `http_stream_read`: the next redacted chunk; empty at the end of the body.
pub(super) fn stream_read(context: &mut CapsuleContext, handle: i32) -> HostReply {
    let Some(Some(stream)) = usize::try_from(handle).ok().and_then(|i| context.streams.get_mut(i)) else {
        return reply(HttpStatus::Closed);
    };
    next_chunk(stream).map_or_else(reply, HostReply::bytes)
}

/// `http_stream_close`: frees the handle.
pub(super) fn stream_close(context: &mut CapsuleContext, handle: i32) -> HostReply {
    match usize::try_from(handle).ok().and_then(|i| context.streams.get_mut(i)) {
        Some(slot @ Some(_)) => {
            *slot = None;
            HostReply::value(0)
        }
        _ => reply(HttpStatus::Closed),
    }
}

/// Adds the HTTP functions to the linker (the guest side: copy out, forward, copy back).
pub(super) fn link(linker: &mut Linker<HostState>) -> Result<(), wasmi::errors::LinkerError> {
    fn exchange(
        caller: &mut Caller<'_, HostState>,
        request: (i32, i32),
        body: (i32, i32),
    ) -> Result<(Blob, Blob), wasmi::Error> {
        let request = read_guest(caller, request.0, request.1, MAX_REQUEST_JSON)?;
        let body = if body.1 > 0 { read_guest(caller, body.0, body.1, MAX_BODY)? } else { Vec::new() };
        Ok((request.into(), body.into()))
    }
    linker.func_wrap(
        HOST_MODULE,
        "http_request",
        |mut caller: Caller<'_, HostState>, req_ptr: i32, req_len: i32, body_ptr: i32, body_len: i32| {
            let (request, body) = exchange(&mut caller, (req_ptr, req_len), (body_ptr, body_len))?;
            forward(&mut caller, HostCall::HttpRequest { request, body })
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "http_stream_start",
        |mut caller: Caller<'_, HostState>, req_ptr: i32, req_len: i32, body_ptr: i32, body_len: i32| {
            let (request, body) = exchange(&mut caller, (req_ptr, req_len), (body_ptr, body_len))?;
            forward(&mut caller, HostCall::HttpStreamStart { request, body })
        },
    )?;
    linker.func_wrap(HOST_MODULE, "http_stream_read", |mut caller: Caller<'_, HostState>, handle: i32| {
        forward(&mut caller, HostCall::HttpStreamRead { handle })
    })?;
    linker.func_wrap(HOST_MODULE, "http_stream_close", |mut caller: Caller<'_, HostState>, handle: i32| {
        forward_status(&mut caller, HostCall::HttpStreamClose { handle })
    })?;
    Ok(())
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

/// The next redacted chunk; empty once the body is over. Bytes at the end that could be the
/// start of a secret are held back until more arrive (so a secret split across reads is still
/// caught); nothing else is, so a stream's events reach the guest as soon as they arrive.
fn next_chunk(stream: &mut Stream) -> Result<Vec<u8>, HttpStatus> {
    loop {
        if stream.ended {
            let rest = std::mem::take(&mut stream.carry);
            return Ok(redact(&rest, &stream.secrets));
        }
        let hold = pending_prefix(&stream.carry, &stream.secrets);
        if stream.carry.len() > hold {
            break;
        }
        let mut buffer = vec![0u8; CHUNK];
        match stream.reader.read(&mut buffer) {
            Ok(0) => stream.ended = true,
            Ok(n) => stream.carry.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(HttpStatus::Timeout);
            }
            Err(_) => return Err(HttpStatus::Connection),
        }
    }
    // Emit everything but the held tail; a whole secret that straddles the cut is emitted with
    // the head (redacted), never split. The head is never empty, so an empty chunk always
    // means the end of the body.
    let cut = stream.carry.len() - pending_prefix(&stream.carry, &stream.secrets);
    let mut emit = cut;
    for secret in stream.secrets.iter().map(String::as_bytes).filter(|s| !s.is_empty()) {
        for start in cut.saturating_sub(secret.len() - 1)..cut {
            if stream.carry[start..].starts_with(secret) {
                emit = emit.max(start + secret.len());
            }
        }
    }
    let head: Vec<u8> = stream.carry.drain(..emit).collect();
    Ok(redact(&head, &stream.secrets))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one byte per call: the worst case for a secret split across reads.
    struct Trickle(std::collections::VecDeque<u8>);

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
            let mut stream = Stream {
                reader: Box::new(Trickle(body.bytes().collect())),
                secrets: vec!["sk-test-42".to_owned()],
                carry: Vec::new(),
                ended: false,
            };
            let mut out = Vec::new();
            loop {
                let chunk = next_chunk(&mut stream).expect("chunk");
                if chunk.is_empty() {
                    break;
                }
                out.extend_from_slice(&chunk);
            }
            assert_eq!(String::from_utf8(out).expect("utf8"), body.replace("sk-test-42", "[REDACTED]"), "{body:?}");
        }
    }
}
