//! The declaration against everything that is not generated from it: the linker, the guest
//! SDK's `extern` block and the ABI page.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::wasm::{Sandbox, SandboxError, SandboxLimits};

/// `name → (i32|i64 params, result)` as a source spells the signatures.
type Signatures = BTreeMap<String, (Vec<AbiType>, Option<AbiType>)>;

fn declared() -> Signatures {
    HOST_FUNCTIONS.iter().map(|f| (f.name.to_owned(), (f.params.to_vec(), f.result))).collect()
}

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A module importing every declared function with its declared type.
fn importing_everything() -> String {
    let imports: String = HOST_FUNCTIONS
        .iter()
        .map(|f| {
            let params: Vec<&str> = f.params.iter().map(|t| t.name()).collect();
            let result = f.result.map(|r| format!(" (result {})", r.name())).unwrap_or_default();
            format!("(import \"{HOST_MODULE}\" \"{}\" (func (param {}){result}))\n", f.name, params.join(" "))
        })
        .collect();
    format!("(module {imports} (memory (export \"memory\") 1))")
}

#[test]
fn every_declared_function_is_linked_with_its_declared_signature() {
    let wasm = wat::parse_str(importing_everything()).expect("wat");
    Sandbox::load("everything", &wasm, SandboxLimits::default()).expect("every declared import links");
    let names: std::collections::BTreeSet<&str> = HOST_FUNCTIONS.iter().map(|f| f.name).collect();
    assert_eq!(names.len(), HOST_FUNCTIONS.len(), "a name is declared twice");
}

#[test]
fn an_import_with_another_signature_is_refused_when_the_module_is_compiled() {
    let wasm = wat::parse_str(r#"(module (import "astrid" "kv_get" (func (param i32) (result i64))))"#).expect("wat");
    let error = crate::wasm::compile(&wasm).expect_err("wrong signature");
    assert!(matches!(&error, SandboxError::ImportSignature { name, .. } if name == "kv_get"), "{error}");
    assert!(error.to_string().contains("(i32, i32) -> i64"), "names what the host provides: {error}");
    let wasm = wat::parse_str(r#"(module (import "astrid" "spawn_shell" (func)))"#).expect("wat");
    assert!(matches!(crate::wasm::compile(&wasm), Err(SandboxError::ForbiddenImport { .. })));
}

/// The `extern` block of the SDK's `abi.rs`, as signatures: pointers, `usize`, `isize` and `i32` are
/// `i32` on wasm32, `i64` is `i64`.
fn sdk_imports() -> Signatures {
    let source = read("capsules-examples/sdk/src/abi.rs");
    let start = source.find("wasm_import_module = \"astrid\"").expect("the SDK links module astrid");
    let block = &source[start..];
    let open = block.find('{').expect("extern block");
    let close = block.find('}').expect("end of extern block");
    let wasm_type = |rust: &str| match rust.trim() {
        "i64" => AbiType::I64,
        "i32" | "usize" | "isize" | "*const u8" | "*mut u8" => AbiType::I32,
        other => panic!("the SDK declares a parameter of type {other}"),
    };
    block[open + 1..close]
        .split(';')
        .map(|item| item.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join(" "))
        .filter(|item| item.contains("fn "))
        .map(|item| {
            let after = &item[item.find("fn ").expect("fn") + 3..];
            let (name, rest) = after.split_once('(').expect("parameters");
            let (params, result) = rest.rsplit_once(')').expect("end of parameters");
            let params = params
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| wasm_type(p.split_once(':').expect("name: type").1))
                .collect();
            let result = result.trim().strip_prefix("->").map(wasm_type);
            (name.trim().to_owned(), (params, result))
        })
        .collect()
}

#[test]
fn the_sdk_imports_exactly_the_declared_functions_with_their_signatures() {
    // The SDK is not built here (its modules are committed and CI proves them reproducible),
    // so its source is read: a host function it lacks, or one it calls differently, fails.
    assert_eq!(sdk_imports(), declared());
}

#[test]
fn the_abi_page_lists_every_declared_function_with_its_arity_and_result() {
    let page = read("docs/capsule-abi.md");
    let host_functions = &page[page.find("## Host functions").expect("section")..];
    let mut documented = Signatures::new();
    for row in host_functions.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(names), Some(signature)) = (cells.get(1), cells.get(2)) else { continue };
        let Some(signature) = signature.strip_prefix('`').and_then(|s| s.strip_suffix('`')) else { continue };
        let Some((params, result)) = signature.strip_prefix('(').and_then(|s| s.split_once(')')) else { continue };
        let arity = params.split(',').filter(|p| !p.trim().is_empty()).count();
        let result = result.trim().strip_prefix("->").map(str::trim);
        for name in names.split('/').map(|n| n.trim().trim_matches('`')) {
            let Some(function) = HostFunction::named(name) else {
                panic!("the ABI page documents {name}, which is not a host function");
            };
            assert_eq!(arity, function.params.len(), "{name}: parameters on the ABI page");
            assert_eq!(result, function.result.map(AbiType::name), "{name}: result on the ABI page");
            documented.insert(name.to_owned(), (function.params.to_vec(), function.result));
        }
    }
    let missing: Vec<&str> = HOST_FUNCTIONS.iter().map(|f| f.name).filter(|n| !documented.contains_key(*n)).collect();
    assert!(missing.is_empty(), "host functions missing from docs/capsule-abi.md: {missing:?}");
}
