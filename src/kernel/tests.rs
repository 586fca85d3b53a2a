//! The kernel in-process, over real stores in a temp home: capability decisions end to end.

use super::*;
use crate::audit::{ChainStatus, tail};
use crate::store::KvConfig;

fn kernel(tmp: &tempfile::TempDir) -> Arc<Kernel> {
    kernel_in(tmp.path())
}

/// A kernel over fresh stores under `root`, with one capsule `fs` discovered in its workspace.
pub(super) fn kernel_in(root: &std::path::Path) -> Arc<Kernel> {
    let home = AstridHome::at(root.join("h"));
    home.ensure().expect("ensure");
    let workspace = root.join("ws");
    crate::kernel::install::install_for_test(
        &workspace.join(".astrid/capsules"),
        "[package]\nname = \"fs\"\nversion = \"0.1.0\"\n[capabilities]\nfs_read = [\"cwd://src\"]\n",
        None,
    );
    let state = KernelState {
        store: KvStore::open(&home, KvConfig::default()).expect("store"),
        audit: AuditTrail::open(&home).expect("audit"),
        vfs: Vfs::open(&workspace, &home.overlay_dir(&workspace)).expect("vfs"),
    };
    let config = KernelConfig {
        session: uuid::Uuid::nil(),
        workspace,
        home,
        ephemeral: false,
        default_capsules: false,
        provider: Default::default(),
    };
    Kernel::new(config, state)
}

#[test]
fn capabilities_are_denied_until_the_exact_set_is_approved_and_every_decision_is_audited() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kernel = kernel(&tmp);
    kernel.reload_capsules();
    let read_src = Capability::FsRead("src/lib.rs");
    assert!(!kernel.check_capability("default", "fs", &read_src), "pending grant must deny");
    let pending = kernel.grants().pending_list();
    assert_eq!(pending.len(), 1);
    assert!(kernel.grants().approve(&pending[0].request_id, "not-the-fingerprint").is_err());
    kernel.grants().approve(&pending[0].request_id, &pending[0].fingerprint).expect("approve");
    kernel.refresh_grants();
    assert!(kernel.check_capability("default", "fs", &read_src));
    assert!(!kernel.check_capability("default", "fs", &Capability::FsWrite("src/lib.rs")), "not requested");
    assert!(!kernel.check_capability("default", "ghost", &read_src), "unknown capsule");

    // A changed manifest asks again.
    std::fs::write(
        tmp.path().join("ws/.astrid/capsules/fs/Capsule.toml"),
        "[package]\nname = \"fs\"\nversion = \"0.1.0\"\n[capabilities]\nfs_read = [\"cwd://src\"]\nfs_write = [\"*\"]\n",
    )
    .expect("manifest");
    kernel.reload_capsules();
    assert!(!kernel.check_capability("default", "fs", &read_src), "a wider request voids the old grant");

    kernel.flush();
    let entries = tail(&crate::audit::audit_dir(&kernel.config().home, "default"), 100).expect("tail");
    let checks: Vec<_> = entries.iter().filter(|e| e.action == "capability.check").collect();
    assert_eq!(checks.len(), 5);
    assert_eq!(checks.iter().filter(|e| e.decision == Decision::Allow).count(), 1);
    assert!(checks.iter().any(|e| e.rule.contains("pending operator approval")));
    assert!(checks.iter().any(|e| e.rule.starts_with("grant ") && e.rule.ends_with("fs_read:cwd://src")));
    let verified = kernel.audit.verify_all().expect("verify");
    assert!(verified.iter().all(|(_, r)| r.status == ChainStatus::Intact));
}

/// Waits (polling) until `condition` holds; false after 10 s.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    condition()
}

fn approved(tmp: &tempfile::TempDir) -> Arc<Kernel> {
    let kernel = kernel(tmp);
    kernel.reload_capsules();
    let pending = kernel.grants().pending_list();
    kernel.grants().approve(&pending[0].request_id, &pending[0].fingerprint).expect("approve");
    kernel.refresh_grants();
    kernel
}

#[test]
fn a_repeated_allow_is_one_entry_and_a_count_and_a_deny_is_an_entry_every_time() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kernel = approved(&tmp);
    let scope = routine::Scope { instance: uuid::Uuid::new_v4(), turn: Some(uuid::Uuid::new_v4()) };
    let read = Capability::FsRead("src/lib.rs");
    for _ in 0..500 {
        assert!(kernel.check_capability_for(Some(scope), "default", "fs", &read));
        assert!(!kernel.check_capability_for(Some(scope), "default", "fs", &Capability::FsRead("secret")));
    }
    let next_turn = routine::Scope { turn: Some(uuid::Uuid::new_v4()), ..scope };
    assert!(kernel.check_capability_for(Some(next_turn), "default", "fs", &read), "another turn shows it again");
    kernel.summarize_routine();
    kernel.flush();
    let entries = tail(&crate::audit::audit_dir(&kernel.config().home, "default"), 10_000).expect("tail");
    let of = |action: &str, resource: &str| -> Vec<&crate::audit::AuditEntry> {
        entries.iter().filter(|e| e.action == action && e.resource == resource).collect()
    };
    assert_eq!(of("capability.check", "fs_read src/lib.rs").len(), 2, "once per turn");
    let repeated = of("capability.check.repeated", "fs_read src/lib.rs");
    assert_eq!(repeated.len(), 1);
    assert!(repeated[0].rule.starts_with("499 more since "), "{}", repeated[0].rule);
    assert!(repeated[0].rule.ends_with("fs_read:cwd://src"), "the grant that allowed them: {}", repeated[0].rule);
    let denials = of("capability.check", "fs_read secret");
    assert_eq!(denials.len(), 500, "every deny is an entry");
    assert!(denials.iter().all(|e| e.decision == Decision::Deny));
}

#[test]
fn while_the_trail_cannot_be_written_every_capability_is_denied() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kernel = approved(&tmp);
    let read = Capability::FsRead("src/lib.rs");
    assert!(kernel.check_capability("default", "fs", &read));
    kernel.flush();
    let log = crate::audit::audit_dir(&kernel.config().home, "default").join(crate::audit::LOG_FILE);
    std::fs::remove_file(&log).expect("rm");
    std::fs::create_dir(&log).expect("a directory where the log was");
    assert!(eventually(|| kernel.audit_writable().is_err()), "the writer notices");
    assert!(!kernel.check_capability("default", "fs", &read), "fail closed");
    let status = kernel.status().audit.unwrap_or_default();
    assert!(status.starts_with("FAILED: "), "{status}");
    std::fs::remove_dir(&log).expect("rmdir");
    assert!(eventually(|| kernel.audit_writable().is_ok()), "and recovers");
    assert!(kernel.check_capability("default", "fs", &read));
}

#[test]
fn a_request_published_the_moment_the_kernel_starts_is_answered() {
    // On a current-thread runtime nothing spawned runs before this test's task yields: the
    // request below is published before the router's task has ever been polled, as a client
    // quick after `system.ready` can on a busy machine. It must still have a subscriber.
    let tmp = tempfile::tempdir().expect("tempdir");
    let kernel = kernel(&tmp);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let _router = kernel.start();
        let mut client = kernel.bus().subscribe_as("client#1", bus::SubscriberKind::Client, &["astrid.v1.response.*"]);
        let origin = Origin::Client { subscriber: client.id(), connection: 1 };
        let request = IpcPayload::RawJson(serde_json::json!({"method": "GetStatus"}));
        let message = crate::types::IpcMessage::new("astrid.v1.request.first", request, uuid::Uuid::nil());
        assert_eq!(kernel.bus().publish(BusMessage::from(origin, message)), 1, "the router is subscribed");
        let reply = tokio::time::timeout(std::time::Duration::from_secs(60), client.recv())
            .await
            .expect("answered")
            .expect("a reply");
        assert_eq!(reply.message.topic, "astrid.v1.response.first");
    });
}
