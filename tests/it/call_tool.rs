//! `CallTool` over the real socket: a client's call takes the agent's own road (the tool
//! capsules in WebAssembly, their grants, the approval, the overlay, the audit trail), and
//! `CancelToolCall` stops it, the command it runs included.

use serde_json::{Value, json};

use crate::capsules::{audit_until, install};
use crate::command_sandbox::{none_left, processes_with};
use crate::harness::{HANG, RawClient, TestHome, wait_for};

/// A connection that says who it acts for and whether anyone there answers questions.
fn labelled(t: &TestHome, label: &str, answers_questions: bool) -> RawClient {
    let mut client = RawClient::connect(&t.socket());
    client.send_json(&json!({"token": t.token(), "protocol_version": 1, "client_version": "0.7.0",
        "label": label, "answers_questions": answers_questions}));
    let reply = client.read_json().expect("handshake reply");
    assert_eq!(reply["status"], "ok", "{reply}");
    client
}

fn call(client: &mut RawClient, suffix: &str, name: &str, arguments: Value, call_id: &str) {
    client.send_request(
        suffix,
        json!({"method": "CallTool", "params":
        {"name": name, "arguments": arguments, "call_id": call_id}}),
    );
}

/// The `ToolCalled` of the reply on `suffix`: `(content, is_error)`.
fn called(client: &mut RawClient, suffix: &str) -> (String, bool) {
    let reply = client.reply(suffix);
    assert_eq!(reply["payload"]["status"], "Success", "{reply}");
    let data = &reply["payload"]["data"];
    (data["content"].as_str().expect("content").to_owned(), data["is_error"].as_bool().expect("is_error"))
}

/// The next approval question `client` is asked: its request id and the whole payload.
fn question(client: &mut RawClient) -> (String, Value) {
    loop {
        let frame = client.read_json().expect("connection closed before a question");
        if frame["topic"] == "astrid.v1.approval" {
            let id = frame["payload"]["request_id"].as_str().expect("request_id").to_owned();
            return (id, frame["payload"].clone());
        }
    }
}

fn answer(client: &mut RawClient, request_id: &str, decision: &str) {
    client.send_json(&json!({
        "topic": format!("astrid.v1.approval.response.{request_id}"),
        "payload": {"type": "approval_response", "request_id": request_id, "decision": decision},
    }));
}

fn diff(t: &TestHome) -> String {
    String::from_utf8_lossy(&t.cli(&["workspace", "diff"]).stdout).into_owned()
}

#[test]
fn a_call_reads_and_writes_through_the_tool_capsule_and_is_on_the_record_as_its_client() {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("notes.txt"), "buy milk\n").expect("write");
    let _daemon = t.daemon(&[]);
    install(&t, "tools-fs");
    let mut client = labelled(&t, "inspector-client 0.9 (astrid mcp serve)", true);

    call(&mut client, "call_tool.1", "read_file", json!({"path": "notes.txt"}), "1");
    let (content, is_error) = called(&mut client, "call_tool.1");
    assert!(content.contains("buy milk") && !is_error, "{content}");

    // A write asks this connection, shows the change, and lands in the overlay only.
    call(&mut client, "call_tool.2", "write_file", json!({"path": "todo.txt", "content": "call mum\n"}), "2");
    let (id, asked) = question(&mut client);
    assert!(asked["details"].as_str().is_some_and(|d| d.contains("+call mum")), "{asked}");
    answer(&mut client, &id, "approve");
    let (content, is_error) = called(&mut client, "call_tool.2");
    assert!(!is_error, "{content}");
    assert!(!t.workspace.join("todo.txt").exists(), "the workspace waits for a review");
    assert!(diff(&t).contains("+call mum"), "{}", diff(&t));

    // A name nobody offers is answered at once.
    call(&mut client, "call_tool.3", "no_such_tool", json!({}), "3");
    let (content, is_error) = called(&mut client, "call_tool.3");
    assert!(is_error && content.contains("no tool called no_such_tool"), "{content}");

    let audit = audit_until(&t, |a| a.iter().filter(|e| e["action"] == "tool.call").count() >= 3);
    let calls: Vec<&Value> = audit.iter().filter(|e| e["action"] == "tool.call").collect();
    let shown = |e: &Value| (e["resource"].as_str().map(str::to_owned), e["decision"].as_str().map(str::to_owned));
    assert_eq!(
        calls.iter().map(|e| shown(e)).collect::<Vec<_>>(),
        [
            (Some("read_file".into()), Some("allow".into())),
            (Some("write_file".into()), Some("allow".into())),
            (Some("no_such_tool".into()), Some("deny".into()))
        ]
    );
    for entry in calls {
        let actor = entry["actor"]["id"].as_str().unwrap_or_default();
        assert!(actor.starts_with("client#") && actor.contains("inspector-client 0.9"), "{entry}");
    }
    assert!(audit.iter().any(|e| e["action"] == "approval.decision" && e["decision"] == "allow"), "{audit:#?}");
}

#[test]
fn questions_of_a_connection_nobody_answers_at_go_to_the_other_frontends_or_are_denied_at_once() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    install(&t, "tools-fs");
    let mut serve = labelled(&t, "no-elicitation 1.0", false);

    // Nobody else connected: denied at once, saying how to allow it; nothing written.
    call(&mut serve, "call_tool.1", "write_file", json!({"path": "a.txt", "content": "x"}), "1");
    let (content, is_error) = called(&mut serve, "call_tool.1");
    assert!(is_error && content.contains("astrid chat"), "{content}");
    assert!(diff(&t).trim().is_empty(), "nothing was written: {}", diff(&t));
    let audit = audit_until(&t, |a| a.iter().any(|e| e["action"] == "approval.decision"));
    let decision = audit.iter().find(|e| e["action"] == "approval.decision").expect("decision");
    assert_eq!(decision["decision"], "deny", "{decision}");
    assert!(decision["rule"].as_str().is_some_and(|r| r.contains("nobody could be asked")), "{decision}");

    // Another frontend is asked instead, and its yes counts.
    let mut chat = t.client();
    call(&mut serve, "call_tool.2", "write_file", json!({"path": "b.txt", "content": "from elsewhere\n"}), "2");
    let (id, asked) = question(&mut chat);
    assert_eq!(asked["action"], "write_file", "{asked}");
    assert!(asked["reason"].as_str().is_some_and(|r| r.contains("no-elicitation 1.0")), "whose call: {asked}");
    answer(&mut chat, &id, "approve");
    let (content, is_error) = called(&mut serve, "call_tool.2");
    assert!(!is_error, "{content}");
    assert!(diff(&t).contains("+from elsewhere"), "{}", diff(&t));
}

#[test]
fn a_cancelled_call_kills_its_command_and_answers_as_cancelled() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    install(&t, "tools-shell");
    let mut client = labelled(&t, "canceller 1.0", true);
    let marker = "sleep 4242";

    call(&mut client, "call_tool.1", "run_command", json!({"command": marker}), "long");
    let (id, asked) = question(&mut client);
    assert_eq!(asked["resource"], marker, "{asked}");
    answer(&mut client, &id, "approve");
    assert!(wait_for(&mut || !processes_with(marker).is_empty(), HANG), "the command never started");

    client.send_request("cancel_tool_call", json!({"method": "CancelToolCall", "params": {"call_id": "long"}}));
    let (content, is_error) = called(&mut client, "call_tool.1");
    assert!(is_error && content.starts_with("cancelled"), "{content}");
    let left = none_left(marker);
    assert!(left.is_empty(), "the command outlived its cancel: {left:?}\n{}", t.log());
    // Asking again: nothing is in flight.
    let again = client.request("cancel_tool_call", json!({"method": "CancelToolCall", "params": {"call_id": "long"}}));
    assert_eq!(again["payload"]["data"], json!({"call_id": "long", "cancelled": false}), "{again}");
}
