//! `cargo bench --bench capsule`: the cost of the sandbox, against baselines measured in the
//! same run. Every figure is the median of several rounds.
//!
//! - host→guest call and guest→host call, against a native function call;
//! - a guest→host call from a capsule-host process (over the socket to the real daemon),
//!   against the same call in-process and a raw Unix-socket round trip;
//! - validate + instantiate each example capsule (the committed modules);
//! - boot-to-ready of the real daemon binary with 20 installed capsules, against the same
//!   daemon booting with none.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use astrid::wasm::{Sandbox, SandboxLimits};

const CALLS: usize = 100_000;
const ROUNDS: usize = 9;

const MODULE: &str = r#"(module
    (import "astrid" "clock_ms" (func $clock (result i64)))
    (memory (export "memory") 1)
    (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
    (func (export "host") (param i32) (result i64)
        (local $i i32) (local $t i64)
        (loop $l
            call $clock local.set $t
            local.get $i i32.const 1 i32.add local.tee $i
            local.get 0 i32.lt_u br_if $l)
        local.get $t))"#;

/// A guest that asks `has_config` in a loop: the cheapest call that reaches the kernel side.
const CONFIG_MODULE: &str = r#"(module
    (import "astrid" "has_config" (func $has (param i32 i32) (result i32)))
    (memory (export "memory") 1)
    (data (i32.const 0) "KEY")
    (func (export "astrid_alloc") (param i32) (result i32) i32.const 1024)
    (func (export "config") (param i32) (result i32)
        (local $i i32) (local $r i32)
        (loop $l
            i32.const 0 i32.const 3 call $has local.set $r
            local.get $i i32.const 1 i32.add local.tee $i
            local.get 0 i32.lt_u br_if $l)
        local.get $r))"#;

/// Round trips per sample over the socket.
const SOCKET_CALLS: usize = 5_000;

const EXAMPLES: &[&str] = &["hello", "kv-counter", "file-tool", "http-fetch", "hostile"];

#[inline(never)]
fn native_add(a: i32, b: i32) -> i32 {
    a.wrapping_add(b)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn per_call_ns(mut round: impl FnMut()) -> f64 {
    median(
        (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                round();
                started.elapsed().as_nanos() as f64 / CALLS as f64
            })
            .collect(),
    )
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("capsules-examples")
}

/// Spawns the daemon in `home`, returns the time until `run/system.ready`, then stops it.
fn boot_to_ready(home: &Path) -> f64 {
    let started = Instant::now();
    let daemon = RunningDaemon::start(home);
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    drop(daemon);
    elapsed
}

/// A running daemon in `home`; stopped (SIGTERM) and reaped on drop.
struct RunningDaemon(std::process::Child);

impl RunningDaemon {
    fn start(home: &Path) -> Self {
        let ready = home.join("run/system.ready");
        let child = Command::new(env!("CARGO_BIN_EXE_astrid"))
            .arg("daemon")
            .env("ASTRID_HOME", home)
            .env("ASTRID_LOG", "warn")
            .env("ASTRID_DEFAULT_CAPSULES", "0")
            .current_dir(home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon");
        let started = Instant::now();
        while !ready.exists() {
            assert!(started.elapsed() < Duration::from_secs(20), "daemon never became ready");
            std::thread::sleep(Duration::from_micros(200));
        }
        Self(child)
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// Microseconds per round trip of a small frame over a Unix socket pair to an echo thread:
/// the floor under any call that crosses the socket.
fn raw_round_trip_us() -> f64 {
    use std::io::{Read, Write};
    let (mut client, mut server) = std::os::unix::net::UnixStream::pair().expect("pair");
    let echo = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 4096];
        loop {
            let mut header = [0u8; 4];
            if server.read_exact(&mut header).is_err() {
                return;
            }
            let len = u32::from_be_bytes(header) as usize;
            buffer[..4].copy_from_slice(&header);
            server.read_exact(&mut buffer[4..4 + len]).expect("body");
            server.write_all(&buffer[..4 + len]).expect("echo");
        }
    });
    let body = br#"{"id":1,"call":{"fn":"has_config","key":"S0VZ"}}"#;
    // Header and body in one write, as the session's framing sends them.
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    let mut reply = vec![0u8; body.len()];
    let samples = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..SOCKET_CALLS {
                client.write_all(&frame).expect("write");
                let mut header = [0u8; 4];
                client.read_exact(&mut header).expect("read");
                client.read_exact(&mut reply).expect("read");
            }
            started.elapsed().as_secs_f64() * 1e6 / SOCKET_CALLS as f64
        })
        .collect();
    drop(client);
    echo.join().expect("echo");
    median(samples)
}

/// Microseconds per `has_config` from a guest whose host calls go to the real daemon, as in
/// a capsule-host process (attached as a development capsule, no capabilities).
fn remote_host_call_us(root: &Path, module: &[u8]) -> f64 {
    let home = root.join("remote-home");
    std::fs::create_dir_all(&home).expect("home");
    let dir = root.join("remote-capsule");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("bench.wasm"), module).expect("module");
    std::fs::write(
        dir.join("Capsule.toml"),
        "[package]\nname = \"bench-remote\"\nversion = \"1.0.0\"\n[[component]]\nfile = \"bench.wasm\"\n",
    )
    .expect("manifest");
    let _daemon = RunningDaemon::start(&home);
    let home = astrid::home::AstridHome::at(&home);
    let attach = astrid::types::CapsuleAttach { dir: Some(dir.display().to_string()), approve: true, ticket: None };
    let (link, attached) = astrid::ipc::capsule_link::CapsuleLink::attach(&home, attach).expect("attach");
    let compiled = astrid::wasm::compile(module).expect("valid");
    let lifecycle = std::sync::Arc::new(astrid::wasm::Lifecycle::default());
    let mut sandbox =
        Sandbox::instantiate_with(&attached.capsule, &compiled, attached.limits, Box::new(link), lifecycle)
            .expect("instantiate");
    median(
        (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                black_box(sandbox.call::<i32, i32>("config", SOCKET_CALLS as i32).expect("config"));
                started.elapsed().as_secs_f64() * 1e6 / SOCKET_CALLS as f64
            })
            .collect(),
    )
}

/// `module` with a custom section named `name` appended: the same code under another BLAKE3.
fn with_custom_section(module: &[u8], name: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                break;
            }
        }
    }
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    let mut out = module.to_vec();
    out.push(0); // custom section
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// A home with `count` installed capsules (distinct names, the kv-counter module, no
/// capabilities requested, so they start without an approval); with `distinct`, every
/// module has its own hash, so the host compiles each one.
fn home_with_capsules(root: &Path, count: usize, distinct: bool) -> PathBuf {
    let home = root.join(format!("home{count}-{distinct}"));
    std::fs::create_dir_all(&home).expect("home");
    let capsules = home.join("home/default/.local/capsules");
    let module = std::fs::read(examples_dir().join("kv-counter/kv-counter.wasm")).expect("module");
    for i in 0..count {
        let source = root.join(format!("src-{count}-{distinct}-{i}"));
        std::fs::create_dir_all(&source).expect("mkdir");
        let module = if distinct { with_custom_section(&module, &format!("bench-{i}")) } else { module.clone() };
        std::fs::write(source.join("capsule.wasm"), &module).expect("module");
        std::fs::write(
            source.join("Capsule.toml"),
            format!("[package]\nname = \"bench-{i:02}\"\nversion = \"1.0.0\"\n[[component]]\nid = \"c\"\nfile = \"capsule.wasm\"\n"),
        )
        .expect("manifest");
        astrid::kernel::install::install(&source, &capsules).expect("install");
    }
    home
}

fn main() {
    let wasm = wat::parse_str(MODULE).expect("wat");
    let mut sandbox = Sandbox::load("bench", &wasm, SandboxLimits::default()).expect("load");

    let native_ns = per_call_ns(|| {
        let mut sum = 0i32;
        for i in 0..CALLS as i32 {
            sum = sum.wrapping_add(black_box(native_add(black_box(i), 1)));
        }
        black_box(sum);
    });
    let guest_ns = per_call_ns(|| {
        for i in 0..CALLS as i32 {
            black_box(sandbox.call::<(i32, i32), i32>("add", (i, 1)).expect("add"));
        }
    });
    let host_ns = per_call_ns(|| {
        black_box(sandbox.call::<i32, i64>("host", CALLS as i32).expect("host"));
    });

    println!("astrid capsule benchmark (medians of {ROUNDS} rounds)");
    println!("native call (baseline): {native_ns:.1} ns");
    println!(
        "host->guest call (add, fuel slices, deadline check): {guest_ns:.0} ns ({:.0}x native; target <= 1 us)",
        guest_ns / native_ns
    );
    println!(
        "guest->host call (clock_ms, in a guest loop): {host_ns:.0} ns ({:.0}x native; target <= 1 us)",
        host_ns / native_ns
    );

    let config_wasm = wat::parse_str(CONFIG_MODULE).expect("wat");
    let mut local = Sandbox::load("bench-local", &config_wasm, SandboxLimits::default()).expect("load");
    let local_ns = per_call_ns(|| {
        black_box(local.call::<i32, i32>("config", CALLS as i32).expect("config"));
    });
    let root = tempfile::Builder::new().prefix("astb").tempdir_in("/tmp").expect("tempdir");
    let raw_us = raw_round_trip_us();
    let remote_us = remote_host_call_us(root.path(), &config_wasm);
    println!("guest->host call reaching the kernel side (has_config), in-process: {local_ns:.0} ns");
    println!("raw Unix-socket round trip of a host-call-sized frame (baseline): {:.1} us", raw_us);
    println!(
        "guest->host call (has_config) from a capsule-host process, over the socket to the daemon: {remote_us:.1} us \
         ({:.1}x the raw round trip; {:.0}x in-process)",
        remote_us / raw_us,
        remote_us * 1000.0 / local_ns
    );

    for name in EXAMPLES {
        let module = std::fs::read(examples_dir().join(name).join(format!("{name}.wasm"))).expect("example module");
        let compilation = (0..11)
            .map(|_| {
                let started = Instant::now();
                black_box(astrid::wasm::compile(&module).expect("valid"));
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        let compiled = astrid::wasm::compile(&module).expect("valid");
        let services = astrid::wasm::HostServices::default;
        let samples = (0..51)
            .map(|_| {
                let started = Instant::now();
                let limits = SandboxLimits::default();
                black_box(Sandbox::instantiate(name, &compiled, limits, services()).expect("load"));
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        println!(
            "instantiate {name} ({} KiB): median {:.0} us (target <= 1 ms); validate + compile, once per module: {:.0} us",
            module.len() / 1024,
            median(samples),
            median(compilation)
        );
    }

    let empty = home_with_capsules(root.path(), 0, false);
    let shared = home_with_capsules(root.path(), 20, false);
    let distinct = home_with_capsules(root.path(), 20, true);
    let (mut base, mut with_shared, mut with_distinct) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        base.push(boot_to_ready(&empty));
        with_shared.push(boot_to_ready(&shared));
        with_distinct.push(boot_to_ready(&distinct));
    }
    let base = median(base);
    println!("daemon boot-to-ready, no capsules (baseline): {base:.1} ms");
    for (what, samples) in [("sharing one module", with_shared), ("with 20 distinct modules", with_distinct)] {
        let with = median(samples);
        println!(
            "daemon boot-to-ready, 20 installed capsules {what}: {with:.1} ms ({:.2}x baseline; +{:.1} ms; target <= 50 ms)",
            with / base,
            with - base
        );
    }
}
