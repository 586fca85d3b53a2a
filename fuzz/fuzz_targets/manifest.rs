//! `Capsule.toml` as an author (or an attacker) writes it: parsed strictly, with file:line
//! errors. Nothing may panic, whatever the bytes.
#![no_main]

use std::path::Path;

use astrid::kernel::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(manifest) = Manifest::parse(Path::new("Capsule.toml"), text) {
        let _ = manifest.package.name.len();
    }
});
