//! `cargo bench --bench capsule`: the cost of the sandbox, against a native call measured in
//! the same run: host→guest call, guest→host call, and module instantiation.

use std::hint::black_box;
use std::time::Instant;

use astrid::wasm::{Sandbox, SandboxLimits, engine};

const CALLS: usize = 100_000;

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

#[inline(never)]
fn native_add(a: i32, b: i32) -> i32 {
    a.wrapping_add(b)
}

fn main() {
    let wasm = wat::parse_str(MODULE).expect("wat");
    let engine = engine();
    let mut sandbox = Sandbox::load(&engine, "bench", &wasm, SandboxLimits::default()).expect("load");

    let started = Instant::now();
    let mut sum = 0i32;
    for i in 0..CALLS as i32 {
        sum = sum.wrapping_add(black_box(native_add(black_box(i), 1)));
    }
    let native_ns = started.elapsed().as_nanos() as f64 / CALLS as f64;
    black_box(sum);

    let started = Instant::now();
    for i in 0..CALLS as i32 {
        black_box(sandbox.call::<(i32, i32), i32>("add", (i, 1)).expect("add"));
    }
    let guest_ns = started.elapsed().as_nanos() as f64 / CALLS as f64;

    let started = Instant::now();
    black_box(sandbox.call::<i32, i64>("host", CALLS as i32).expect("host"));
    let host_ns = started.elapsed().as_nanos() as f64 / CALLS as f64;

    let mut instantiate: Vec<f64> = (0..200)
        .map(|_| {
            let started = Instant::now();
            black_box(Sandbox::load(&engine, "bench", &wasm, SandboxLimits::default()).expect("load"));
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    instantiate.sort_by(f64::total_cmp);

    println!("astrid capsule benchmark");
    println!("native call (baseline): {native_ns:.1} ns");
    println!(
        "host->guest call (add, fuel slices, deadline check): {guest_ns:.0} ns ({:.0}x native)",
        guest_ns / native_ns
    );
    println!("guest->host call (clock_ms, in a guest loop): {host_ns:.0} ns per call (target <= 1 us)");
    println!("validate + instantiate the module: median {:.1} us (target <= 1 ms)", instantiate[instantiate.len() / 2]);
}
