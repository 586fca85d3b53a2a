//! The management API over the real socket: every request, its refusals, and Shutdown.

use std::time::Duration;

use astrid::types::management::{CapabilityListing, GrantApproved};
use astrid::types::{DaemonStatus, KernelResponse};
use serde_json::{Value, json};

use crate::harness::{HANG, TestHome, reply_data};

fn payload(reply: &Value) -> KernelResponse {
    serde_json::from_value(reply["payload"].clone()).expect("payload is a KernelResponse")
}

#[test]
fn get_status_tells_the_truth() {
    let t = TestHome::new();
    let daemon = t.daemon(&[]);
    let mut a = t.client();
    let _b = t.client();
    // Each connection is counted as it is authenticated: wait for both rather than for a while.
    let mut status = None;
    let counted = t.wait_for(
        || {
            let KernelResponse::Status(now) = payload(&a.request("status", json!({"method": "GetStatus"}))) else {
                panic!("not a status")
            };
            let both = now.connected_clients == 2;
            status = Some(now);
            both
        },
        HANG,
    );
    assert!(counted, "hung: {status:?}");
    let status = status.expect("a status");
    let DaemonStatus { pid, version, ephemeral, connected_clients, connections_by_principal, loaded_capsules, .. } =
        *status;
    assert_eq!(pid, daemon.pid() as u32);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert!(!ephemeral);
    assert_eq!(connected_clients, 2);
    assert_eq!(connections_by_principal.len(), 1);
    assert_eq!(connections_by_principal[0].count, 2);
    assert_eq!(loaded_capsules, vec!["astrid-capsule-cli"]);
}

#[test]
fn capsule_listing_commands_and_metadata() {
    let t = TestHome::new();
    let installed = t.home.join("home/default/.local/capsules");
    TestHome::write_capsule(
        &installed,
        "react",
        "[package]\nname = \"react\"\nversion = \"0.1.0\"\n\n[[command]]\nname = \"/plan\"\ndescription = \"Make a plan\"\n\n[[interceptor]]\nevent = \"user.v1.prompt\"\n",
    );
    TestHome::write_raw_capsule(&installed, "broken", "[package\n");
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    let listed = client.request("list_capsules", json!({"method": "ListCapsules"}));
    assert_eq!(listed["payload"], json!({"status": "Success", "data": ["astrid-capsule-cli", "broken", "react"]}));
    let commands = client.request("get_commands", json!({"method": "GetCommands"}));
    assert_eq!(
        commands["payload"],
        json!({"status": "Commands", "data": [{"name": "/plan", "description": "Make a plan", "provider_capsule": "react"}]})
    );
    let metadata = client.request("metadata", json!({"method": "GetCapsuleMetadata"}));
    assert_eq!(
        metadata["payload"],
        json!({"status": "CapsuleMetadata", "data": [
            {"name": "astrid-capsule-cli", "interceptor_events": []},
            {"name": "react", "interceptor_events": ["user.v1.prompt"]}
        ]})
    );
    assert!(t.logged("broken"), "the failed capsule is reported in the log");
}

#[test]
fn reload_rescans_both_directories_and_announces_it() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    TestHome::write_capsule(
        &t.workspace.join(".astrid/capsules"),
        "late",
        "[package]\nname = \"late\"\nversion = \"0.1.0\"\n",
    );
    client.send_request("reload_capsules", json!({"method": "ReloadCapsules"}));
    // The reply travels in the control lane and may overtake the announcement: read both.
    let (mut saw_announcement, mut saw_reply) = (false, false);
    while !(saw_announcement && saw_reply) {
        let frame = client.read_json().expect("frame");
        if frame["topic"] == "astrid.v1.capsules_loaded" {
            assert_eq!(frame["payload"], json!({"status": "ready"}));
            saw_announcement = true;
        }
        if frame["topic"] == "astrid.v1.response.reload_capsules" {
            assert_eq!(frame["payload"], json!({"status": "Success", "data": {"status": "reloaded"}}));
            saw_reply = true;
        }
    }
    assert!(saw_announcement);
    let listed: Vec<String> = reply_data(&client.request("list", json!({"method": "ListCapsules"})));
    assert_eq!(listed, ["astrid-capsule-cli", "late"]);
}

#[test]
fn install_capsule_asks_for_approval_and_approve_capability_completes_it() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    let install = |source: &str| json!({"method": "InstallCapsule", "params": {"source": source, "workspace": true}});
    let KernelResponse::Error(message) = payload(&client.request("install", install("./x"))) else {
        panic!("not an error")
    };
    assert!(message.contains("absolute path"), "{message}");
    let KernelResponse::Error(message) = payload(&client.request("install", install("/nonexistent/capsule"))) else {
        panic!("not an error")
    };
    assert!(message.contains("not a capsule"), "{message}");

    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("capsules-examples/hello");
    let reply = payload(&client.request("install", install(example.to_str().expect("utf8"))));
    let KernelResponse::ApprovalRequired { request_id, description, capabilities } = reply else {
        panic!("expected ApprovalRequired, got {reply:?}")
    };
    assert!(description.starts_with("hello 0.1.0 requests"), "{description}");
    assert_eq!(capabilities, vec!["ipc_publish:agent.v1.response", "ipc_subscribe:user.v1.prompt"]);
    assert!(t.workspace.join(".astrid/capsules/hello/meta.json").is_file(), "installed into the workspace");

    let approve = |signature: &str| json!({"method": "ApproveCapability", "params": {"request_id": request_id, "signature": signature}});
    let KernelResponse::Error(message) = payload(&client.request("approve", approve("not-the-fingerprint"))) else {
        panic!("not an error")
    };
    assert!(message.contains("signature does not match"), "{message}");
    let listing: CapabilityListing = reply_data(&client.request("caps", json!({"method": "ListCapabilities"})));
    let fingerprint = listing.pending[0].fingerprint.clone();
    let granted: GrantApproved = reply_data(&client.request("approve", approve(&fingerprint)));
    assert_eq!(granted.capsule, "hello");
    let unknown = json!({"method": "ApproveCapability", "params": {"request_id": "r", "signature": "s"}});
    let KernelResponse::Error(message) = payload(&client.request("approve", unknown)) else { panic!("not an error") };
    assert_eq!(message, "no pending capability request r");
}

#[test]
fn malformed_and_untagged_requests_get_an_error_reply() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    // `Shutdown` without params does not parse (adjacent tagging): say so, and stay up.
    let KernelResponse::Error(message) = payload(&client.request("shutdown", json!({"method": "Shutdown"}))) else {
        panic!("not an error")
    };
    assert!(message.starts_with("malformed management request"), "{message}");
    let KernelResponse::Error(message) = payload(&client.request("x", json!({"method": "Frobnicate"}))) else {
        panic!("not an error")
    };
    assert!(message.contains("Frobnicate"), "{message}");
    // A bare payload (no raw_json tag) becomes Custom: the reference drops it silently.
    client.send_json(&json!({"topic": "astrid.v1.request.bare", "payload": {"method": "GetStatus"}}));
    let KernelResponse::Error(message) = payload(&client.reply("bare")) else { panic!("not an error") };
    assert!(message.contains("raw_json"), "{message}");
    assert_eq!(client.request("status", json!({"method": "GetStatus"}))["payload"]["status"], "Status");
}

#[test]
fn replies_go_only_to_the_requester() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut asker = t.client();
    let mut bystander = t.client();
    assert_eq!(asker.request("status", json!({"method": "GetStatus"}))["payload"]["status"], "Status");
    bystander.stream.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let mut buf = [0u8; 1];
    assert!(std::io::Read::read(&mut bystander.stream, &mut buf).is_err(), "the bystander received a reply");
}

#[test]
fn shutdown_replies_first_then_cleans_up_and_exits_zero() {
    let t = TestHome::new();
    let mut daemon = t.daemon(&[]);
    let mut client = t.client();
    let mut other = t.client();
    let reply = client.request("shutdown", json!({"method": "Shutdown", "params": {"reason": "test over"}}));
    assert_eq!(reply["payload"], json!({"status": "Success", "data": {"status": "shutting_down"}}));
    assert!(client.closed());
    assert!(other.closed(), "every connection is closed at shutdown");
    let (status, _) = daemon.wait_exit(HANG).expect("exit");
    assert!(status.success());
    assert_eq!(t.run_files_exist(), [false; 3]);
    assert!(t.log().contains("shutting down: Shutdown request (test over)"), "{}", t.log());
}

#[test]
fn reload_is_rate_limited_with_a_reply() {
    // Reload is limited to 5 per minute; the sixth gets an Error on the response topic.
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    for _ in 0..5 {
        assert_eq!(client.request("reload", json!({"method": "ReloadCapsules"}))["payload"]["status"], "Success");
    }
    let KernelResponse::Error(message) = payload(&client.request("reload", json!({"method": "ReloadCapsules"}))) else {
        panic!("not rate limited")
    };
    assert_eq!(message, "Rate limited: max 5 ReloadCapsules requests per minute");
}

#[test]
fn the_shipped_example_manifest_is_discovered() {
    let t = TestHome::new();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("capsules-examples/hello");
    astrid::kernel::install::install(&example, &t.workspace.join(".astrid/capsules")).expect("install");
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    let commands = client.request("get_commands", json!({"method": "GetCommands"}));
    assert_eq!(
        commands["payload"]["data"],
        json!([{"name": "/hello", "description": "Say hello", "provider_capsule": "hello"}])
    );
    let status = client.request("status", json!({"method": "GetStatus"}));
    assert_eq!(
        status["payload"]["data"]["loaded_capsules"],
        json!(["astrid-capsule-cli"]),
        "not running before approval"
    );
}
