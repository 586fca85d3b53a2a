//! Each limit has a test that fails if the limit is removed.

use std::time::{Duration, Instant};

use super::*;
use crate::wasm::KvStatus;

fn load(wat: &str, limits: SandboxLimits) -> Result<Sandbox, SandboxError> {
    let wasm = wat::parse_str(wat).expect("valid WAT");
    Sandbox::load("test", &wasm, limits)
}

/// How long a test waits for a thread that must finish before calling it hung (a guard only:
/// no test asserts how fast anything is).
const HANG_GUARD: Duration = Duration::from_secs(60);

/// `runner`'s result, or the test fails as hung after [`HANG_GUARD`].
fn join_within_hang_guard<T>(runner: std::thread::JoinHandle<T>) -> T {
    let waited = Instant::now();
    while !runner.is_finished() {
        assert!(waited.elapsed() < HANG_GUARD, "hung: the instance never returned");
        std::thread::sleep(Duration::from_millis(10));
    }
    runner.join().expect("runner")
}

/// Waits (up to [`HANG_GUARD`]) until the guest running under `lifecycle` signalled ready.
fn wait_ready(lifecycle: &crate::wasm::Lifecycle) {
    let waited = Instant::now();
    while !lifecycle.is_ready() {
        assert!(waited.elapsed() < HANG_GUARD, "hung: the guest never signalled ready");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn quick() -> SandboxLimits {
    SandboxLimits { deadline: Duration::from_millis(300), ..SandboxLimits::default() }
}

#[test]
fn a_well_behaved_capsule_runs_and_calls_the_host() {
    let mut sandbox = load(
        r#"(module
            (import "astrid" "log" (func $log (param i32 i32)))
            (memory (export "memory") 1)
            (data (i32.const 8) "hello from wasm")
            (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
            (func (export "greet") i32.const 8 i32.const 15 call $log))"#,
        quick(),
    )
    .expect("load");
    assert_eq!(sandbox.call::<(i32, i32), i32>("add", (2, 40)).expect("add"), 42);
    // The line reaches the daemon log: `a_guest_log_line_reaches_the_daemon_log_wherever_it_runs`.
    sandbox.call::<(), ()>("greet", ()).expect("greet");
}

#[test]
fn a_spinning_capsule_is_stopped_at_its_deadline_and_poisoned() {
    let mut sandbox = load(r#"(module (func (export "spin") (loop br 0)))"#, quick()).expect("load");
    let err = sandbox.call::<(), ()>("spin", ()).expect_err("must stop");
    // The deadline (300 ms) is what stopped it, once it had passed: not the fuel, not a trap.
    assert!(matches!(err, SandboxError::Deadline { elapsed_ms: 300.., .. }), "{err}");
    assert_eq!(sandbox.call::<(), ()>("spin", ()), Err(SandboxError::Poisoned));
}

#[test]
fn the_fuel_budget_is_enforced() {
    let limits = SandboxLimits { fuel_per_call: 5_000_000, fuel_slice: 1_000_000, ..quick() };
    let mut sandbox = load(r#"(module (func (export "spin") (loop br 0)))"#, limits).expect("load");
    assert!(matches!(sandbox.call::<(), ()>("spin", ()), Err(SandboxError::OutOfFuel { fuel: 5_000_000, .. })));
}

#[test]
fn memory_cannot_grow_past_the_ceiling() {
    let limits = SandboxLimits { memory_bytes: 4 * 65536, ..quick() };
    let mut sandbox =
        load(r#"(module (memory 1) (func (export "grow") (param i32) (result i32) local.get 0 memory.grow))"#, limits)
            .expect("load");
    assert_eq!(sandbox.call::<i32, i32>("grow", 3).expect("within"), 1);
    assert_eq!(sandbox.call::<i32, i32>("grow", 1).expect("past the ceiling"), -1, "growth refused");
    let bomb = load(r#"(module (memory 2000))"#, SandboxLimits::default());
    assert!(matches!(bomb, Err(SandboxError::Instantiate(_))), "an initial memory over 64 MiB is refused");
}

#[test]
fn wasi_and_unknown_imports_are_refused_by_name() {
    let err = load(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"#,
        quick(),
    )
    .expect_err("wasi");
    assert_eq!(err, SandboxError::ForbiddenImport { module: "wasi_snapshot_preview1".into(), name: "fd_write".into() });
    assert!(matches!(
        load(r#"(module (import "astrid" "spawn" (func)))"#, quick()),
        Err(SandboxError::ForbiddenImport { .. })
    ));
}

#[test]
fn start_functions_garbage_and_traps_are_errors_not_panics() {
    assert!(load(r#"(module (func $s) (start $s))"#, quick()).is_err(), "no code runs at instantiation");
    assert!(matches!(Sandbox::load("x", b"\0asm garbage", quick()), Err(SandboxError::Invalid(_))));
    let mut sandbox = load(r#"(module (func (export "boom") unreachable))"#, quick()).expect("load");
    assert!(matches!(sandbox.call::<(), ()>("boom", ()), Err(SandboxError::Trap { .. })));
    let mut sandbox = load(r#"(module (func (export "f")))"#, quick()).expect("load");
    assert!(matches!(sandbox.call::<(), i32>("f", ()), Err(SandboxError::MissingExport { .. })));
}

#[test]
fn guest_buffers_out_of_bounds_trap_the_guest_only() {
    let mut sandbox = load(
        r#"(module
            (import "astrid" "log" (func $log (param i32 i32)))
            (memory (export "memory") 1)
            (func (export "bad") i32.const 65530 i32.const 100 call $log)
            (func (export "huge") i32.const 0 i32.const 2000000 call $log))"#,
        quick(),
    )
    .expect("load");
    assert!(matches!(sandbox.call::<(), ()>("bad", ()), Err(SandboxError::Trap { .. })));
    let mut sandbox = load(
        r#"(module
            (import "astrid" "log" (func $log (param i32 i32)))
            (memory (export "memory") 1)
            (func (export "huge") i32.const 0 i32.const 2000000 call $log))"#,
        quick(),
    )
    .expect("load");
    assert!(matches!(sandbox.call::<(), ()>("huge", ()), Err(SandboxError::Trap { .. })));
}

/// A capsule with a bump allocator that stores and reads back through the KV host functions.
const KV_CAPSULE: &str = r#"(module
    (import "astrid" "kv_set" (func $set (param i32 i32 i32 i32) (result i32)))
    (import "astrid" "kv_get" (func $get (param i32 i32) (result i64)))
    (import "astrid" "kv_delete" (func $delete (param i32 i32) (result i32)))
    (import "astrid" "kv_list_keys" (func $list (param i32 i32) (result i64)))
    (import "astrid" "kv_cas" (func $cas (param i32 i32 i32 i32 i32 i32) (result i32)))
    (import "astrid" "random_bytes" (func $random (param i32 i32) (result i32)))
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 1024))
    (data (i32.const 0) "counter")
    (data (i32.const 16) "forty-two")
    (func (export "astrid_alloc") (param $len i32) (result i32)
        global.get $next
        global.get $next local.get $len i32.add global.set $next)
    (func (export "store") (result i32) i32.const 0 i32.const 7 i32.const 16 i32.const 9 call $set)
    (func (export "load") (result i64) i32.const 0 i32.const 7 call $get)
    (func (export "forget") (result i32) i32.const 0 i32.const 7 call $delete)
    (func (export "list") (result i64) i32.const 0 i32.const 0 call $list)
    (func (export "cas_create") (result i32)
        i32.const 0 i32.const 7 i32.const 0 i32.const -1 i32.const 16 i32.const 5 call $cas)
    (func (export "random") (result i32) i32.const 512 i32.const 32 call $random)
    (func (export "bad_key") (result i32) i32.const 0 i32.const 0 i32.const 16 i32.const 9 call $set)
    (func (export "read") (param i32 i32) (result i32)
        ;; first byte of the returned buffer
        local.get 0 i32.load8_u))"#;

#[test]
fn kv_host_functions_use_the_host_chosen_namespace_and_return_typed_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kv = crate::store::KvStore::open(&crate::home::AstridHome::at(tmp.path()), crate::store::KvConfig::default())
        .expect("kv");
    let namespace = crate::store::Namespace::capsule("default", "counter").expect("ns");
    let wasm = wat::parse_str(KV_CAPSULE).expect("wat");
    let services = HostServices { kv: Some((kv.clone(), namespace.clone())), ..HostServices::default() };
    let mut sandbox = Sandbox::load_with("counter", &wasm, quick(), services).expect("load");
    assert_eq!(sandbox.call::<(), i32>("store", ()).expect("store"), 0);
    assert_eq!(kv.get(&namespace, "counter").expect("get"), Some(b"forty-two".to_vec()), "written where the host said");
    let packed = sandbox.call::<(), i64>("load", ()).expect("load");
    let (ptr, len) = ((packed >> 32) as i32, (packed & 0xffff_ffff) as i32);
    assert_eq!((ptr, len), (1024, 9));
    assert_eq!(sandbox.call::<(i32, i32), i32>("read", (ptr, len)).expect("read"), i32::from(b'f'));
    assert_eq!(sandbox.call::<(), i32>("bad_key", ()).expect("typed error"), KvStatus::InvalidInput as i32);
    let listed = sandbox.call::<(), i64>("list", ()).expect("list");
    assert_eq!(listed & 0xffff_ffff, br#"["counter"]"#.len() as i64);
    assert_eq!(sandbox.call::<(), i32>("cas_create", ()).expect("cas"), 0, "key exists: no swap");
    assert_eq!(sandbox.call::<(), i32>("random", ()).expect("random"), 0);
    assert_eq!(sandbox.call::<(), i32>("forget", ()).expect("delete"), 1);
    assert_eq!(sandbox.call::<(), i32>("cas_create", ()).expect("cas"), 1, "absent: created");
    assert_eq!(kv.get(&namespace, "counter").expect("get"), Some(b"forty".to_vec()));
    assert_eq!(sandbox.call::<(), i32>("forget", ()).expect("delete"), 1);
    assert_eq!(sandbox.call::<(), i64>("load", ()).expect("absent"), KvStatus::Absent as i64);
    // Without the service, the same capsule is refused with a value, not a trap.
    let mut denied = Sandbox::load("counter", &wasm, quick()).expect("load");
    assert_eq!(denied.call::<(), i32>("store", ()).expect("denied"), KvStatus::CapabilityDenied as i32);
}

mod ipc {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::audit::AuditTrail;
    use crate::home::AstridHome;
    use crate::kernel::bus::BusMessage;
    use crate::kernel::{Kernel, KernelConfig, KernelState};
    use crate::store::{KvConfig, KvStore};
    use crate::types::{IpcMessage, IpcPayload, SYSTEM_SESSION_UUID};
    use crate::vfs::Vfs;
    use crate::wasm::{IpcStatus, KernelAccess};

    /// A kernel in a temp home with one capsule, `chat`, whose IPC grant is approved.
    fn kernel(tmp: &tempfile::TempDir) -> Arc<Kernel> {
        let home = AstridHome::at(tmp.path().join("h"));
        home.ensure().expect("ensure");
        let workspace = tmp.path().join("ws");
        crate::kernel::install::install_for_test(
            &workspace.join(".astrid/capsules"),
            "[package]\nname = \"chat\"\nversion = \"0.1.0\"\n[capabilities]\nipc_publish = [\"chat.v1.*\"]\nipc_subscribe = [\"chat.v1.*\"]\nfs_read = [\"cwd://src\"]\nfs_write = [\"cwd://src\"]\n",
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
        let kernel = Kernel::new(config, state);
        kernel.reload_capsules();
        let pending = kernel.grants().pending_list();
        kernel.grants().approve(&pending[0].request_id, &pending[0].fingerprint).expect("approve");
        kernel.refresh_grants();
        kernel
    }

    const CHAT: &str = r#"(module
        (import "astrid" "ipc_publish" (func $publish (param i32 i32 i32 i32) (result i32)))
        (import "astrid" "ipc_subscribe" (func $subscribe (param i32 i32) (result i32)))
        (import "astrid" "ipc_recv" (func $recv (param i32 i32) (result i64)))
        (memory (export "memory") 1)
        (global $next (mut i32) (i32.const 4096))
        (data (i32.const 0) "chat.v1.out")
        (data (i32.const 16) "{\"type\":\"custom\",\"data\":{\"n\":1}}")
        (data (i32.const 64) "user.v1.prompt")
        (data (i32.const 80) "chat.v1.*")
        (data (i32.const 96) "astrid.v1.*")
        (func (export "astrid_alloc") (param $len i32) (result i32)
            global.get $next
            global.get $next local.get $len i32.add global.set $next)
        (func (export "publish_ok") (result i32) i32.const 0 i32.const 11 i32.const 16 i32.const 32 call $publish)
        (func (export "publish_forbidden") (result i32) i32.const 64 i32.const 14 i32.const 16 i32.const 32 call $publish)
        (func (export "subscribe_ok") (result i32) i32.const 80 i32.const 9 call $subscribe)
        (func (export "subscribe_forbidden") (result i32) i32.const 96 i32.const 11 call $subscribe)
        (func (export "recv") (param i32 i32) (result i64) local.get 0 local.get 1 call $recv))"#;

    fn sandbox(kernel: &Arc<Kernel>, limits: SandboxLimits) -> Sandbox {
        let services = HostServices {
            kernel: Some(KernelAccess { kernel: Arc::clone(kernel), principal: "default".into() }),
            ..HostServices::default()
        };
        Sandbox::load_with("chat", &wat::parse_str(CHAT).expect("wat"), limits, services).expect("load")
    }

    #[test]
    fn publish_and_subscribe_follow_the_grant_and_are_audited() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let kernel = kernel(&tmp);
        let mut observer = kernel.bus().subscribe("observer", &["chat.v1.*", "user.v1.*"]);
        let mut chat = sandbox(&kernel, quick());
        assert_eq!(chat.call::<(), i32>("publish_ok", ()).expect("publish"), 0);
        let seen = observer.try_recv().expect("published");
        assert_eq!(seen.message.topic, "chat.v1.out");
        assert_eq!(seen.message.principal.as_deref(), Some("default"));
        assert_eq!(chat.call::<(), i32>("publish_forbidden", ()).expect("denied"), IpcStatus::CapabilityDenied as i32);
        assert!(observer.try_recv().is_none(), "nothing published on a forbidden topic");
        assert_eq!(chat.call::<(), i32>("subscribe_ok", ()).expect("subscribe"), 0);
        assert_eq!(
            chat.call::<(), i32>("subscribe_forbidden", ()).expect("denied"),
            IpcStatus::CapabilityDenied as i32
        );
        kernel.flush();
        let entries = crate::audit::tail(&crate::audit::audit_dir(&kernel.config().home, "default"), 50).expect("tail");
        let checks: Vec<_> = entries.iter().filter(|e| e.action == "capability.check").collect();
        assert_eq!(checks.len(), 4);
        assert_eq!(checks.iter().filter(|e| e.decision == crate::audit::Decision::Deny).count(), 2);
    }

    #[test]
    fn recv_delivers_and_idling_in_it_is_not_charged_to_the_deadline() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let kernel = kernel(&tmp);
        let limits = SandboxLimits { deadline: Duration::from_millis(200), ..SandboxLimits::default() };
        let mut chat = sandbox(&kernel, limits);
        let handle = chat.call::<(), i32>("subscribe_ok", ()).expect("subscribe");
        // Nothing arrives: a timeout value, after waiting longer than the deadline, no kill.
        let started = Instant::now();
        assert_eq!(chat.call::<(i32, i32), i64>("recv", (handle, 400)).expect("timeout"), IpcStatus::Timeout as i64);
        assert!(started.elapsed() >= Duration::from_millis(400));
        // A message published by someone else is delivered as {topic, payload, source_id}.
        let bus = kernel.bus().clone();
        let publisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let payload = IpcPayload::Custom { data: serde_json::json!({"hello": "capsule"}) };
            bus.publish(BusMessage::from_kernel(IpcMessage::new("chat.v1.in", payload, SYSTEM_SESSION_UUID)));
        });
        // A generous timeout: only a hang guard (the message is what ends the wait).
        let packed = chat.call::<(i32, i32), i64>("recv", (handle, 60_000)).expect("recv");
        publisher.join().expect("publisher");
        assert!(packed > 0, "{packed}");
        let len = (packed & 0xffff_ffff) as usize;
        let frame = br#"{"topic":"chat.v1.in","payload":{"hello":"capsule"},"source_id":"00000000-0000-0000-0000-000000000000"}"#;
        assert_eq!(len, frame.len());
        assert_eq!(chat.call::<(i32, i32), i64>("recv", (99, 10)).expect("bad handle"), IpcStatus::InvalidInput as i64);
    }

    #[test]
    fn a_read_ahead_returns_queued_messages_in_order_and_never_joins_two_causes() {
        use crate::kernel::cause::Cause;
        use crate::wasm::host_call::{HostCall, HostReply};

        let tmp = tempfile::tempdir().expect("tempdir");
        let kernel = kernel(&tmp);
        let mut chat = sandbox(&kernel, quick());
        let handle = chat.call::<(), i32>("subscribe_ok", ()).expect("subscribe");
        let turn = Cause::new(7, "s", None);
        let publish = |n: u32, cause: Option<&Arc<Cause>>| {
            let payload = IpcPayload::Custom { data: serde_json::json!({ "n": n }) };
            let message = BusMessage::from_kernel(IpcMessage::new("chat.v1.in", payload, SYSTEM_SESSION_UUID));
            kernel.bus().publish(message.caused_by(cause.cloned()));
        };
        // Three of no turn, two of one turn, one of no turn again.
        for n in 0..3 {
            publish(n, None);
        }
        publish(3, Some(&turn));
        publish(4, Some(&turn));
        publish(5, None);
        let mut read_ahead = |max: u32| -> Vec<u64> {
            match chat.host_call(HostCall::IpcRecvMany { handle, timeout_ms: 0, max }) {
                HostReply::Messages(frames) => frames
                    .iter()
                    .map(|frame| {
                        let frame: serde_json::Value = serde_json::from_slice(&frame.0).expect("frame is JSON");
                        frame["payload"]["n"].as_u64().expect("n")
                    })
                    .collect(),
                HostReply::Value(status) => vec![u64::MAX - status.unsigned_abs()],
                other => panic!("unexpected {other:?}"),
            }
        };
        // At most `max`, oldest first; a batch ends where the cause changes, because what the
        // instance does next is done for the cause of what it took.
        assert_eq!(read_ahead(2), vec![0, 1]);
        assert_eq!(read_ahead(64), vec![2]);
        assert_eq!(read_ahead(64), vec![3, 4]);
        assert_eq!(read_ahead(64), vec![5]);
        // Nothing left: the status `ipc_recv` gives, not an empty batch.
        assert_eq!(read_ahead(64), vec![u64::MAX - (IpcStatus::Timeout as i64).unsigned_abs()]);
        let bad = chat.host_call(HostCall::IpcRecvMany { handle: 99, timeout_ms: 0, max: 8 });
        assert_eq!(bad, HostReply::Value(IpcStatus::InvalidInput as i64));
    }

    #[test]
    fn going_back_to_a_batch_read_ahead_makes_its_cause_the_instances_again() {
        use crate::kernel::cause::Cause;
        use crate::wasm::host_call::{HostCall, HostReply};

        let tmp = tempfile::tempdir().expect("tempdir");
        let kernel = kernel(&tmp);
        let mut observer = kernel.bus().subscribe("observer", &["chat.v1.out"]);
        let mut chat = sandbox(&kernel, quick());
        let first = chat.call::<(), i32>("subscribe_ok", ()).expect("subscribe");
        let second = chat.call::<(), i32>("subscribe_ok", ()).expect("subscribe");
        let (x, y) = (Cause::new(1, "x", None), Cause::new(2, "y", None));
        let publish = |cause: &Arc<Cause>| {
            let payload = IpcPayload::Custom { data: serde_json::json!({}) };
            let message = BusMessage::from_kernel(IpcMessage::new("chat.v1.in", payload, SYSTEM_SESSION_UUID));
            kernel.bus().publish(message.caused_by(Some(Arc::clone(cause))));
        };
        let mut batch = |handle: i32| match chat.host_call(HostCall::IpcRecvMany { handle, timeout_ms: 0, max: 64 }) {
            HostReply::Messages(frames) => frames.len(),
            other => panic!("unexpected {other:?}"),
        };
        // Two messages of turn x read ahead on the first handle; the second handle is then
        // drained, and takes one message of turn y last: the instance works for y.
        publish(&x);
        publish(&x);
        assert_eq!(batch(first), 2);
        assert_eq!(batch(second), 2);
        publish(&y);
        assert_eq!(batch(second), 1);
        let published_for = |chat: &mut Sandbox, observer: &mut crate::kernel::bus::Subscription| {
            assert_eq!(chat.call::<(), i32>("publish_ok", ()).expect("publish"), 0);
            observer.try_recv().expect("published").cause.as_ref().map(|cause| cause.turn)
        };
        assert_eq!(published_for(&mut chat, &mut observer), Some(y.turn));
        // Back on the first handle's batch: the instance works for x again.
        assert_eq!(chat.host_call(HostCall::IpcResume { handle: first }), HostReply::Value(0));
        assert_eq!(published_for(&mut chat, &mut observer), Some(x.turn));
        // A handle with no batch read ahead has nothing to resume.
        assert_eq!(
            chat.host_call(HostCall::IpcResume { handle: 99 }),
            HostReply::Value(IpcStatus::InvalidInput as i64)
        );
    }

    const FILES: &str = r#"(module
        (import "astrid" "fs_write" (func $write (param i32 i32 i32 i32) (result i32)))
        (import "astrid" "fs_read" (func $read (param i32 i32) (result i64)))
        (import "astrid" "fs_unlink" (func $unlink (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        (global $next (mut i32) (i32.const 4096))
        (data (i32.const 0) "src/a.txt")
        (data (i32.const 16) "hello")
        (data (i32.const 32) "README.md")
        (data (i32.const 48) "../etc/passwd")
        (func (export "astrid_alloc") (param $len i32) (result i32)
            global.get $next
            global.get $next local.get $len i32.add global.set $next)
        (func (export "write_src") (result i32) i32.const 0 i32.const 9 i32.const 16 i32.const 5 call $write)
        (func (export "read_src") (result i64) i32.const 0 i32.const 9 call $read)
        (func (export "write_readme") (result i32) i32.const 32 i32.const 9 i32.const 16 i32.const 5 call $write)
        (func (export "read_escape") (result i64) i32.const 48 i32.const 13 call $read)
        (func (export "unlink_src") (result i32) i32.const 0 i32.const 9 call $unlink))"#;

    #[test]
    fn file_access_goes_through_the_grant_and_the_overlay() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let kernel = kernel(&tmp);
        let services = HostServices {
            kernel: Some(KernelAccess { kernel: Arc::clone(&kernel), principal: "default".into() }),
            ..HostServices::default()
        };
        let mut files =
            Sandbox::load_with("chat", &wat::parse_str(FILES).expect("wat"), quick(), services).expect("load");
        assert_eq!(files.call::<(), i32>("write_src", ()).expect("write"), 0);
        assert!(!tmp.path().join("ws/src/a.txt").exists(), "writes wait in the overlay");
        let packed = files.call::<(), i64>("read_src", ()).expect("read");
        assert_eq!(packed & 0xffff_ffff, 5, "reads see the overlay");
        assert_eq!(
            files.call::<(), i32>("write_readme", ()).expect("denied"),
            crate::wasm::FsStatus::CapabilityDenied as i32
        );
        assert_eq!(
            files.call::<(), i64>("read_escape", ()).expect("invalid"),
            crate::wasm::FsStatus::InvalidInput as i64
        );
        let changes = kernel.vfs().changes().expect("changes");
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, "src/a.txt");
        assert_eq!(files.call::<(), i32>("unlink_src", ()).expect("unlink"), 0);
        assert!(kernel.vfs().changes().expect("changes").is_empty());
    }

    /// A run loop that waits for messages forever, spins when told to, and stops on `stop`.
    const LOOP: &str = r#"(module
        (import "astrid" "ipc_subscribe" (func $subscribe (param i32 i32) (result i32)))
        (import "astrid" "ipc_recv" (func $recv (param i32 i32) (result i64)))
        (import "astrid" "signal_ready" (func $ready))
        (memory (export "memory") 1)
        (global $next (mut i32) (i32.const 4096))
        (data (i32.const 80) "chat.v1.*")
        (func (export "astrid_alloc") (param $len i32) (result i32)
            global.get $next
            global.get $next local.get $len i32.add global.set $next)
        (func (export "run") (local $h i32) (local $got i64) (local $i i32)
            (local.set $h (call $subscribe (i32.const 80) (i32.const 9)))
            call $ready
            (loop $forever
                (local.set $got (call $recv (local.get $h) (i32.const 100)))
                ;; -5: closed (or stopped by the host): leave the loop.
                (if (i64.eq (local.get $got) (i64.const -5)) (then return))
                ;; A message: burn some fuel, as real work would, well within one budget.
                (if (i64.gt_s (local.get $got) (i64.const 0)) (then
                    (local.set $i (i32.const 200000))
                    (loop $work (local.set $i (i32.sub (local.get $i) (i32.const 1))) (br_if $work (local.get $i)))
                    ;; A message whose payload starts with '{"s' ("spin") makes it spin forever.
                    (if (i32.eq (i32.load8_u (i32.add (i32.wrap_i64 (i64.shr_u (local.get $got) (i64.const 32))) (i32.const 34))) (i32.const 115))
                        (then (loop $spin (br $spin))))))
                (br $forever))))"#;

    #[test]
    fn a_run_loop_lives_while_it_waits_dies_when_it_spins_and_wakes_for_a_stop() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let kernel = kernel(&tmp);
        // A budget far smaller than the loop's lifetime: only work between waits counts.
        let limits = SandboxLimits {
            fuel_per_call: 5_000_000,
            deadline: Duration::from_millis(500),
            ..SandboxLimits::default()
        };
        let services = |lifecycle: &Arc<Lifecycle>| HostServices {
            kernel: Some(KernelAccess { kernel: Arc::clone(&kernel), principal: "default".into() }),
            lifecycle: Arc::clone(lifecycle),
            ..HostServices::default()
        };
        let send = |text: &str| {
            kernel.bus().publish(BusMessage::from_kernel(IpcMessage::new(
                "chat.v1.in",
                IpcPayload::Custom {
                    data: serde_json::Value::Object([(text.to_owned(), 1.into())].into_iter().collect()),
                },
                SYSTEM_SESSION_UUID,
            )));
        };
        let wasm = wat::parse_str(LOOP).expect("wat");

        let lifecycle = Arc::new(Lifecycle::default());
        let mut calm = Sandbox::load_with("chat", &wasm, limits, services(&lifecycle)).expect("load");
        let stopper = Arc::clone(&lifecycle);
        let runner = std::thread::spawn(move || (calm.run_loop(), calm.lifecycle().is_ready()));
        // Once it subscribed (it signals ready right after), forty messages of real work:
        // together far over the budget, each well inside it.
        wait_ready(&lifecycle);
        for _ in 0..40 {
            send("work");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(700));
        assert!(!runner.is_finished(), "an idle or working loop is not killed");
        // The loop never returns by itself (recv's own timeout only loops it again): a stop
        // that did not wake it as closed leaves it running, and the guard fails it as hung.
        stopper.stop();
        let (result, ready) = join_within_hang_guard(runner);
        assert_eq!(result, Ok(()), "a stop wakes recv as closed and the loop returns");
        assert!(ready, "signal_ready reached the host");

        let lifecycle = Arc::new(Lifecycle::default());
        let mut spinner = Sandbox::load_with("chat", &wasm, limits, services(&lifecycle)).expect("load");
        let runner = std::thread::spawn(move || spinner.run_loop());
        wait_ready(&lifecycle);
        send("spin");
        let waited = Instant::now();
        while !runner.is_finished() && waited.elapsed() < HANG_GUARD {
            std::thread::sleep(Duration::from_millis(10));
        }
        lifecycle.stop(); // so a broken limit fails the test (as Stopped) instead of hanging it
        let result = runner.join().expect("runner");
        assert!(matches!(result, Err(SandboxError::OutOfFuel { .. } | SandboxError::Deadline { .. })), "{result:?}");
    }

    #[test]
    fn a_spinning_call_is_stopped_at_the_next_slice() {
        let lifecycle = Arc::new(Lifecycle::default());
        let services = HostServices { lifecycle: Arc::clone(&lifecycle), ..HostServices::default() };
        let limits = SandboxLimits { deadline: Duration::from_secs(60), ..SandboxLimits::default() };
        let wasm = wat::parse_str(r#"(module (func (export "spin") (loop br 0)))"#).expect("wat");
        let mut sandbox = Sandbox::load_with("spin", &wasm, limits, services).expect("load");
        let runner = std::thread::spawn(move || sandbox.call::<(), ()>("spin", ()));
        std::thread::sleep(Duration::from_millis(50));
        lifecycle.stop();
        // Stopped, not Deadline: the stop ended it at a fuel slice, long before its deadline.
        let result = join_within_hang_guard(runner);
        assert!(matches!(result, Err(SandboxError::Stopped { .. })), "{result:?}");
    }
}

/// A hook entry that answers by action name, and reads its configuration.
const HOOKS: &str = r#"(module
    (import "astrid" "get_config" (func $config (param i32 i32) (result i64)))
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 4096))
    (data (i32.const 0) "{\"action\":\"deny\",\"data\":\"no\"}")
    (data (i32.const 64) "{\"action\":\"final\",\"data\":{\"n\":1}}")
    (data (i32.const 128) "{\"action\":\"error\"}")
    (data (i32.const 192) "not json")
    (data (i32.const 256) "GREETING")
    (data (i32.const 272) "MISSING")
    (func (export "astrid_alloc") (param $len i32) (result i32)
        global.get $next
        global.get $next local.get $len i32.add global.set $next)
    ;; Answers by the first letter of the action: d(eny), f(inal), e(rror), b(roken); else
    ;; echoes the payload back as the packed result.
    (func (export "astrid_hook_trigger") (param $a i32) (param $al i32) (param $p i32) (param $pl i32) (result i64)
        (local $c i32)
        (local.set $c (i32.load8_u (local.get $a)))
        (if (i32.eq (local.get $c) (i32.const 100)) (then (return (i64.const 29))))
        (if (i32.eq (local.get $c) (i32.const 102)) (then (return (i64.or (i64.shl (i64.const 64) (i64.const 32)) (i64.const 33)))))
        (if (i32.eq (local.get $c) (i32.const 101)) (then (return (i64.or (i64.shl (i64.const 128) (i64.const 32)) (i64.const 18)))))
        (if (i32.eq (local.get $c) (i32.const 98)) (then (return (i64.or (i64.shl (i64.const 192) (i64.const 32)) (i64.const 8)))))
        (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $pl))))
    (func (export "config") (result i64) (call $config (i32.const 256) (i32.const 8)))
    (func (export "missing") (result i64) (call $config (i32.const 272) (i32.const 7))))"#;

#[test]
fn hooks_answer_continue_final_or_deny_and_config_is_the_capsules_own() {
    let services = HostServices {
        config: [("GREETING".to_owned(), "hi".to_owned())].into_iter().collect(),
        ..HostServices::default()
    };
    let wasm = wat::parse_str(HOOKS).expect("wat");
    let mut hooks = Sandbox::load_with("hooks", &wasm, quick(), services).expect("load");
    let deny = hooks.hook("deny", b"{}").expect("deny");
    assert_eq!((deny.action, deny.data), (HookAction::Deny, Some(serde_json::json!("no"))));
    assert_eq!(hooks.hook("final", b"{}").expect("final").action, HookAction::Final);
    assert_eq!(hooks.hook("error", b"{}").expect("error").action, HookAction::Continue, "unknown actions continue");
    let echoed = hooks.hook("x", br#"{"action":"continue","data":[1,2]}"#).expect("echo");
    assert_eq!((echoed.action, echoed.data), (HookAction::Continue, Some(serde_json::json!([1, 2]))));
    assert!(hooks.call::<(), i64>("config", ()).expect("config") > 0);
    assert_eq!(hooks.call::<(), i64>("missing", ()).expect("missing"), -1);
    assert!(matches!(hooks.hook("broken", b"{}"), Err(SandboxError::BadResult { .. })));
    assert!(hooks.has_export("astrid_hook_trigger") && !hooks.has_export("run"));
}

#[test]
fn lazy_translation_never_fails_a_call_for_fuel_even_with_tiny_slices() {
    // Big functions, first called (and so translated) in calls whose fuel slices are far
    // smaller than their translation: as the entry point, and from the middle of a call, where
    // wasmi 2 cannot resume a translation that runs out of fuel (it fails the whole call). So
    // translation is not charged to fuel at all; see `engine`.
    let body = "i32.const 1 i32.add ".repeat(4000);
    let wat = format!(
        r#"(module
            (func $big (export "big") (param i32) (result i32) local.get 0 {body})
            (func (export "calls_big") (param i32) (result i32)
                (local $i i32)
                (loop $spin (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br_if $spin (i32.lt_u (local.get $i) (i32.const 50))))
                (call $big (local.get 0))))"#
    );
    let wasm = wat::parse_str(&wat).expect("wat");
    let limits = SandboxLimits { fuel_slice: 10, ..quick() };
    let mut nested = Sandbox::load("nested", &wasm, limits).expect("load");
    assert_eq!(nested.call::<i32, i32>("calls_big", 1).expect("translated mid-call and run"), 4001);
    let mut entry = Sandbox::load("entry", &wasm, limits).expect("load");
    assert_eq!(entry.call::<i32, i32>("big", 1).expect("translated and run"), 4001);
    assert_eq!(entry.call::<i32, i32>("big", 2).expect("already translated"), 4002);
}

#[test]
fn a_module_is_validated_whole_when_loaded() {
    // Well-formed sections, but a function body that returns the wrong type: refused at load,
    // not at its first call.
    let broken = wat::parse_str(r#"(module (func (export "f") (result i32) i64.const 1))"#).expect("wat");
    assert!(matches!(Sandbox::load("broken", &broken, quick()), Err(SandboxError::Invalid(_))));
    // A compiled module is instantiated as often as needed without compiling again.
    let fine = wat::parse_str(r#"(module (func (export "f") (result i32) i32.const 1))"#).expect("wat");
    let module = crate::wasm::compile(&fine).expect("valid");
    for _ in 0..3 {
        let mut instance = Sandbox::instantiate("fine", &module, quick(), HostServices::default()).expect("load");
        assert_eq!(instance.call::<(), i32>("f", ()).expect("call"), 1);
    }
}

/// Hostile modules that are tiny on the wire and huge in the host. Each is refused, or
/// stopped at the instance's memory limit, and the error names the limit.
mod allocations {
    use super::*;
    use crate::wasm::limits::{MAX_ELEMENT_ITEMS, MAX_EXPORTS, MAX_IMPORTS, MAX_TYPES, TABLE_ELEMENT_BYTES};

    fn refused(wat: &str) -> String {
        match load(wat, quick()) {
            Ok(_) => panic!("a hostile module was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_huge_table_is_refused_against_the_memory_limit() {
        // 34 bytes of module, 400 MB of host memory if allowed.
        let error = refused(r#"(module (table 100000000 funcref))"#);
        assert!(error.contains("table of 100000000 elements") && error.contains("64 MiB memory limit"), "{error}");
        // Memory and table count together: each fits alone, not both (wasmi creates the table
        // first, so the memory is what no longer fits).
        let error = refused(r#"(module (memory 960) (table 1000000 funcref))"#);
        assert!(error.contains("linear memory of 62914560 bytes (with 8000000 bytes of tables)"), "{error}");
        assert!(error.contains("64 MiB memory limit"), "{error}");
        // A table within the limit is fine.
        load(r#"(module (table 10000 funcref))"#, quick()).expect("a modest table");
    }

    #[test]
    fn table_grow_in_a_loop_stops_at_the_memory_limit() {
        // Grows by a million elements at a time (at most a hundred times) and answers how
        // many grows succeeded; then tries to grow its memory by one page.
        let mut sandbox = load(
            r#"(module
                (memory 1)
                (table 0 funcref)
                (func (export "grow_table") (result i32) (local $ok i32) (local $i i32)
                    (loop $more
                        (if (i32.ne (table.grow (ref.null func) (i32.const 1000000)) (i32.const -1))
                            (then (local.set $ok (i32.add (local.get $ok) (i32.const 1)))))
                        (local.set $i (i32.add (local.get $i) (i32.const 1)))
                        (br_if $more (i32.lt_u (local.get $i) (i32.const 100))))
                    local.get $ok)
                (func (export "size") (result i32) table.size)
                (func (export "grow_memory") (param i32) (result i32) (memory.grow (local.get 0))))"#,
            quick(),
        )
        .expect("load");
        let grows = sandbox.call::<(), i32>("grow_table", ()).expect("grow_table");
        let size = sandbox.call::<(), i32>("size", ()).expect("size");
        assert_eq!(size, grows * 1_000_000);
        let limit = SandboxLimits::default().memory_bytes;
        assert!(grows >= 1 && usize::try_from(size).expect("size") * TABLE_ELEMENT_BYTES <= limit, "{grows} grows");
        assert!(grows <= 8, "{grows} million elements: the table must stop at the memory limit");
        // What the table took, the memory cannot take as well.
        let left = limit - usize::try_from(size).expect("size") * TABLE_ELEMENT_BYTES - 65536;
        let pages = i32::try_from(left / 65536).expect("pages");
        assert_eq!(sandbox.call::<i32, i32>("grow_memory", pages + 1).expect("grow"), -1, "one page too many");
        assert_eq!(sandbox.call::<i32, i32>("grow_memory", pages).expect("grow"), 1, "exactly the rest");
    }

    #[test]
    fn memory_growth_leaves_no_room_for_a_table_beyond_the_limit() {
        let mut sandbox = load(
            r#"(module
                (memory 1)
                (table 0 funcref)
                (func (export "grow_memory") (param i32) (result i32) (memory.grow (local.get 0)))
                (func (export "grow_table") (param i32) (result i32) (table.grow (ref.null func) (local.get 0))))"#,
            quick(),
        )
        .expect("load");
        assert_eq!(sandbox.call::<i32, i32>("grow_memory", 1000).expect("grow"), 1, "to 1001 pages (62.6 MiB)");
        let room = (64 * 1024 * 1024 - 1001 * 65536) / TABLE_ELEMENT_BYTES;
        let room = i32::try_from(room).expect("room");
        assert_eq!(sandbox.call::<i32, i32>("grow_table", room + 1).expect("grow"), -1, "one element too many");
        assert_eq!(sandbox.call::<i32, i32>("grow_table", room).expect("grow"), 0, "exactly the rest");
        assert_eq!(sandbox.call::<i32, i32>("grow_memory", 1).expect("grow"), -1, "and nothing more");
    }

    #[test]
    fn huge_element_segments_are_refused_before_wasmi_builds_them() {
        // Two bytes an item on the wire, a constant expression each in wasmi.
        let items = " $f".repeat(usize::try_from(MAX_ELEMENT_ITEMS).expect("items") + 1);
        let error = refused(&format!(r#"(module (func $f) (elem func{items}))"#));
        assert!(error.contains("element items") && error.contains(&MAX_ELEMENT_ITEMS.to_string()), "{error}");
        let within = " $f".repeat(1000);
        load(&format!(r#"(module (func $f) (elem func{within}))"#), quick()).expect("a normal element segment");
    }

    #[test]
    fn too_many_types_imports_or_exports_are_refused_naming_the_limit() {
        let types = "(type (func (param i32)))".repeat(usize::try_from(MAX_TYPES).expect("types") + 1);
        let error = refused(&format!("(module {types})"));
        assert!(error.contains(&format!("{} types: the limit is {MAX_TYPES}", MAX_TYPES + 1)), "{error}");
        let imports = r#"(import "astrid" "clock_ms" (func (result i64)))"#
            .repeat(usize::try_from(MAX_IMPORTS).expect("imports") + 1);
        let error = refused(&format!("(module {imports})"));
        assert!(error.contains(&format!("imports: the limit is {MAX_IMPORTS}")), "{error}");
        let exports: String =
            (0..=MAX_EXPORTS).map(|i| format!(r#"(export "e{i}" (func $f))"#)).collect::<Vec<_>>().concat();
        let error = refused(&format!("(module (func $f) {exports})"));
        assert!(error.contains(&format!("exports: the limit is {MAX_EXPORTS}")), "{error}");
    }

    #[test]
    fn too_many_functions_globals_or_segments_are_refused() {
        let functions = "(func)".repeat(10_001);
        assert!(refused(&format!("(module {functions})")).contains("10000 functions"));
        let globals = "(global i32 (i32.const 0))".repeat(1001);
        assert!(refused(&format!("(module {globals})")).contains("1000 global"));
        let segments = r#"(data (i32.const 0) "x")"#.repeat(1001);
        assert!(refused(&format!("(module (memory 1) {segments})")).contains("1000 active data segments"));
    }

    #[test]
    fn deep_recursion_and_huge_frames_trap_instead_of_growing_the_stack() {
        // Each frame holds 10 000 locals (80 KB); recursing without end must trap, not grow.
        let locals = "(local i64)".repeat(10_000);
        let mut sandbox = load(
            &format!(r#"(module (func $deep (export "deep") {locals} call $deep))"#),
            SandboxLimits { deadline: Duration::from_secs(30), ..SandboxLimits::default() },
        )
        .expect("load");
        let error = sandbox.call::<(), ()>("deep", ()).expect_err("must trap");
        assert!(matches!(error, SandboxError::Trap { .. }), "{error}");
        assert!(error.to_string().contains("stack"), "{error}");
    }

    #[test]
    fn every_module_has_an_engine_of_its_own() {
        // wasmi's engine keeps whatever it compiled until it is dropped: a module sharing an
        // engine with others could never be given back.
        let wasm = wat::parse_str(r#"(module (func (export "f")))"#).expect("wat");
        let (a, b) = (crate::wasm::compile(&wasm).expect("a"), crate::wasm::compile(&wasm).expect("b"));
        assert!(!wasmi::Engine::same(a.engine(), b.engine()));
        let weak = a.engine().weak();
        let instance = Sandbox::instantiate("a", &a, quick(), HostServices::default()).expect("instance");
        drop(a);
        assert!(weak.upgrade().is_some(), "an instance keeps its module's engine");
        drop(instance);
        assert!(weak.upgrade().is_none(), "the engine is dropped with its module and last instance");
    }
}
