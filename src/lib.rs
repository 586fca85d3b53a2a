//! Astrid: a secure runtime for AI agents.
//!
//! One library holds every module; the `astrid` binary is a thin dispatcher over the roles
//! below, so tests can drive each role in-process or through the real binary.
//!
//! # Layout (imports point downwards only)
//!
//! - [`types`]: the wire vocabulary (IPC envelope, LLM messages, management API, handshake).
//!   No I/O; compiles for `wasm32-unknown-unknown` so capsules share it.
//! - [`home`]: where Astrid keeps its files (`~/.astrid` or `$ASTRID_HOME`) and their modes.
//! - [`store`], [`audit`], [`vfs`]: kernel state (sled KV, signed audit chain, workspace
//!   overlay).
//! - [`kernel`]: the event bus, the capsule registry, grants, approvals, client leases and
//!   the management router. No sockets, no signals, no terminal, no WebAssembly.
//! - [`wasm`]: the capsule sandbox on wasmi; host calls cross a seam ([`wasm::host_call`])
//!   between guest memory and the kernel's side, so they can also cross a socket.
//! - [`ipc`]: the only module that reads or writes socket bytes: framing, handshake,
//!   session token, the daemon's socket bridge, capsule-host sessions and the blocking
//!   clients of the CLI and of the capsule host.
//! - [`daemon`]: process lifetime of the kernel: singleton lock, boot and shutdown order,
//!   signals, idle exit, logging. The only module that installs signal handlers.
//! - [`cli`]: the frontend role (`astrid start|stop|status|capsule …`).
//! - [`capsule_host`]: the capsule-host role (one capsule in a process of its own).
//! - [`command_sandbox`]: shell commands confined in namespaces, writing into the VFS overlay (the
//!   `astrid-sandbox` role and the library the kernel calls).
//!
//! Everything except [`types`] is host-only.

#![cfg_attr(target_arch = "wasm32", allow(dead_code))]

pub mod types;

#[cfg(not(target_arch = "wasm32"))]
pub mod audit;
#[cfg(not(target_arch = "wasm32"))]
pub mod blocking;
#[cfg(not(target_arch = "wasm32"))]
pub mod capsule_host;
#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
#[cfg(not(target_arch = "wasm32"))]
pub mod command_sandbox;
#[cfg(not(target_arch = "wasm32"))]
pub mod daemon;
#[cfg(not(target_arch = "wasm32"))]
pub mod home;
#[cfg(not(target_arch = "wasm32"))]
pub mod ipc;
#[cfg(not(target_arch = "wasm32"))]
pub mod kernel;
#[cfg(not(target_arch = "wasm32"))]
pub mod lifeline;
#[cfg(not(target_arch = "wasm32"))]
pub mod mcp;
#[cfg(not(target_arch = "wasm32"))]
pub mod store;
#[cfg(not(target_arch = "wasm32"))]
pub mod vfs;
#[cfg(not(target_arch = "wasm32"))]
pub mod wasm;

/// The version every role reports (`astrid --version`, handshake, `GetStatus`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
