//! What the kernel needs of the MCP host, without knowing it runs processes: the management
//! API lists servers and calls tools through this (`McpList`, `McpCall`).

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use crate::types::management::{McpCallResult, McpListing};

/// A boxed future of an MCP call's outcome.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<McpCallResult, McpCallError>> + Send>>;

/// Why an MCP tool could not be called (its own error result is an outcome, not this).
#[derive(Debug, thiserror::Error)]
pub enum McpCallError {
    /// No server has the name.
    #[error("no MCP server called {server}")]
    NoServer {
        /// The server named.
        server: String,
    },
    /// The server is starting, restarting or failed.
    #[error("MCP server {server} is not ready")]
    NotReady { server: String },
    /// The server does not offer the tool.
    #[error("MCP server {server} has no tool called {tool}")]
    NoTool {
        server: String,
        /// The tool named.
        tool: String,
    },
    /// The request failed (timeout, cancel, the server exited or answered with an error).
    #[error("{server}:{tool}: {source}")]
    Failed {
        server: String,
        tool: String,
        /// How the request failed (the MCP client's error; the kernel does not know its type).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The MCP host as the kernel sees it.
pub trait McpService: Send + Sync + std::fmt::Debug {
    /// Every server with its state and tools.
    fn list(&self) -> McpListing;
    /// Calls `tool` on `server`, or says why it could not be called.
    fn call(self: std::sync::Arc<Self>, server: String, tool: String, arguments: Value) -> CallFuture;
}
