//! What an untrusted module or manifest can make the real daemon allocate: bounded, refused
//! with the limit named, and given back when the capsule goes. Memory is read from
//! `/proc/<daemon>/status` (`VmRSS`, `VmHWM`), with generous margins.

use std::path::Path;
use std::time::Duration;

use crate::capsules::running;
use crate::harness::TestHome;

/// A field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("KiB")
}

/// Writes a capsule directory `dir` named `name` with `module` as its component.
fn write_capsule(dir: &Path, name: &str, module: &[u8], extra: &str) {
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
    assert!(t.wait_for(crashed, Duration::from_secs(30)), "the grower never reached its deadline\n{}", t.log());

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
