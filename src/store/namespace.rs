//! KV namespaces. Only the host builds them, through the three constructors below; there is
//! no constructor from an arbitrary string, so a capsule can never name another capsule's
//! (or the kernel's) namespace.
//!
//! The three shapes cannot collide:
//! - `{principal}:capsule:{capsule}` has two `:`;
//! - `{principal}:operator` and `system:{name}` have one, and would coincide only for the
//!   principal `system` with the kernel name `operator`, which [`Namespace::system`] refuses.
//!
//! Principals are `[A-Za-z0-9_-]`, capsule and kernel names `[a-z0-9_-]`, each 1–64
//! characters, so no part can smuggle in a `:` (the shape separator) or a NUL (the store's
//! namespace/key separator).

use std::fmt;

use super::KvError;
use super::error::shown;

/// Longest principal, capsule or kernel name, in characters (all ASCII).
const MAX_PART: usize = 64;

const PRINCIPAL_ALPHABET: &str = "[A-Za-z0-9_-]";

/// The alphabet of capsule and kernel names.
const NAME_ALPHABET: &str = "[a-z0-9_-]";

/// A namespace of the KV store: whose state an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    /// The private namespace of `capsule` acting for `principal`:
    /// `"{principal}:capsule:{capsule}"`.
    pub fn capsule(principal: &str, capsule: &str) -> Result<Self, KvError> {
        check(principal, "principal", PRINCIPAL_ALPHABET, is_principal_byte)?;
        check(capsule, "capsule", NAME_ALPHABET, is_name_byte)?;
        Ok(Self(format!("{principal}:capsule:{capsule}")))
    }

    /// A namespace of the kernel's own state (grants, allowances, …): `"system:{name}"`.
    ///
    /// # Panics
    ///
    /// When `name` is not 1–64 characters of `[a-z0-9_-]`, or is `operator` (which would be
    /// the operator namespace of a principal called `system`). Names are constants of the
    /// kernel, so this is a programming error caught by any test that uses the namespace,
    /// never a reaction to input.
    pub fn system(name: &'static str) -> Self {
        assert!(is_system_name(name), "invalid kernel namespace name {name:?}");
        Self(format!("system:{name}"))
    }

    /// The values an operator sets for `principal` with the CLI (`astrid kv …`):
    /// `"{principal}:operator"`.
    pub fn operator(principal: &str) -> Result<Self, KvError> {
        check(principal, "principal", PRINCIPAL_ALPHABET, is_principal_byte)?;
        Ok(Self(format!("{principal}:operator")))
    }

    /// The namespace as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_system_name(name: &str) -> bool {
    check(name, "kernel namespace", NAME_ALPHABET, is_name_byte).is_ok() && name != "operator"
}

fn is_principal_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
}

fn check(part: &str, what: &'static str, alphabet: &'static str, allowed: fn(u8) -> bool) -> Result<(), KvError> {
    if part.is_empty() || part.len() > MAX_PART || !part.bytes().all(allowed) {
        return Err(KvError::InvalidNamespace { what, part: shown(part), alphabet });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_build_the_three_shapes() {
        assert_eq!(Namespace::capsule("default", "echo").expect("ok").as_str(), "default:capsule:echo");
        assert_eq!(
            Namespace::capsule("Alice_2-b", "my-tool_1").expect("ok").to_string(),
            "Alice_2-b:capsule:my-tool_1"
        );
        assert_eq!(Namespace::operator("default").expect("ok").as_str(), "default:operator");
        assert_eq!(Namespace::system("grants").as_str(), "system:grants");
        let longest = "a".repeat(64);
        assert!(Namespace::capsule(&longest, &longest).is_ok());
    }

    #[test]
    fn parts_cannot_forge_a_separator_or_leave_their_alphabet() {
        let too_long = "a".repeat(65);
        for principal in ["", "a:capsule", "a\0b", "a b", "é", "a/b", "a.b", &too_long] {
            assert!(Namespace::capsule(principal, "x").is_err(), "{principal:?}");
            assert!(Namespace::operator(principal).is_err(), "{principal:?}");
        }
        for capsule in ["", "Echo", "x:y", "x\0", "x.y", &too_long] {
            assert!(Namespace::capsule("default", capsule).is_err(), "{capsule:?}");
        }
    }

    #[test]
    fn the_error_names_the_part_shortened_and_escaped() {
        let err = Namespace::capsule("default", &format!("x\n{}", "y".repeat(500))).expect_err("invalid");
        let message = err.to_string();
        assert!(message.starts_with("invalid capsule \"x\\nyyy"), "{message}");
        assert!(message.ends_with("…\" for a KV namespace: 1-64 characters of [a-z0-9_-]"), "{message}");
        assert!(!message.contains('\n'));
    }

    #[test]
    fn system_names_never_meet_a_principal_namespace() {
        // `system` is a valid principal; none of its namespaces is a kernel namespace.
        assert_eq!(Namespace::operator("system").expect("ok").as_str(), "system:operator");
        assert_eq!(Namespace::capsule("system", "grants").expect("ok").as_str(), "system:capsule:grants");
        for name in ["operator", "capsule:x", "", "Grants", "a\0b", &"a".repeat(65)] {
            assert!(!is_system_name(name), "{name:?} accepted");
        }
        assert!(is_system_name("allowances"));
    }

    #[test]
    #[should_panic(expected = "invalid kernel namespace name \"operator\"")]
    fn system_refuses_the_name_of_the_operator_namespace() {
        let _ = Namespace::system("operator");
    }
}
