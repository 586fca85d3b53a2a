//! What an untrusted module may make the host allocate, bounded before and while it runs.
//!
//! Two halves. [`check_module`] reads what a module *declares* before wasmi builds anything
//! from it: wasmi copies a module's types, imports, exports and element items into structures
//! several times the size of their encoding (a 2-byte element item becomes a 16-byte constant
//! expression), so each count is capped here, with an error naming the limit. The engine's
//! own strict limits cap functions, globals, tables, memories and segments, and the size of
//! the module is capped by the installer ([`MAX_MODULE_BYTES`]) and again here.
//!
//! [`CapsuleLimiter`] is the store's resource limiter: the instance's linear memory **and**
//! its table count against one budget, the instance's memory limit, whether they are declared
//! (instantiation) or grown (`memory.grow`, `table.grow`). A table element is a reference the
//! host stores, so a table of 100 million entries is 400 MB of host memory; here it is refused
//! like a memory of that size.

use std::fmt;

use wasmi::ResourceLimiter;
use wasmi::errors::{MemoryError, TableError};
use wasmi_core::LimiterError;

use super::sandbox::SandboxError;
pub use crate::kernel::install::MAX_MODULE_BYTES;

/// Host bytes charged for one table element: wasmi stores a reference as 4 bytes, and the
/// table's vector may reserve up to twice what it holds.
pub const TABLE_ELEMENT_BYTES: usize = 8;
/// Most types (signatures) a module may declare. wasmi interns each one.
pub const MAX_TYPES: u32 = 10_000;
/// Most imports a module may declare (there are fewer than 40 host functions to import).
pub const MAX_IMPORTS: u32 = 256;
/// Most exports a module may declare.
pub const MAX_EXPORTS: u32 = 10_000;
/// Most element items (table initialisers) across all of a module's element segments.
pub const MAX_ELEMENT_ITEMS: u64 = 100_000;
/// The engine's value stack, per call into an instance: deep recursion or huge frames trap
/// (`stack overflow`) instead of growing it.
pub const MAX_STACK_BYTES: usize = 1024 * 1024;
/// Nested calls a guest may make.
pub const MAX_RECURSION_DEPTH: usize = 1000;

/// Reads the module's declarations and refuses one that declares more than the limits above.
/// Malformed input is left for the validator to describe.
pub fn check_module(wasm: &[u8]) -> Result<(), SandboxError> {
    let refuse = |what: &str, count: u64, limit: u64| {
        Err(SandboxError::Invalid(format!("the module declares {count} {what}: the limit is {limit}")))
    };
    if wasm.len() as u64 > MAX_MODULE_BYTES {
        return refuse("bytes", wasm.len() as u64, MAX_MODULE_BYTES);
    }
    let mut element_items = 0u64;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let Ok(payload) = payload else { return Ok(()) };
        match payload {
            wasmparser::Payload::TypeSection(types) if types.count() > MAX_TYPES => {
                return refuse("types", types.count().into(), MAX_TYPES.into());
            }
            wasmparser::Payload::ImportSection(imports) if imports.count() > MAX_IMPORTS => {
                return refuse("imports", imports.count().into(), MAX_IMPORTS.into());
            }
            wasmparser::Payload::ExportSection(exports) if exports.count() > MAX_EXPORTS => {
                return refuse("exports", exports.count().into(), MAX_EXPORTS.into());
            }
            wasmparser::Payload::ElementSection(elements) => {
                for element in elements {
                    let Ok(element) = element else { return Ok(()) };
                    element_items += u64::from(match element.items {
                        wasmparser::ElementItems::Functions(items) => items.count(),
                        wasmparser::ElementItems::Expressions(_, items) => items.count(),
                    });
                    if element_items > MAX_ELEMENT_ITEMS {
                        return refuse("element items (at least)", element_items, MAX_ELEMENT_ITEMS);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether the module exports a function called `name`, read from its export section (no
/// instance needed: the kernel side asks this of modules a capsule-host process runs).
pub fn exports_function(wasm: &[u8], name: &str) -> bool {
    wasmparser::Parser::new(0).parse_all(wasm).any(|payload| match payload {
        Ok(wasmparser::Payload::ExportSection(exports)) => exports
            .into_iter()
            .any(|export| export.is_ok_and(|e| e.name == name && e.kind == wasmparser::ExternalKind::Func)),
        _ => false,
    })
}

/// The store's resource limiter: memory and table bytes against one budget, one memory, one
/// table, one instance. The reason for the last refusal is kept for the error message.
#[derive(Debug)]
pub struct CapsuleLimiter {
    budget: usize,
    memory_bytes: usize,
    table_elements: usize,
    /// What to restore if a growth the limiter allowed then fails (bounds, fuel, the OS).
    memory_before: usize,
    table_before: usize,
    refusal: Option<String>,
}

struct Mib(usize);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1024 * 1024) {
            write!(f, "{} MiB", self.0 / (1024 * 1024))
        } else {
            write!(f, "{} bytes", self.0)
        }
    }
}

impl CapsuleLimiter {
    /// A limiter for an instance whose memory and tables may take `budget` bytes together.
    pub fn new(budget: usize) -> Self {
        Self { budget, memory_bytes: 0, table_elements: 0, memory_before: 0, table_before: 0, refusal: None }
    }

    /// Why the limiter last refused an allocation, if it did.
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }

    fn table_bytes(elements: usize) -> usize {
        elements.saturating_mul(TABLE_ELEMENT_BYTES)
    }

    fn refuse(&mut self, reason: String) -> Result<bool, LimiterError> {
        self.refusal = Some(reason);
        Ok(false)
    }
}

impl ResourceLimiter for CapsuleLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> Result<bool, LimiterError> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let tables = Self::table_bytes(self.table_elements);
        if desired.saturating_add(tables) > self.budget {
            return self.refuse(format!(
                "a linear memory of {desired} bytes (with {tables} bytes of tables) is over the instance's {} memory limit",
                Mib(self.budget)
            ));
        }
        (self.memory_before, self.memory_bytes) = (current, desired);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: &MemoryError) -> Result<(), LimiterError> {
        self.memory_bytes = self.memory_before;
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> Result<bool, LimiterError> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let bytes = Self::table_bytes(desired);
        if bytes.saturating_add(self.memory_bytes) > self.budget {
            return self.refuse(format!(
                "a table of {desired} elements ({bytes} bytes, with {} bytes of linear memory) is over the \
                 instance's {} memory limit",
                self.memory_bytes,
                Mib(self.budget)
            ));
        }
        (self.table_before, self.table_elements) = (current, desired);
        Ok(true)
    }

    fn table_grow_failed(&mut self, _error: &TableError) -> Result<(), LimiterError> {
        self.table_elements = self.table_before;
        Ok(())
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}
