//! Socket I/O: the only module that reads or writes socket bytes.
//!
//! - [`frame`]: length-prefixed framing with limits checked before allocation;
//! - [`token`]: the per-boot session token and its file;
//! - [`handshake`]: the server's judgement of a handshake frame;
//! - [`policy`]: which topics clients may publish and receive;
//! - [`bridge`]: the daemon's accept loop and per-connection tasks;
//! - [`capsule_session`]: capsule-host connections, daemon side (host calls over the socket);
//! - [`capsule_link`]: the capsule host's end of such a connection;
//! - [`client`]: the CLI's blocking client;
//! - [`async_client`]: a client for a frontend serving another program (`astrid mcp serve`).

pub mod async_client;
pub mod bridge;
pub mod capsule_link;
pub mod capsule_session;
pub mod client;
pub mod frame;
pub mod handshake;
pub mod policy;
pub mod token;

pub use client::{Client, ClientError};
pub use token::SessionToken;
