//! MCP servers as tools: Model Context Protocol servers (stdio) run beside the kernel, under
//! its approval and audit rules.
//!
//! - [`config`]: `etc/servers.toml`, parsed strictly;
//! - [`capsule_servers`]: servers approved capsules declare (`[[mcp_server]]`);
//! - [`client`]: one server over stdio (JSON-RPC 2.0 lines), with timeouts and cancellation;
//! - [`host`]: every server supervised (restarts with backoff, failed servers never block);
//! - [`tools`]: their tools on the bus as `server:tool`, each call approved and audited;
//! - [`exec`]: the `astrid-mcp-exec` role that ties a server's life to the daemon's.
//!
//! The client is written against the protocol, not the official SDK (rmcp): the part needed
//! (initialize with version negotiation, paginated `tools/list`, `tools/call`, the tool-list
//! notification, cancellation, ping) is small, rmcp's API has broken in nearly every release
//! (0.3 to 3.11 in a year), it logs through `tracing` rather than `log`, and it would bring
//! its own process handling where ours must guarantee no orphans. JSON is parsed by
//! serde_json; nothing here parses a format by hand.

pub mod capsule_servers;
pub mod client;
pub mod config;
pub mod exec;
pub mod host;
pub mod tools;

pub use client::{McpClient, McpError};
pub use config::ServerConfig;
pub use host::McpHost;
