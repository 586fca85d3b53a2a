//! An untrusted module in the sandbox, with the limits on: arbitrary bytes, and modules
//! wasm-smith builds valid by construction (so compilation and instantiation are reached,
//! not only the parser). Loading and instantiating, then calling what it exports that takes
//! no arguments, must never panic the host, and must stay within the limits.
#![no_main]

use std::time::Duration;

use arbitrary::Unstructured;
use astrid::wasm::SandboxLimits;
use astrid::wasm::{HostServices, Sandbox};
use libfuzzer_sys::fuzz_target;

fn limits() -> SandboxLimits {
    SandboxLimits {
        memory_bytes: 16 * 1024 * 1024,
        fuel_per_call: 5_000_000,
        fuel_slice: 100_000,
        deadline: Duration::from_secs(2),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let wasm = if choice % 2 == 0 {
        rest.to_vec()
    } else {
        let mut config = wasm_smith::Config::default();
        config.max_imports = 0;
        config.min_exports = 1;
        config.max_memory32_bytes = 32 * 1024 * 1024;
        config.max_table_elements = 1_000_000;
        match wasm_smith::Module::new(config, &mut Unstructured::new(rest)) {
            Ok(module) => module.to_bytes(),
            Err(_) => return,
        }
    };
    let Ok(mut sandbox) = Sandbox::load_with("fuzz", &wasm, limits(), HostServices::default()) else {
        return;
    };
    for export in ["run", "astrid_install", "astrid_upgrade", "main", "_start", "f", "0", "1"] {
        if sandbox.has_export(export) {
            let _ = sandbox.call::<(), ()>(export, ());
        }
    }
});
