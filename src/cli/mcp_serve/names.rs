//! Astrid's tool names as MCP tool names, and back.
//!
//! An MCP server's tool is `server:tool` to Astrid; MCP names allow letters, digits, `_`, `-`
//! and `.` (1 to 128), and the providers most clients send them on to allow no `.` either. So
//! `:` becomes `__`, as the agent's own provider (llm-openai) writes it for the model. The way
//! back is the table of the names offered, not a string rule: a capsule tool called `a__b`
//! and the tool `b` of server `a` would both be `a__b`; the first listed keeps the name and
//! the other is not offered (and logged), so a name always means one tool.

use std::collections::BTreeMap;

/// The longest MCP tool name.
const MAX_NAME: usize = 128;

/// The MCP name of the Astrid tool `name`, when it can have one.
pub fn mcp_name(name: &str) -> Option<String> {
    let escaped = name.replace(':', "__");
    let valid = !escaped.is_empty()
        && escaped.len() <= MAX_NAME
        && escaped.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    valid.then_some(escaped)
}

/// The names offered, both ways.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Names {
    /// MCP name → Astrid name.
    by_mcp: BTreeMap<String, String>,
}

impl Names {
    /// Records `astrid`'s MCP name; `None` when it has none, or another tool already has it.
    pub fn offer(&mut self, astrid: &str) -> Option<String> {
        let mcp = mcp_name(astrid)?;
        match self.by_mcp.get(&mcp) {
            Some(taken) if taken != astrid => {
                log::warn!("astrid mcp serve: {astrid} would be offered as {mcp}, which is {taken}'s; left out");
                None
            }
            _ => {
                self.by_mcp.insert(mcp.clone(), astrid.to_owned());
                Some(mcp)
            }
        }
    }

    /// Whether a tool offered is called `name`, by its Astrid or its MCP name.
    pub fn answers_to(&self, name: &str) -> bool {
        self.by_mcp.contains_key(name) || self.by_mcp.values().any(|astrid| astrid == name)
    }

    /// The Astrid tool the MCP name `mcp` stands for.
    pub fn astrid_name(&self, mcp: &str) -> Option<&str> {
        self.by_mcp.get(mcp).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_tools_are_escaped_and_found_again_and_a_name_means_one_tool() {
        assert_eq!(mcp_name("read_file").as_deref(), Some("read_file"));
        assert_eq!(mcp_name("everything:echo").as_deref(), Some("everything__echo"));
        assert_eq!(mcp_name(&"x".repeat(129)), None, "too long for MCP");
        let mut names = Names::default();
        assert_eq!(names.offer("everything:get-sum").as_deref(), Some("everything__get-sum"));
        assert_eq!(names.offer("everything__get-sum"), None, "taken by the server's tool");
        assert_eq!(names.offer("read_file").as_deref(), Some("read_file"));
        assert_eq!(names.astrid_name("everything__get-sum"), Some("everything:get-sum"));
        assert_eq!(names.astrid_name("read_file"), Some("read_file"));
        assert_eq!(names.astrid_name("write_file"), None, "not offered");
    }
}
