//! KV namespaces. Only the host builds them, from validated parts, so a capsule can never
//! name another capsule's (or the kernel's) namespace: principals and capsule names cannot
//! contain `:`, and kernel namespaces start with `system:`, which no principal can be.

use std::fmt;

use super::KvError;

/// A namespace in the KV store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// The private namespace of `capsule` acting for `principal`.
    pub fn capsule(principal: &str, capsule: &str) -> Result<Self, KvError> {
        check(principal, "principal", |b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')?;
        check(capsule, "capsule", |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')?;
        Ok(Self(format!("{principal}:capsule:{capsule}")))
    }

    /// A namespace of the kernel's own (grants, allowances, …).
    pub fn system(name: &'static str) -> Self {
        Self(format!("system:{name}"))
    }

    /// Values an operator sets with `astrid kv`.
    pub fn operator(principal: &str) -> Result<Self, KvError> {
        check(principal, "principal", |b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')?;
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

fn check(part: &str, what: &'static str, allowed: impl Fn(u8) -> bool) -> Result<(), KvError> {
    if part.is_empty() || part.len() > 64 || !part.bytes().all(allowed) {
        return Err(KvError::InvalidNamespace { part: part.to_owned(), what });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cannot_forge_a_separator() {
        assert_eq!(Namespace::capsule("default", "echo").expect("ok").as_str(), "default:capsule:echo");
        assert!(Namespace::capsule("a:capsule", "x").is_err());
        assert!(Namespace::capsule("default", "Echo").is_err());
        assert!(Namespace::capsule("", "x").is_err());
        assert!(Namespace::operator("system:grants").is_err());
        assert_eq!(Namespace::system("grants").as_str(), "system:grants");
    }
}
