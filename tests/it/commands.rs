//! `run_command` end to end: the real daemon with its command sandbox, the tools-shell capsule
//! in WebAssembly, the orchestrator and llm-openai against a scripted OpenAI-compatible
//! server, driven by `astrid run`. What a command sees, where its writes go, what a person is
//! asked, what the audit trail keeps, and that nothing a command starts outlives it.

use std::io::Read;
use std::net::TcpListener;

use serde_json::{Value, json};

use crate::agent::agent;
use crate::capsules::{audit_until, install};
use crate::command_sandbox::none_left;
use crate::harness::{Daemon, HANG, TestHome, wait_for};
use crate::openai_server::{Script, Server};

/// A daemon whose agent has the file tools and `run_command`, and whose model calls a tool
/// as each prompt says (see [`Script::ToolEcho`]).
fn shell_agent(t: &TestHome, server: &Server, env: &[(&str, &str)]) -> Daemon {
    let daemon = agent(t, server, &[], env);
    install(t, "tools-shell");
    daemon
}

/// `astrid run PROMPT --format json` with `run_command ARGUMENTS` as the prompt: its exit
/// code and its JSON answer.
fn run_command(t: &TestHome, arguments: &Value, yes: bool) -> (Option<i32>, Value) {
    let prompt = format!("run_command {arguments}");
    let mut args = vec!["run", prompt.as_str(), "--format", "json"];
    if yes {
        args.push("--yes");
    }
    let output = t.cli(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("not a JSON answer ({e}): {stdout}\n{}\n{}", String::from_utf8_lossy(&output.stderr), t.log())
    });
    (output.status.code(), answer)
}

/// The tool's result, as the model got it.
fn result(answer: &Value) -> String {
    let call = &answer["tool_calls"][0];
    assert_eq!(call["name"], "run_command", "{answer:#}");
    call["result"].as_str().unwrap_or_else(|| panic!("no result: {answer:#}")).to_owned()
}

fn diff(t: &TestHome) -> String {
    String::from_utf8_lossy(&t.cli(&["workspace", "diff"]).stdout).into_owned()
}

/// The `process.exit` entry of the command `line`, once it is written.
fn exit_entry(t: &TestHome, line: &str) -> Value {
    let exited = |e: &&Value| e["action"] == "process.exit" && e["resource"] == line;
    let audit = audit_until(t, |a| a.iter().any(|e| exited(&e)));
    audit.iter().find(exited).cloned().unwrap_or_else(|| panic!("no process.exit for {line:?}: {audit:#?}"))
}

#[test]
fn the_agent_runs_a_command_and_answers_with_its_output() {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("notes.txt"), "buy milk\n").expect("write");
    let server = Server::start(vec![Script::ToolEcho { id: None }]);
    let _daemon = shell_agent(&t, &server, &[]);

    let (code, answer) = run_command(&t, &json!({"command": "ls"}), true);
    assert_eq!(code, Some(0), "{answer:#}\n{}", t.log());
    let output = result(&answer);
    assert!(output.starts_with("exit status 0"), "{output}");
    assert!(output.contains("notes.txt"), "{output}");
    assert_eq!(answer["response"], format!("tool said: {output}"), "the model got the output");
    assert_eq!(answer["tool_calls"][0]["is_error"], false);

    // The model was offered the tool, with its schema.
    let offered = &server.received()[0].body["tools"];
    let tool = offered
        .as_array()
        .and_then(|tools| tools.iter().find(|t| t["function"]["name"] == "run_command"))
        .unwrap_or_else(|| panic!("run_command not offered: {offered:#}"));
    assert_eq!(tool["function"]["parameters"]["required"], json!(["command"]));

    // Audited: who allowed it and how, where it ran, how it ended.
    let exit = exit_entry(&t, "ls");
    let rule = exit["rule"].as_str().unwrap_or_default();
    assert!(rule.starts_with("exited 0 after ") && rule.contains("bytes of output; changed: none"), "{exit}");
    let audit = audit_until(&t, |a| a.iter().any(|e| e["action"] == "process.start"));
    let start = audit.iter().find(|e| e["action"] == "process.start").expect("process.start");
    assert_eq!((start["resource"].as_str(), start["decision"].as_str()), (Some("ls"), Some("allow")), "{start}");
    assert_eq!(start["actor"]["name"], "tools-shell", "{start}");
    let rule = start["rule"].as_str().unwrap_or_default();
    assert!(rule.contains("cwd the workspace root") && rule.contains("network none"), "{start}");
    let decision = audit
        .iter()
        .find(|e| e["action"] == "approval.decision")
        .unwrap_or_else(|| panic!("the approval is not on the record: {audit:#?}"));
    assert_eq!(decision["decision"], "allow", "{decision}");
    assert!(decision["resource"].as_str().is_some_and(|r| r.contains("ls")), "{decision}");
}

#[test]
fn a_command_works_on_the_agents_view_of_the_workspace_and_its_writes_wait_for_review() {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("old.txt"), "to be removed\n").expect("write");
    let server = Server::start(vec![Script::ToolEcho { id: None }]);
    let _daemon = shell_agent(&t, &server, &[]);

    // The agent writes a file (pending review); a command a moment later sees it.
    let written = t.cli(&["run", "write pending.txt: from the agent", "--yes"]);
    assert_eq!(written.status.code(), Some(0), "{}", String::from_utf8_lossy(&written.stderr));
    assert!(!t.workspace.join("pending.txt").exists());
    let (code, answer) = run_command(&t, &json!({"command": "cat pending.txt"}), true);
    assert_eq!(code, Some(0), "{answer:#}");
    assert!(result(&answer).contains("from the agent"), "{answer:#}");

    // A command's writes and deletions go to the same overlay, not to the workspace.
    let line = "echo made by a command > made.txt && rm old.txt && mkdir -p out && echo x > out/x.txt";
    let (code, answer) = run_command(&t, &json!({"command": line}), true);
    assert_eq!(code, Some(0), "{answer:#}\n{}", t.log());
    let output = result(&answer);
    assert!(output.contains("changed, pending review"), "the model is told: {output}");
    assert!(output.contains("made.txt (added)") && output.contains("old.txt (deleted)"), "{output}");
    assert!(!t.workspace.join("made.txt").exists(), "the workspace is untouched until a commit");
    assert!(t.workspace.join("old.txt").exists(), "a deletion waits for review too");
    let shown = diff(&t);
    assert!(shown.contains("+made by a command"), "{shown}");
    assert!(shown.contains("-to be removed") && shown.contains("/dev/null"), "the deletion: {shown}");
    assert!(shown.contains("out/x.txt") && shown.contains("+from the agent"), "{shown}");

    // The audit trail names what the command changed.
    let exit = exit_entry(&t, line);
    let rule = exit["rule"].as_str().unwrap_or_default();
    assert!(rule.contains("made.txt (Added)") && rule.contains("old.txt (Deleted)"), "{exit}");

    // A person commits: now the workspace has it all.
    let committed = t.cli(&["workspace", "commit"]);
    assert_eq!(committed.status.code(), Some(0), "{}", String::from_utf8_lossy(&committed.stderr));
    assert_eq!(std::fs::read_to_string(t.workspace.join("made.txt")).expect("committed"), "made by a command\n");
    assert_eq!(std::fs::read_to_string(t.workspace.join("out/x.txt")).expect("committed"), "x\n");
    assert_eq!(std::fs::read_to_string(t.workspace.join("pending.txt")).expect("committed"), "from the agent");
    assert!(!t.workspace.join("old.txt").exists(), "the deletion is committed");
    assert!(diff(&t).trim().is_empty());
}

#[test]
fn without_approval_a_command_does_not_run_and_the_model_is_told() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::ToolEcho { id: None }]);
    let _daemon = shell_agent(&t, &server, &[]);

    let (code, answer) = run_command(&t, &json!({"command": "touch ran.txt"}), false);
    // Answered, but what it asked for was denied: `astrid run`'s own exit code.
    assert_eq!(code, Some(4), "{answer:#}\n{}", t.log());
    let output = result(&answer);
    assert!(output.contains("did not allow `touch ran.txt`") && output.contains("nothing ran"), "{output}");
    assert_eq!(answer["tool_calls"][0]["is_error"], true);
    assert!(answer["response"].as_str().is_some_and(|r| r.contains("nothing ran")), "the model was told: {answer:#}");
    assert!(diff(&t).trim().is_empty(), "nothing ran, nothing changed");

    let audit = audit_until(&t, |a| a.iter().any(|e| e["action"] == "approval.decision"));
    let decision = audit.iter().find(|e| e["action"] == "approval.decision").expect("decision");
    assert_eq!(decision["decision"], "deny", "{decision}");
    assert!(!audit.iter().any(|e| e["action"] == "process.start"), "never started: {audit:#?}");
}

#[test]
fn escapes_from_a_command_are_refused_and_each_is_on_the_record() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::ToolEcho { id: None }]);
    // A small process limit, so the fork bomb below meets it quickly on a busy machine.
    let _daemon = shell_agent(&t, &server, &[("ASTRID_SANDBOX_PROCESSES", "64")]);
    let key = t.home.join("keys/runtime.key");
    let token = t.home.join("run/system.token");
    assert!(key.exists() && token.exists(), "the secrets are there on the host");
    let token_text = std::fs::read_to_string(&token).expect("token");
    let outside = t.home.parent().expect("parent").join("outside.txt");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();

    let refused = |line: &str| {
        let (code, answer) = run_command(&t, &json!({"command": line}), true);
        assert_eq!(code, Some(0), "{line}: {answer:#}\n{}", t.log());
        let output = result(&answer);
        assert!(!output.starts_with("exit status 0"), "{line} succeeded: {output}");
        let exit = exit_entry(&t, line);
        assert!(exit["rule"].as_str().is_some_and(|r| !r.starts_with("exited 0")), "{line}: {exit}");
        output
    };
    // The daemon's key and the session token are not in the command's world at all.
    let output = refused(&format!("cat {}", key.display()));
    assert!(output.contains("No such file or directory"), "{output}");
    let output = refused(&format!("cat {}", token.display()));
    assert!(output.contains("No such file or directory") && !output.contains(token_text.trim()), "{output}");
    // Nothing outside the workspace can be written: system directories are read-only, and
    // what lies around the workspace (its parent, /tmp) is the command's own scratch, gone
    // with it.
    let output = refused("echo pwned > /usr/astrid-escape-5157");
    assert!(output.contains("Read-only file system"), "{output}");
    assert!(!std::path::Path::new("/usr/astrid-escape-5157").exists());
    for line in [format!("echo pwned > {}", outside.display()), "echo pwned > ../outside.txt".to_owned()] {
        let (_, answer) = run_command(&t, &json!({"command": line}), true);
        assert!(!result(&answer).contains("changed, pending review"), "{answer:#}");
        assert!(!outside.exists(), "{line} reached the host");
        assert!(!t.workspace.parent().expect("parent").join("outside.txt").exists(), "{line} reached the host");
    }
    assert!(diff(&t).trim().is_empty(), "nothing outside the workspace is a workspace change");
    // No network: a listener on the host's loopback is out of reach.
    refused(&format!("bash -c 'echo hello > /dev/tcp/127.0.0.1/{port}'"));
    assert!(listener.accept().is_err(), "the command reached the host's loopback");

    // A fork bomb meets the process limit and its timeout; nothing of it is left. The
    // command's own shell forks once, for the bomb, before any of it exists, and then
    // `exec`s: a shell that forked again could meet the full limit itself and end the
    // command early with "Cannot fork" (exit 2 after 0.1 s, seen in CI).
    let bomb = "bomb() { bomb | bomb & }; bomb & exec sleep 3000.5151";
    let (_, answer) = run_command(&t, &json!({"command": bomb, "timeout_secs": 3}), true);
    assert!(result(&answer).contains("ran past its timeout"), "{answer:#}");
    assert!(exit_entry(&t, bomb)["rule"].as_str().is_some_and(|r| r.starts_with("killed at its timeout")));
    assert_eq!(none_left("3000.5151"), Vec::<String>::new());
    assert!(std::process::Command::new("true").status().expect("the host can still fork").success());

    // A command that would sleep for a quarter of an hour is killed at its timeout.
    let (_, answer) = run_command(&t, &json!({"command": "sleep 1000.5152", "timeout_secs": 2}), true);
    assert!(result(&answer).contains("killed: it ran past its timeout"), "{answer:#}");
    assert_eq!(none_left("1000.5152"), Vec::<String>::new());

    // A process that ignores SIGTERM and detaches into a session of its own dies with it.
    let detached =
        "setsid sh -c 'trap \"\" TERM HUP; sleep 2000.5153' > /dev/null 2>&1 & trap '' TERM; sleep 2000.5154";
    let (_, answer) = run_command(&t, &json!({"command": detached, "timeout_secs": 2}), true);
    assert!(result(&answer).contains("ran past its timeout"), "{answer:#}");
    assert_eq!(none_left("2000.515"), Vec::<String>::new(), "left running");
    assert!(exit_entry(&t, detached)["rule"].as_str().is_some_and(|r| r.starts_with("killed at its timeout")));
}

#[test]
fn a_timeout_above_the_operators_limit_is_refused_before_anything_is_asked() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::ToolEcho { id: None }]);
    let _daemon =
        shell_agent(&t, &server, &[("ASTRID_COMMAND_MAX_TIMEOUT_SECS", "30"), ("ASTRID_COMMAND_TIMEOUT_SECS", "10")]);
    let (_, answer) = run_command(&t, &json!({"command": "true", "timeout_secs": 31}), true);
    let output = result(&answer);
    assert!(output.contains("above the operator's limit of 30 s"), "{output}");
    let audit = crate::capsules::audit_tail(&t);
    assert!(!audit.iter().any(|e| e["action"] == "approval.request"), "nobody was asked: {audit:#?}");
}

#[test]
fn interrupting_a_turn_kills_its_command_and_everything_it_started() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::ToolEcho { id: None }]);
    let _daemon = shell_agent(&t, &server, &[]);
    let line = "echo started; setsid sh -c 'trap \"\" TERM HUP; sleep 4000.5155' & sleep 4000.5156";
    let prompt = format!("run_command {}", json!({"command": line}));
    // Headless, the output streams to stderr as it comes; Ctrl-C (SIGINT) cancels the turn.
    let mut child = t
        .command("astrid")
        .args(["run", prompt.as_str(), "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("astrid run");
    let mut stderr = child.stderr.take().expect("stderr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buffer) {
            sink.lock().expect("lock").push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    let shown = || seen.lock().expect("lock").clone();
    assert!(wait_for(&mut || shown().contains("started"), HANG), "the output never streamed: {}\n{}", shown(), t.log());
    assert_eq!(crate::command_sandbox::processes_with("4000.5156").len(), 1, "the command runs");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let _ = child.wait().expect("wait");
    reader.join().expect("reader");
    assert_eq!(none_left("4000.515"), Vec::<String>::new(), "left running");
    let rule = exit_entry(&t, line)["rule"].as_str().unwrap_or_default().to_owned();
    assert!(rule.starts_with("killed on request"), "{rule}");
}

/// `astrid status --json`'s sandbox state, once the boot's trial of it is over.
fn sandbox_state(t: &TestHome) -> (String, String) {
    let mut state = (String::new(), String::new());
    let settled = wait_for(
        &mut || {
            let output = t.cli(&["status", "--json"]);
            let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
            let shown = String::from_utf8_lossy(&t.cli(&["status"]).stdout).into_owned();
            state = (status["sandbox"]["state"].as_str().unwrap_or_default().to_owned(), shown);
            !state.0.is_empty() && state.0 != "probing"
        },
        HANG,
    );
    assert!(settled, "the sandbox's state never settled: {state:?}\n{}", t.log());
    state
}

#[test]
fn status_says_how_commands_run_and_an_unconfined_daemon_says_so_loudly() {
    let t = TestHome::new();
    let daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "0")]);
    let (state, shown) = sandbox_state(&t);
    assert_eq!(state, "ready", "{shown}");
    assert!(shown.contains("commands  sandboxed"), "{shown}");
    drop(daemon);

    let t = TestHome::new();
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "0"), ("ASTRID_SANDBOX", "off")]);
    let (state, shown) = sandbox_state(&t);
    assert_eq!(state, "unsandboxed", "{shown}");
    assert!(shown.contains("commands  UNSANDBOXED: ASTRID_SANDBOX=off"), "{shown}");
    assert!(wait_for(&mut || t.log().contains("command sandbox OFF"), HANG), "the log says so too: {}", t.log());
}
