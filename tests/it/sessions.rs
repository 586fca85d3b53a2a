//! Long sessions: a conversation outlives its daemon, `astrid chat --resume` continues the
//! latest one, `astrid sessions list` shows them all, `/new` starts another; and however long
//! a session runs, every request keeps to the context budget.

use astrid::types::SessionSummary;
use serde_json::Value;

use crate::agent::agent;
use crate::harness::{Daemon, PipedChat, TestHome};
use crate::openai_server::{Script, Server, request_bytes};

fn sessions(t: &TestHome) -> Vec<SessionSummary> {
    let output = t.cli(&["sessions", "list", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("a list of SessionSummary")
}

/// The end of a long output, for a failure message.
fn tail(text: &str) -> String {
    let skip = text.chars().count().saturating_sub(3000);
    text.chars().skip(skip).collect()
}

/// The text of every message of a request the server received.
fn conversation(body: &Value) -> String {
    body["messages"].to_string()
}

#[test]
fn a_restarted_daemon_resumes_the_conversation_and_sessions_list_shows_it() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::Text(vec!["Hello ", "Ada."]), Script::Text(vec!["You are Ada."])]);
    let daemon = agent(&t, &server, &[], &[]);
    let (code, shown) = PipedChat::script(&t, &[], &["my name is Ada"]);
    assert_eq!(code, Some(0), "{shown}\n{}", t.log());
    assert!(shown.contains("Hello Ada."), "{shown}");
    let listed = sessions(&t);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let first = listed[0].clone();
    assert_eq!((first.title.as_str(), first.turns), ("my name is Ada", 1));

    // The daemon goes away and a new one starts: the conversation is in the store.
    assert_eq!(t.cli(&["stop"]).status.code(), Some(0));
    drop(daemon);
    let _daemon = t.daemon_with(&[], &[("ASTRID_HTTP_ALLOW_PRIVATE", "1")]);
    let mut chat = PipedChat::start_args(&t, &["--resume"], &[]);
    chat.say("what is my name?");
    chat.wait_for("You are Ada.", 1);
    let (code, shown) = chat.finish();
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains(&format!("(continuing {}", first.id)), "the chat says which: {shown}");
    let asked = server.received();
    let resumed = conversation(&asked.last().expect("a request").body);
    assert!(
        resumed.contains("my name is Ada") && resumed.contains("Hello Ada.") && resumed.contains("what is my name?"),
        "the model sees the earlier turn: {resumed}"
    );
    let listed = sessions(&t);
    assert_eq!(listed.len(), 1, "the same conversation: {listed:?}");
    assert_eq!((listed[0].id.as_str(), listed[0].turns), (first.id.as_str(), 2));
    assert!(listed[0].last_active_at > first.last_active_at);

    // `/new` starts afresh, and the list shows both, the newest first.
    server.set(vec![Script::Text(vec!["Nice to meet you."])]);
    let (code, shown) = PipedChat::script(&t, &[], &["/new", "a fresh start"]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("(a new conversation)"), "{shown}");
    let fresh = conversation(&server.received().last().expect("a request").body);
    assert!(fresh.contains("a fresh start") && !fresh.contains("Ada"), "{fresh}");
    let listed = sessions(&t);
    let titles: Vec<&str> = listed.iter().map(|s| s.title.as_str()).collect();
    assert_eq!(titles, ["a fresh start", "my name is Ada"]);
    let pretty = String::from_utf8_lossy(&t.cli(&["sessions", "list"]).stdout).into_owned();
    assert!(pretty.lines().next().is_some_and(|l| l.contains("a fresh start") && l.contains("1 turn")), "{pretty}");
    assert!(pretty.contains(&format!("{}  ", first.id)) && pretty.contains("2 turns  my name is Ada"), "{pretty}");
}

/// `count` turns through one chat (the orchestrator's budget `budget_tokens`), each reading a
/// 4 KiB file and answering with all of it; the daemon, and the chat's output.
fn long_session(t: &TestHome, server: &Server, budget_tokens: &str, count: usize) -> (Daemon, String) {
    let file = format!("BEGIN-{}-END", "0123456789abcdef".repeat(256));
    std::fs::write(t.workspace.join("big.txt"), &file).expect("big.txt");
    let setting = format!("context_budget_tokens={budget_tokens}");
    let daemon = agent(t, server, &[&setting], &[]);
    let prompts = vec!["read big.txt"; count];
    let (code, shown) = PipedChat::script(t, &[("ASTRID_RESPONSE_TIMEOUT_SECS", "60")], &prompts);
    assert_eq!(code, Some(0), "{}\n{}", tail(&shown), t.log());
    let answered = shown.matches("tool said: BEGIN-").count();
    assert_eq!(answered, count, "every turn answered:\n{}", tail(&shown));
    assert!(!shown.contains("LLM error"), "no turn failed");
    (daemon, shown)
}

#[test]
fn a_two_hundred_turn_session_keeps_every_request_within_the_context_budget() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::ToolEcho { id: Some("call_1") }]);
    // 8000 tokens: about 32 KB of request, where each turn adds over 8 KB.
    let (tokens, turns) = (8000, 200);
    let (_daemon, shown) = long_session(&t, &server, &tokens.to_string(), turns);

    let requests = server.received();
    assert_eq!(requests.len(), 2 * turns, "a tool call and an answer per turn");
    let sizes: Vec<usize> = requests.iter().map(|r| request_bytes(&r.body)).collect();
    let budget = tokens * 4;
    let over: Vec<(usize, usize)> = sizes.iter().copied().enumerate().filter(|(_, s)| *s > budget).collect();
    assert!(over.is_empty(), "requests over the {budget}-byte budget (index, bytes): {over:?}");
    // Without the budget the last request would carry every turn (over 1.6 MB): it carries
    // recent turns whole, a line for each one left out, and fills most of the budget.
    let largest = sizes.iter().max().copied().unwrap_or(0);
    assert!(largest > budget / 2, "the budget is used, not wasted: at most {largest} bytes");
    let last = conversation(&requests[2 * turns - 1].body);
    assert!(last.contains("were left out to fit the context budget"), "{}", tail(&last));
    assert!(last.contains("- read big.txt"), "a line per turn left out");
    assert!(last.contains("bytes cut here to fit the context budget"), "old tool outputs were shortened first");
    let previous = requests[2 * turns - 1].body["messages"].as_array().expect("messages");
    let whole = previous
        .iter()
        .filter(|m| m["role"] == "tool" && m["content"].as_str().is_some_and(|c| c.ends_with("-END")))
        .count();
    assert!(whole >= 1, "the current turn's tool output is whole");
    assert_eq!(shown.matches("has outgrown the context budget").count(), 1, "the person is told once");

    // What is stored stays bounded too (about twice the budget).
    let listed = sessions(&t);
    assert_eq!(listed[0].turns, turns as u64, "{listed:?}");
    let stored = t.cli(&["kv", "get", "--capsule", "orchestrator", &format!("history:{}", listed[0].id)]);
    assert!(stored.stdout.len() < 2 * budget + 8192, "{} bytes stored", stored.stdout.len());
}

#[test]
fn a_model_that_refuses_a_long_conversation_gets_it_shorter_and_the_session_goes_on() {
    let t = TestHome::new();
    // The configured budget (the default, 100k tokens) is far more than this model takes.
    let limit = 24_000;
    let then = Box::new(Script::ToolEcho { id: Some("call_1") });
    let server = Server::start(vec![Script::ContextLimit { max_bytes: limit, then }]);
    let turns = 12;
    let (_daemon, shown) = long_session(&t, &server, "100000", turns);
    let sizes: Vec<usize> = server.received().iter().map(|r| request_bytes(&r.body)).collect();
    let refused = sizes.iter().filter(|s| **s > limit).count();
    assert!(refused >= 1, "the model did refuse: {sizes:?}");
    assert_eq!(refused, 1, "later turns keep to what it took: {sizes:?}");
    assert!(shown.contains("the model refused the conversation as too long for its context"), "{shown}");
}
