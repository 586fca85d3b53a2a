//! The capsule-host role: capsules in processes of their own, attached to the real daemon over
//! the real socket, every host call decided by the daemon.

use std::path::Path;

use astrid::types::management::{CapsuleDescription, CapsuleOrigin};
use serde_json::{Value, json};

use crate::capsules::{ask, audit_tail, audit_until, example, hostile_is_contained, install, wait_running};
use crate::harness::{HANG, RawClient, TestHome, alive};

const PROCESS: (&str, &str) = ("ASTRID_CAPSULE_ISOLATION", "process");

/// `(pid, capsule)` of every capsule-host process whose parent is `parent`.
fn capsule_hosts(parent: i32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The fields after the parenthesised command: state, ppid, …
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "capsule-host")
            && let Some(i) = args.iter().position(|a| a == "--capsule")
        {
            found.push((pid, args.get(i + 1).cloned().unwrap_or_default()));
        }
    }
    found
}

fn entries<'a>(audit: &'a [Value], action: &str) -> Vec<&'a Value> {
    audit.iter().filter(|e| e["action"] == action).collect()
}

#[test]
fn capsules_in_processes_of_their_own_serve_like_capsules_on_threads() {
    let t = TestHome::new();
    std::fs::write(t.workspace.join("secrets.txt"), "top secret").expect("write");
    let mut daemon = t.daemon_with(&[], &[PROCESS]);
    for name in ["hello", "kv-counter", "file-tool"] {
        install(&t, name);
    }
    let mut client = t.client();
    wait_running(&t, &mut client, &["hello", "kv-counter", "file-tool"]);
    let mut hosts: Vec<String> = capsule_hosts(daemon.pid()).into_iter().map(|(_, name)| name).collect();
    hosts.sort();
    assert_eq!(hosts, ["file-tool", "hello", "kv-counter"].map(String::from).to_vec(), "one process per capsule");

    assert_eq!(ask(&mut client, "user.v1.prompt", "world"), "hello, world");
    let exec = "cli.v1.command.execute";
    assert_eq!(ask(&mut client, exec, "/count"), "count = 1");
    assert_eq!(ask(&mut client, exec, "/count"), "count = 2");
    assert_eq!(ask(&mut client, exec, "/write notes/todo.txt buy milk"), "wrote 8 bytes to notes/todo.txt");
    assert_eq!(ask(&mut client, exec, "/read notes/todo.txt"), "buy milk");
    assert_eq!(ask(&mut client, exec, "/read secrets.txt"), "error: capability-denied");
    assert!(!t.workspace.join("notes/todo.txt").exists(), "writes still wait in the overlay");

    let denied_read = |audit: &[Value]| {
        entries(audit, "capability.check").into_iter().any(|e| {
            e["decision"] == "deny"
                && e["actor"]["name"] == "file-tool"
                && e["resource"].as_str().is_some_and(|r| r.contains("secrets.txt"))
        })
    };
    let audit = audit_until(&t, denied_read);
    let attached: Vec<&str> = entries(&audit, "capsule.attach")
        .into_iter()
        .filter(|e| e["decision"] == "allow")
        .filter_map(|e| e["resource"].as_str())
        .collect();
    for name in ["hello", "kv-counter", "file-tool"] {
        assert!(attached.contains(&name), "{name} attach audited: {attached:?}");
    }
    assert!(denied_read(&audit), "the daemon decided and audited the process's file access");

    // The install hook ran once, in the process, and was recorded by the daemon.
    let installed = t.cli(&["kv", "get", "installed", "--capsule", "kv-counter"]);
    assert_eq!(String::from_utf8_lossy(&installed.stdout).trim(), "yes");

    let pids: Vec<i32> = capsule_hosts(daemon.pid()).into_iter().map(|(pid, _)| pid).collect();
    drop(client);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, _) = daemon.wait_exit(HANG).expect("daemon exits");
    assert!(status.success(), "{status:?}\n{}", t.log());
    assert!(t.wait_for(|| pids.iter().all(|pid| !alive(*pid)), HANG), "capsule hosts stopped");
}

/// A capsule whose install hook logs `line`, in a process of its own or not.
fn write_logger(dir: &Path, name: &str, line: &str, isolation: &str) {
    std::fs::create_dir_all(dir).expect("dir");
    let module = wat::parse_str(format!(
        r#"(module
            (import "astrid" "log" (func $log (param i32 i32)))
            (memory (export "memory") 1)
            (data (i32.const 8) "{line}")
            (func (export "astrid_install") i32.const 8 i32.const {} call $log))"#,
        line.len()
    ))
    .expect("wat");
    std::fs::write(dir.join("logger.wasm"), module).expect("module");
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\n\n[[component]]\nid = \"main\"\nfile = \"logger.wasm\"\nisolation = \"{isolation}\"\n"
    );
    std::fs::write(dir.join("Capsule.toml"), manifest).expect("manifest");
}

#[test]
fn a_guest_log_line_reaches_the_daemon_log_wherever_it_runs() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    for isolation in ["thread", "process"] {
        let (name, line) = (format!("logger-{isolation}"), format!("hello from wasm on a {isolation}"));
        let dir = t.workspace.join(&name);
        write_logger(&dir, &name, &line, isolation);
        let installed = t.cli(&["capsule", "install", dir.to_str().expect("utf8"), "--yes"]);
        assert_eq!(installed.status.code(), Some(0), "{}", String::from_utf8_lossy(&installed.stderr));
        // The kernel side logs what the guest side forwarded, under the capsule's name.
        assert!(t.logged(&format!("capsule {name}: {line}")), "{}", t.log());
    }
}

#[test]
fn the_hostile_capsule_is_contained_in_a_process_of_its_own_too() {
    hostile_is_contained(&[PROCESS]);
}

/// A copy of the hello example whose manifest asks for a process of its own.
fn isolated_hello(dir: &Path) {
    std::fs::create_dir_all(dir).expect("dir");
    let source = example("hello");
    std::fs::copy(source.join("hello.wasm"), dir.join("hello.wasm")).expect("wasm");
    let manifest = std::fs::read_to_string(source.join("Capsule.toml")).expect("manifest");
    let manifest = manifest.replace("file = \"hello.wasm\"", "file = \"hello.wasm\"\nisolation = \"process\"");
    std::fs::write(dir.join("Capsule.toml"), manifest).expect("manifest");
}

#[test]
fn a_manifest_asks_for_a_process_a_killed_one_is_restarted_and_a_killed_daemon_leaves_none() {
    let t = TestHome::new();
    let source = t.workspace.join("src-hello");
    isolated_hello(&source);
    let mut daemon = t.daemon_with(&[], &[("ASTRID_CAPSULE_BACKOFF_MS", "100")]);
    let installed = t.cli(&["capsule", "install", source.to_str().expect("utf8"), "--yes"]);
    assert_eq!(installed.status.code(), Some(0), "{}", String::from_utf8_lossy(&installed.stderr));
    install(&t, "kv-counter");
    let mut client = t.client();
    wait_running(&t, &mut client, &["hello", "kv-counter"]);
    let hosts = capsule_hosts(daemon.pid());
    assert_eq!(hosts.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(), ["hello"], "only hello asked for one");
    assert_eq!(ask(&mut client, "user.v1.prompt", "world"), "hello, world");

    // An interpreter process that dies is a crash of that capsule alone: audited, restarted.
    let first = hosts[0].0;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let crashed = || {
        audit_tail(&t).into_iter().any(|e| {
            e["action"] == "capsule.crashed" && e["rule"].as_str().is_some_and(|r| r.contains("killed by signal 9"))
        })
    };
    assert!(t.wait_for(crashed, HANG), "crash audited\n{}", t.log());
    let restarted = || capsule_hosts(daemon.pid()).iter().any(|(pid, n)| n == "hello" && *pid != first);
    assert!(t.wait_for(restarted, HANG), "restarted\n{}", t.log());
    wait_running(&t, &mut client, &["hello"]);
    assert_eq!(ask(&mut client, "user.v1.prompt", "again"), "hello, again");
    assert_eq!(ask(&mut client, "cli.v1.command.execute", "/count"), "count = 1", "the others never noticed");

    // SIGKILL gives the daemon no chance to stop anything: the OS ends its capsule hosts.
    let pids: Vec<i32> = capsule_hosts(daemon.pid()).into_iter().map(|(pid, _)| pid).collect();
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait_exit(HANG).expect("killed");
    assert!(t.wait_for(|| pids.iter().all(|pid| !alive(*pid)), HANG), "orphans: {pids:?}");
}

#[test]
fn why_a_process_failed_is_what_the_daemon_knows_never_what_the_process_printed() {
    let t = TestHome::new();
    let daemon = t.daemon_with(&[], &[PROCESS, ("ASTRID_CAPSULE_BACKOFF_MS", "100")]);
    install(&t, "kv-counter");
    let mut client = t.client();
    wait_running(&t, &mut client, &["kv-counter"]);
    // The module is swapped behind the installer's back, then the process dies: the restart's
    // attach is refused by the daemon, which records its own reason for the crash (the
    // refused process still prints one, for a person).
    let installed = t.home.join("home/default/.local/capsules/kv-counter");
    std::fs::copy(example("hello").join("hello.wasm"), installed.join("kv-counter.wasm")).expect("swap");
    let (pid, _) = capsule_hosts(daemon.pid()).into_iter().next().expect("a capsule host");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let crashes = |audit: &[Value]| -> Vec<String> {
        entries(audit, "capsule.crashed").into_iter().filter_map(|e| e["rule"].as_str().map(str::to_owned)).collect()
    };
    let refused = |audit: &[Value]| crashes(audit).iter().any(|rule| rule.contains("does not match the BLAKE3"));
    let audit = audit_until(&t, refused);
    let rules = crashes(&audit);
    assert!(refused(&audit), "the refused restart is recorded: {rules:?}\n{}", t.log());
    assert!(rules.iter().any(|rule| rule.contains("killed by signal 9")), "the kill, from the exit status: {rules:?}");
    for rule in rules.iter().filter(|rule| rule.contains("BLAKE3")) {
        assert!(!rule.contains("cannot attach") && !rule.contains("exited with status"), "the daemon's reason: {rule}");
    }
}

#[test]
fn a_capsule_host_needs_the_ticket_the_daemon_gave_it() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    install(&t, "hello");

    let output = t.cli(&["capsule-host", "--capsule", "hello"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("astrid capsule run DIR"));

    let forged = "0".repeat(64);
    for role in ["astrid", "astrid-capsule-host"] {
        let mut command = t.command(role);
        if role == "astrid" {
            command.arg("capsule-host");
        }
        let output = command.args(["--capsule", "hello"]).env("ASTRID_CAPSULE_TICKET", &forged).output().expect("run");
        assert_eq!(output.status.code(), Some(1), "{role}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("capsule failed: cannot attach") && stderr.contains("ticket"), "{role}: {stderr}");
    }
    let refusals =
        |audit: &[Value]| audit.iter().filter(|e| e["action"] == "capsule.attach" && e["decision"] == "deny").count();
    assert_eq!(refusals(&audit_until(&t, |a| refusals(a) >= 2)), 2, "each refused attach is audited");
    let mut client = t.client();
    assert_eq!(ask(&mut client, "user.v1.prompt", "still here"), "hello, still here");
}

#[test]
fn an_author_runs_a_capsule_directory_against_the_daemon_for_as_long_as_the_run_lasts() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let dir = example("hello");
    let dir = dir.to_str().expect("utf8");

    // No terminal and no --yes: consent is not assumed, and nothing is registered.
    let refused = t.cli(&["capsule", "run", dir]);
    assert_eq!(refused.status.code(), Some(3), "{}", String::from_utf8_lossy(&refused.stderr));
    let shown = String::from_utf8_lossy(&refused.stdout);
    assert!(shown.contains("hello requests these capabilities") && shown.contains("ipc_publish:agent.v1.response"));

    let log = std::fs::File::create(t.workspace.join("run.log")).expect("log");
    let mut run = t
        .command("astrid")
        .args(["capsule", "run", dir, "--yes"])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("capsule run");
    let mut client = t.client();
    wait_running(&t, &mut client, &["hello"]);
    assert_eq!(ask(&mut client, "user.v1.prompt", "author"), "hello, author");
    // A rescan of the capsule directories does not lose it: it is not on disk to be found.
    let reloaded = client.request("reload_capsules", json!({"method": "ReloadCapsules"}));
    assert_eq!(reloaded["payload"]["status"], "Success", "{reloaded}");
    assert_eq!(ask(&mut client, "user.v1.prompt", "again"), "hello, again");
    let listed = t.cli(&["capsule", "show", "hello", "--json"]);
    let shown: CapsuleDescription = serde_json::from_slice(&listed.stdout).expect("a CapsuleDescription");
    assert_eq!(shown.origin, CapsuleOrigin::Development, "{shown:?}");
    assert!(capsule_hosts(_daemon.pid()).is_empty(), "the author's process is the capsule host");

    // One run of a name at a time.
    let second = t.cli(&["capsule", "run", dir, "--yes"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already installed or running"));

    // Stopping the run takes the capsule and its consent away.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.id() as i32), nix::sys::signal::Signal::SIGINT)
        .expect("interrupt");
    let _ = run.wait();
    let gone = || {
        let output = t.cli(&["capsule", "list", "--json"]);
        let list: Vec<CapsuleDescription> = serde_json::from_slice(&output.stdout).unwrap_or_default();
        !list.iter().any(|c| c.name == "hello")
    };
    assert!(t.wait_for(gone, HANG), "unregistered when the run ended");
    let audit = audit_until(&t, |a| entries(a, "capsule.develop").iter().any(|e| e["rule"] == "run ended"));
    let develop: Vec<&str> =
        entries(&audit, "capsule.develop").into_iter().filter_map(|e| e["rule"].as_str()).collect();
    assert!(develop.iter().any(|r| r.contains("granted for this run: ipc_publish:agent.v1.response")), "{develop:?}");
    assert!(develop.contains(&"run ended"), "{develop:?}");
    assert!(
        entries(&audit, "capability.check").iter().any(|e| e["actor"]["name"] == "hello" && e["decision"] == "allow"),
        "the daemon checked the development capsule's calls"
    );
    let printed = std::fs::read_to_string(t.workspace.join("run.log")).expect("run log");
    assert!(printed.contains("running hello from"), "{printed}");
}

/// A raw connection that has completed a capsule-host handshake with `attach`.
fn attach_raw(t: &TestHome, attach: Value) -> (RawClient, Value) {
    let mut raw = RawClient::connect(&t.socket());
    raw.send_json(
        &json!({"token": t.token(), "protocol_version": 1, "client_version": "test", "capsule_host": attach}),
    );
    assert_eq!(raw.read_json().expect("handshake")["status"], "ok");
    let start = raw.read_json().expect("session start");
    (raw, start)
}

#[test]
fn the_session_protocol_refuses_bad_input_with_reasons_and_the_daemon_stays_healthy() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);

    // A malformed attach is refused in the handshake itself.
    let mut raw = RawClient::connect(&t.socket());
    raw.send_json(
        &json!({"token": t.token(), "protocol_version": 1, "client_version": "x", "capsule_host": {"dir": 7}}),
    );
    let reply = raw.read_json().expect("handshake");
    assert_eq!(reply["status"], "error");
    assert!(reply["reason"].as_str().expect("reason").contains("capsule_host"), "{reply}");

    // No such directory, a relative one, a manifest that does not parse: reasons, not hangs.
    let (_, start) = attach_raw(&t, json!({"dir": "/nonexistent/capsule", "approve": true}));
    assert!(start["refused"]["reason"].as_str().expect("reason").contains("/nonexistent/capsule"), "{start}");
    let (_, start) = attach_raw(&t, json!({"dir": "relative/dir", "approve": true}));
    assert!(start["refused"]["reason"].as_str().expect("reason").contains("absolute"), "{start}");
    let broken = t.workspace.join("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    std::fs::write(broken.join("Capsule.toml"), "[package]\nname = \"broken\"\nversion = 1\n").expect("manifest");
    let (_, start) = attach_raw(&t, json!({"dir": broken.to_str().expect("utf8"), "approve": true}));
    let reason = start["refused"]["reason"].as_str().expect("reason");
    assert!(reason.contains("Capsule.toml:3:"), "file:line:column: {reason}");

    // Consent is asked for, with the capabilities, before anything is registered.
    let hello = example("hello");
    let (_, start) = attach_raw(&t, json!({"dir": hello.to_str().expect("utf8")}));
    assert_eq!(start["consent_required"]["capsule"], "hello", "{start}");
    assert!(
        start["consent_required"]["capabilities"]
            .as_array()
            .expect("list")
            .contains(&json!("ipc_subscribe:user.v1.prompt"))
    );

    // Attached: the documented frames work; a malformed call with an id is answered with a
    // trap; a call to a function that does not exist too; a frame without an id ends the session.
    let (mut session, start) = attach_raw(&t, json!({"dir": hello.to_str().expect("utf8"), "approve": true}));
    assert_eq!(start["attached"]["capsule"], "hello", "{start}");
    assert!(start["attached"]["module"].as_str().is_some_and(|m| m.len() > 1000), "the module, in base64");
    session.send_json(&json!({"id": 1, "call": {"fn": "has_config", "key": "S0VZ"}}));
    assert_eq!(session.read_json().expect("reply"), json!({"id": 1, "reply": {"reply": "value", "value": 0}}));
    session.send_json(&json!({"id": 2, "call": {"fn": "kv_set", "key": "not base64!", "value": ""}}));
    let reply = session.read_json().expect("reply");
    assert_eq!(reply["id"], 2);
    assert!(reply["reply"]["value"].as_str().expect("trap").contains("malformed host call"), "{reply}");
    session.send_json(&json!({"id": 3, "call": {"fn": "spawn_shell"}}));
    assert_eq!(session.read_json().expect("reply")["reply"]["reply"], "trap");
    session.send_json(
        &json!({"id": 4, "call": {"fn": "ipc_publish", "topic": "YWdlbnQudjEucmVzcG9uc2U=", "payload": "e30="}}),
    );
    assert_eq!(session.read_json().expect("reply")["reply"]["value"], 0, "granted for this run");
    session.send_json(&json!({"id": 5, "call": {"fn": "ipc_publish", "topic": "YXN0cmlkLnYxLmFkbWluLnNodXRkb3du", "payload": "e30="}}));
    assert_eq!(session.read_json().expect("reply")["reply"]["value"], -3, "not in its grant");
    session.send_frame(b"not json at all");
    assert!(session.closed(), "a frame that is not a host call ends the session");

    let mut client = t.client();
    let status = client.request("status", json!({"method": "GetStatus"}));
    assert!(status["payload"]["data"]["pid"].as_u64().is_some(), "the daemon is fine: {status}");
    let gone = || !t.cli(&["capsule", "list"]).stdout.windows(5).any(|w| w == b"hello");
    assert!(t.wait_for(gone, HANG), "the development capsule left with its session");
}

/// Publishes `n` small messages on `bench.v1.flood`; returns how many were accepted.
const FLOOD_PUBLISHER: &str = r#"(module
    (import "astrid" "ipc_publish" (func $publish (param i32 i32 i32 i32) (result i32)))
    (memory (export "memory") 1)
    (data (i32.const 0) "bench.v1.flood")
    (data (i32.const 32) "{\"type\":\"raw_json\",\"reading\":42}")
    (func (export "astrid_alloc") (param i32) (result i32) i32.const 1024)
    (func (export "publish") (param $n i32) (result i32) (local $i i32) (local $ok i32)
        (block $done
            (loop $next
                (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
                (if (i32.eqz (call $publish (i32.const 0) (i32.const 14) (i32.const 32) (i32.const 32)))
                    (then (local.set $ok (i32.add (local.get $ok) (i32.const 1)))))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $next)))
        local.get $ok))"#;

/// Takes messages on `bench.v1.flood` with `ipc_recv` (`take`) or `ipc_poll` (`poll`): each
/// returns how many it got before the first status, which `last()` then holds.
const FLOOD_SUBSCRIBER: &str = r#"(module
    (import "astrid" "ipc_subscribe" (func $subscribe (param i32 i32) (result i32)))
    (import "astrid" "ipc_unsubscribe" (func $unsubscribe (param i32) (result i32)))
    (import "astrid" "ipc_recv" (func $recv (param i32 i32) (result i64)))
    (import "astrid" "ipc_poll" (func $poll (param i32) (result i64)))
    (memory (export "memory") 2)
    (global $last (mut i64) (i64.const 0))
    (data (i32.const 0) "bench.v1.flood")
    (func (export "astrid_alloc") (param i32) (result i32) i32.const 4096)
    (func (export "subscribe") (result i32) (call $subscribe (i32.const 0) (i32.const 14)))
    (func (export "unsubscribe") (param i32) (result i32) (call $unsubscribe (local.get 0)))
    (func (export "take") (param $handle i32) (param $n i32) (param $timeout i32) (result i32) (local $count i32)
        (block $done
            (loop $next
                (br_if $done (i32.ge_u (local.get $count) (local.get $n)))
                (global.set $last (call $recv (local.get $handle) (local.get $timeout)))
                (br_if $done (i64.le_s (global.get $last) (i64.const 0)))
                (local.set $count (i32.add (local.get $count) (i32.const 1)))
                (br $next)))
        local.get $count)
    (func (export "poll") (param $handle i32) (param $n i32) (result i32) (local $count i32)
        (block $done
            (loop $next
                (br_if $done (i32.ge_u (local.get $count) (local.get $n)))
                (global.set $last (call $poll (local.get $handle)))
                (br_if $done (i64.le_s (global.get $last) (i64.const 0)))
                (local.set $count (i32.add (local.get $count) (i32.const 1)))
                (br $next)))
        local.get $count)
    (func (export "last") (result i64) global.get $last))"#;

/// A development capsule named `name` running `wat`, granted `grant` on `bench.v1.flood`,
/// attached to the daemon of `t` over its socket the way a capsule-host process attaches.
fn attached(t: &TestHome, name: &str, wat: &str, grant: &str) -> astrid::wasm::Sandbox {
    let module = wat::parse_str(wat).expect("wat");
    let dir = t.workspace.join(name);
    std::fs::create_dir_all(&dir).expect("capsule dir");
    std::fs::write(dir.join("flood.wasm"), &module).expect("module");
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"1.0.0\"\n[[component]]\nfile = \"flood.wasm\"\n\
         [capabilities]\n{grant} = [\"bench.v1.flood\"]\n"
    );
    std::fs::write(dir.join("Capsule.toml"), manifest).expect("manifest");
    let attach = astrid::types::CapsuleAttach { dir: Some(dir.display().to_string()), approve: true, ticket: None };
    let home = astrid::home::AstridHome::at(&t.home);
    let (link, attached) = astrid::ipc::capsule_link::CapsuleLink::attach(&home, attach).expect("attach");
    let compiled = astrid::wasm::compile(&module).expect("valid module");
    let lifecycle = std::sync::Arc::new(astrid::wasm::Lifecycle::default());
    astrid::wasm::Sandbox::instantiate_with(&attached.capsule, &compiled, attached.limits, Box::new(link), lifecycle)
        .expect("instantiate")
}

#[test]
fn a_capsule_host_reads_ahead_without_losing_repeating_or_keeping_a_message() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut publisher = attached(&t, "flood-pub", FLOOD_PUBLISHER, "ipc_publish");
    let mut subscriber = attached(&t, "flood-sub", FLOOD_SUBSCRIBER, "ipc_subscribe");
    let timed_out = astrid::wasm::IpcStatus::Timeout as i64;
    let handle = subscriber.call::<(), i32>("subscribe", ()).expect("subscribe");
    assert_eq!(handle, 0);
    assert_eq!(publisher.call::<i32, i32>("publish", 300).expect("publish"), 300);
    // The backlog crosses in batches, and every message is handed over once: 100 by
    // `ipc_recv`, the other 200 by `ipc_poll` (served from what was read ahead, then from
    // the daemon), then nothing more.
    assert_eq!(subscriber.call::<(i32, i32, i32), i32>("take", (handle, 100, 10_000)).expect("take"), 100);
    assert_eq!(subscriber.call::<(i32, i32), i32>("poll", (handle, 1_000)).expect("poll"), 200);
    assert_eq!(subscriber.call::<(), i64>("last", ()).expect("last"), timed_out, "poll ends on an empty queue");
    assert_eq!(subscriber.call::<(i32, i32, i32), i32>("take", (handle, 1, 0)).expect("take"), 0);
    assert_eq!(subscriber.call::<(), i64>("last", ()).expect("last"), timed_out);

    // What was read ahead belongs to the subscription: dropped with it, never handed to the
    // next subscription that gets the same handle.
    assert_eq!(publisher.call::<i32, i32>("publish", 10).expect("publish"), 10);
    assert_eq!(subscriber.call::<(i32, i32, i32), i32>("take", (handle, 1, 10_000)).expect("take"), 1);
    assert_eq!(subscriber.call::<i32, i32>("unsubscribe", handle).expect("unsubscribe"), 0);
    assert_eq!(subscriber.call::<(), i32>("subscribe", ()).expect("subscribe again"), handle, "the handle is reused");
    assert_eq!(publisher.call::<i32, i32>("publish", 3).expect("publish"), 3);
    assert_eq!(subscriber.call::<(i32, i32, i32), i32>("take", (handle, 100, 2_000)).expect("take"), 3);
    assert_eq!(subscriber.call::<(), i64>("last", ()).expect("last"), timed_out, "only the three sent since");

    // Two subscriptions, taken in turns: going back to a batch read ahead goes through the
    // daemon first (the instance works for that batch's cause again) and loses nothing.
    let other = subscriber.call::<(), i32>("subscribe", ()).expect("second subscription");
    assert_eq!(publisher.call::<i32, i32>("publish", 5).expect("publish"), 5);
    assert_eq!(subscriber.call::<(i32, i32, i32), i32>("take", (handle, 1, 10_000)).expect("take"), 1);
    assert_eq!(subscriber.call::<(i32, i32, i32), i32>("take", (other, 5, 10_000)).expect("take"), 5);
    assert_eq!(subscriber.call::<(i32, i32, i32), i32>("take", (handle, 100, 500)).expect("take"), 4);
    assert_eq!(subscriber.call::<(), i64>("last", ()).expect("last"), timed_out);
}
