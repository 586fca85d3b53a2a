//! Kernel state through the real binary: KV durability across SIGKILL, capability grants,
//! the audit trail and the workspace overlay.

use astrid::home::AstridHome;
use astrid::types::management::{CapabilityListing, KvValue};
use astrid::vfs::{Vfs, VfsPath};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::harness::{HANG, TestHome, reply_data};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn acknowledged_kv_writes_survive_a_sigkill() {
    let t = TestHome::new();
    let mut daemon = t.daemon(&[]);
    let mut client = t.client();
    for i in 0..50 {
        let reply = client.request(
            "kv",
            json!({"method": "KvSet", "params": {"capsule": null, "key": format!("k{i}"), "value": format!("v{i}")}}),
        );
        assert_eq!(reply["payload"]["status"], "Success", "{reply}");
    }
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(HANG).expect("killed");
    let _again = t.daemon(&[]);
    let mut client = t.client();
    for i in 0..50 {
        let reply =
            client.request("kv", json!({"method": "KvGet", "params": {"capsule": null, "key": format!("k{i}")}}));
        let found: KvValue = reply_data(&reply);
        assert_eq!(found.value, Some(format!("v{i}")), "k{i} lost");
    }
    // The CLI speaks the same requests.
    assert_eq!(stdout(&t.cli(&["kv", "get", "k7"])).trim(), "v7");
    assert_eq!(t.cli(&["kv", "get", "missing"]).status.code(), Some(1));
    assert_eq!(t.cli(&["kv", "set", "--capsule", "echo", "n", "1"]).status.code(), Some(0));
    assert_eq!(stdout(&t.cli(&["kv", "list", "--capsule", "echo"])).trim(), "n");
    assert_eq!(stdout(&t.cli(&["kv", "get", "n"])).trim(), "", "capsule and operator namespaces are separate");
    let bad = t.cli(&["kv", "set", &"k".repeat(300), "v"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("exceeds 256 bytes"));
}

/// The principal a request acts for is the connection's, never a `principal` the client
/// wrote into its frame: a write "as alice" lands in the connection's own namespace.
#[test]
fn a_client_cannot_act_as_another_principal_by_writing_one() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    client.send_json(&json!({
        "topic": "astrid.v1.request.kv",
        "principal": "alice",
        "payload": {"type": "raw_json", "method": "KvSet", "params": {"capsule": null, "key": "who", "value": "mallory"}},
    }));
    let reply = client.reply("kv");
    assert_eq!(reply["payload"]["status"], "Success", "{reply}");
    assert_eq!(stdout(&t.cli(&["kv", "get", "who"])).trim(), "mallory", "written for the connection's principal");
    assert!(!t.home.join("home/alice").exists(), "nothing was made for the principal the client named");
}

fn caps(t: &TestHome) -> CapabilityListing {
    let output = t.cli(&["caps", "list", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("a CapabilityListing")
}

#[test]
fn capability_grants_need_approval_persist_and_are_asked_again_when_the_manifest_changes() {
    let t = TestHome::new();
    let capsules = t.workspace.join(".astrid/capsules");
    TestHome::write_capsule(
        &capsules,
        "fs",
        "[package]\nname = \"fs\"\nversion = \"0.1.0\"\n[capabilities]\nfs_read = [\"cwd://src\"]\n",
    );
    assert_eq!(t.cli(&["start"]).status.code(), Some(0));
    let pending = caps(&t).pending;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].capabilities, ["fs_read:cwd://src"]);
    let approved = t.cli(&["caps", "approve", &pending[0].request_id]);
    assert_eq!(approved.status.code(), Some(0), "{}", String::from_utf8_lossy(&approved.stderr));
    assert_eq!(caps(&t).grants[0].capsule, "fs");

    // A restart keeps the grant (flushed to the store), with nothing pending.
    assert_eq!(t.cli(&["restart"]).status.code(), Some(0));
    let listing = caps(&t);
    assert_eq!(listing.grants.len(), 1);
    assert!(listing.pending.is_empty());

    // Asking for more voids nothing silently: a new request appears.
    TestHome::write_capsule(
        &capsules,
        "fs",
        "[package]\nname = \"fs\"\nversion = \"0.1.0\"\n[capabilities]\nfs_read = [\"cwd://src\"]\nnet = [\"example.com\"]\n",
    );
    let mut client = t.client();
    assert_eq!(client.request("reload", json!({"method": "ReloadCapsules"}))["payload"]["status"], "Success");
    assert_eq!(caps(&t).pending.len(), 1);

    // Revoking is audited and takes effect.
    assert_eq!(t.cli(&["caps", "revoke", "fs"]).status.code(), Some(0));
    assert!(caps(&t).grants.is_empty());
    assert_eq!(t.cli(&["caps", "revoke", "fs"]).status.code(), Some(1), "nothing left to revoke");
    assert_eq!(t.cli(&["stop"]).status.code(), Some(0));
    let tail = stdout(&t.cli(&["audit", "tail", "-n", "200", "--json"]));
    for action in ["capability.grant", "capability.revoke", "capsule.discovered", "daemon.start", "daemon.stop"] {
        assert!(tail.contains(&format!("\"action\":\"{action}\"")), "{action} not audited");
    }
}

#[test]
fn the_audit_trail_verifies_and_tampering_is_named() {
    let t = TestHome::new();
    let mut daemon = t.daemon(&[]);
    let mut client = t.client();
    let mut audit = || client.request("status", json!({"method": "GetStatus"}))["payload"]["data"]["audit"].clone();
    assert!(t.wait_for(|| audit() != "verifying", HANG));
    assert_eq!(audit(), "intact");
    for _ in 0..5 {
        client.request("list", json!({"method": "ListCapsules"}));
    }
    drop(client);
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(HANG).expect("exit");

    let verify = t.cli(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
    assert!(stdout(&verify).starts_with("default: intact ("), "{}", stdout(&verify));
    let tail = t.cli(&["audit", "tail", "-n", "3", "--json"]);
    let entries: Vec<Value> = stdout(&tail).lines().map(|l| serde_json::from_str(l).expect("entry")).collect();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2]["action"], "daemon.stop");
    assert!(stdout(&t.cli(&["audit", "tail"])).contains("management.ListCapsules"));

    // Flip one byte in the third entry.
    let log = t.home.join("home/default/.local/audit/audit.jsonl");
    let text = std::fs::read_to_string(&log).expect("log");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = lines[2].replacen("\"decision\":\"", "\"decision\":\"x", 1);
    std::fs::write(&log, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
    let verify = t.cli(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(stdout(&verify).contains("TAMPERED at entry 3"), "{}", stdout(&verify));

    // The next daemon boots anyway, says so loudly and shows it in status.
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    let mut audit = || client.request("status", json!({"method": "GetStatus"}))["payload"]["data"]["audit"].clone();
    assert!(t.wait_for(|| audit() != "verifying", HANG));
    assert!(audit().as_str().is_some_and(|a| a.starts_with("default: tampered at entry 3 (")), "{}", audit());
    assert!(t.logged("AUDIT CHAIN OF default IS BROKEN at entry 3"), "{}", t.log());

    std::fs::remove_file(t.home.join("keys/runtime.key")).expect("rm key");
    assert_eq!(t.cli(&["audit", "verify"]).status.code(), Some(2), "no key is an error, not a verdict");
}

#[test]
fn pending_workspace_changes_are_reviewed_then_committed_or_discarded() {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("notes.txt"), "old line\n").expect("write");
    // Capsule writes arrive through the VFS into the daemon's overlay (written here in-process,
    // as the capsule host will); the daemon picks them up from disk.
    let workspace = t.workspace.canonicalize().expect("canon");
    let overlay = AstridHome::at(&t.home).overlay_dir(&workspace);
    {
        let vfs = Vfs::open(&workspace, &overlay).expect("vfs");
        vfs.write(&VfsPath::parse("notes.txt").expect("path"), b"new line\n").expect("write");
        vfs.write(&VfsPath::parse("src/new.rs").expect("path"), b"fn main() {}\n").expect("write");
    }
    let _daemon = t.daemon(&["-w", workspace.to_str().expect("utf8")]);
    let diff = stdout(&t.cli(&["workspace", "diff"]));
    assert!(diff.contains("--- a/notes.txt\n+++ b/notes.txt") && diff.contains("-old line\n+new line"), "{diff}");
    assert!(diff.contains("+++ b/src/new.rs"), "{diff}");
    assert_eq!(
        std::fs::read_to_string(t.workspace.join("notes.txt")).expect("read"),
        "old line\n",
        "nothing applied yet"
    );
    let commit = t.cli(&["workspace", "commit"]);
    assert_eq!(commit.status.code(), Some(0));
    assert!(stdout(&commit).contains("2 change(s) committed"), "{}", stdout(&commit));
    assert_eq!(std::fs::read_to_string(t.workspace.join("notes.txt")).expect("read"), "new line\n");
    assert!(t.workspace.join("src/new.rs").exists());
    assert_eq!(stdout(&t.cli(&["workspace", "diff"])), "");
    assert!(stdout(&t.cli(&["audit", "tail", "-n", "20"])).contains("workspace.commit.modified notes.txt"));
    {
        let vfs = Vfs::open(&workspace, &overlay).expect("vfs");
        vfs.write(&VfsPath::parse("scratch.txt").expect("path"), b"x").expect("write");
    }
    assert!(stdout(&t.cli(&["workspace", "discard"])).contains("1 change(s) discarded"));
    assert!(!t.workspace.join("scratch.txt").exists());
}
