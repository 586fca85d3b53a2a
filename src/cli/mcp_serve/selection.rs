//! Which of the daemon's tools this server offers: `--tools` (a subset by name) and
//! `--read-only` (nothing that writes or runs).
//!
//! Read-only is a list, not a guess: the file tools that only read (`read_file`, `list_dir`,
//! `search` of the `tools-fs` capsule). A tool's "asks first" says whether it asks, not
//! whether it changes anything, and an MCP server's `readOnlyHint` is the server's own claim,
//! which nothing checks; so `write_file`, `edit_file`, `run_command` and every MCP server's
//! tool are left out.

use super::names::Names;
use crate::types::management::{ListedTool, ToolOrigin};

/// The capsule whose reading tools `--read-only` keeps.
const FILE_TOOLS: &str = "tools-fs";
/// Its tools that only read.
const READING_TOOLS: &[&str] = &["read_file", "list_dir", "search"];

/// What is offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these (Astrid or MCP names); `None`: all.
    pub tools: Option<Vec<String>>,
    /// Only tools that cannot change anything.
    pub read_only: bool,
}

impl Selection {
    /// Whether `tool` (offered under `mcp_name`) is offered.
    pub fn offers(&self, tool: &ListedTool, mcp_name: &str) -> bool {
        let named = self.tools.as_ref().is_none_or(|names| names.iter().any(|n| *n == tool.name || n == mcp_name));
        let reads_only =
            tool.origin == ToolOrigin::Capsule(FILE_TOOLS.to_owned()) && READING_TOOLS.contains(&tool.name.as_str());
        named && (!self.read_only || reads_only)
    }
}

impl Selection {
    /// The names `--tools` gave that none of the tools `listed` answers to.
    pub fn unmatched<'a>(&'a self, listed: &Names) -> Vec<&'a str> {
        let Some(names) = &self.tools else { return Vec::new() };
        names.iter().filter(|n| !listed.answers_to(n)).map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, origin: ToolOrigin) -> ListedTool {
        ListedTool { name: name.into(), description: None, origin, approval: None, input_schema: None }
    }

    #[test]
    fn read_only_keeps_only_the_reading_file_tools_and_tools_names_a_subset() {
        let fs = |name: &str| tool(name, ToolOrigin::Capsule("tools-fs".into()));
        let read_only = Selection { tools: None, read_only: true };
        assert!(read_only.offers(&fs("read_file"), "read_file"));
        assert!(!read_only.offers(&fs("write_file"), "write_file"));
        assert!(!read_only.offers(&tool("run_command", ToolOrigin::Capsule("tools-shell".into())), "run_command"));
        assert!(
            !read_only.offers(&tool("everything:echo", ToolOrigin::McpServer("everything".into())), "everything__echo")
        );
        assert!(!read_only.offers(&tool("read_file", ToolOrigin::Capsule("lookalike".into())), "read_file"));
        let subset = Selection { tools: Some(vec!["read_file".into(), "everything__echo".into()]), read_only: false };
        assert!(subset.offers(&fs("read_file"), "read_file"));
        assert!(
            subset.offers(&tool("everything:echo", ToolOrigin::McpServer("everything".into())), "everything__echo")
        );
        assert!(!subset.offers(&fs("list_dir"), "list_dir"));
    }
}
