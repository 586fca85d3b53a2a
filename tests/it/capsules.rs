//! Real capsules (the examples, built by rustc for wasm32 and committed) in the real daemon:
//! installed, approved, run, and — for the hostile one — stopped and audited.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use astrid::types::management::{CapabilityListing, CapsuleDescription, GrantStatus, RunState};
use serde_json::{Value, json};

use crate::harness::{HANG, RawClient, TestHome};

pub(crate) fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("capsules-examples").join(name)
}

/// Installs an example with `astrid capsule install --yes` (the daemon must run).
pub(crate) fn install(t: &TestHome, name: &str) {
    install_with(t, name, &[]);
}

pub(crate) fn install_with(t: &TestHome, name: &str, extra: &[&str]) -> String {
    let source = example(name);
    let mut args = vec!["capsule", "install", source.to_str().expect("utf8"), "--yes"];
    args.extend_from_slice(extra);
    let output = t.cli(&args);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Approves every pending capability request, as an operator would.
pub(crate) fn approve_all(t: &TestHome) {
    let output = t.cli(&["caps", "list", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let listing: CapabilityListing = serde_json::from_slice(&output.stdout).expect("a CapabilityListing");
    for pending in &listing.pending {
        let approved = t.cli(&["caps", "approve", &pending.request_id]);
        assert_eq!(approved.status.code(), Some(0), "{}", String::from_utf8_lossy(&approved.stderr));
    }
}

/// Publishes `text` as a user input on `topic`.
pub(crate) fn say(client: &mut RawClient, topic: &str, text: &str) {
    client.send_json(&json!({
        "topic": topic,
        "payload": {"type": "user_input", "text": text, "session_id": "s1"},
        "signature": null,
        "source_id": "00000000-0000-0000-0000-000000000000",
        "timestamp": "2026-11-22T12:00:00Z",
        "seq": 0
    }));
}

/// Sends `text` as a user input on `topic` and returns the text of the next agent response.
pub(crate) fn ask(client: &mut RawClient, topic: &str, text: &str) -> String {
    say(client, topic, text);
    loop {
        let frame = client.read_json().expect("connection closed before the answer");
        if frame["topic"] == "agent.v1.response" {
            return frame["payload"]["text"].as_str().expect("text").to_owned();
        }
    }
}

pub(crate) fn running(client: &mut RawClient) -> Vec<String> {
    let status = client.request("status", json!({"method": "GetStatus"}));
    serde_json::from_value(status["payload"]["data"]["loaded_capsules"].clone()).expect("names")
}

pub(crate) fn wait_running(t: &TestHome, client: &mut RawClient, names: &[&str]) {
    let ok = t.wait_for(|| names.iter().all(|n| running(client).iter().any(|r| r == n)), HANG);
    assert!(ok, "{names:?} not running; running: {:?}\n{}", running(client), t.log());
}

/// The audit trail once `holds` is true of it (entries are written by a background thread,
/// so what a reply reports may reach the file a moment later), or as it is after [`HANG`].
pub(crate) fn audit_until(t: &TestHome, mut holds: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + HANG;
    loop {
        let audit = audit_tail(t);
        if holds(&audit) || Instant::now() >= deadline {
            return audit;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn audit_tail(t: &TestHome) -> Vec<Value> {
    let output = t.cli(&["audit", "tail", "-n", "1000000", "--json"]);
    String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).expect("entry")).collect()
}

#[test]
fn hello_runs_once_approved_and_answers_prompts() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    // Without a terminal and without --yes, consent is not assumed.
    let output = t.cli(&["capsule", "install", example("hello").to_str().expect("utf8")]);
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        shown.contains("hello 0.1.0 requests these capabilities") && shown.contains("ipc_publish:agent.v1.response"),
        "{shown}"
    );
    let mut client = t.client();
    assert_eq!(running(&mut client), vec!["astrid-capsule-cli"], "nothing runs before approval");
    approve_all(&t);
    wait_running(&t, &mut client, &["hello"]);
    assert_eq!(ask(&mut client, "user.v1.prompt", "world"), "hello, world");
    assert_eq!(ask(&mut client, "user.v1.prompt", "again"), "hello, again");
    assert!(t.logged("capsule hello is ready"), "signal_ready reached the host");
}

#[test]
fn kv_counter_counts_and_its_count_survives_a_restart() {
    let t = TestHome::new();
    let mut daemon = t.daemon(&[]);
    install(&t, "kv-counter");
    let mut client = t.client();
    wait_running(&t, &mut client, &["kv-counter"]);
    for n in 1..=3 {
        assert_eq!(ask(&mut client, "cli.v1.command.execute", "/count"), format!("count = {n}"));
    }
    drop(client);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit(HANG).expect("exit");
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    wait_running(&t, &mut client, &["kv-counter"]);
    assert_eq!(ask(&mut client, "cli.v1.command.execute", "/count"), "count = 4");
}

#[test]
fn the_file_tool_works_inside_its_grant_and_nowhere_else() {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("secrets.txt"), "top secret").expect("write");
    let _daemon = t.daemon(&[]);
    install(&t, "file-tool");
    let mut client = t.client();
    wait_running(&t, &mut client, &["file-tool"]);
    let exec = "cli.v1.command.execute";
    assert_eq!(ask(&mut client, exec, "/write notes/todo.txt buy milk"), "wrote 8 bytes to notes/todo.txt");
    assert_eq!(ask(&mut client, exec, "/read notes/todo.txt"), "buy milk");
    assert_eq!(ask(&mut client, exec, "/ls notes"), "todo.txt");
    assert!(!t.workspace.join("notes/todo.txt").exists(), "writes wait in the overlay for review");
    assert_eq!(ask(&mut client, exec, "/read secrets.txt"), "error: capability-denied");
    assert_eq!(ask(&mut client, exec, "/write secrets.txt pwned"), "error: capability-denied");
    assert_eq!(ask(&mut client, exec, "/read notes/../secrets.txt"), "error: invalid-input");
    assert_eq!(ask(&mut client, exec, "/read /etc/passwd"), "error: invalid-input");
    let diff = t.cli(&["workspace", "diff"]);
    assert!(String::from_utf8_lossy(&diff.stdout).contains("notes/todo.txt"));
    assert_eq!(std::fs::read_to_string(t.workspace.join("secrets.txt")).expect("read"), "top secret");
    let denials = |audit: &[Value]| {
        audit
            .iter()
            .filter(|e| e["action"] == "capability.check" && e["decision"] == "deny")
            .filter(|e| e["actor"]["name"] == "file-tool")
            .count()
    };
    assert_eq!(denials(&audit_until(&t, |a| denials(a) >= 2)), 2, "both refusals by grant are audited");
}

#[test]
fn a_hostile_capsule_is_stopped_audited_and_restarted_while_others_keep_working() {
    hostile_is_contained(&[]);
}

/// The hostile capsule's attempts, each refused or stopped and audited, with `extra` in the
/// daemon's environment (the capsule-host tests run it in processes of their own).
pub(crate) fn hostile_is_contained(extra: &[(&str, &str)]) {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("secrets.txt"), "top secret").expect("write");
    let mut env = vec![("ASTRID_CAPSULE_DEADLINE_MS", "500"), ("ASTRID_CAPSULE_BACKOFF_MS", "100")];
    env.extend_from_slice(extra);
    let _daemon = t.daemon_with(&[], &env);
    install(&t, "hostile");
    install(&t, "hello");
    let mut client = t.client();
    wait_running(&t, &mut client, &["hostile", "hello"]);
    let exec = "cli.v1.command.execute";

    let stolen = ask(&mut client, exec, "/steal");
    assert_eq!(stolen, "secrets.txt: Err(CapabilityDenied); ../../etc/passwd: Err(InvalidInput)");
    assert_eq!(ask(&mut client, exec, "/leak"), "publish: Err(CapabilityDenied)");
    assert_eq!(ask(&mut client, exec, "/snoop"), "subscribe: Err(CapabilityDenied)");
    assert_eq!(ask(&mut client, exec, "/exfil"), "http: Err(CapabilityDenied)");

    for (command, reason) in [("/spin", "exceeded its deadline"), ("/bomb", "trapped"), ("/panic", "trapped")] {
        let crashes = || audit_tail(&t).into_iter().filter(|e| e["action"] == "capsule.crashed").count();
        let before = crashes();
        say(&mut client, exec, command);
        // What stopped it is the audit's rule below (the deadline, a trap), not how soon.
        assert!(t.wait_for(|| crashes() > before, HANG), "hung: {command} was not stopped\n{}", t.log());
        let last = audit_tail(&t).into_iter().rev().find(|e| e["action"] == "capsule.crashed").expect("crash");
        assert!(last["rule"].as_str().expect("rule").contains(reason), "{command}: {last}");
        // The daemon and the other capsule never noticed.
        assert_eq!(ask(&mut client, "user.v1.prompt", command), format!("hello, {command}"));
        wait_running(&t, &mut client, &["hostile"]);
    }
    // Restarted on a fresh instance each time, and still refusing.
    assert_eq!(ask(&mut client, exec, "/leak"), "publish: Err(CapabilityDenied)");
}

fn describe(t: &TestHome, name: &str) -> CapsuleDescription {
    let output = t.cli(&["capsule", "show", name, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("a CapsuleDescription")
}

#[test]
fn install_show_upgrade_tamper_and_remove_through_the_cli() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    install(&t, "kv-counter");
    let shown = describe(&t, "kv-counter");
    assert_eq!(shown.state, RunState::Running);
    assert_eq!(shown.grant, GrantStatus::Approved);
    assert_eq!(shown.wasm_blake3.as_deref().map(str::len), Some(64));
    let mut client = t.client();
    assert_eq!(ask(&mut client, "cli.v1.command.execute", "/count"), "count = 1");
    // Its install hook ran once, before it served, in its own namespace.
    let installed = t.cli(&["kv", "get", "installed", "--capsule", "kv-counter"]);
    assert_eq!(
        String::from_utf8_lossy(&installed.stdout).trim(),
        "yes",
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );

    // A reinstall of the same code and capabilities keeps its approval and keeps running.
    install(&t, "kv-counter");
    wait_running(&t, &mut client, &["kv-counter"]);

    // A module swapped behind the installer's back is refused and the capsule stopped.
    let installed = t.home.join("home/default/.local/capsules/kv-counter");
    std::fs::copy(example("hello").join("hello.wasm"), installed.join("kv-counter.wasm")).expect("swap");
    assert_eq!(client.request("reload", json!({"method": "ReloadCapsules"}))["payload"]["status"], "Success");
    let shown = describe(&t, "kv-counter");
    assert_eq!(shown.state, RunState::Failed);
    assert!(shown.reason.as_deref().expect("reason").contains("does not match the BLAKE3"), "{shown:?}");
    assert!(!running(&mut client).contains(&"kv-counter".to_owned()));
    let listing = String::from_utf8_lossy(&t.cli(&["capsule", "list"]).stdout).into_owned();
    assert!(listing.contains("kv-counter") && listing.contains("failed"), "{listing}");

    // Installing again repairs it, with the count intact (KV is not part of the install).
    install(&t, "kv-counter");
    wait_running(&t, &mut client, &["kv-counter"]);
    assert_eq!(ask(&mut client, "cli.v1.command.execute", "/count"), "count = 2");

    // A new version is picked up without a daemon restart, and its upgrade hook runs once.
    let newer = tempfile::tempdir().expect("tempdir");
    for file in ["Capsule.toml", "kv-counter.wasm"] {
        std::fs::copy(example("kv-counter").join(file), newer.path().join(file)).expect("copy");
    }
    let manifest = std::fs::read_to_string(newer.path().join("Capsule.toml")).expect("read");
    std::fs::write(newer.path().join("Capsule.toml"), manifest.replace("version = \"0.1.0\"", "version = \"0.2.0\""))
        .expect("bump");
    let upgraded = t.cli(&["capsule", "install", newer.path().to_str().expect("utf8"), "--yes"]);
    assert!(String::from_utf8_lossy(&upgraded.stdout).contains("installed kv-counter 0.2.0 (replacing 0.1.0)"));
    assert_eq!(describe(&t, "kv-counter").version.as_deref(), Some("0.2.0"));
    assert_eq!(ask(&mut client, "cli.v1.command.execute", "/count"), "count = 3");
    let upgraded = t.cli(&["kv", "get", "upgraded", "--capsule", "kv-counter"]);
    assert_eq!(String::from_utf8_lossy(&upgraded.stdout).trim(), "yes");

    let removed = t.cli(&["capsule", "remove", "kv-counter"]);
    assert_eq!(removed.status.code(), Some(0), "{}", String::from_utf8_lossy(&removed.stderr));
    assert!(!installed.exists());
    assert!(t.wait_for(|| !running(&mut client).contains(&"kv-counter".to_owned()), HANG));
    assert_eq!(t.cli(&["capsule", "remove", "kv-counter"]).status.code(), Some(1), "nothing left to remove");
    let expected = ["capsule.install", "capsule.start", "capsule.lifecycle", "capsule.remove", "capsule.failed"];
    let audited = |audit: &[Value]| expected.iter().all(|action| audit.iter().any(|e| e["action"] == *action));
    assert!(audited(&audit_until(&t, audited)), "{expected:?} not all audited");
}

/// A one-thread HTTP server on loopback that answers every request with what it was sent in
/// `Authorization`, and records each request head it saw.
fn echo_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            let mut authorization = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) =
                    line.strip_prefix("authorization: ").or_else(|| line.strip_prefix("Authorization: "))
                {
                    authorization = value.trim().to_owned();
                }
                head.push_str(&line);
            }
            log.lock().expect("log").push(head);
            let body = format!("you sent: {authorization}; bye");
            let _ =
                write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (port, seen)
}

fn install_http_fetch(t: &TestHome) {
    let said = install_with(t, "http-fetch", &["--env", "FETCH_TOKEN=sk-test-42"]);
    assert!(said.contains("stored 1 value(s) for http-fetch"), "{said}");
    let file = t.home.join("home/default/.config/env/http-fetch.env.json");
    assert_eq!(crate::harness::mode(&file), 0o600, "secrets are private to the user");
}

#[test]
fn http_refuses_internal_addresses_by_default_and_audits_it() {
    let t = TestHome::new();
    let (port, seen) = echo_server();
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    // Without its token the capsule still starts: the frontends are told what is missing, and
    // its install hook asks for the token (elicit), which a person answers from a client.
    let installer = {
        let (bin, home, workspace) = (t.bin.clone(), t.home.clone(), t.workspace.clone());
        let source = example("http-fetch");
        std::thread::spawn(move || {
            std::process::Command::new(bin.join("astrid"))
                .args(["capsule", "install", source.to_str().expect("utf8"), "--yes"])
                .env("ASTRID_HOME", home)
                .current_dir(workspace)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("install")
        })
    };
    let (mut onboarding, mut elicit) = (None, None);
    while onboarding.is_none() || elicit.is_none() {
        let frame = client.read_json().expect("frame");
        if frame["topic"] == "astrid.v1.onboarding.required" {
            onboarding = Some(frame);
        } else if frame["topic"] == "astrid.v1.elicit" {
            elicit = Some(frame);
        }
    }
    let onboarding = onboarding.expect("onboarding");
    assert_eq!(onboarding["payload"]["capsule_id"], "http-fetch");
    assert_eq!(onboarding["payload"]["fields"][0]["key"], "FETCH_TOKEN");
    assert_eq!(onboarding["payload"]["fields"][0]["field_type"], "Secret");
    let elicit = elicit.expect("elicit");
    assert_eq!(elicit["payload"]["type"], "elicit_request");
    assert_eq!(elicit["payload"]["field"]["key"], "FETCH_TOKEN");
    let request_id = elicit["payload"]["request_id"].as_str().expect("id").to_owned();
    client.send_json(&json!({
        "topic": format!("astrid.v1.elicit.response.{request_id}"),
        "payload": {"type": "elicit_response", "request_id": request_id, "value": "sk-test-42"},
        "signature": null,
        "source_id": "00000000-0000-0000-0000-000000000000",
        "timestamp": "2026-11-22T12:00:00Z",
        "seq": 0
    }));
    let installed = installer.join().expect("installer");
    assert_eq!(installed.status.code(), Some(0), "{}", String::from_utf8_lossy(&installed.stderr));
    wait_running(&t, &mut client, &["http-fetch"]);
    let file = t.home.join("home/default/.config/env/http-fetch.env.json");
    assert_eq!(crate::harness::mode(&file), 0o600);
    assert!(std::fs::read_to_string(&file).expect("env").contains("sk-test-42"), "the answer is stored");
    let stored = |audit: &[Value]| audit.iter().any(|e| e["action"] == "elicit" && e["rule"] == "secret stored");
    let audit = audit_until(&t, stored);
    assert!(stored(&audit), "the answer is audited");
    assert!(!serde_json::to_string(&audit).expect("json").contains("sk-test-42"), "never the secret itself");
    let exec = "cli.v1.command.execute";
    // The secret is in use at once (an address refusal comes after the template is filled).
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        assert_eq!(ask(&mut client, exec, &format!("/fetch {url}")), "error: address-refused", "{url}");
    }
    assert_eq!(ask(&mut client, exec, "/fetch file:///etc/passwd"), "error: invalid-input");
    assert!(seen.lock().expect("seen").is_empty(), "nothing reached the internal server");
    let refusals =
        |audit: &[Value]| audit.iter().filter(|e| e["action"] == "net.connect" && e["decision"] == "deny").count();
    assert_eq!(refusals(&audit_until(&t, |a| refusals(a) >= 3)), 3);
}

#[test]
fn http_fills_secrets_host_side_and_redacts_their_echo() {
    let t = TestHome::new();
    let (port, seen) = echo_server();
    let _daemon = t.daemon_with(&[], &[("ASTRID_HTTP_ALLOW_PRIVATE", "1")]);
    install_http_fetch(&t);
    let mut client = t.client();
    let exec = "cli.v1.command.execute";
    let url = format!("http://127.0.0.1:{port}/page");
    assert_eq!(ask(&mut client, exec, &format!("/fetch {url}")), "200: you sent: Bearer [REDACTED]; bye");
    let streamed = ask(&mut client, exec, &format!("/stream {url}"));
    assert!(streamed.starts_with("200 in ") && streamed.ends_with(": you sent: Bearer [REDACTED]; bye"), "{streamed}");
    let heads = seen.lock().expect("seen").clone();
    assert_eq!(heads.len(), 2);
    assert!(heads.iter().all(|h| h.to_ascii_lowercase().contains("authorization: bearer sk-test-42")), "{heads:?}");
}

#[test]
fn a_capsule_that_keeps_failing_is_given_up_and_a_rescan_tries_it_again() {
    let t = TestHome::new();
    let env = [("ASTRID_CAPSULE_DEADLINE_MS", "200"), ("ASTRID_CAPSULE_BACKOFF_MS", "50")];
    let _daemon = t.daemon_with(&[], &env);
    install(&t, "hostile");
    let mut client = t.client();
    let exec = "cli.v1.command.execute";
    // Each /panic kills the instance; the sixth failure in a row is one too many.
    for attempt in 1..=6 {
        wait_running(&t, &mut client, &["hostile"]);
        say(&mut client, exec, "/panic");
        let state = || describe(&t, "hostile");
        let moved = t.wait_for(|| state().state != RunState::Running, HANG);
        assert!(moved, "attempt {attempt}: still running");
    }
    let given_up = t.wait_for(|| describe(&t, "hostile").state == RunState::Failed, HANG);
    assert!(given_up, "{:?}", describe(&t, "hostile"));
    assert!(describe(&t, "hostile").reason.expect("reason").starts_with("gave up after 5 restarts"));
    // It stays down through unrelated changes, and comes back when the operator rescans.
    assert_eq!(client.request("reload", json!({"method": "ReloadCapsules"}))["payload"]["status"], "Success");
    wait_running(&t, &mut client, &["hostile"]);
    assert_eq!(ask(&mut client, exec, "/leak"), "publish: Err(CapabilityDenied)");
}

#[test]
fn a_link_inside_a_granted_directory_does_not_widen_the_grant() {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("secrets.txt"), "top secret").expect("write");
    std::fs::create_dir_all(t.workspace.join("notes/real")).expect("mkdir");
    std::os::unix::fs::symlink("..", t.workspace.join("notes/up")).expect("link");
    std::os::unix::fs::symlink("../secrets.txt", t.workspace.join("notes/to_secret")).expect("link");
    std::os::unix::fs::symlink("real", t.workspace.join("notes/alias")).expect("link");
    let _daemon = t.daemon(&[]);
    install(&t, "file-tool");
    let mut client = t.client();
    wait_running(&t, &mut client, &["file-tool"]);
    let exec = "cli.v1.command.execute";
    // Reads, writes, listings and deletes through the links are decided on where they lead.
    for command in [
        "/read notes/to_secret",
        "/read notes/up/secrets.txt",
        "/write notes/up/secrets.txt pwned",
        "/write notes/to_secret pwned",
        "/ls notes/up",
        "/rm notes/up/secrets.txt",
    ] {
        assert_eq!(ask(&mut client, exec, command), "error: capability-denied", "{command}");
    }
    // A link that stays inside the grant works, and the review names the real file.
    assert_eq!(ask(&mut client, exec, "/write notes/alias/todo.txt buy milk"), "wrote 8 bytes to notes/alias/todo.txt");
    let diff = String::from_utf8_lossy(&t.cli(&["workspace", "diff"]).stdout).into_owned();
    assert!(diff.contains("b/notes/real/todo.txt") && !diff.contains("secrets"), "{diff}");
    assert_eq!(t.cli(&["workspace", "commit"]).status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(t.workspace.join("secrets.txt")).expect("read"), "top secret");
    assert_eq!(std::fs::read_to_string(t.workspace.join("notes/real/todo.txt")).expect("read"), "buy milk");
    // The audit names the real paths it decided on.
    let denied = audit_until(&t, |a| {
        a.iter().filter(|e| e["action"] == "capability.check" && e["decision"] == "deny").count() >= 6
    });
    let resources: Vec<&str> = denied
        .iter()
        .filter(|e| e["action"] == "capability.check" && e["decision"] == "deny")
        .filter_map(|e| e["resource"].as_str())
        .collect();
    assert!(resources.iter().all(|r| !r.contains("notes/up") && !r.contains("to_secret")), "{resources:?}");
    assert!(resources.contains(&"fs_read secrets.txt"), "{resources:?}");
}

/// A capsule slow to start: it waits 300 ms before it subscribes to `session.v1.request.slow`
/// and signals ready, then echoes each request's payload on `session.v1.response.slow`.
const SLOW_STARTER: &str = r#"(module
    (import "astrid" "ipc_subscribe" (func $subscribe (param i32 i32) (result i32)))
    (import "astrid" "ipc_publish" (func $publish (param i32 i32 i32 i32) (result i32)))
    (import "astrid" "ipc_recv" (func $recv (param i32 i32) (result i64)))
    (import "astrid" "signal_ready" (func $ready))
    (memory (export "memory") 4)
    (global $next (mut i32) (i32.const 4096))
    (data (i32.const 0) "slow.v1.never")
    (data (i32.const 32) "session.v1.request.slow")
    (data (i32.const 64) "session.v1.response.slow")
    (func (export "astrid_alloc") (param $len i32) (result i32)
        global.get $next
        global.get $next local.get $len i32.add global.set $next)
    (func (export "run") (local $requests i32) (local $got i64)
        (drop (call $recv (call $subscribe (i32.const 0) (i32.const 13)) (i32.const 300)))
        (local.set $requests (call $subscribe (i32.const 32) (i32.const 23)))
        (call $ready)
        (block $stopped
            (loop $serve
                (local.set $got (call $recv (local.get $requests) (i32.const 60000)))
                (br_if $stopped (i64.eq (local.get $got) (i64.const -5)))
                (if (i64.gt_s (local.get $got) (i64.const 0))
                    (then (drop (call $publish (i32.const 64) (i32.const 24)
                        (i32.wrap_i64 (i64.shr_u (local.get $got) (i64.const 32)))
                        (i32.wrap_i64 (local.get $got))))))
                (br $serve)))))"#;

#[test]
fn the_daemon_is_ready_before_its_capsules_and_holds_what_is_for_them_until_they_start() {
    let t = TestHome::new();
    let dir = t.workspace.join("slow-starter");
    let grant = "[capabilities]\nipc_publish = [\"session.v1.response.slow\"]\n\
                 ipc_subscribe = [\"slow.v1.never\", \"session.v1.request.slow\"]\n";
    crate::bounds::write_capsule(&dir, "slow-starter", &wat::parse_str(SLOW_STARTER).expect("wat"), grant);
    let mut daemon = t.daemon(&[]);
    let installed = t.cli(&["capsule", "install", dir.to_str().expect("utf8"), "--yes"]);
    assert_eq!(installed.status.code(), Some(0), "{}", String::from_utf8_lossy(&installed.stderr));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait_exit(HANG).is_some(), "the first daemon did not stop\n{}", t.log());

    // Booted again, the capsule starts with the daemon. The boot's wait for it is long, so a
    // busy machine cannot make it give up on the capsule; the test does not depend on timing.
    let _daemon = t.daemon_with(&[], &[("ASTRID_CAPSULE_START_WAIT_MS", "60000")]);
    let mut client = t.client();
    // Published at once, before the capsule has subscribed: held at the start gate, not lost.
    client.send_json(&json!({
        "topic": "session.v1.request.slow",
        "payload": {"type": "raw_json", "asked": "at once"},
        "signature": null,
        "source_id": "00000000-0000-0000-0000-000000000000",
        "timestamp": "2026-05-25T12:00:00.123456789Z",
    }));
    let echoed = loop {
        let frame = client.read_json().unwrap_or_else(|| panic!("no echo: the request was lost\n{}", t.log()));
        if frame["topic"] == "session.v1.response.slow" {
            break frame;
        }
    };
    // The capsule receives the whole message and sends it back as its payload.
    assert_eq!(echoed["payload"]["payload"]["asked"], "at once", "{echoed}");
    // And the capsule state answers wait for the start: it is running, not shown as stopped.
    let described = client.request("describe", json!({"method": "DescribeCapsules"}));
    let capsules: Vec<CapsuleDescription> =
        serde_json::from_value(described["payload"]["data"].clone()).expect("descriptions");
    let slow = capsules.iter().find(|c| c.name == "slow-starter").expect("listed");
    assert_eq!(slow.state, RunState::Running, "{described}");

    // The daemon was ready before the capsule was: the window the gate covers was real.
    let logged_in_order = || {
        let log = t.log();
        let ready = log.rfind("boot 7/7: ready");
        let started = log.rfind("capsule slow-starter is ready");
        matches!((ready, started), (Some(r), Some(s)) if r < s)
    };
    assert!(t.wait_for(logged_in_order, HANG), "not ready before the capsule started\n{}", t.log());
}
