//! MCP servers as tools: Model Context Protocol servers (stdio) run beside the kernel, under
//! its approval and audit rules.
//!
//! - [`config`]: `etc/servers.toml`, parsed strictly;
//! - [`capsule_servers`]: servers approved capsules declare (`[[mcp_server]]`);
//! - [`client`]: one server over stdio through the official SDK (rmcp), with our process
//!   handling, timeouts and cancellation;
//! - [`host`]: every server supervised (restarts with backoff, failed servers never block);
//! - [`tools`]: their tools on the bus as `server:tool`, each call approved and audited;
//! - [`exec`]: the `astrid-mcp-exec` role that ties a server's life to the daemon's.
//!
//! The protocol is rmcp's, the same implementation `astrid mcp serve` uses for the other
//! side: the protocol moved from one lifecycle to two (the `initialize` handshake through
//! 2025-11-25, stateless `server/discover` from 2026-07-28) and five versions within two
//! years, and the SDK's authors follow it so that we do not. Its API churns (0.3 to 3.11 in
//! a year), so it is pinned exactly and its types stay inside `client.rs` (and the server's
//! own module).
//! What stays ours is what Astrid guarantees: how a server's process is started, confined
//! and stopped (no orphans), and every timeout.

pub mod capsule_servers;
pub mod client;
pub mod config;
pub mod exec;
pub mod host;
pub mod tools;

pub use client::{McpClient, McpError};
pub use config::ServerConfig;
pub use host::McpHost;
