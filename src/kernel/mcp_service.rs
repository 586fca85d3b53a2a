//! What the kernel needs of the MCP host, without knowing it runs processes: the management
//! API lists servers and calls tools through this (`McpList`, `McpCall`).

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use crate::types::management::{McpCallResult, McpListing};

/// A boxed future of an MCP call's outcome.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<McpCallResult, String>> + Send>>;

/// The MCP host as the kernel sees it.
pub trait McpService: Send + Sync + std::fmt::Debug {
    /// Every server with its state and tools.
    fn list(&self) -> McpListing;
    /// Calls `tool` on `server`, or says why it could not be called.
    fn call(self: std::sync::Arc<Self>, server: String, tool: String, arguments: Value) -> CallFuture;
}
