//! The agent turn under load and concurrency, end to end through the real binary: answers
//! arrive whole and in order at any size and reader speed, two turns at once never cross,
//! the person sees what they approve, the chat never freezes, and exit codes tell the truth.

use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::capsules::{install, install_with};
use crate::harness::{HANG, PipedChat, RawClient, Terminal, TestHome, wait_for};
use crate::openai_server::{Script, Server};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// About a megabyte of text: numbered lines of words.
fn megabyte() -> String {
    let mut text = String::new();
    let mut n = 0;
    while text.len() < 1_000_000 {
        text.push_str(&format!("line {n:06}: the quick brown fox jumps over the lazy dog, again and again.\n"));
        n += 1;
    }
    text
}

/// Sends a prompt the way the reference CLI does (a whole `IpcMessage`).
fn prompt(client: &mut RawClient, session: &str, text: &str) {
    client.send_json(&json!({
        "topic": "user.v1.prompt",
        "payload": {"type": "user_input", "text": text, "session_id": session},
        "signature": null, "source_id": session, "timestamp": "2026-12-02T12:00:00Z", "seq": 0,
    }));
}

/// What the reference CLI (v0.7.0, `collect_response` of its headless mode) makes of a turn:
/// the `text` of every `agent_response` it receives, whatever the topic, concatenated, until
/// one is final. Kept small here as the test of the wire meaning. `pause` is how long this
/// reader dawdles after each frame (a slow terminal); the count of frames comes back too.
fn reference_rendering(client: &mut RawClient, pause: Duration) -> (String, usize) {
    client.stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let (mut text, mut frames) = (String::new(), 0);
    loop {
        let frame = client.read_json().expect("the daemon closed the connection mid-answer");
        frames += 1;
        std::thread::sleep(pause);
        let payload = &frame["payload"];
        if payload["type"] == "agent_response" {
            text.push_str(payload["text"].as_str().unwrap_or_default());
            if payload["is_final"] == true {
                return (text, frames);
            }
        }
    }
}

fn no_drops(t: &TestHome) {
    let status = t.cli(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status");
    assert!(status.get("bus_drops").is_none(), "nothing was dropped: {status}");
}

#[test]
fn a_megabyte_read_through_the_offline_model_arrives_whole_and_in_order_even_at_a_slow_reader() {
    let t = TestHome::new();
    let text = megabyte();
    std::fs::write(t.workspace.join("big.txt"), &text).expect("write");
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "1")]);
    let expected = format!("[offline model] read_file answered: {text}");

    // A reader as slow as a busy terminal: the stream waits for it, nothing is lost.
    let mut client = t.client();
    prompt(&mut client, "slow-reader", "read big.txt");
    let (answer, frames) = reference_rendering(&mut client, Duration::from_millis(3));
    assert_eq!(answer.len(), expected.len(), "whole ({frames} frames)");
    assert!(answer == expected, "in order");

    // The README's own example, through `astrid run`: the same, once.
    let output = t.cli(&["run", "read big.txt"]);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", stderr(&output), t.log());
    assert!(stdout(&output) == expected, "astrid run printed {} of {} bytes", output.stdout.len(), expected.len());
    no_drops(&t);
}

#[test]
fn a_megabyte_answer_through_the_openai_provider_arrives_whole_at_a_slow_reader() {
    let t = TestHome::new();
    let text: &'static str = Box::leak(megabyte().into_boxed_str());
    let server = Server::start(vec![Script::Bulk(text)]);
    let base = server.base_url();
    let env = [("ASTRID_DEFAULT_CAPSULES", "1"), ("OPENAI_BASE_URL", base.as_str())];
    let _daemon = t.daemon_with(&[], &env);
    let mut client = t.client();
    prompt(&mut client, "slow-reader", "tell me a long story");
    let (answer, frames) = reference_rendering(&mut client, Duration::from_millis(3));
    assert_eq!(answer.len(), text.len(), "whole ({frames} frames)");
    assert!(answer == text, "in order");
    no_drops(&t);
}

#[test]
fn the_reference_cli_shows_a_streamed_answer_once() {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("notes.txt"), "buy milk\n").expect("write");
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "1")]);
    let mut client = t.client();
    prompt(&mut client, "reference", "list");
    let (answer, _) = reference_rendering(&mut client, Duration::ZERO);
    assert_eq!(answer, "[offline model] list_dir answered: notes.txt");
    // A plain answer, streamed in pieces: still once.
    prompt(&mut client, "reference", "hello there");
    let (answer, frames) = reference_rendering(&mut client, Duration::ZERO);
    assert_eq!(answer.matches("You said: \"hello there\"").count(), 1, "{answer}");
    assert!(frames > 2, "it did stream ({frames} frames)");
}

/// The file tools and an OpenAI-compatible model that always names its tool calls `id`.
fn tool_echo_agent(t: &TestHome, id: Option<&'static str>) -> (Server, crate::harness::Daemon) {
    let server = Server::start(vec![Script::ToolEcho { id }]);
    let daemon = t.daemon_with(&[], &[("ASTRID_HTTP_ALLOW_PRIVATE", "1")]);
    let base = format!("base_url={}", server.base_url());
    install_with(t, "llm-openai", &["--env", &base, "--env", "model=m"]);
    install_with(t, "tools-fs", &[]);
    install_with(t, "orchestrator", &["--env", "provider=openai"]);
    (server, daemon)
}

fn spawn_run(t: &TestHome, args: &[&str]) -> Child {
    t.command("astrid").args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("astrid run")
}

#[test]
fn two_turns_at_once_with_repeated_tool_call_ids_get_their_own_results_and_approvals() {
    for id in [Some("call_fake_1"), None] {
        let t = TestHome::new();
        let (_server, _daemon) = tool_echo_agent(&t, id);
        for round in 0..3 {
            let yes = spawn_run(&t, &["run", &format!("write a{round}.txt: from A"), "--yes"]);
            let no = spawn_run(&t, &["run", &format!("write b{round}.txt: from B")]);
            let (yes, no) = (yes.wait_with_output().expect("A"), no.wait_with_output().expect("B"));
            let (yes_err, no_err) = (stderr(&yes), stderr(&no));
            assert_eq!(yes.status.code(), Some(0), "{id:?}: {yes_err}\n{}", t.log());
            assert_eq!(
                stdout(&yes),
                format!("tool said: wrote 6 bytes to a{round}.txt (pending review: astrid workspace diff)\n"),
                "{id:?}: A's answer is A's"
            );
            assert!(yes_err.contains(&format!("approval granted: write_file on a{round}.txt")), "{yes_err}");
            assert!(!yes_err.contains("b{round}"), "--yes saw only its own approvals: {yes_err}");
            assert_eq!(no.status.code(), Some(4), "{id:?}: an approval was denied: {no_err}");
            assert!(stdout(&no).contains(&format!("did not approve write_file on b{round}.txt")), "{}", stdout(&no));
            assert!(no_err.contains(&format!("denied (use --yes to approve): write_file on b{round}.txt")), "{no_err}");
        }
        let diff = stdout(&t.cli(&["workspace", "diff"]));
        assert!(diff.contains("a0.txt") && diff.contains("a2.txt"), "{diff}");
        assert!(!diff.contains("b0.txt") && !diff.contains("b1.txt") && !diff.contains("b2.txt"), "{diff}");
    }
}

#[test]
fn a_cold_run_is_offered_the_mcp_servers_tools_and_uses_one() {
    let t = TestHome::new();
    let everything =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-deps/npm/node_modules/.bin/mcp-server-everything");
    assert!(everything.exists(), "run scripts/test-deps.sh (the README's test command does)");
    std::fs::create_dir_all(t.home.join("etc")).expect("etc");
    let servers = format!("[servers.everything]\ncommand = {:?}\n", everything.display().to_string());
    std::fs::write(t.home.join("etc/servers.toml"), servers).expect("servers.toml");
    let tool_call = Script::ToolCall { name: "everything__echo", arguments: json!({"message": "from a cold start"}) };
    let server = Server::start(vec![tool_call, Script::Text(vec!["Echoed."])]);
    let base = server.base_url();
    // The daemon's first turn, the moment it is ready: the server is still starting.
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "1"), ("OPENAI_BASE_URL", base.as_str())]);
    let output = t.cli(&["run", "echo something", "--yes", "--format", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", stderr(&output), t.log());
    let answer: Value = serde_json::from_str(stdout(&output).trim()).expect("json");
    assert_eq!(answer["response"], "Echoed.");
    assert!(answer["tool_calls"][0]["result"].as_str().is_some_and(|r| r.contains("from a cold start")), "{answer}");
    // What was approved was shown: the call's arguments.
    assert!(stderr(&output).contains(r#""message": "from a cold start""#), "{}", stderr(&output));
    let first = &server.received()[0];
    let offered = first.body["tools"].to_string();
    assert!(offered.contains("everything__echo") && offered.contains("read_file"), "all tools, first time: {offered}");
}

#[test]
fn each_answer_is_shown_under_the_prompt_it_answers_whoever_answers() {
    let t = TestHome::new();
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "1")]);
    install(&t, "hello");
    // The receipt names both answerers.
    let mut client = t.client();
    prompt(&mut client, "who", "anyone?");
    let receipt = loop {
        let frame = client.read_json().expect("frame");
        if frame["topic"] == "astrid.v1.prompt.receipt" {
            break frame;
        }
    };
    let mut names: Vec<String> = receipt["payload"]["answerers"]
        .as_array()
        .expect("answerers")
        .iter()
        .filter_map(|a| a["capsule"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    assert_eq!(names, ["hello", "orchestrator"]);

    let (code, output) = PipedChat::script(&t, &[], &["first", "second", "/quit"]);
    assert_eq!(code, Some(0), "{output}");
    let at = |needle: &str| output.find(needle).unwrap_or_else(|| panic!("{needle:?} missing:\n{output}"));
    let first_answers = [at("hello> hello, first"), at("You said: \"first\"")];
    let second_answers = [at("hello> hello, second"), at("You said: \"second\"")];
    assert!(
        first_answers.iter().max() < second_answers.iter().min(),
        "both answers to the first prompt come before any to the second:\n{output}"
    );
}

#[test]
fn the_approval_shows_the_diff_and_its_scope_and_a_stray_answer_asks_again() {
    let t = TestHome::new();
    std::fs::create_dir_all(t.workspace.join("notes")).expect("notes");
    std::fs::write(t.workspace.join("notes/todo.txt"), "buy milk\n").expect("write");
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "1")]);
    let lines = [
        "write notes/todo.txt: ship it",
        "maybe",
        "s",
        // Covered by the session's allowance: no question this time.
        "write notes/done.txt: shipped",
        // Outside notes/: asked again, and denied.
        "write other.txt: x",
        "n",
        "/quit",
    ];
    let (code, output) = PipedChat::script(&t, &[], &lines);
    assert_eq!(code, Some(0), "{output}");
    let at = |needle: &str| output.find(needle).unwrap_or_else(|| panic!("{needle:?} missing:\n{output}"));
    assert!(at("• write_file") < at("requests approval"), "the tool call is shown before its question");
    assert!(output.contains("notes/todo.txt: 9 → 7 bytes"), "sizes: {output}");
    assert!(output.contains("-buy milk") && output.contains("+ship it"), "the diff: {output}");
    assert!(output.contains("[s] write_file under notes/ this session"), "the scope: {output}");
    assert_eq!(output.matches("(y, s, a or n)").count(), 1, "asked again once: {output}");
    assert_eq!(output.matches("requests approval").count(), 2, "{output}");
    assert!(output.contains("wrote 7 bytes to notes/done.txt"), "{output}");
    assert!(output.contains("did not approve write_file on other.txt"), "{output}");
    let diff = stdout(&t.cli(&["workspace", "diff"]));
    assert!(
        diff.contains("notes/todo.txt") && diff.contains("notes/done.txt") && !diff.contains("other.txt"),
        "{diff}"
    );
}

#[test]
fn unknown_and_unavailable_commands_are_answered_at_once() {
    let t = TestHome::new();
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "1")]);
    install(&t, "kv-counter");
    let mut client = t.client();
    crate::capsules::wait_running(&t, &mut client, &["kv-counter"]);
    assert_eq!(t.cli(&["caps", "revoke", "kv-counter"]).status.code(), Some(0));
    let shown = |format: &str| stdout(&t.cli(&["capsule", format, "kv-counter"]));
    assert!(wait_for(&mut || shown("show").contains("stopped"), HANG), "{}", shown("show"));
    assert!(shown("show").contains("not approved"), "{}", shown("show"));
    let list = stdout(&t.cli(&["capsule", "list"]));
    let line = list.lines().find(|l| l.starts_with("kv-counter")).unwrap_or_default();
    assert!(line.contains("stopped") && line.contains("not approved"), "the list agrees: {list}");

    // The response timeout is long: an answer that waited for it would show.
    let timeout = [("ASTRID_RESPONSE_TIMEOUT_SECS", "600")];
    let (code, output) = PipedChat::script(&t, &timeout, &["/nosuch thing", "/count", "/quit"]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("(no such command: /nosuch)"), "{output}");
    assert!(output.contains("(kv-counter is stopped: its capabilities are not approved"), "{output}");
}

#[test]
fn the_chat_on_a_terminal_answers_unknown_commands_and_ctrl_c_before_the_first_byte_drops_the_request() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::StreamNoHead, Script::Text(vec!["Hi ", "again"])]);
    let base = server.base_url();
    let env = format!("ASTRID_DEFAULT_CAPSULES=1 OPENAI_BASE_URL={base}");
    let chat = Terminal::start_with(&t, &env, &format!("'{}' chat", t.bin.join("astrid").display()));
    chat.wait_for("you>", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    chat.keys(&["/nosuch", "Enter"]);
    chat.wait_for("(no such command: /nosuch)", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));

    chat.keys(&["think hard", "Enter"]);
    assert!(wait_for(&mut || !server.received().is_empty(), HANG), "{}", t.log());
    // Typed while the turn runs, then Ctrl-C: the request is dropped, the typing kept.
    chat.keys(&["typed ahead"]);
    chat.keys(&["C-c"]);
    chat.wait_for("Cancelled.", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    assert!(wait_for(&mut || !server.hangups().is_empty(), HANG), "the request was not dropped\n{}", t.log());
    chat.wait_for("you> typed ahead", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    chat.keys(&["Enter"]);
    chat.wait_for("Hi again", 1).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    let asked = server.received();
    assert!(asked.last().is_some_and(|r| r.body["messages"].to_string().contains("typed ahead")), "{asked:?}");
}

#[test]
fn exit_codes_tell_the_truth() {
    let t = TestHome::new();
    let empty = t.cli(&["run", ""]);
    assert_eq!(empty.status.code(), Some(2), "{}", stderr(&empty));
    assert!(stderr(&empty).contains("the prompt is empty"));
    assert!(!t.run_dir().join("system.lock").exists(), "no daemon was started for a usage error");
    let unreachable =
        t.cli_with(&["run", "hi"], &[("ASTRID_DEFAULT_CAPSULES", "1"), ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")]);
    assert_eq!(unreachable.status.code(), Some(1), "{}", stderr(&unreachable));
    assert!(stderr(&unreachable).contains("LLM error: cannot reach http://127.0.0.1:9/v1"), "{}", stderr(&unreachable));
    assert_eq!(stdout(&unreachable), "");
    assert_eq!(t.cli(&["stop"]).status.code(), Some(0));
}

#[test]
fn the_chat_notices_its_daemon_went_away_reconnects_and_the_conversation_goes_on() {
    let t = TestHome::new();
    // The chat starts the daemon itself (ephemeral, the default set).
    let mut chat = PipedChat::start(&t, &[("ASTRID_DEFAULT_CAPSULES", "1")]);
    chat.say("hello");
    chat.wait_for("(message 1 of this conversation)", 1);
    assert_eq!(t.cli(&["stop"]).status.code(), Some(0));
    chat.say("again");
    let output = chat.wait_for("(message 2 of this conversation)", 1);
    assert_eq!(output.matches("(lost the daemon").count(), 1, "said once: {output}");
    assert!(output.contains("(reconnected"), "{output}");
    assert!(!output.contains("Broken pipe"), "no raw errors: {output}");
    chat.say("/quit");
    let (code, output) = chat.finish();
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(t.cli(&["stop"]).status.code(), Some(0));
}

#[test]
fn model_settings_from_the_shell_are_applied_or_refused_with_the_exact_commands() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::Text(vec!["from ", "the endpoint"])]);
    let base = server.base_url();
    let defaults = ("ASTRID_DEFAULT_CAPSULES", "1");
    // An idle ephemeral daemon on the offline model is restarted with the shell's settings.
    assert_eq!(t.cli_with(&["run", "hi"], &[defaults]).status.code(), Some(0));
    let output = t.cli_with(&["run", "hi"], &[defaults, ("OPENAI_BASE_URL", base.as_str())]);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", stderr(&output), t.log());
    assert_eq!(stdout(&output), "from the endpoint\n");
    assert!(stderr(&output).contains("restarting the idle daemon"), "{}", stderr(&output));
    let status = stdout(&t.cli(&["status"]));
    assert!(status.contains(&format!("model     openai gpt-4o-mini at {base}")), "{status}");
    assert!(status.contains(&format!("workspace {}", t.workspace.display())), "{status}");
    let stopped = t.cli(&["stop"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", stderr(&stopped));

    // A persistent daemon is left alone: the turn is refused, with the commands that help.
    let started = t.cli_with(&["start"], &[defaults]);
    assert_eq!(started.status.code(), Some(0), "{}\n{}", stderr(&started), t.log());
    let refused = t.cli_with(&["run", "hi"], &[("OPENAI_BASE_URL", base.as_str())]);
    assert_eq!(refused.status.code(), Some(1));
    let reason = stderr(&refused);
    assert!(reason.contains("answers with the offline model"), "{reason}");
    assert!(reason.contains(&format!("astrid config model --provider openai --base-url {base}")), "{reason}");
    // Applied through the home, the same shell is then answered by the endpoint.
    let configured = t.cli(&["config", "model", "--base-url", &base, "--model", "m1"]);
    assert_eq!(configured.status.code(), Some(0), "{}", stderr(&configured));
    assert!(stdout(&configured).contains("openai m1"), "{}", stdout(&configured));
    let output = t.cli_with(&["run", "hi"], &[("OPENAI_BASE_URL", base.as_str())]);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", stderr(&output), t.log());
    assert_eq!(stdout(&output), "from the endpoint\n");
    assert_eq!(server.received().last().map(|r| r.body["model"].clone()), Some(json!("m1")));
    // Each change restarts the agent; the turn right after it is answered by the new one. It
    // used to reach the old instance, stopped under it, whenever the reload was answered
    // before the capsule host had acted: most often while a fresh daemon's capsules start.
    for model in ["m2", "m3", "m4", "m5"] {
        let restarted = t.cli_with(&["restart"], &[defaults]);
        assert_eq!(restarted.status.code(), Some(0), "{}", stderr(&restarted));
        let configured = t.cli(&["config", "model", "--model", model]);
        assert_eq!(configured.status.code(), Some(0), "{}", stderr(&configured));
        let output = t.cli(&["run", "hi"]);
        assert_eq!(output.status.code(), Some(0), "{model}: {}\n{}", stderr(&output), t.log());
        assert_eq!(server.received().last().map(|r| r.body["model"].clone()), Some(json!(model)));
    }
    assert_eq!(t.cli(&["stop"]).status.code(), Some(0));
}

#[test]
fn a_turn_works_in_the_directory_it_was_started_in() {
    let t = TestHome::new();
    let other = t.workspace.parent().expect("parent").join("other");
    std::fs::create_dir_all(&other).expect("other");
    std::fs::write(other.join("only-here.txt"), "x").expect("write");
    std::fs::write(t.workspace.join("daemon-side.txt"), "y").expect("write");
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "1")]);
    let listed = t.command("astrid").args(["run", "list"]).current_dir(&other).output().expect("run");
    assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
    assert!(stdout(&listed).contains("only-here.txt") && !stdout(&listed).contains("daemon-side.txt"));
    let flagged = t.cli(&["run", "list", "-w", &other.display().to_string()]);
    assert!(stdout(&flagged).contains("only-here.txt"), "{}", stdout(&flagged));
    // Writes wait in that directory's own overlay.
    let wrote =
        t.command("astrid").args(["run", "write new.txt: hi", "--yes"]).current_dir(&other).output().expect("run");
    assert_eq!(wrote.status.code(), Some(0), "{}", stderr(&wrote));
    let there = t.command("astrid").args(["workspace", "diff"]).current_dir(&other).output().expect("diff");
    assert!(stdout(&there).contains("new.txt"), "{}", stdout(&there));
    assert!(!stdout(&t.cli(&["workspace", "diff"])).contains("new.txt"), "not in the daemon's workspace");
    let missing = t.cli(&["run", "list", "-w", "/no/such/dir"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("/no/such/dir"), "{}", stderr(&missing));
}

#[test]
fn an_install_that_asks_a_question_without_a_terminal_says_so_at_once() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let output = t.cli(&["capsule", "install", &crate::capsules::example("http-fetch").display().to_string(), "--yes"]);
    let out = stdout(&output);
    assert!(
        out.contains("http-fetch asks for FETCH_TOKEN") && out.contains("--env FETCH_TOKEN="),
        "{out}\n{}",
        t.log()
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // Nobody else was there to ask: the question ends as soon as its asker is gone, not
    // after its 120 s.
    let gave_up = |a: &[Value]| a.iter().any(|e| e["action"] == "elicit" && e["rule"] == "no frontend left to ask");
    assert!(gave_up(&crate::capsules::audit_until(&t, gave_up)), "{}", t.log());
}
