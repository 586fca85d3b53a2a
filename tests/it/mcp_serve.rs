//! `astrid mcp serve` driven by MCP clients nobody here wrote: the official Python SDK
//! (`ClientSession` over `stdio_client`, tests/fixtures/mcp_client.py) and the MCP Inspector's
//! CLI, both installed by scripts/test-deps.sh. Every call goes through the real daemon, the
//! tool capsules in WebAssembly and a real MCP server.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use astrid::types::management::{McpListing, McpServerState};
use serde_json::{Value, json};

use crate::capsules::{audit_until, install};
use crate::command_sandbox::none_left;
use crate::harness::{Daemon, HANG, Terminal, TestHome, alive, wait_for};

fn test_dep(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-deps").join(relative);
    assert!(path.exists(), "{} is missing: run scripts/test-deps.sh", path.display());
    path
}

/// The Python SDK client, running `steps` against `astrid mcp serve ARGS`.
struct PythonClient {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl PythonClient {
    fn start(t: &TestHome, serve_args: &[&str], env: &[(&str, &str)], decision: Option<&str>, steps: Value) -> Self {
        Self::start_in_mode(t, "legacy", serve_args, env, decision, steps)
    }

    /// [`PythonClient::start`] connecting in `mode`: "legacy" (`initialize`), "auto" (the
    /// SDK's `Client`: `server/discover` first, the handshake-less 2026-07-28 protocol).
    fn start_in_mode(
        t: &TestHome,
        mode: &str,
        serve_args: &[&str],
        env: &[(&str, &str)],
        decision: Option<&str>,
        steps: Value,
    ) -> Self {
        let mut server_env = json!({"ASTRID_HOME": t.home, "ASTRID_DEFAULT_CAPSULES": "0", "ASTRID_LOG": "info"});
        for (key, value) in env {
            server_env[*key] = json!(value);
        }
        let mut args = vec!["mcp", "serve"];
        args.extend_from_slice(serve_args);
        let spec = json!({
            "server": {"command": t.bin.join("astrid"), "args": args, "env": server_env, "cwd": t.workspace},
            "client": "pytest-client", "version": "9.9",
            "decision": decision,
            "mode": mode,
            "steps": steps,
        });
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_client.py");
        let mut child = Command::new(test_dep("venv/bin/python"))
            .arg(script)
            .arg(spec.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python");
        let stdout = child.stdout.take().expect("stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    let _ = send.send(value);
                }
            }
        });
        Self { child, lines }
    }

    /// The next line the client printed.
    fn next(&self, t: &TestHome) -> Value {
        self.lines.recv_timeout(HANG).unwrap_or_else(|_| panic!("hung: the client said nothing more\n{}", t.log()))
    }

    fn finish(mut self) -> Option<i32> {
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "hung: the client never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PythonClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn diff(t: &TestHome) -> String {
    String::from_utf8_lossy(&t.cli(&["workspace", "diff"]).stdout).into_owned()
}

fn names(listed: &Value) -> Vec<String> {
    listed["tools"].as_array().expect("tools").iter().map(|t| t["name"].as_str().expect("name").to_owned()).collect()
}

/// A home with a daemon running the file tools, its workspace holding `notes.txt` with
/// `notes` when given.
fn with_file_tools(notes: Option<&str>) -> (TestHome, Daemon) {
    let t = TestHome::new();
    if let Some(notes) = notes {
        std::fs::write(t.workspace.join("notes.txt"), notes).expect("write");
    }
    let daemon = t.daemon(&[]);
    install(&t, "tools-fs");
    (t, daemon)
}

/// List the tools, read notes.txt, write todo.txt.
fn list_read_write() -> Value {
    json!([
        {"list": true},
        {"call": "read_file", "arguments": {"path": "notes.txt"}},
        {"call": "write_file", "arguments": {"path": "todo.txt", "content": "call mum\n"}},
    ])
}

#[test]
fn the_python_sdk_lists_reads_and_writes_approved_through_its_elicitation() {
    let (t, _daemon) = with_file_tools(Some("buy milk\n"));
    let steps = list_read_write();
    let client = PythonClient::start(&t, &[], &[], Some("once"), steps);
    let hello = client.next(&t);
    assert_eq!(hello["initialized"], "astrid", "{hello}");

    let listed = client.next(&t);
    let tools = names(&listed);
    for name in ["read_file", "list_dir", "search", "write_file", "edit_file"] {
        assert!(tools.iter().any(|t| t == name), "{name} not offered: {listed}");
    }
    let read = listed["tools"].as_array().and_then(|t| t.iter().find(|t| t["name"] == "read_file")).expect("read_file");
    assert_eq!(read["schema"]["required"], json!(["path"]), "the schema is the capsule's: {read}");

    let read = client.next(&t);
    assert_eq!((read["content"].as_str(), read["is_error"].as_bool()), (Some("buy milk\n"), Some(false)), "{read}");
    assert_eq!(read["elicited"], json!([]), "reading asks nobody");

    let written = client.next(&t);
    assert_eq!(written["is_error"], false, "{written}\n{}", t.log());
    let asked = written["elicited"][0].as_str().unwrap_or_default();
    assert!(
        asked.contains("write_file on todo.txt") && asked.contains("+call mum"),
        "the person saw the diff: {asked}"
    );
    assert!(!t.workspace.join("todo.txt").exists(), "the workspace waits for a review");
    assert!(diff(&t).contains("+call mum"), "{}", diff(&t));
    assert_eq!(client.finish(), Some(0));

    // On the record as the client, by its name and version from initialize.
    let audit = audit_until(&t, |a| a.iter().filter(|e| e["action"] == "tool.call").count() >= 2);
    let calls: Vec<&Value> = audit.iter().filter(|e| e["action"] == "tool.call").collect();
    assert_eq!(calls.len(), 2, "{audit:#?}");
    for call in calls {
        let actor = call["actor"]["id"].as_str().unwrap_or_default();
        assert!(actor.contains("pytest-client 9.9 via astrid mcp serve"), "{call}");
    }
    let decision = audit.iter().find(|e| e["action"] == "approval.decision").expect("the approval is on the record");
    assert_eq!((decision["decision"].as_str(), decision["rule"].as_str()), (Some("allow"), Some("approve")));
}

#[test]
fn a_client_of_the_handshake_less_protocol_is_served_and_on_the_record_by_name() {
    let (t, _daemon) = with_file_tools(Some("buy milk\n"));
    let steps = list_read_write();
    // Elicitation declared, but this protocol lets no server ask: nobody is asked here.
    let client = PythonClient::start_in_mode(&t, "auto", &[], &[], Some("always"), steps);
    let hello = client.next(&t);
    assert_eq!(hello["protocol"], "2026-07-28", "{hello}");
    assert!(names(&client.next(&t)).iter().any(|n| n == "write_file"));
    let read = client.next(&t);
    assert_eq!((read["content"].as_str(), read["is_error"].as_bool()), (Some("buy milk\n"), Some(false)), "{read}");
    let denied = client.next(&t);
    assert_eq!((denied["is_error"].as_bool(), denied["elicited"].as_array().map(Vec::len)), (Some(true), Some(0)));
    assert_eq!(client.finish(), Some(0));
    assert!(diff(&t).trim().is_empty(), "nothing was written: {}", diff(&t));
    let audit = audit_until(&t, |a| a.iter().filter(|e| e["action"] == "tool.call").count() >= 2);
    for call in audit.iter().filter(|e| e["action"] == "tool.call") {
        let actor = call["actor"]["id"].as_str().unwrap_or_default();
        assert!(actor.contains("pytest-client 9.9 via astrid mcp serve"), "{call}");
    }
}

#[test]
fn without_anyone_to_approve_a_write_is_denied_at_once_and_the_audit_says_why() {
    let (t, _daemon) = with_file_tools(None);
    let steps = json!([{"call": "write_file", "arguments": {"path": "todo.txt", "content": "call mum\n"}}]);
    let client = PythonClient::start(&t, &[], &[], None, steps);
    client.next(&t);
    let denied = client.next(&t);
    assert_eq!(denied["is_error"], true, "{denied}");
    let content = denied["content"].as_str().unwrap_or_default();
    assert!(content.contains("nothing was written") && content.contains("astrid chat"), "how to allow it: {content}");
    assert_eq!(client.finish(), Some(0));
    assert!(diff(&t).trim().is_empty(), "nothing was written: {}", diff(&t));
    let audit = audit_until(&t, |a| a.iter().any(|e| e["action"] == "approval.decision"));
    let decision = audit.iter().find(|e| e["action"] == "approval.decision").expect("decision");
    assert_eq!(decision["decision"], "deny", "{decision}");
    assert!(decision["rule"].as_str().is_some_and(|r| r.contains("nobody could be asked")), "{decision}");
}

#[test]
fn a_chat_idle_in_another_terminal_answers_for_a_client_that_cannot_ask() {
    let (t, _daemon) = with_file_tools(None);
    let chat = Terminal::start(&t, &format!("'{}' chat", t.bin.join("astrid").display()));
    chat.wait_for("you>", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    let steps = json!([
        {"call": "write_file", "arguments": {"path": "todo.txt", "content": "call mum\n"}},
        {"call": "write_file", "arguments": {"path": "later.txt", "content": "and dad\n"}},
    ]);
    // No elicitation: the question goes to the chat, waiting at its prompt.
    let client = PythonClient::start(&t, &[], &[], None, steps);
    client.next(&t);
    let screen = chat.wait_for("write_file on todo.txt", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    assert!(screen.contains("pytest-client 9.9 via astrid mcp serve") && screen.contains("+call mum"), "{screen}");
    chat.keys(&["maybe", "Enter"]);
    chat.wait_for("[y] once", 2).expect("asked again");
    chat.keys(&["s", "Enter"]);
    let written = client.next(&t);
    assert_eq!(written["is_error"], false, "{written}\n{}", t.log());
    chat.wait_for("allowed for this session", 1).expect("the answer confirmed");
    // "This session" is the client's session: its next write in the directory asks nobody.
    let again = client.next(&t);
    assert_eq!(again["is_error"], false, "{again}\n{}", t.log());
    assert_eq!(client.finish(), Some(0));
    assert_eq!(chat.screen().matches("write_file on").count(), 2, "asked once: {}", chat.screen());
    let pending = diff(&t);
    assert!(pending.contains("+call mum") && pending.contains("+and dad"), "{pending}");
    let audit = audit_until(&t, |a| a.iter().any(|e| e["action"] == "approval.decision"));
    let decision = audit.iter().find(|e| e["action"] == "approval.decision").expect("decision");
    assert_eq!((decision["decision"].as_str(), decision["rule"].as_str()), (Some("allow"), Some("approve_session")));
    // The chat is still a chat.
    chat.keys(&["/quit", "Enter"]);
    chat.wait_for("EXIT=0", 1).expect("left");
}

#[test]
fn an_mcp_servers_tool_is_called_through_astrid_with_its_escaped_name() {
    let t = TestHome::new();
    let everything = test_dep("npm/node_modules/.bin/mcp-server-everything");
    std::fs::create_dir_all(t.home.join("etc")).expect("etc");
    std::fs::write(t.home.join("etc/servers.toml"), format!("[servers.everything]\ncommand = {:?}\n", everything))
        .expect("servers.toml");
    let _daemon = t.daemon(&[]);
    let ready = || {
        let output = t.cli(&["mcp", "list", "--json"]);
        let listing: McpListing = serde_json::from_slice(&output.stdout).expect("an McpListing");
        listing.servers.iter().any(|s| s.name == "everything" && s.state == McpServerState::Ready)
    };
    assert!(t.wait_for(ready, HANG), "everything never became ready\n{}", t.log());
    let steps = json!([{"list": true}, {"call": "everything__echo", "arguments": {"message": "hi from python"}}]);
    let client = PythonClient::start(&t, &[], &[], Some("once"), steps);
    client.next(&t);
    let listed = client.next(&t);
    assert!(names(&listed).iter().any(|n| n == "everything__echo"), "{listed}");
    let echoed = client.next(&t);
    assert_eq!(echoed["content"], "Echo: hi from python", "{echoed}\n{}", t.log());
    assert!(echoed["elicited"][0].as_str().is_some_and(|m| m.contains("everything:echo")), "asked first: {echoed}");
    assert_eq!(client.finish(), Some(0));
    let audit = audit_until(&t, |a| a.iter().any(|e| e["action"] == "mcp.call"));
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "mcp.call" && e["resource"] == "everything:echo" && e["decision"] == "allow")
    );
}

#[test]
fn a_cancelled_call_kills_its_command_after_its_output_came_as_progress() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    install(&t, "tools-shell");
    let marker = "sleep 4343";
    let steps =
        json!([{"cancel_after_progress": "run_command", "arguments": {"command": format!("echo started; {marker}")}}]);
    let client = PythonClient::start(&t, &[], &[], Some("once"), steps);
    client.next(&t);
    let cancelled = client.next(&t);
    assert_eq!(cancelled["cancelled"], true, "{cancelled}");
    assert!(cancelled["progress"][0].as_str().is_some_and(|p| p.contains("started")), "{cancelled}");
    assert_eq!(client.finish(), Some(0));
    let left = none_left(marker);
    assert!(left.is_empty(), "the command outlived the cancel: {left:?}\n{}", t.log());
    let audit = audit_until(&t, |a| a.iter().any(|e| e["action"] == "tool.call"));
    let call = audit.iter().find(|e| e["action"] == "tool.call").expect("tool.call");
    assert_eq!(call["rule"], "cancelled by the caller", "{call}");
}

#[test]
fn two_calls_of_the_same_command_at_once_each_get_their_own_output_as_progress() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    install(&t, "tools-shell");
    // One command line, two outputs: random bytes, then time for the progress to arrive
    // before the result.
    let call = json!({"call": "run_command", "arguments": {"command": "od -An -tx8 -N8 /dev/urandom; sleep 1"}});
    let client = PythonClient::start(&t, &[], &[], Some("once"), json!([{"concurrent": [call, call]}]));
    client.next(&t);
    let done = client.next(&t);
    let results = done["results"].as_array().expect("results");
    let output = |i: usize| results[i]["content"].as_str().unwrap_or_default().to_owned();
    let progress = |i: usize| -> Vec<String> {
        results[i]["progress"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    assert_eq!(
        (results[0]["is_error"].as_bool(), results[1]["is_error"].as_bool()),
        (Some(false), Some(false)),
        "{done}"
    );
    assert_ne!(output(0), output(1), "two runs, two outputs: {done}");
    for (mine, theirs) in [(0, 1), (1, 0)] {
        let pieces = progress(mine);
        assert!(!pieces.is_empty(), "call {mine} got no progress: {done}");
        for piece in pieces {
            let piece = piece.trim();
            assert!(output(mine).contains(piece) && !output(theirs).contains(piece), "{piece:?} in {done}");
        }
    }
    assert_eq!(client.finish(), Some(0));
}

#[test]
fn the_client_hears_when_the_tools_change_and_read_only_offers_only_reading() {
    let (t, _daemon) = with_file_tools(None);
    let client = PythonClient::start(&t, &[], &[], None, json!([{"list": true}, {"wait_for_list_changed": true}]));
    client.next(&t);
    assert!(!names(&client.next(&t)).iter().any(|n| n == "run_command"));
    assert_eq!(client.next(&t)["waiting"], true);
    install(&t, "tools-shell");
    let changed = client.next(&t);
    assert!(changed["changed"].as_array().is_some_and(|n| n.iter().any(|n| n == "run_command")), "{changed}");
    assert_eq!(client.finish(), Some(0));

    let client = PythonClient::start(&t, &["--read-only"], &[], None, json!([{"list": true}]));
    client.next(&t);
    let mut offered = names(&client.next(&t));
    offered.sort();
    assert_eq!(offered, ["list_dir", "read_file", "search"]);
    assert_eq!(client.finish(), Some(0));
}

#[test]
fn tools_offers_a_subset_and_workspace_names_the_directory_worked_in() {
    let t = TestHome::new();
    let elsewhere = t.home.with_extension("project");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("notes.txt"), "from the project\n").expect("write");
    std::fs::write(t.workspace.join("notes.txt"), "from the cwd\n").expect("write");
    let _daemon = t.daemon(&[]);
    install(&t, "tools-fs");
    let project = elsewhere.display().to_string();
    let steps = json!([
        {"list": true},
        {"call": "read_file", "arguments": {"path": "notes.txt"}},
        {"call": "write_file", "arguments": {"path": "notes.txt", "content": "changed\n"}},
    ]);
    let args = ["--workspace", project.as_str(), "--tools", "read_file, nonesuch"];
    let client = PythonClient::start(&t, &args, &[], Some("always"), steps);
    client.next(&t);
    assert_eq!(names(&client.next(&t)), ["read_file"]);
    let read = client.next(&t);
    assert_eq!(read["content"], "from the project\n", "{read}");
    let refused = client.next(&t);
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("no tool called write_file")), "{refused}");
    assert_eq!(client.finish(), Some(0));
    assert_eq!(std::fs::read_to_string(elsewhere.join("notes.txt")).expect("read"), "from the project\n");
}

#[test]
fn the_server_reconnects_when_the_daemon_goes_away_under_it() {
    let (t, mut daemon) = with_file_tools(Some("still here\n"));
    let go_on = t.home.with_extension("go-on");
    let steps = json!([
        {"call": "read_file", "arguments": {"path": "notes.txt"}},
        {"wait_for_file": go_on},
        {"call": "read_file", "arguments": {"path": "notes.txt"}},
    ]);
    // The daemon it starts itself idles out soon after the test.
    let client = PythonClient::start(&t, &[], &[("ASTRID_IDLE_TIMEOUT_SECS", "2")], None, steps);
    client.next(&t);
    assert_eq!(client.next(&t)["content"], "still here\n");
    assert_eq!(client.next(&t)["waiting"], true);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait_exit(HANG).is_some(), "the daemon did not stop");
    std::fs::write(&go_on, "").expect("go on");
    // No daemon came back: the server starts one and the session goes on.
    let again = client.next(&t);
    assert_eq!(
        (again["content"].as_str(), again["is_error"].as_bool()),
        (Some("still here\n"), Some(false)),
        "{again}"
    );
    assert_eq!(client.finish(), Some(0));
}

/// The pids whose parent is `parent`.
fn children(parent: u32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid …: the comm may hold spaces, so read after its last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_killed_client_leaves_no_server_behind_and_the_ephemeral_daemon_idles_out() {
    let t = TestHome::new();
    std::fs::create_dir_all(&t.home).expect("home");
    let env = [("ASTRID_IDLE_TIMEOUT_SECS", "2")];
    let client = PythonClient::start(&t, &[], &env, None, json!([{"list": true}, {"hold": true}]));
    client.next(&t);
    client.next(&t);
    assert_eq!(client.next(&t)["holding"], true);
    let serve = children(client.child.id());
    assert_eq!(serve.len(), 1, "one astrid mcp serve under the client: {serve:?}");
    let daemon_pid: i32 = std::fs::read_to_string(t.run_dir().join("system.lock"))
        .ok()
        .and_then(|pid| pid.trim().parse().ok())
        .expect("the server started an ephemeral daemon");
    assert!(alive(daemon_pid));
    // While the session lasts, the ephemeral daemon stays (the idle timeout is 2 s).
    std::thread::sleep(Duration::from_secs(3));
    assert!(alive(daemon_pid), "the daemon idled out under a live session");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(client.child.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill the client");
    assert!(wait_for(&mut || !alive(serve[0]), HANG), "astrid mcp serve outlived its client");
    assert!(wait_for(&mut || !alive(daemon_pid), HANG), "the ephemeral daemon never idled out\n{}", t.log());
}

#[test]
fn stdout_carries_only_the_protocol_even_when_it_starts_the_daemon_and_logs_everything() {
    let t = TestHome::new();
    std::fs::create_dir_all(&t.home).expect("home");
    std::fs::write(t.workspace.join("notes.txt"), "quiet\n").expect("write");
    let mut serve = Command::new(t.bin.join("astrid"))
        .args(["mcp", "serve"])
        .env("ASTRID_HOME", &t.home)
        .env("ASTRID_LOG", "trace")
        .env("ASTRID_IDLE_TIMEOUT_SECS", "2")
        .current_dir(&t.workspace)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("astrid mcp serve");
    let mut stdin = serve.stdin.take().expect("stdin");
    let stdout = serve.stdout.take().expect("stdout");
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    let mut answer_to = |id: u64, message: Value| -> Vec<String> {
        use std::io::Write;
        writeln!(stdin, "{message}").expect("write");
        let mut seen = Vec::new();
        loop {
            let line = lines.recv_timeout(HANG).unwrap_or_else(|_| panic!("no answer to {id}: {seen:?}"));
            let answered = serde_json::from_str::<Value>(&line).is_ok_and(|m| m["id"] == id);
            seen.push(line);
            if answered {
                return seen;
            }
        }
    };
    let init =
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}});
    let mut stdout_lines = answer_to(1, json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}));
    stdout_lines.extend(answer_to(2, json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})));
    let call = json!({"name": "read_file", "arguments": {"path": "notes.txt"}});
    stdout_lines.extend(answer_to(3, json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": call})));
    for line in &stdout_lines {
        let message: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}) on stdout: {line}"));
        assert_eq!(message["jsonrpc"], "2.0", "{line}");
    }
    assert!(stdout_lines.last().is_some_and(|l| l.contains("quiet")), "{stdout_lines:?}");
    drop(stdin);
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = serve.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "astrid mcp serve outlived its stdin");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(stderr.contains("TRACE") || stderr.contains("DEBUG"), "the logs went to stderr: {stderr}");
}

#[test]
fn the_mcp_inspector_cli_lists_and_calls_astrids_tools() {
    let (t, _daemon) = with_file_tools(Some("inspected\n"));
    let inspector = |args: &[&str]| {
        let output = Command::new(test_dep("inspector/node_modules/.bin/mcp-inspector"))
            .args(["--cli", "-e", &format!("ASTRID_HOME={}", t.home.display()), "-e", "ASTRID_DEFAULT_CAPSULES=0"])
            .arg(t.bin.join("astrid"))
            .args(["mcp", "serve"])
            .args(args)
            .current_dir(&t.workspace)
            .stdin(Stdio::null())
            .output()
            .expect("mcp-inspector");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_str::<Value>(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    };
    let listed = inspector(&["--method", "tools/list"]);
    assert!(names(&listed).iter().any(|n| n == "read_file"), "{listed}");
    let read = inspector(&["--method", "tools/call", "--tool-name", "read_file", "--tool-arg", "path=notes.txt"]);
    assert_eq!(read["content"][0]["text"], "inspected\n", "{read}");
    assert_ne!(read["isError"], true, "{read}");
}
