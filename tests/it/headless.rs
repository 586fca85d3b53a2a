//! Headless turns (`astrid run`, `astrid -p`) through the real binary, the real daemon and a
//! real capsule that answers prompts (the hello example).

use std::io::Write;
use std::process::Stdio;

use astrid::types::management::{CapsuleDescription, CapsuleOrigin, RunState};
use serde_json::{Value, json};

use crate::capsules::install;
use crate::harness::TestHome;
use crate::openai_server::{Script, Server};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_headless_turn_prints_the_answer_in_either_format_and_takes_piped_stdin() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    install(&t, "hello");

    let output = t.cli(&["run", "world"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout(&output), "hello, world\n");

    let output = t.cli(&["run", "world", "--format", "json", "--session", "notes"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_str(stdout(&output).trim()).expect("one JSON object");
    assert_eq!(answer, serde_json::json!({"response": "hello, world", "tool_calls": []}));

    let mut child = t
        .command("astrid")
        .args(["-p", "summarise"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(b"a long log\n").expect("pipe");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout(&output), "hello, a long log\n\nsummarise\n", "stdin first, as the reference");

    assert_eq!(t.cli(&["-p", "x", "status"]).status.code(), Some(2), "-p takes no command");
    assert_eq!(t.cli(&["run", "x", "--format", "xml"]).status.code(), Some(2));
}

#[test]
fn a_headless_turn_nobody_can_answer_says_so_at_once_and_one_nobody_answers_exits_53() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    // No agent at all: the daemon's receipt says so, and the turn ends there.
    let output = t.cli_with(&["run", "anyone?"], &[("ASTRID_RESPONSE_TIMEOUT_SECS", "100")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stderr.contains("nothing answers prompts"), "{stderr}");
    // An agent that received the prompt and never answers (its provider does not exist).
    crate::capsules::install_with(&t, "orchestrator", &["--env", "provider=nowhere"]);
    let output = t.cli_with(&["run", "anyone?"], &[("ASTRID_RESPONSE_TIMEOUT_SECS", "1")]);
    assert_eq!(output.status.code(), Some(53), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Timed out waiting for response (1s)"));
    let bad = t.cli_with(&["run", "x"], &[("ASTRID_RESPONSE_TIMEOUT_SECS", "soon")]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ASTRID_RESPONSE_TIMEOUT_SECS"));
}

#[test]
fn the_orchestrator_and_the_offline_model_answer_a_turn_and_remember_the_conversation() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    install(&t, "llm-offline");
    install(&t, "orchestrator");

    let first = t.cli(&["run", "hello there", "--session", "chat-1"]);
    assert_eq!(first.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&first.stderr), t.log());
    let answer = stdout(&first);
    assert!(
        answer.starts_with("[offline model] You said: \"hello there\" (message 1 of this conversation)."),
        "{answer}"
    );
    assert!(answer.contains("No model endpoint is configured"), "labelled as offline: {answer}");

    // The same session goes on where it left off; another one starts afresh.
    let second = t.cli(&["run", "and again", "--session", "chat-1", "--format", "json"]);
    let second: Value = serde_json::from_str(stdout(&second).trim()).expect("json");
    let response = second["response"].as_str().expect("response");
    assert!(response.contains("\"and again\" (message 2 of this conversation)"), "{response}");
    let other = t.cli(&["run", "hi", "--session", "chat-2"]);
    assert!(stdout(&other).contains("(message 1 of this conversation)"));

    // What was stored is the orchestrator's own, in its namespace.
    let keys = t.cli(&["kv", "list", "--capsule", "orchestrator"]);
    let keys = stdout(&keys);
    assert_eq!(keys.lines().filter(|k| k.starts_with("history:")).count(), 2, "{keys}");
}

#[test]
fn a_fresh_home_answers_offline_with_the_embedded_default_set() {
    let t = TestHome::new();
    let defaults = [("ASTRID_DEFAULT_CAPSULES", "1")];
    // No daemon and nothing installed: `run` starts an ephemeral daemon, whose embedded
    // orchestrator and offline model answer.
    let output = t.cli_with(&["run", "are you there?"], &defaults);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&output.stderr), t.log());
    let answer = stdout(&output);
    assert!(answer.starts_with("[offline model] You said: \"are you there?\""), "{answer}");
    let shown = t.cli_with(&["capsule", "show", "orchestrator", "--json"], &defaults);
    let shown: CapsuleDescription = serde_json::from_slice(&shown.stdout).expect("a CapsuleDescription");
    assert_eq!(shown.origin, CapsuleOrigin::Embedded, "{shown:?}");
    assert_eq!(shown.state, RunState::Running, "{shown:?}");
    let registered = |audit: &[Value]| {
        audit.iter().any(|e| {
            e["action"] == "capsule.discovered"
                && e["resource"] == "llm-offline"
                && e["rule"].as_str().is_some_and(|r| r.contains("embedded"))
        })
    };
    assert!(registered(&crate::capsules::audit_until(&t, registered)), "the default set's registration is audited");
    assert_eq!(t.cli(&["stop"]).status.code(), Some(0));
}

/// A daemon whose orchestrator talks to `server` through the llm-openai capsule.
fn with_openai(t: &TestHome, server: &Server) -> crate::harness::Daemon {
    let daemon = t.daemon_with(&[], &[("ASTRID_HTTP_ALLOW_PRIVATE", "1")]);
    let base = format!("base_url={}", server.base_url());
    crate::capsules::install_with(
        t,
        "llm-openai",
        &["--env", &base, "--env", "api_key=sk-test-123", "--env", "model=test-model"],
    );
    crate::capsules::install_with(t, "orchestrator", &["--env", "provider=openai", "--env", "model=test-model"]);
    daemon
}

#[test]
fn an_openai_compatible_server_streams_the_answer_with_the_key_filled_in_host_side() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::Text(vec!["Hel", "lo from ", "the server"])]);
    let _daemon = with_openai(&t, &server);
    let output = t.cli(&["run", "say hello"]);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&output.stderr), t.log());
    assert_eq!(stdout(&output), "Hello from the server\n");

    let requests = server.received();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.header("authorization"), Some("Bearer sk-test-123"), "the secret, filled in by the host");
    assert_eq!(request.body["model"], "test-model");
    assert_eq!(request.body["stream"], true);
    let messages = request.body["messages"].as_array().expect("messages");
    assert_eq!(messages.first().map(|m| m["role"].clone()), Some(json!("system")));
    assert_eq!(messages.last().cloned(), Some(json!({"role": "user", "content": "say hello"})));
}

#[test]
fn provider_failures_reach_the_user_as_clear_errors() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::Status(401)]);
    let _daemon = with_openai(&t, &server);
    for (script, expected) in [
        (Script::Status(401), "LLM error: HTTP 401: the API key was refused"),
        (Script::Status(429), "LLM error: HTTP 429: rate limited"),
        (Script::Status(500), "LLM error: HTTP 500: the server failed"),
        (Script::Status(503), "LLM error: HTTP 503: the server failed"),
        (Script::Malformed, "LLM error: malformed stream"),
    ] {
        server.set(vec![script]);
        let output = t.cli(&["run", "hi"]);
        // A failure, with the reason on stderr and nothing on stdout (it is not an answer).
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with(&format!("astrid: {expected}")), "{expected}: {stderr}");
        assert_eq!(stdout(&output), "");
        assert!(!stderr.contains("sk-test-123"), "the key never reaches the person");
    }
}

#[test]
fn the_default_set_uses_an_endpoint_from_the_environment_even_on_loopback() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::Text(vec!["from ", "the environment"])]);
    let base = server.base_url();
    let env = [
        ("ASTRID_DEFAULT_CAPSULES", "1"),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_API_KEY", "sk-env-456"),
        ("ASTRID_MODEL", "env-model"),
    ];
    // No ASTRID_HTTP_ALLOW_PRIVATE: only the configured endpoint may be a loopback address.
    let output = t.cli_with(&["run", "hi"], &env);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&output.stderr), t.log());
    assert_eq!(stdout(&output), "from the environment\n");
    let request = server.received().pop().expect("a request");
    assert_eq!(request.header("authorization"), Some("Bearer sk-env-456"));
    assert_eq!(request.body["model"], "env-model");
    let excepted = |audit: &[Value]| {
        audit.iter().any(|e| e["action"] == "net.private_host" && e["resource"] == "llm-openai 127.0.0.1")
    };
    assert!(excepted(&crate::capsules::audit_until(&t, excepted)), "the exception is audited");
    assert_eq!(t.cli(&["stop"]).status.code(), Some(0));
}

#[test]
fn the_offline_agent_uses_the_file_tools_and_writes_wait_for_approval_and_review() {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("notes.txt"), "buy milk\n").expect("write");
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "1")]);

    // A read needs no approval: the model calls read_file, sees the result, reports it.
    let read = t.cli(&["run", "read notes.txt", "--format", "json"]);
    assert_eq!(
        read.status.code(),
        Some(0),
        "stderr: {}\nstdout: {}\nlog: {}",
        String::from_utf8_lossy(&read.stderr),
        stdout(&read),
        t.log()
    );
    let read: Value = serde_json::from_str(stdout(&read).trim()).expect("json");
    assert_eq!(read["response"], "[offline model] read_file answered: buy milk\n", "{read}");
    let call = &read["tool_calls"][0];
    assert_eq!((call["name"].as_str(), call["arguments"]["path"].as_str()), (Some("read_file"), Some("notes.txt")));
    assert_eq!((call["result"].as_str(), call["is_error"].as_bool()), (Some("buy milk\n"), Some(false)));

    // A write without --yes is denied: nothing changes anywhere.
    let denied = t.cli(&["run", "write todo.txt: ship it"]);
    // Answered, but what it asked for was denied: its own exit code.
    assert_eq!(denied.status.code(), Some(4), "{}\n{}", String::from_utf8_lossy(&denied.stderr), t.log());
    assert!(stdout(&denied).contains("write_file failed: the user did not approve"), "{}", stdout(&denied));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("approval denied"));
    assert!(String::from_utf8_lossy(&t.cli(&["workspace", "diff"]).stdout).trim().is_empty());

    // With --yes it is written, into the overlay: the workspace changes only on commit.
    let approved = t.cli(&["run", "write todo.txt: ship it", "--yes"]);
    assert!(stdout(&approved).contains("write_file answered: wrote 7 bytes to todo.txt"), "{}", stdout(&approved));
    assert!(!t.workspace.join("todo.txt").exists());
    let diff = String::from_utf8_lossy(&t.cli(&["workspace", "diff"]).stdout).into_owned();
    assert!(diff.contains("todo.txt") && diff.contains("+ship it"), "{diff}");
    assert_eq!(t.cli(&["workspace", "commit"]).status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(t.workspace.join("todo.txt")).expect("committed"), "ship it");

    // Every step is in the audit trail.
    let audit =
        crate::capsules::audit_until(&t, |a| a.iter().filter(|e| e["action"] == "approval.decision").count() >= 2);
    let decisions: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e["action"] == "approval.decision")
        .filter_map(|e| Some((e["resource"].as_str()?, e["decision"].as_str()?)))
        .collect();
    assert_eq!(decisions, [("write_file todo.txt", "deny"), ("write_file todo.txt", "allow")], "{decisions:?}");
    assert!(audit.iter().any(|e| e["action"] == "capability.check"
        && e["actor"]["name"] == "tools-fs"
        && e["resource"].as_str().is_some_and(|r| r.contains("todo.txt"))));
}

#[test]
fn chat_streams_answers_asks_for_approval_and_reviews_the_workspace() {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("notes.txt"), "buy milk\n").expect("write");
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "1")]);
    let script = ["hello", "read notes.txt", "write todo.txt: ship it", "y", "/diff", "/commit", "/help", "/quit"];
    let (code, shown) = crate::harness::PipedChat::script(&t, &[], &script);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("astrid> [offline model] You said: \"hello\" (message 1 of this conversation)."), "{shown}");
    assert!(
        shown.contains("• read_file {\"path\":\"notes.txt\"}") && shown.contains("read_file answered: buy milk"),
        "{shown}"
    );
    assert!(shown.contains("Capsule 'tools-fs' requests approval: write_file on todo.txt"), "{shown}");
    assert!(shown.contains("write_file answered: wrote 7 bytes to todo.txt"), "{shown}");
    assert!(shown.contains("+ship it"), "/diff shows the pending change: {shown}");
    assert!(shown.contains("1 change(s) committed"), "{shown}");
    assert!(shown.contains("/clear") && shown.contains("Ctrl-C"), "/help: {shown}");
    assert_eq!(std::fs::read_to_string(t.workspace.join("todo.txt")).expect("committed"), "ship it");
}
