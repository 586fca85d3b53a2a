//! `astrid tools list`: the tools the agent is offered, who serves each, and whether it asks
//! before it acts, as the daemon learns them from the providers themselves.

use std::time::{Duration, Instant};

use astrid::types::ToolApproval;
use astrid::types::management::{McpListing, McpServerState, ToolListing, ToolOrigin};

use crate::capsules::install;
use crate::harness::{HANG, TestHome};

fn listing(t: &TestHome) -> ToolListing {
    let output = t.cli(&["tools", "list", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("a ToolListing")
}

#[test]
fn the_file_tools_run_command_and_an_mcp_servers_tools_are_listed_with_their_origin_and_approval() {
    let t = TestHome::new();
    let time = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-deps/venv/bin/mcp-server-time");
    assert!(time.exists(), "{} is missing: run scripts/test-deps.sh", time.display());
    std::fs::create_dir_all(t.home.join("etc")).expect("etc");
    std::fs::write(
        t.home.join("etc/servers.toml"),
        format!("[servers.time]\ncommand = {:?}\n", time.display().to_string()),
    )
    .expect("servers.toml");
    let _daemon = t.daemon(&[]);
    install(&t, "tools-fs");
    install(&t, "tools-shell");

    // While the MCP server starts it is listed as pending; once it is ready, its tools are
    // offered (waited for with `mcp list`, which costs the providers nothing).
    let deadline = Instant::now() + HANG;
    let ready = || {
        let output = t.cli(&["mcp", "list", "--json"]);
        let listing: McpListing = serde_json::from_slice(&output.stdout).expect("an McpListing");
        listing.servers.iter().any(|s| s.name == "time" && s.state == McpServerState::Ready)
    };
    while !ready() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let tools = listing(&t);
    let find = |name: &str| {
        tools.tools.iter().find(|tool| tool.name == name).unwrap_or_else(|| panic!("{name} is not listed: {tools:#?}"))
    };
    for (name, approval) in [
        ("read_file", ToolApproval::Never),
        ("list_dir", ToolApproval::Never),
        ("search", ToolApproval::Never),
        ("write_file", ToolApproval::Asks),
        ("edit_file", ToolApproval::Asks),
    ] {
        let tool = find(name);
        assert_eq!(tool.origin, ToolOrigin::Capsule("tools-fs".into()), "{tool:?}");
        assert_eq!(tool.approval, Some(approval), "{tool:?}");
    }
    let run = find("run_command");
    assert_eq!((&run.origin, run.approval), (&ToolOrigin::Capsule("tools-shell".into()), Some(ToolApproval::Asks)));
    let now = find("time:get_current_time");
    assert_eq!((&now.origin, now.approval), (&ToolOrigin::McpServer("time".into()), Some(ToolApproval::Asks)));
    assert!(tools.unanswered.is_empty() && tools.pending.is_empty(), "{tools:#?}");

    let output = t.cli(&["tools", "list"]);
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    let line = |name: &str| shown.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_owned();
    assert!(line("read_file").contains("capsule tools-fs") && line("read_file").contains("no approval"), "{shown}");
    assert!(line("write_file").contains("asks first"), "{shown}");
    assert!(line("time:get_current_time").contains("MCP server time"), "{shown}");
}

#[test]
fn a_capsule_granted_the_management_topics_may_list_the_tools() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    install(&t, "tools-fs");
    let mut bystander = t.client();
    let own = bystander.request("status", serde_json::json!({"method": "GetStatus"}));
    assert!(own["payload"]["data"].is_object(), "{own}");
    // A read, so a capsule may ask (it forwards the answer on agent.v1.response).
    crate::origin::install_asker(&t, r#"{"type":"raw_json","method":"ListTools"}"#);
    let forwarded = loop {
        let frame = bystander.read_json().unwrap_or_else(|| panic!("connection closed\n{}", t.log()));
        if frame["topic"] == "agent.v1.response" && frame["payload"]["topic"] == "astrid.v1.response.status" {
            break frame["payload"]["payload"].clone();
        }
    };
    assert_eq!(forwarded["status"], "Success", "{forwarded}");
    let listing: ToolListing = serde_json::from_value(forwarded["data"].clone()).expect("a ToolListing");
    assert!(listing.tools.iter().any(|tool| tool.name == "read_file"), "{listing:?}");
    let asked = |audit: &[serde_json::Value]| {
        audit.iter().any(|e| e["action"] == "management.ListTools" && e["actor"]["name"] == "asker")
    };
    assert!(asked(&crate::capsules::audit_until(&t, asked)), "audited as the capsule");
}
