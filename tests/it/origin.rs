//! Who put a message on the bus decides who is answered and who the audit trail names: a
//! capsule's management request is the capsule's, answered to it alone, in the real daemon
//! with a real (inline WAT) capsule.

use serde_json::{Value, json};

use crate::bounds::write_capsule;
use crate::capsules::audit_until;
use crate::harness::TestHome;

/// A run loop that subscribes to `astrid.v1.response.*`, publishes `request` (a management
/// request's JSON, under 64 bytes) on `astrid.v1.request.status`, and forwards the first
/// message it receives, whole, on `agent.v1.response` (which every client sees), then idles
/// until it is stopped.
fn asker(request: &str) -> Vec<u8> {
    assert!(request.len() < 64, "the request must fit its data segment");
    let escaped = request.replace('"', "\\\"");
    let wat = ASKER.replace("{REQUEST}", &escaped).replace("{REQUEST_LEN}", &request.len().to_string());
    wat::parse_str(wat).expect("wat")
}

/// Installs, with consent, an asker granted the management topics and `agent.v1.response`.
pub(crate) fn install_asker(t: &TestHome, request: &str) {
    let dir = t.workspace.join("asker");
    let grant = "[capabilities]\nipc_publish = [\"astrid.v1.request.*\", \"agent.v1.response\"]\n\
                 ipc_subscribe = [\"astrid.v1.response.*\"]\n";
    write_capsule(&dir, "asker", &asker(request), grant);
    let installed = t.cli(&["capsule", "install", dir.to_str().expect("utf8"), "--yes"]);
    assert_eq!(installed.status.code(), Some(0), "{}", String::from_utf8_lossy(&installed.stderr));
}

const ASKER: &str = r#"(module
    (import "astrid" "ipc_subscribe" (func $subscribe (param i32 i32) (result i32)))
    (import "astrid" "ipc_publish" (func $publish (param i32 i32 i32 i32) (result i32)))
    (import "astrid" "ipc_recv" (func $recv (param i32 i32) (result i64)))
    (import "astrid" "signal_ready" (func $ready))
    (memory (export "memory") 4)
    (global $next (mut i32) (i32.const 4096))
    (data (i32.const 0) "astrid.v1.response.*")
    (data (i32.const 32) "astrid.v1.request.status")
    (data (i32.const 64) "{REQUEST}")
    (data (i32.const 128) "agent.v1.response")
    (func (export "astrid_alloc") (param $len i32) (result i32)
        global.get $next
        global.get $next local.get $len i32.add global.set $next)
    (func (export "run") (local $replies i32) (local $got i64)
        (local.set $replies (call $subscribe (i32.const 0) (i32.const 20)))
        (call $ready)
        (drop (call $publish (i32.const 32) (i32.const 24) (i32.const 64) (i32.const {REQUEST_LEN})))
        (local.set $got (call $recv (local.get $replies) (i32.const 60000)))
        (if (i64.gt_s (local.get $got) (i64.const 0))
            (then (drop (call $publish (i32.const 128) (i32.const 17)
                (i32.wrap_i64 (i64.shr_u (local.get $got) (i64.const 32)))
                (i32.wrap_i64 (local.get $got))))))
        (block $stopped
            (loop $idle
                (br_if $stopped (i64.eq (call $recv (local.get $replies) (i32.const 60000)) (i64.const -5)))
                (br $idle)))))"#;

#[test]
fn a_capsules_management_request_is_audited_as_the_capsule_and_answered_to_it_alone() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    // A client subscribed to every management reply (as every client is). Its own request
    // proves its subscription is live before the capsule asks anything.
    let mut bystander = t.client();
    let own = bystander.request("status", json!({"method": "GetStatus"}));
    assert!(own["payload"]["data"].is_object(), "{own}");

    install_asker(&t, r#"{"type":"raw_json","method":"GetStatus"}"#);

    // The capsule got the daemon's answer: it forwards what it received. The bus keeps each
    // subscriber's messages in publish order and the reply was published before the capsule
    // could forward it, so had the reply been broadcast, the bystander would have read it
    // before the forward.
    let forwarded = loop {
        let frame = bystander.read_json().unwrap_or_else(|| panic!("connection closed\n{}", t.log()));
        let topic = frame["topic"].as_str().unwrap_or_default().to_owned();
        assert!(!topic.starts_with("astrid.v1.response."), "the capsule's reply reached a client: {frame}");
        if topic == "agent.v1.response" && frame["payload"]["topic"] == "astrid.v1.response.status" {
            break frame["payload"].clone();
        }
    };
    let status = &forwarded["payload"];
    let loaded: Vec<String> = serde_json::from_value(status["data"]["loaded_capsules"].clone()).expect("names");
    assert!(loaded.iter().any(|name| name == "asker"), "the capsule read the daemon's status: {status}");

    // The audit trail names the capsule, not the kernel or the operator, for its request.
    let asked_by = |audit: &[Value], kind: &str| {
        audit.iter().any(|e| {
            e["action"] == "management.GetStatus"
                && e["resource"] == "astrid.v1.request.status"
                && e["actor"]["kind"] == kind
                && (kind != "capsule" || e["actor"]["name"] == "asker")
        })
    };
    let audit = audit_until(&t, |audit| asked_by(audit, "capsule"));
    assert!(asked_by(&audit, "capsule"), "{audit:#?}");
    assert!(!asked_by(&audit, "kernel"), "nothing was asked as the kernel: {audit:#?}");
}

#[test]
fn a_capsule_granted_the_management_topics_may_read_but_never_change_the_system() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut bystander = t.client();
    let own = bystander.request("status", json!({"method": "GetStatus"}));
    assert!(own["payload"]["data"].is_object(), "{own}");

    install_asker(&t, r#"{"type":"raw_json","method":"WorkspaceDiscard"}"#);

    let forwarded = loop {
        let frame = bystander.read_json().unwrap_or_else(|| panic!("connection closed\n{}", t.log()));
        if frame["topic"] == "agent.v1.response" && frame["payload"]["topic"] == "astrid.v1.response.status" {
            break frame["payload"]["payload"].clone();
        }
    };
    assert_eq!(forwarded["status"], "Error", "{forwarded}");
    let reason = forwarded["data"].as_str().unwrap_or_default();
    assert!(reason.contains("WorkspaceDiscard") && reason.contains("operator"), "{reason}");

    let refused = |audit: &[Value]| {
        audit.iter().any(|e| {
            e["action"] == "management.WorkspaceDiscard"
                && e["decision"] == "deny"
                && e["actor"]["kind"] == "capsule"
                && e["actor"]["name"] == "asker"
        })
    };
    let audit = audit_until(&t, refused);
    assert!(refused(&audit), "{audit:#?}");
    assert!(!audit.iter().any(|e| e["action"] == "workspace.discard"), "nothing was discarded: {audit:#?}");
}
