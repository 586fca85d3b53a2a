//! MCP servers through the real daemon: two real servers from the package registries
//! (installed by scripts/test-deps.sh), and servers that fail in each way one can.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use astrid::types::management::{McpListing, McpServer, McpServerState};
use serde_json::{Value, json};

use crate::capsules::{audit_until, install_with};
use crate::harness::{HANG, TestHome, alive, wait_for};
use crate::openai_server::{Script, Server};

/// A server installed by scripts/test-deps.sh.
fn installed(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-deps").join(relative);
    assert!(path.exists(), "{} is missing: run scripts/test-deps.sh (the README's test command does)", path.display());
    path
}

fn everything() -> PathBuf {
    installed("npm/node_modules/.bin/mcp-server-everything")
}

fn time_server() -> PathBuf {
    installed("venv/bin/mcp-server-time")
}

/// tests/fixtures/mcp_scripted.py: paged tools, one that never answers, one that adds a tool.
fn scripted() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_scripted.py")
}

fn write_servers(t: &TestHome, toml: &str) {
    let etc = t.home.join("etc");
    std::fs::create_dir_all(&etc).expect("etc");
    std::fs::write(etc.join("servers.toml"), toml).expect("servers.toml");
}

fn real_servers() -> String {
    format!(
        "[servers.everything]\ncommand = {:?}\n\n[servers.time]\ncommand = {:?}\n",
        everything().display().to_string(),
        time_server().display().to_string()
    )
}

fn listing(t: &TestHome) -> McpListing {
    let output = t.cli(&["mcp", "list", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("an McpListing")
}

fn server<'a>(listing: &'a McpListing, name: &str) -> &'a McpServer {
    listing.servers.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name} is not listed: {listing:#?}"))
}

/// The names of a server's tools.
fn tool_names(listing: &McpListing, name: &str) -> Vec<String> {
    server(listing, name).tools.iter().map(|t| t.name.clone()).collect()
}

/// Waits until every server named has left `starting`; the last listing.
fn settled(t: &TestHome, names: &[&str]) -> McpListing {
    let deadline = Instant::now() + HANG;
    loop {
        let now = listing(t);
        let done = names.iter().all(|n| server(&now, n).state != McpServerState::Starting);
        if done || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn call(t: &TestHome, server: &str, tool: &str, arguments: &str) -> std::process::Output {
    t.cli(&["mcp", "call", server, tool, arguments])
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn real_servers_from_npm_and_pypi_list_their_tools_and_answer_calls() {
    let t = TestHome::new();
    write_servers(&t, &real_servers());
    let _daemon = t.daemon(&[]);
    let listed = settled(&t, &["everything", "time"]);
    for name in ["everything", "time"] {
        assert_eq!(server(&listed, name).state, McpServerState::Ready, "{listed:#?}\n{}", t.log());
    }
    let tools = |name: &str| tool_names(&listed, name);
    assert!(tools("everything").iter().any(|t| t == "echo") && tools("everything").iter().any(|t| t == "get-sum"));
    assert!(tools("time").iter().any(|t| t == "get_current_time"), "{:?}", tools("time"));

    let echo = call(&t, "everything", "echo", r#"{"message": "hello from astrid"}"#);
    assert_eq!((echo.status.code(), stdout(&echo).trim()), (Some(0), "Echo: hello from astrid"));
    let sum = call(&t, "everything", "get-sum", r#"{"a": 2, "b": 40}"#);
    assert_eq!(stdout(&sum).trim(), "The sum of 2 and 40 is 42.");
    let now = call(&t, "time", "get_current_time", r#"{"timezone": "UTC"}"#);
    let now: Value = serde_json::from_str(stdout(&now).trim()).expect("the time server answers JSON");
    assert_eq!(now["timezone"], "UTC");

    // Mistakes get clear errors, and the servers stay up.
    let unknown = call(&t, "time", "no_such_tool", "{}");
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("has no tool called no_such_tool"));
    let bad = call(&t, "time", "get_current_time", "not json");
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(server(&listing(&t), "time").state, McpServerState::Ready);

    let audit = audit_until(&t, |a| a.iter().filter(|e| e["action"] == "mcp.call").count() >= 4);
    let calls: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e["action"] == "mcp.call")
        .filter_map(|e| Some((e["resource"].as_str()?, e["decision"].as_str()?)))
        .collect();
    assert_eq!(
        calls,
        [
            ("everything:echo", "allow"),
            ("everything:get-sum", "allow"),
            ("time:get_current_time", "allow"),
            ("time:no_such_tool", "deny")
        ]
    );
    assert!(audit.iter().any(|e| e["action"] == "mcp.server"
        && e["resource"] == "time"
        && e["rule"].as_str().is_some_and(|r| r.starts_with("ready"))));
}

#[test]
fn an_mcp_tool_runs_in_an_agent_turn_only_once_approved() {
    let t = TestHome::new();
    write_servers(&t, &format!("[servers.time]\ncommand = {:?}\n", time_server().display().to_string()));
    let tool_call = Script::ToolCall { name: "time__get_current_time", arguments: json!({"timezone": "UTC"}) };
    let model = Server::start(vec![
        tool_call.clone(),
        Script::Text(vec!["It is late."]),
        tool_call,
        Script::Text(vec!["Sorry."]),
    ]);
    let _daemon = t.daemon_with(&[], &[("ASTRID_HTTP_ALLOW_PRIVATE", "1")]);
    let base = format!("base_url={}", model.base_url());
    install_with(&t, "llm-openai", &["--env", &base, "--env", "model=m"]);
    // The file tools listen on tool.v1.execute.* too: they must leave MCP tools alone.
    install_with(&t, "tools-fs", &[]);
    install_with(&t, "orchestrator", &["--env", "provider=openai"]);
    assert_eq!(server(&settled(&t, &["time"]), "time").state, McpServerState::Ready);

    let approved = t.cli(&["run", "what time is it?", "--yes", "--format", "json"]);
    assert_eq!(approved.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&approved.stderr), t.log());
    let answer: Value = serde_json::from_str(stdout(&approved).trim()).expect("json");
    assert_eq!(answer["response"], "It is late.");
    let call = &answer["tool_calls"][0];
    assert_eq!(call["name"], "time:get_current_time");
    assert_eq!(call["is_error"], false);
    assert!(call["result"].as_str().is_some_and(|r| r.contains("\"timezone\": \"UTC\"")), "{call}");
    // The model saw the tool under an OpenAI-safe name, and got its result back.
    let requests = model.received();
    let offered = requests[0].body["tools"].to_string();
    assert!(offered.contains("time__get_current_time"), "{offered}");
    assert!(requests[1].body["messages"].to_string().contains("UTC"));

    // Without approval the call is not made.
    let denied = t.cli(&["run", "and now?", "--format", "json"]);
    let answer: Value = serde_json::from_str(stdout(&denied).trim()).expect("json");
    assert_eq!(answer["tool_calls"][0]["is_error"], true);
    assert!(answer["tool_calls"][0]["result"].as_str().is_some_and(|r| r.contains("did not approve")), "{answer}");

    let audit = audit_until(&t, |a| a.iter().filter(|e| e["action"] == "mcp.call").count() >= 2);
    let asked = audit
        .iter()
        .filter(|e| e["action"] == "approval.request" && e["resource"] == "mcp.call time:get_current_time")
        .count();
    assert_eq!(asked, 2, "both calls were asked about");
    let outcomes: Vec<&str> =
        audit.iter().filter(|e| e["action"] == "mcp.call").filter_map(|e| e["decision"].as_str()).collect();
    assert_eq!(outcomes, ["allow", "deny"]);
}

#[test]
fn servers_that_die_hang_or_print_garbage_leave_the_daemon_healthy() {
    let t = TestHome::new();
    let hang = scripted();
    write_servers(
        &t,
        &format!(
            r#"
[servers.dies]
command = "sh"
args = ["-c", "exit 3"]

[servers.mute]
command = "sleep"
args = ["600"]
init_timeout_secs = 1

[servers.slow]
command = "sleep"
args = ["600"]
init_timeout_secs = 600

[servers.older]
command = "python3"
args = [{hang:?}]
init_timeout_secs = 60
env = {{ MCP_FIXTURE_VERSION = "2024-11-05" }}

[servers.future]
command = "python3"
args = [{hang:?}]
init_timeout_secs = 60
env = {{ MCP_FIXTURE_VERSION = "2099-01-01" }}

[servers.hangs]
command = "python3"
args = [{hang:?}]
init_timeout_secs = 60
call_timeout_secs = 1

[servers.garbage]
command = "sh"
args = ["-c", "echo 'Starting up!'; echo '{{not json'; exec {time}"]
init_timeout_secs = 60

[servers."bad.name"]
command = "x"
"#,
            hang = hang.display().to_string(),
            time = time_server().display()
        ),
    );
    let mut daemon = t.daemon(&[]);
    // Boot waited for no server: the daemon is ready while one still initializes (it never
    // answers, and its init timeout is longer than any test).
    assert_eq!(server(&listing(&t), "slow").state, McpServerState::Starting, "boot waited for a server");
    let listed = settled(&t, &["dies", "mute", "hangs", "garbage", "older", "future"]);
    let state = |name: &str| server(&listed, name).state;
    let error = |name: &str| server(&listed, name).last_error.clone().unwrap_or_default();
    assert_eq!(state("mute"), McpServerState::Failed, "{listed:#?}");
    assert!(error("mute").contains("did not answer initialize within 1s"), "{}", error("mute"));
    assert!(matches!(state("dies"), McpServerState::Restarting | McpServerState::Failed), "{listed:#?}");
    assert!(error("dies").contains("exited") || error("dies").contains("did not start"), "{}", error("dies"));
    assert_eq!(state("garbage"), McpServerState::Ready, "garbage on stdout is skipped: {listed:#?}\n{}", t.log());
    assert_eq!(state("hangs"), McpServerState::Ready, "{listed:#?}");
    assert!(listed.refused.iter().any(|r| r.contains("bad.name")), "{listed:#?}");
    // Version negotiation: an older version both speak is used; one the client does not speak fails.
    assert_eq!(
        (state("older"), server(&listed, "older").protocol_version.as_deref()),
        (McpServerState::Ready, Some("2024-11-05"))
    );
    assert_eq!(state("future"), McpServerState::Failed);
    assert!(error("future").contains("speaks protocol \"2099-01-01\""), "{}", error("future"));
    // A server still initializing holds up nothing, and stops with the daemon.
    assert_eq!(state("slow"), McpServerState::Starting);

    // The call's own timeout ended it (the error says so), not the server or the client.
    let hung = call(&t, "hangs", "wait", "{}");
    assert_eq!(hung.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&hung.stderr).contains("no answer within 1s"),
        "{}",
        String::from_utf8_lossy(&hung.stderr)
    );
    let time = call(&t, "garbage", "get_current_time", r#"{"timezone": "UTC"}"#);
    assert_eq!(time.status.code(), Some(0), "{}", String::from_utf8_lossy(&time.stderr));

    // The daemon answers, and stops cleanly, taking every server with it.
    assert_eq!(t.cli(&["status"]).status.code(), Some(0));
    let pids = pids(&listing(&t));
    assert!(pids.len() >= 2, "{pids:?}");
    assert_eq!(t.cli(&["stop"]).status.code(), Some(0));
    assert!(daemon.wait_exit(HANG).is_some(), "the daemon stopped");
    assert!(wait_for(&mut || pids.iter().all(|&p| !alive(p)), HANG), "servers outlived the daemon");
}

/// The pids of the servers that have a process.
fn pids(listing: &McpListing) -> Vec<i32> {
    listing.servers.iter().filter_map(|s| s.pid.and_then(|p| i32::try_from(p).ok())).collect()
}

#[test]
fn no_server_survives_a_sigkilled_daemon() {
    let t = TestHome::new();
    write_servers(&t, &real_servers());
    let daemon = t.daemon(&[]);
    let listed = settled(&t, &["everything", "time"]);
    let pids = pids(&listed);
    assert_eq!(pids.len(), 2, "{listed:#?}");
    assert!(pids.iter().all(|&p| alive(p)));
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(wait_for(&mut || pids.iter().all(|&p| !alive(p)), HANG), "orphaned MCP servers: {pids:?}");
}

#[test]
fn paged_tool_lists_are_read_whole_and_a_changed_list_is_read_again() {
    let t = TestHome::new();
    let script = scripted().display().to_string();
    write_servers(&t, &format!("[servers.scripted]\ncommand = \"python3\"\nargs = [{script:?}]\n"));
    let _daemon = t.daemon(&[]);
    let names = |listed: &McpListing| tool_names(listed, "scripted");
    assert_eq!(names(&settled(&t, &["scripted"])), ["wait", "grow", "echo"], "both pages");
    let grow = call(&t, "scripted", "grow", "{}");
    assert_eq!(stdout(&grow).trim(), "grown");
    assert!(
        wait_for(&mut || names(&listing(&t)).contains(&"grown".to_owned()), HANG),
        "the list_changed notification was followed: {:#?}",
        listing(&t)
    );
}

#[test]
fn cancelling_a_turn_cancels_its_mcp_call_at_the_server() {
    let t = TestHome::new();
    let received = t.home.with_extension("mcp-received");
    let script = scripted().display().to_string();
    write_servers(
        &t,
        &format!(
            "[servers.scripted]\ncommand = \"python3\"\nargs = [{script:?}]\nenv = {{ MCP_FIXTURE_LOG = {:?} }}\n",
            received.display().to_string()
        ),
    );
    let model = Server::start(vec![Script::ToolCall { name: "scripted__wait", arguments: json!({}) }]);
    let _daemon = t.daemon_with(&[], &[("ASTRID_HTTP_ALLOW_PRIVATE", "1")]);
    let base = format!("base_url={}", model.base_url());
    install_with(&t, "llm-openai", &["--env", &base, "--env", "model=m"]);
    install_with(&t, "orchestrator", &["--env", "provider=openai"]);
    assert_eq!(server(&settled(&t, &["scripted"]), "scripted").state, McpServerState::Ready);

    let child = t
        .command("astrid")
        .args(["run", "wait for it", "--yes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("astrid run");
    let log = || std::fs::read_to_string(&received).unwrap_or_default();
    assert!(wait_for(&mut || log().contains("tools/call"), HANG), "the call reached the server\n{}", t.log());
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    assert_eq!(child.wait_with_output().expect("wait").status.code(), Some(130));
    assert!(
        wait_for(&mut || log().contains("notifications/cancelled"), HANG),
        "the server was told: {}\n{}",
        log(),
        t.log()
    );
    let cancel = log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|m| m["method"] == "notifications/cancelled");
    assert_eq!(cancel.expect("cancel")["params"]["reason"], "cancelled");
}

#[test]
fn a_capsule_declares_servers_that_run_only_within_its_grant() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let source = t.home.with_extension("clock-src");
    std::fs::create_dir_all(&source).expect("source");
    std::fs::copy(scripted(), source.join("server.py")).expect("fixture");
    let manifest = r#"
[package]
name = "clockcap"
version = "0.1.0"

[capabilities]
host_process = ["python3"]

[[mcp_server]]
id = "clock"
type = "stdio"
command = "python3"
args = ["server.py"]

[[mcp_server]]
id = "shell"
type = "stdio"
command = "sh"
args = ["-c", "echo hi"]

[[mcp_server]]
id = "escape"
type = "stdio"
command = "../../outside"
"#;
    std::fs::write(source.join("Capsule.toml"), manifest).expect("manifest");
    let installed = t.cli(&["capsule", "install", source.to_str().expect("utf8"), "--yes"]);
    assert_eq!(installed.status.code(), Some(0), "{}", String::from_utf8_lossy(&installed.stderr));
    assert!(
        wait_for(&mut || listing(&t).servers.iter().any(|s| s.name == "clock"), HANG),
        "the capsule's server was started: {:#?}\n{}",
        listing(&t),
        t.log()
    );
    let listed = settled(&t, &["clock"]);
    assert_eq!(server(&listed, "clock").state, McpServerState::Ready, "{listed:#?}\n{}", t.log());
    assert_eq!(server(&listed, "clock").capsule.as_deref(), Some("clockcap"));
    let refused = listed.refused.join("\n");
    assert!(refused.contains("\"shell\"") && refused.contains("host_process"), "{refused}");
    assert!(refused.contains("\"escape\""), "{refused}");
    // The grant check was audited: allowed for python3, denied for sh.
    let audit = audit_until(&t, |a| a.iter().any(|e| e["resource"] == "host_process sh"));
    assert!(audit.iter().any(|e| e["resource"] == "host_process python3" && e["decision"] == "allow"));
    assert!(audit.iter().any(|e| e["resource"] == "host_process sh" && e["decision"] == "deny"));

    // Removing the capsule stops its server.
    let pid = server(&listed, "clock").pid.and_then(|p| i32::try_from(p).ok()).expect("pid");
    assert_eq!(t.cli(&["capsule", "remove", "clockcap"]).status.code(), Some(0));
    assert!(wait_for(&mut || !alive(pid), HANG), "the server outlived its capsule");
    assert!(!listing(&t).servers.iter().any(|s| s.name == "clock"));
}

#[test]
fn a_server_that_crashes_is_restarted_and_its_tools_come_back() {
    let t = TestHome::new();
    let script = scripted().display().to_string();
    write_servers(&t, &format!("[servers.scripted]\ncommand = \"python3\"\nargs = [{script:?}]\n"));
    let _daemon = t.daemon(&[]);
    let first = settled(&t, &["scripted"]);
    assert_eq!(server(&first, "scripted").state, McpServerState::Ready);
    let pid = server(&first, "scripted").pid.and_then(|p| i32::try_from(p).ok()).expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let again = |listed: &McpListing| {
        let s = server(listed, "scripted");
        s.state == McpServerState::Ready && s.pid.and_then(|p| i32::try_from(p).ok()) != Some(pid) && s.starts == 2
    };
    assert!(wait_for(&mut || again(&listing(&t)), HANG), "{:#?}\n{}", listing(&t), t.log());
    let audit = audit_until(&t, |a| {
        a.iter().any(|e| e["action"] == "mcp.server" && e["rule"].as_str().is_some_and(|r| r.contains("SIGKILL")))
    });
    assert!(
        audit.iter().any(|e| e["action"] == "mcp.server" && e["rule"].as_str().is_some_and(|r| r.contains("SIGKILL"))),
        "the crash is on the record"
    );
}

/// tests/fixtures/mcp_modern.py, run by the python of the venv scripts/test-deps.sh made
/// (it holds the official Python SDK, which mcp-server-time depends on).
fn modern_server() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_modern.py");
    format!(
        "[servers.modern]\ncommand = {:?}\nargs = [{:?}]\n",
        installed("venv/bin/python").display().to_string(),
        script.display().to_string()
    )
}

#[test]
fn a_2026_07_28_server_is_spoken_to_without_a_handshake_and_its_tool_changes_followed() {
    let t = TestHome::new();
    write_servers(&t, &modern_server());
    // rmcp logs through `tracing`; its records must reach the daemon log when asked for.
    let _daemon = t.daemon_with(&[], &[("ASTRID_LOG", "info,rmcp=info")]);
    let listed = settled(&t, &["modern"]);
    let modern = server(&listed, "modern");
    assert_eq!(
        (modern.state, modern.protocol_version.as_deref()),
        (McpServerState::Ready, Some("2026-07-28")),
        "{listed:#?}\n{}",
        t.log()
    );
    assert_eq!(tool_names(&listed, "modern"), ["grow"]);
    let grow = call(&t, "modern", "grow", "{}");
    assert_eq!(
        (grow.status.code(), stdout(&grow).trim()),
        (Some(0), "grown"),
        "{}",
        String::from_utf8_lossy(&grow.stderr)
    );
    // The change comes only on the subscriptions/listen stream the client opened.
    assert!(
        wait_for(&mut || tool_names(&listing(&t), "modern").contains(&"grown".to_owned()), HANG),
        "the tool-list change was followed: {:#?}\n{}",
        listing(&t),
        t.log()
    );
    let grown = call(&t, "modern", "grown", "{}");
    assert_eq!(stdout(&grown).trim(), "new");
    assert!(t.logged("rmcp::service] Service initialized as client"), "rmcp's records reach the log\n{}", t.log());
}

#[test]
fn a_server_silent_on_the_discovery_probe_starts_after_it_times_out() {
    let t = TestHome::new();
    let received = t.home.with_extension("mcp-received");
    let script = scripted().display().to_string();
    write_servers(
        &t,
        &format!(
            "[servers.silent]\ncommand = \"python3\"\nargs = [{script:?}]\nenv = {{ MCP_FIXTURE_SILENT = \"1\", MCP_FIXTURE_LOG = {:?} }}\n",
            received.display().to_string()
        ),
    );
    let _daemon = t.daemon(&[]);
    let listed = settled(&t, &["silent"]);
    let silent = server(&listed, "silent");
    assert_eq!(
        (silent.state, silent.protocol_version.as_deref()),
        (McpServerState::Ready, Some("2025-11-25")),
        "{listed:#?}\n{}",
        t.log()
    );
    let methods: Vec<String> = std::fs::read_to_string(&received)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|m| m["method"].as_str().map(str::to_owned))
        .collect();
    let first = ["server/discover", "initialize", "notifications/initialized"].map(str::to_owned);
    assert_eq!(methods.get(..3), Some(&first[..]), "the probe went unanswered, then the handshake: {methods:?}");
    assert_eq!(stdout(&call(&t, "silent", "echo", r#"{"text": "late but here"}"#)).trim(), "late but here");
    // By default rmcp's per-message records stay out of the daemon log.
    assert!(!t.log().contains("rmcp::service] Service initialized"), "{}", t.log());
}
