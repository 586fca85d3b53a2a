//! What an untrusted module or manifest can make the real daemon allocate: bounded, refused
//! with the limit named, and given back when the capsule goes. Memory is read from
//! `/proc/<daemon>/status` (`VmRSS`, `VmHWM`), with generous margins.

use std::path::Path;

use astrid::types::management::{CapabilityListing, CapsuleDescription};
use serde_json::{Value, json};

use crate::capsules::{example, running};
use crate::harness::{HANG, TestHome};

/// A field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("KiB")
}

fn rss_mib(pid: i32) -> f64 {
    status_kib(pid, "VmRSS:") as f64 / 1024.0
}

/// Whether a thread of the daemon runs a capsule (`capsule:<name>`, cut to 15 bytes).
fn capsule_threads(pid: i32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    tasks
        .filter_map(Result::ok)
        .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.starts_with("capsule:")))
        .count()
}

/// Writes a capsule directory `dir` named `name` with `module` as its component.
pub(crate) fn write_capsule(dir: &Path, name: &str, module: &[u8], extra: &str) {
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("capsule.wasm"), module).expect("module");
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\n\n[[component]]\nid = \"main\"\nfile = \"capsule.wasm\"\n{extra}"
    );
    std::fs::write(dir.join("Capsule.toml"), manifest).expect("manifest");
}

#[test]
fn a_module_whose_table_would_escape_the_memory_limit_is_refused_and_the_daemon_stays_small() {
    let t = TestHome::new();
    let daemon = t.daemon_with(&[], &[("ASTRID_CAPSULE_DEADLINE_MS", "2000"), ("ASTRID_CAPSULE_BACKOFF_MS", "100")]);
    let pid = daemon.pid();
    let mut client = t.client();
    let before = status_kib(pid, "VmRSS:");

    // 34 bytes that ask for a table of a hundred million entries (400 MB of host memory).
    let bomb = t.workspace.join("table-bomb");
    write_capsule(&bomb, "table-bomb", &wat::parse_str("(module (table 100000000 funcref))").expect("wat"), "");
    let output = t.cli(&["capsule", "install", bomb.to_str().expect("utf8"), "--yes"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("table of 100000000 elements") && stderr.contains("64 MiB memory limit"), "{stderr}");

    // One that grows its table a million elements at a time, a hundred times, then spins.
    let grower = t.workspace.join("table-grower");
    let module = wat::parse_str(
        r#"(module
            (table 0 funcref)
            (func (export "run") (local $i i32)
                (loop $more
                    (drop (table.grow (ref.null func) (i32.const 1000000)))
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br_if $more (i32.lt_u (local.get $i) (i32.const 100))))
                (loop $spin (br $spin))))"#,
    )
    .expect("wat");
    write_capsule(&grower, "table-grower", &module, "");
    let _ = t.cli(&["capsule", "install", grower.to_str().expect("utf8"), "--yes"]);
    let crashed = || {
        crate::capsules::audit_tail(&t)
            .iter()
            .any(|e| e["action"] == "capsule.crashed" && e["resource"] == "table-grower")
    };
    assert!(t.wait_for(crashed, HANG), "the grower never reached its deadline\n{}", t.log());

    // The daemon never held the tables: its peak is within one instance's limit of where it was.
    let peak = status_kib(pid, "VmHWM:");
    assert!(
        peak < before + 160 * 1024,
        "peak RSS {} MiB, {} MiB before the hostile modules",
        peak / 1024,
        before / 1024
    );
    assert_eq!(running(&mut client), vec!["astrid-capsule-cli"], "neither runs");
}

/// A valid module of `functions` functions of about `body` bytes each (validated whole at
/// load, never called), with a custom section `tag` so each tag is a different module.
fn big_module(functions: u32, body: usize, tag: &str) -> Vec<u8> {
    fn leb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, content: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(content.len() as u64, out);
        out.extend_from_slice(content);
    }
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut wasm); // one type: [] -> []
    let mut funcs = Vec::new();
    leb(functions.into(), &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, functions as usize));
    section(3, &funcs, &mut wasm);
    let mut function = vec![0u8]; // no locals
    for _ in 0..body / 3 {
        function.extend_from_slice(&[0x41, 0x01, 0x1a]); // i32.const 1, drop
    }
    function.push(0x0b); // end
    let mut code = Vec::new();
    leb(functions.into(), &mut code);
    for _ in 0..functions {
        leb(function.len() as u64, &mut code);
        code.extend_from_slice(&function);
    }
    section(10, &code, &mut wasm);
    let mut custom = Vec::new();
    leb(tag.len() as u64, &mut custom);
    custom.extend_from_slice(tag.as_bytes());
    section(0, &custom, &mut wasm);
    wasm
}

#[test]
fn installing_and_removing_capsules_gives_their_memory_back() {
    let t = TestHome::new();
    let daemon = t.daemon(&[]);
    let pid = daemon.pid();
    let mut client = t.client();
    // An 8 MB module: what compiling it costs is easy to see, and must be given back.
    let cycle = |n: usize| {
        let out = t.cli(&["capsule", "install", example("kv-counter").to_str().expect("utf8"), "--yes"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let big = t.workspace.join(format!("big-{n}"));
        write_capsule(&big, "big", &big_module(9000, 900, &format!("cycle {n}")), "");
        let out = t.cli(&["capsule", "install", big.to_str().expect("utf8"), "--yes"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        for name in ["kv-counter", "big"] {
            let out = t.cli(&["capsule", "remove", name]);
            assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(t.wait_for(|| capsule_threads(pid) == 0, HANG), "capsule threads left");
    };
    cycle(1);
    let after_first = rss_mib(pid);
    // Installs are rate-limited to 10 a minute: four more cycles of two.
    for n in 2..=5 {
        cycle(n);
    }
    let after_all = rss_mib(pid);
    eprintln!("daemon RSS: {after_first:.1} MiB after the first cycle, {after_all:.1} MiB after five");
    assert!(
        after_all < after_first + 12.0,
        "RSS {after_all:.1} MiB after 5 cycles, {after_first:.1} MiB after the first: memory is not given back"
    );
    // And the daemon still answers.
    assert_eq!(running(&mut client), vec!["astrid-capsule-cli"]);
}

/// Sends `InstallCapsule` for `source` straight to the daemon (the CLI refuses such a
/// manifest itself, before the daemon sees it).
fn install_request(t: &TestHome, source: &Path) -> Value {
    let mut client = t.client();
    let reply = client.request(
        "install_capsule",
        json!({"method": "InstallCapsule", "params": {"source": source.to_str().expect("utf8"), "workspace": false}}),
    );
    reply["payload"].clone()
}

#[test]
fn a_manifest_over_its_limits_is_refused_up_front_and_leaves_nothing_behind() {
    let t = TestHome::new();
    let daemon = t.daemon(&[]);
    let pid = daemon.pid();
    let before = rss_mib(pid);
    let module = std::fs::read(example("kv-counter").join("kv-counter.wasm")).expect("module");

    // 9.7 MB of interceptors: refused on its size, before it is parsed.
    let huge = t.workspace.join("huge");
    let interceptors = "[[interceptor]]\nevent = \"cli.v1.command.execute\"\naction = \"command\"\n".repeat(140_000);
    write_capsule(&huge, "huge", &module, &interceptors);
    let reply = install_request(&t, &huge);
    assert_eq!(reply["status"], "Error", "{reply}");
    let message = reply["data"].as_str().expect("message");
    assert!(message.contains("over the 262144-byte manifest limit"), "{message}");

    // Within the size, over a count: 100 000 capability entries would not fit, nor 257 interceptors.
    let many = t.workspace.join("many");
    let topics: Vec<String> = (0..257).map(|i| format!("\"x.v1.t{i}\"")).collect();
    write_capsule(&many, "many", &module, &format!("[capabilities]\nipc_subscribe = [{}]\n", topics.join(", ")));
    let reply = install_request(&t, &many);
    let message = reply["data"].as_str().expect("message");
    assert!(message.contains("capabilities.ipc_subscribe: more than 256 entries, the limit"), "{message}");
    let output = t.cli(&["capsule", "install", many.to_str().expect("utf8"), "--yes"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("more than 256 entries, the limit"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("x.v1.t0"), "no consent was asked");

    // Nothing left behind: no directory (staging included), no registry entry, no pending grant.
    let capsules = t.home.join("home/default/.local/capsules");
    let left: Vec<_> = std::fs::read_dir(&capsules)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(listed_names(&t), vec!["astrid-capsule-cli"]);
    let caps: CapabilityListing =
        serde_json::from_slice(&t.cli(&["caps", "list", "--json"]).stdout).expect("a CapabilityListing");
    assert!(caps.pending.is_empty(), "{caps:?}");
    let refusals = crate::capsules::audit_until(&t, |audit| {
        audit.iter().filter(|e| e["action"] == "capsule.install" && e["decision"] == "deny").count() >= 2
    });
    assert!(refusals.iter().any(|e| e["action"] == "capsule.install" && e["decision"] == "deny"));

    // The daemon stayed small and answers at once.
    let mut client = t.client();
    assert_eq!(running(&mut client), vec!["astrid-capsule-cli"]);
    let after = rss_mib(pid);
    assert!(after < before + 40.0, "RSS {after:.1} MiB, {before:.1} MiB before");
}

/// A capability kind nothing enforces is refused by name at install, before consent is
/// asked, and leaves nothing behind: an operator is never shown a limit that means nothing.
#[test]
fn a_capability_nothing_enforces_is_refused_at_install() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let module = std::fs::read(example("kv-counter").join("kv-counter.wasm")).expect("module");
    let dir = t.workspace.join("uplinker");
    write_capsule(&dir, "uplinker", &module, "[capabilities]\nuplink = true\nipc_publish = [\"x.v1.y\"]\n");
    let output = t.cli(&["capsule", "install", dir.to_str().expect("utf8"), "--yes"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("capability `uplink` is not enforced"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("x.v1.y"), "no consent was asked");
    assert_eq!(listed_names(&t), vec!["astrid-capsule-cli"]);
}

/// The names `astrid capsule list --json` lists.
fn listed_names(t: &TestHome) -> Vec<String> {
    let listed: Vec<CapsuleDescription> =
        serde_json::from_slice(&t.cli(&["capsule", "list", "--json"]).stdout).expect("capsule descriptions");
    listed.into_iter().map(|c| c.name).collect()
}
