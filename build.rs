//! Two things about the shipped binary.
//!
//! It deflates the default capsule set's modules for embedding (`src/kernel/defaults.rs`),
//! and records each module's BLAKE3 beside it. WebAssembly deflates to about a third: 1.06 MB
//! of modules take 0.39 MB of the binary, and of the pages a booted daemon touches. A module is inflated when its capsule starts, after
//! `system.ready`; its hash is known without inflating it, so discovery, which runs before
//! readiness, does not pay for the compression.
//!
//! It links the binary with packed relative relocations (`DT_RELR`, glibc 2.36+, GNU ld
//! 2.38+). The binary is position independent, for ASLR, so every pointer in its read-only
//! data (vtables, panic locations, static strings) is relocated at each start: 20,000
//! relocations, 500 KB of `.rela.dyn` that ld.so reads, and faults in, on every
//! `astrid status` and in every daemon. Packed, they take 6 KB.

use std::path::Path;

/// The default set. `defaults.rs` includes what this writes for each, so a capsule missing
/// here fails the build rather than going unembedded.
const DEFAULT_CAPSULES: [&str; 5] = ["llm-offline", "llm-openai", "tools-fs", "tools-shell", "orchestrator"];

/// miniz_oxide's best ratio: paid once per build of a few modules.
const LEVEL: u8 = 10;

fn main() {
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let out = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    let out = Path::new(&out);
    for name in DEFAULT_CAPSULES {
        let module = format!("capsules-examples/{name}/{name}.wasm");
        println!("cargo::rerun-if-changed={module}");
        let wasm = std::fs::read(&module).unwrap_or_else(|e| panic!("cannot read {module}: {e}"));
        let deflated = miniz_oxide::deflate::compress_to_vec(&wasm, LEVEL);
        std::fs::write(out.join(format!("{name}.wasm.deflate")), deflated).expect("write to OUT_DIR");
        std::fs::write(out.join(format!("{name}.wasm.blake3")), blake3::hash(&wasm).to_hex().as_str())
            .expect("write to OUT_DIR");
    }
}
