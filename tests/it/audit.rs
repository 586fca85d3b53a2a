//! The audit trail as an operator meets it, through the real binary: what routine traffic
//! costs, a break that stays visible until acknowledged, a deleted log, a trail that cannot
//! be written, and a shutdown that does not wait for a verification.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::capsules::audit_tail;
use crate::harness::{Daemon, HANG, RawClient, TestHome};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn log_file(t: &TestHome) -> PathBuf {
    t.home.join("home/default/.local/audit/audit.jsonl")
}

fn head_file(t: &TestHome) -> PathBuf {
    t.home.join("home/default/.local/audit/audit.head")
}

fn audit_field(client: &mut RawClient) -> String {
    let status = client.request("status", json!({"method": "GetStatus"}));
    status["payload"]["data"]["audit"].as_str().unwrap_or_default().to_owned()
}

/// The daemon's audit verdict, once it has one.
fn verdict(t: &TestHome, client: &mut RawClient) -> String {
    let mut audit = String::new();
    let done = t.wait_for(
        || {
            audit = audit_field(client);
            audit != "verifying"
        },
        HANG,
    );
    assert!(done, "still verifying after a minute\n{}", t.log());
    audit
}

/// `astrid stop`, and the daemon's exit.
fn stop(t: &TestHome, daemon: &mut Daemon) {
    let stopped = t.cli(&["stop"]);
    assert_eq!(stopped.status.code(), Some(0), "{}{}", stdout(&stopped), stderr(&stopped));
    let exit = daemon.wait_exit(HANG).expect("the daemon exits");
    assert!(exit.0.success(), "{exit:?}");
}

/// The count an `<action>.repeated` entry carries (`N more since …`).
fn repeats(entry: &Value) -> u64 {
    let rule = entry["rule"].as_str().unwrap_or_default();
    rule.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Entries of `action` on `resource`, and the repeats counted for them.
fn recorded_and_counted(audit: &[Value], action: &str, resource: &str) -> (usize, u64) {
    let on = |e: &&Value| e["resource"] == resource;
    let recorded = audit.iter().filter(|e| e["action"] == action).filter(on).count();
    let repeated = format!("{action}.repeated");
    let counted = audit.iter().filter(|e| e["action"] == repeated.as_str()).filter(on).map(repeats).sum();
    (recorded, counted)
}

#[test]
fn ten_thousand_status_requests_cost_an_entry_and_a_count() {
    let t = TestHome::new();
    let mut daemon = t.daemon(&[]);
    let mut client = t.client();
    let requests = 10_000;
    for _ in 0..requests {
        let reply = client.request("status", json!({"method": "GetStatus"}));
        assert!(reply["payload"]["data"].is_object(), "{reply}");
    }
    drop(client);
    stop(&t, &mut daemon);

    let audit = audit_tail(&t);
    let (recorded, counted) = recorded_and_counted(&audit, "management.GetStatus", "astrid.v1.request.status");
    assert_eq!(recorded, 1, "the first is an entry");
    assert!(counted >= requests - 1, "the rest are counted: {counted}");
    let bytes = std::fs::metadata(log_file(&t)).expect("log").len();
    eprintln!("{requests} GetStatus: {} entries, {bytes} bytes of audit.jsonl", audit.len());
    assert!(audit.len() < 50, "the trail grows with what is new, not with traffic: {} entries", audit.len());
    assert_eq!(t.cli(&["audit", "verify"]).status.code(), Some(0));
}

#[test]
fn a_streamed_answer_costs_entries_per_capability_not_per_word() {
    let t = TestHome::new();
    let words: String = (0..600).map(|i| format!("word{i} ")).collect();
    std::fs::write(t.workspace.join("Cargo.toml"), &words).expect("write");
    let defaults = [("ASTRID_DEFAULT_CAPSULES", "1")];
    let mut daemon = t.daemon_with(&[], &defaults);
    let output = t.cli_with(&["run", "read Cargo.toml"], &defaults);
    assert_eq!(output.status.code(), Some(0), "{}\n{}", stderr(&output), t.log());
    assert!(stdout(&output).contains("word599"), "{}", stdout(&output));
    stop(&t, &mut daemon);

    let audit = audit_tail(&t);
    let (recorded, counted) = recorded_and_counted(&audit, "capability.check", "ipc_publish agent.v1.stream.delta");
    assert_eq!(recorded, 1, "the orchestrator's first delta of the turn is an entry");
    assert!(counted >= 10, "the others are counted: {counted}");
    // What the turn did is there, each thing once: the prompt, the read, the answer.
    assert!(audit.iter().any(|e| e["action"] == "client.input"));
    assert!(audit.iter().any(|e| e["action"] == "capability.check" && e["resource"] == "fs_read Cargo.toml"));
    assert!(audit.iter().any(|e| e["resource"] == "ipc_publish agent.v1.response"));
    eprintln!(
        "one `astrid run \"read Cargo.toml\"` of 600 words: {} entries in all (boot and stop included)",
        audit.len()
    );
    assert!(audit.len() < 200, "{} entries", audit.len());
}

#[test]
fn a_cut_tail_or_a_lost_head_stays_visible_across_restarts_until_acknowledged() {
    for damage in ["cut tail", "deleted head", "garbled head"] {
        let t = TestHome::new();
        let mut daemon = t.daemon(&[]);
        for i in 0..5 {
            assert_eq!(t.cli(&["kv", "set", &format!("k{i}"), "v"]).status.code(), Some(0));
        }
        stop(&t, &mut daemon);
        assert_eq!(t.cli(&["audit", "verify"]).status.code(), Some(0), "{damage}");
        match damage {
            "cut tail" => {
                let text = std::fs::read_to_string(log_file(&t)).expect("log");
                let lines: Vec<&str> = text.lines().collect();
                let kept: String = lines[..lines.len() - 1].iter().map(|l| format!("{l}\n")).collect();
                std::fs::write(log_file(&t), kept).expect("cut");
            }
            "deleted head" => std::fs::remove_file(head_file(&t)).expect("rm head"),
            _ => std::fs::write(head_file(&t), "{\"seq\": garbage").expect("garble head"),
        }
        let verify = t.cli(&["audit", "verify"]);
        assert_eq!(verify.status.code(), Some(1), "{damage}: {}", stdout(&verify));

        // One daemon start and stop: it sees the break, and the break stays.
        let mut daemon = t.daemon(&[]);
        let mut client = t.client();
        let audit = verdict(&t, &mut client);
        assert!(audit.starts_with("default: tampered at entry "), "{damage}: {audit}");
        assert!(stdout(&t.cli(&["status"])).contains("tampered"), "{damage}: astrid status shows it");
        drop(client);
        stop(&t, &mut daemon);
        let verify = t.cli(&["audit", "verify"]);
        assert_eq!(verify.status.code(), Some(1), "{damage} healed: {}", stdout(&verify));
        assert!(stdout(&verify).contains("recorded at entry"), "{damage}: {}", stdout(&verify));

        // The next daemon still shows it, until the operator acknowledges it.
        let mut daemon = t.daemon(&[]);
        let mut client = t.client();
        let audit = verdict(&t, &mut client);
        assert!(audit.contains("not acknowledged"), "{damage}: {audit}");
        let acknowledged = t.cli(&["audit", "acknowledge", "--note", "restored from backup"]);
        assert_eq!(acknowledged.status.code(), Some(0), "{}", stderr(&acknowledged));
        assert!(stdout(&acknowledged).contains("acknowledged the break at entry"), "{}", stdout(&acknowledged));
        assert_eq!(audit_field(&mut client), "intact", "{damage}");
        drop(client);
        stop(&t, &mut daemon);
        let verify = t.cli(&["audit", "verify"]);
        assert_eq!(verify.status.code(), Some(0), "{damage}: {}", stdout(&verify));
        assert!(stdout(&verify).contains("1 acknowledged break"), "{damage}: {}", stdout(&verify));
        let audit = audit_tail(&t);
        let ack = audit.iter().find(|e| e["action"] == "audit.acknowledge").expect("the acknowledgement is audited");
        assert_eq!(ack["rule"], "restored from backup");
        assert_eq!(ack["actor"]["kind"], "client", "{ack}");
        assert_eq!(t.cli(&["audit", "acknowledge"]).status.code(), Some(0), "nothing left is not an error");
    }
}

#[test]
fn a_deleted_log_is_tampering_when_its_head_or_the_key_says_there_was_one() {
    let t = TestHome::new();
    let mut daemon = t.daemon(&[]);
    stop(&t, &mut daemon);
    std::fs::remove_file(log_file(&t)).expect("rm log");
    let verify = t.cli(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(1), "{}", stdout(&verify));
    assert!(!stdout(&verify).contains("no audit log yet"), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("log missing: the head names entry"), "{}", stdout(&verify));

    std::fs::remove_file(head_file(&t)).expect("rm head");
    let verify = t.cli(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(1), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("both were deleted"), "{}", stdout(&verify));

    // A daemon records it, and it stays.
    let mut daemon = t.daemon(&[]);
    let mut client = t.client();
    assert!(verdict(&t, &mut client).contains("both were deleted"), "{}", t.log());
    drop(client);
    stop(&t, &mut daemon);
    assert_eq!(t.cli(&["audit", "verify"]).status.code(), Some(1));
}

#[test]
fn a_trail_that_cannot_be_written_fails_closed_and_says_so_everywhere() {
    let t = TestHome::new();
    let mut daemon = t.daemon(&[]);
    let mut client = t.client();
    assert_eq!(verdict(&t, &mut client), "intact");

    // The log replaced by a directory under the running daemon.
    std::fs::remove_file(log_file(&t)).expect("rm log");
    std::fs::create_dir(log_file(&t)).expect("a directory where the log was");
    let failed = t.wait_for(|| audit_field(&mut client).starts_with("FAILED: "), HANG);
    assert!(failed, "{}\n{}", audit_field(&mut client), t.log());
    assert!(t.logged("AUDIT TRAIL CANNOT BE WRITTEN"), "{}", t.log());
    let refused = |client: &mut RawClient| {
        let reply =
            client.request("kv", json!({"method": "KvSet", "params": {"capsule": null, "key": "k", "value": "v"}}));
        reply["payload"]["status"] == "Error" && reply.to_string().contains("cannot be written")
    };
    assert!(refused(&mut client), "a change is refused while nothing can record it");
    let run = t.cli_with(&["run", "hello"], &[("ASTRID_RESPONSE_TIMEOUT_SECS", "100")]);
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    assert!(stderr(&run).contains("cannot be written"), "a prompt is refused: {}", stderr(&run));
    assert!(stdout(&t.cli(&["status"])).contains("FAILED"), "astrid status says so");
    let verify = t.cli(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(2), "{}{}", stdout(&verify), stderr(&verify));
    drop(client);
    stop(&t, &mut daemon);

    // A daemon that boots onto it refuses from the first request.
    let mut daemon = t.daemon(&[]);
    let mut client = t.client();
    assert!(audit_field(&mut client).starts_with("FAILED: "), "{}", audit_field(&mut client));
    assert!(refused(&mut client));
    assert_eq!(t.cli(&["audit", "verify"]).status.code(), Some(2));

    // Once the log can be written again the trail recovers, and what happened meanwhile is
    // a break to acknowledge.
    std::fs::remove_dir(log_file(&t)).expect("rmdir");
    let recovered = t.wait_for(|| !audit_field(&mut client).starts_with("FAILED"), HANG);
    assert!(recovered, "{}", t.log());
    assert!(verdict(&t, &mut client).contains("not acknowledged"), "{}", audit_field(&mut client));
    assert!(!refused(&mut client), "changes are served again");
    let verify = t.cli(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(1), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("could not be written between"), "{}", stdout(&verify));
    assert_eq!(t.cli(&["audit", "acknowledge", "--note", "disk replaced"]).status.code(), Some(0));
    drop(client);
    stop(&t, &mut daemon);
    assert_eq!(t.cli(&["audit", "verify"]).status.code(), Some(0));
}

#[test]
fn stop_does_not_wait_for_the_verification_of_a_long_log() {
    let t = TestHome::new();
    let mut daemon = t.daemon(&[]);
    stop(&t, &mut daemon);
    // A long log: the daemon's own entries again and again before its last one. Every line
    // is signed, so each costs a full check; the end (last entry, head) is as it was.
    let text = std::fs::read_to_string(log_file(&t)).expect("log");
    let lines: Vec<&str> = text.lines().collect();
    let (last, body) = lines.split_last().expect("entries");
    let mut verifying = false;
    for copies in [40_000, 160_000] {
        let mut long = String::new();
        let mut written = 0;
        while written < copies {
            for line in body.iter().chain(std::iter::once(last)) {
                long.push_str(line);
                long.push('\n');
                written += 1;
            }
        }
        long.push_str(last);
        long.push('\n');
        std::fs::write(log_file(&t), &long).expect("write");
        drop(long);
        let mut daemon = t.daemon(&[]);
        let mut client = t.client();
        verifying = audit_field(&mut client) == "verifying";
        drop(client);
        if verifying {
            stop(&t, &mut daemon);
            let log = t.log();
            assert!(log.contains("cancelled by the shutdown"), "{log}");
            break;
        }
        // This machine verified it before we could ask: a longer log.
        stop(&t, &mut daemon);
    }
    assert!(verifying, "the verification was never seen running");
}
