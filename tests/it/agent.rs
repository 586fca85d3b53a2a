//! Agent turns against a real OpenAI-compatible server (local HTTP and SSE): tool calls
//! streamed in fragments, cancelled and stalled requests, and the audit trail of a whole turn.

use std::time::Duration;

use serde_json::{Value, json};

use crate::capsules::{audit_until, install_with};
use crate::harness::{HANG, Terminal, TestHome, wait_for};
use crate::openai_server::{Script, Server};

/// A daemon whose orchestrator asks `server` through llm-openai, with the file tools, plus
/// `settings` for the orchestrator (`name=value`).
pub(crate) fn agent(
    t: &TestHome,
    server: &Server,
    orchestrator: &[&str],
    env: &[(&str, &str)],
) -> crate::harness::Daemon {
    let mut env = env.to_vec();
    env.push(("ASTRID_HTTP_ALLOW_PRIVATE", "1"));
    let daemon = t.daemon_with(&[], &env);
    let base = format!("base_url={}", server.base_url());
    install_with(t, "llm-openai", &["--env", &base, "--env", "model=test-model"]);
    install_with(t, "tools-fs", &[]);
    let mut settings = vec!["--env", "provider=openai", "--env", "model=test-model"];
    for setting in orchestrator {
        settings.extend(["--env", setting]);
    }
    install_with(t, "orchestrator", &settings);
    daemon
}

/// One expected entry of the audit trail: what it is, and how to recognise it.
type Step<'a> = (&'a str, &'a dyn Fn(&Value) -> bool);

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_tool_call_streamed_in_fragments_runs_the_tool_and_its_result_goes_back_to_the_model() {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("notes.txt"), "buy milk\n").expect("write");
    let server = Server::start(vec![
        Script::ToolCall { name: "read_file", arguments: json!({"path": "notes.txt"}) },
        Script::Text(vec!["The notes say: ", "buy milk"]),
    ]);
    let _daemon = agent(&t, &server, &[], &[]);
    let output =
        t.cli_with(&["run", "what do my notes say?", "--format", "json"], &[("ASTRID_RESPONSE_TIMEOUT_SECS", "10")]);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&output.stderr), t.log());
    let answer: Value = serde_json::from_str(stdout(&output).trim()).expect("json");
    assert_eq!(answer["response"], "The notes say: buy milk");
    let call = &answer["tool_calls"][0];
    assert_eq!(call["name"], "read_file");
    assert_eq!(call["arguments"], json!({"path": "notes.txt"}), "the fragments, assembled");
    assert_eq!((call["result"].as_str(), call["is_error"].as_bool()), (Some("buy milk\n"), Some(false)));

    let requests = server.received();
    assert_eq!(requests.len(), 2, "one request per model round");
    let offered: Vec<&str> = requests[0].body["tools"]
        .as_array()
        .expect("tools offered")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert!(offered.contains(&"read_file") && offered.contains(&"write_file"), "{offered:?}");
    let messages = requests[1].body["messages"].as_array().expect("messages");
    let n = messages.len();
    assert_eq!(messages[n - 2]["role"], "assistant");
    assert_eq!(messages[n - 2]["tool_calls"][0]["id"], "call_abc");
    assert_eq!(messages[n - 2]["tool_calls"][0]["function"]["name"], "read_file");
    let arguments: Value =
        serde_json::from_str(messages[n - 2]["tool_calls"][0]["function"]["arguments"].as_str().expect("string"))
            .expect("arguments are JSON text");
    assert_eq!(arguments, json!({"path": "notes.txt"}));
    assert_eq!(messages[n - 1], json!({"role": "tool", "tool_call_id": "call_abc", "content": "buy milk\n"}));
}

#[test]
fn every_step_of_an_approved_tool_turn_is_in_the_audit_trail_in_order() {
    let t = TestHome::new();
    let server = Server::start(vec![
        Script::ToolCall { name: "write_file", arguments: json!({"path": "todo.txt", "content": "ship it"}) },
        Script::Text(vec!["Done."]),
    ]);
    let _daemon = agent(&t, &server, &[], &[]);
    let output = t.cli(&["run", "note that we ship it", "--yes"]);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&output.stderr), t.log());
    assert_eq!(stdout(&output).lines().last(), Some("Done."), "{}", stdout(&output));
    assert!(!t.workspace.join("todo.txt").exists(), "the write waits in the overlay");

    // The steps, in the order they must happen; each is found after the one before. A
    // capability used again in the same turn (the model asked a second time) is a count, not
    // an entry: checked below.
    let steps: [Step; 9] = [
        ("the person's prompt", &|e| {
            e["action"] == "client.input" && e["resource"].as_str().is_some_and(|r| r.starts_with("user.v1.prompt"))
        }),
        ("the orchestrator asks the provider", &|e| {
            e["actor"]["name"] == "orchestrator" && e["resource"] == "ipc_publish llm.v1.request.generate.openai"
        }),
        ("the provider may reach the server", &|e| {
            e["actor"]["name"] == "llm-openai" && e["resource"] == "net 127.0.0.1" && e["decision"] == "allow"
        }),
        ("the call goes to the tool", &|e| {
            e["actor"]["name"] == "orchestrator" && e["resource"] == "ipc_publish tool.v1.execute.write_file"
        }),
        ("the tool asks for approval", &|e| e["action"] == "approval.request"),
        ("the user approves", &|e| e["action"] == "approval.decision" && e["decision"] == "allow"),
        ("the tool may write the file", &|e| e["actor"]["name"] == "tools-fs" && e["resource"] == "fs_write todo.txt"),
        ("the result goes back", &|e| {
            e["actor"]["name"] == "tools-fs" && e["resource"] == "ipc_publish tool.v1.execute.write_file.result"
        }),
        ("the answer goes out", &|e| {
            e["actor"]["name"] == "orchestrator" && e["resource"] == "ipc_publish agent.v1.response"
        }),
    ];
    let walk = |audit: &[Value]| -> Result<(), String> {
        let mut at = 0;
        for (what, matches) in &steps {
            match audit[at..].iter().position(matches) {
                Some(offset) => at += offset + 1,
                None => return Err(format!("missing (after entry {at}): {what}")),
            }
        }
        Ok(())
    };
    let audit = audit_until(&t, |a| walk(a).is_ok());
    if let Err(missing) = walk(&audit) {
        let shown: Vec<String> = audit
            .iter()
            .map(|e| format!("{} {} {} {}", e["action"], e["actor"]["name"], e["resource"], e["decision"]))
            .collect();
        panic!("{missing}\n{}", shown.join("\n"));
    }
    // The second request to the model is counted, and the count is written at shutdown.
    assert_eq!(t.cli(&["stop"]).status.code(), Some(0));
    let again = |e: &Value| {
        e["action"] == "capability.check.repeated"
            && e["actor"]["name"] == "orchestrator"
            && e["resource"] == "ipc_publish llm.v1.request.generate.openai"
    };
    let audit = audit_until(&t, |a| a.iter().any(again));
    let repeated = audit.iter().find(|e| again(e)).unwrap_or_else(|| panic!("no count of the repeat: {audit:?}"));
    assert!(repeated["rule"].as_str().is_some_and(|r| r.starts_with("1 more since ")), "{repeated}");
}

#[test]
fn ctrl_c_on_a_terminal_cancels_the_turn_and_stops_the_request_and_twice_leaves() {
    let t = TestHome::new();
    let drip = Script::Drip { piece: "word ", every: Duration::from_millis(40) };
    let server = Server::start(vec![drip.clone(), Script::Text(vec!["Hi ", "again"]), drip]);
    let _daemon = agent(&t, &server, &[], &[]);
    let chat = Terminal::start(&t, &format!("'{}' chat", t.bin.join("astrid").display()));
    chat.wait_for("you>", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));

    // A turn that would go on for a minute: Ctrl-C cancels it, and the provider hangs up.
    chat.keys(&["tell me everything", "Enter"]);
    chat.wait_for("word word word", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    chat.keys(&["C-c"]);
    let screen = chat.wait_for("Cancelled.", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    assert!(screen.contains("(cancelling; Ctrl-C again to leave)"), "{screen}");
    assert!(
        wait_for(&mut || !server.hangups().is_empty(), HANG),
        "the server's request was never dropped\n{}",
        t.log()
    );

    // The conversation goes on; Ctrl-C at the prompt only clears the line.
    chat.wait_for("you>", 2).expect("a new prompt");
    chat.keys(&["hello", "Enter"]);
    chat.wait_for("Hi again", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    chat.wait_for("you>", 3).expect("a prompt");
    chat.keys(&["half a line", "C-c"]);
    chat.wait_for("(Ctrl-C again to leave)", 1).expect("the hint");
    chat.keys(&["what now", "Enter"]);
    // Ctrl-C twice leaves (130, as a shell expects of SIGINT): the first cancels the turn,
    // the second, however soon, leaves.
    chat.wait_for("word word word", 2).expect("streaming again");
    let prompts: Vec<String> = server.received().iter().map(|r| r.body["messages"].to_string()).collect();
    assert_eq!(prompts.len(), 3);
    assert!(prompts[2].contains("what now") && !prompts[2].contains("half a line"), "the cleared line was never sent");
    chat.keys(&["C-c"]);
    chat.wait_for("(cancelling", 2).expect("cancelling");
    chat.keys(&["C-c"]);
    chat.wait_for("EXIT=130", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));

    // The cancels are on the record: the person's, and the orchestrator's to the provider.
    let audit = audit_until(&t, |a| {
        a.iter().filter(|e| e["action"] == "client.input" && e["rule"] == "action cancel_turn").count() >= 2
            && a.iter().any(|e| e["resource"] == "ipc_publish llm.v1.request.cancel.openai")
    });
    assert!(audit.iter().any(|e| e["resource"] == "ipc_publish llm.v1.request.cancel.openai"), "{audit:?}");
}

#[test]
fn a_model_that_goes_silent_ends_the_turn_at_the_orchestrators_timeout_and_the_request_is_dropped() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::Stall(vec!["Let me think"])]);
    let _daemon = agent(&t, &server, &["stream_timeout_secs=1"], &[("ASTRID_WATCHDOG_INTERVAL_MS", "100")]);
    let output = t.cli(&["run", "hard question"]);
    // A turn the daemon gave up on is a failure: exit 1, the reason on stderr, what streamed
    // before it on stdout.
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}\n{}", t.log());
    assert!(stderr.contains("Request timed out (no answer from the model for 1 s)."), "{stderr}");
    assert_eq!(stdout(&output), "Let me think\n");
    // The provider was told, and gave up the request.
    let cancelled = |a: &[Value]| a.iter().any(|e| e["resource"] == "ipc_publish llm.v1.request.cancel.openai");
    assert!(cancelled(&audit_until(&t, cancelled)), "{}", t.log());
    assert!(t.wait_for(|| t.log().contains("request failed: cancelled"), HANG), "{}", t.log());
}

#[test]
fn a_server_silent_past_the_providers_stall_timeout_is_a_clear_error() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::Stall(vec![])]);
    let daemon = t.daemon_with(&[], &[("ASTRID_HTTP_ALLOW_PRIVATE", "1")]);
    let base = format!("base_url={}", server.base_url());
    install_with(&t, "llm-openai", &["--env", &base, "--env", "model=m", "--env", "stall_timeout_secs=1"]);
    install_with(&t, "orchestrator", &["--env", "provider=openai"]);
    let output = t.cli(&["run", "hi"]);
    assert_eq!(output.status.code(), Some(1), "{}\n{}", String::from_utf8_lossy(&output.stderr), t.log());
    assert_eq!(String::from_utf8_lossy(&output.stderr).trim(), "astrid: LLM error: the server sent nothing for 1 s");
    assert_eq!(stdout(&output), "", "an error is not an answer");
    drop(daemon);
}

/// `astrid ARGS`, interrupted (SIGINT, as Ctrl-C) once its request is with `server` and its
/// output shows `shown`.
fn interrupted_run(t: &TestHome, server: &Server, args: &[&str], shown: &str) -> std::process::Output {
    let mut child = t
        .command("astrid")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("astrid run");
    let collect = |mut pipe: Box<dyn std::io::Read + Send>| {
        let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&bytes);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut pipe, &mut buffer) {
                sink.lock().expect("lock").extend_from_slice(&buffer[..n]);
            }
        });
        (bytes, reader)
    };
    let (out, out_reader) = collect(Box::new(child.stdout.take().expect("stdout")));
    let (err, err_reader) = collect(Box::new(child.stderr.take().expect("stderr")));
    let text = |bytes: &std::sync::Mutex<Vec<u8>>| String::from_utf8_lossy(&bytes.lock().expect("lock")).into_owned();
    assert!(wait_for(&mut || !server.received().is_empty(), HANG), "hung: no request\n{}", t.log());
    assert!(wait_for(&mut || text(&out).contains(shown), HANG), "hung: never showed {shown:?}\n{}", t.log());
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = child.wait().expect("wait");
    for reader in [out_reader, err_reader] {
        reader.join().expect("reader");
    }
    let take = |bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>| std::mem::take(&mut *bytes.lock().expect("lock"));
    std::process::Output { status, stdout: take(out), stderr: take(err) }
}

#[test]
fn ctrl_c_in_a_headless_turn_cancels_it_in_the_daemon_before_leaving() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::Drip { piece: "more ", every: Duration::from_millis(40) }]);
    let _daemon = agent(&t, &server, &[], &[]);
    let output = interrupted_run(&t, &server, &["run", "go on forever"], "more more");
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout(&output).starts_with("more more"), "streamed until then: {}", stdout(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Interrupted: the turn is cancelled"));
    assert!(wait_for(&mut || !server.hangups().is_empty(), HANG), "the provider's request went on\n{}", t.log());
}

#[test]
fn a_tool_the_model_invents_is_answered_at_once_as_an_error() {
    let t = TestHome::new();
    let server = Server::start(vec![
        Script::ToolCall { name: "launch_rockets", arguments: json!({}) },
        Script::Text(vec!["I cannot do that."]),
    ]);
    let _daemon = agent(&t, &server, &[], &[]);
    // Answered at once rather than left to the tool timeout: that would have ended the turn
    // ("Request timed out"), not given the model the error to answer.
    let output = t.cli(&["run", "launch", "--format", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&output.stderr), t.log());
    let answer: Value = serde_json::from_str(stdout(&output).trim()).expect("json");
    assert_eq!(answer["response"], "I cannot do that.");
    let requests = server.received();
    let result = requests[1].body["messages"].as_array().and_then(|m| m.last().cloned()).expect("a tool message");
    assert_eq!(result["role"], "tool");
    assert!(result["content"].as_str().is_some_and(|c| c.contains("no tool called")), "{result}");
}

// The event stream's corner cases, and a cancel before the model's first byte.

/// A turn's answer (`--format json`), or the test fails with what happened.
fn answer(t: &TestHome, prompt: &str) -> Value {
    let output = t.cli_with(&["run", prompt, "--format", "json"], &[("ASTRID_RESPONSE_TIMEOUT_SECS", "30")]);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&output.stderr), t.log());
    serde_json::from_str(stdout(&output).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(&output)))
}

/// What a failed turn says on stderr (it must exit 1 and print nothing as an answer).
fn failure(t: &TestHome, prompt: &str) -> String {
    let output = t.cli_with(&["run", prompt], &[("ASTRID_RESPONSE_TIMEOUT_SECS", "30")]);
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}\n{}", t.log());
    assert_eq!(stdout(&output), "", "an error is not an answer");
    stderr.strip_prefix("astrid: ").unwrap_or(&stderr).to_owned()
}

#[test]
fn an_event_stream_with_crlf_line_endings_is_answered() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::StreamCrlf(vec!["Lines end ", "with CRLF", " here."])]);
    let _daemon = agent(&t, &server, &[], &[]);
    assert_eq!(answer(&t, "hi")["response"], "Lines end with CRLF here.");
}

#[test]
fn a_character_split_across_two_reads_arrives_whole() {
    let t = TestHome::new();
    let text = "na\u{ef}ve caf\u{e9} \u{1f980} \u{65e5}\u{672c}";
    let server = Server::start(vec![Script::StreamSplitUtf8(text)]);
    let _daemon = agent(&t, &server, &[], &[]);
    assert_eq!(answer(&t, "hi")["response"], text);
}

#[test]
fn an_answer_that_is_not_an_event_stream_is_reported_as_such() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::StreamJsonBody("I ignored stream: true")]);
    let _daemon = agent(&t, &server, &[], &[]);
    let response = failure(&t, "hi");
    assert!(response.starts_with("LLM error: the server did not answer with an event stream"), "{response}");
    assert!(response.contains("Content-Type application/json"), "{response}");
    assert!(response.contains("I ignored stream: true"), "the start of the body: {response}");
}

#[test]
fn a_stream_cut_short_before_done_is_reported_as_such() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::StreamCutShort(vec!["Half ", "an ", "answ"])]);
    let _daemon = agent(&t, &server, &[], &[]);
    // What streamed before the cut is on stdout; the failure says what happened.
    let output = t.cli(&["run", "hi"]);
    assert_eq!(output.status.code(), Some(1), "{}", t.log());
    assert_eq!(stdout(&output), "Half an answ\n");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "astrid: LLM error: the stream was cut short: it ended after 3 event(s), before [DONE]"
    );
}

#[test]
fn a_cancel_before_the_models_first_byte_hangs_up_and_the_next_turn_is_prompt() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::StreamNoHead, Script::Text(vec!["Hi ", "again"])]);
    let _daemon = agent(&t, &server, &[], &[]);
    // The request is with the server, which never answers: the provider waits for the head.
    let output = interrupted_run(&t, &server, &["run", "think hard"], "");
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        wait_for(&mut || !server.hangups().is_empty(), HANG),
        "the server never saw the connection close\n{}",
        t.log()
    );
    // The provider is free at once: the next turn does not wait behind the cancelled one.
    assert_eq!(answer(&t, "hello")["response"], "Hi again");
    assert!(t.wait_for(|| t.log().contains("request failed: cancelled"), HANG), "{}", t.log());
}
