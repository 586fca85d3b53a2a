//! Paths as capsules give them, checked before they touch the filesystem.
//!
//! A [`VfsPath`] is relative, has no `.` or `..` components, no NUL, no backslash, and is
//! normalised (`./a//b/` → `a/b`). The empty path means the workspace root. This lexical
//! check is the first wall; the second is that every access goes through a directory handle
//! (cap-std), which refuses any symlink or `..` that would lead out of the root.

use std::fmt;

use super::VfsError;

/// Longest path accepted, in bytes.
pub const MAX_PATH: usize = 4096;
/// Most components accepted.
pub const MAX_COMPONENTS: usize = 64;

/// A validated path relative to the workspace root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VfsPath(String);

impl VfsPath {
    /// Validates and normalises a guest-supplied path.
    pub fn parse(raw: &str) -> Result<Self, VfsError> {
        let invalid =
            |reason: &'static str| Err(VfsError::InvalidPath { path: raw.chars().take(200).collect(), reason });
        if raw.len() > MAX_PATH {
            return invalid("longer than 4096 bytes");
        }
        if raw.contains('\0') {
            return invalid("contains NUL");
        }
        if raw.contains('\\') {
            return invalid("contains a backslash");
        }
        if raw.starts_with('/') {
            return invalid("absolute paths are not allowed");
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => return invalid("`..` is not allowed"),
                _ if part.len() > 255 => return invalid("a component is longer than 255 bytes"),
                _ => parts.push(part),
            }
        }
        if parts.len() > MAX_COMPONENTS {
            return invalid("more than 64 components");
        }
        Ok(Self(parts.join("/")))
    }

    /// The normalised path (`""` for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the workspace root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as cap-std wants it (`.` for the root).
    pub(super) fn fs(&self) -> &str {
        if self.0.is_empty() { "." } else { &self.0 }
    }

    /// The parent directory (`None` for the root).
    pub fn parent(&self) -> Option<VfsPath> {
        if self.0.is_empty() {
            return None;
        }
        Some(Self(self.0.rsplit_once('/').map_or(String::new(), |(parent, _)| parent.to_owned())))
    }

    /// A child of this directory (the name is a single, already-listed component).
    pub(super) fn join(&self, name: &str) -> VfsPath {
        if self.0.is_empty() { Self(name.to_owned()) } else { Self(format!("{}/{name}", self.0)) }
    }
}

impl fmt::Display for VfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "." } else { &self.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_and_refuses() {
        assert_eq!(VfsPath::parse("./a//b/").expect("ok").as_str(), "a/b");
        assert!(VfsPath::parse("").expect("root").is_root());
        for bad in ["/etc/passwd", "../x", "a/../../x", "a\\b", "a\0b", "a/.."] {
            assert!(VfsPath::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(VfsPath::parse("a/b/c").expect("ok").parent().expect("parent").as_str(), "a/b");
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just(String::new()),
            Just("\\".to_owned()),
            Just("\0".to_owned()),
            "[a-z]{1,8}",
            "[ -~]{1,12}",
        ]
    }

    proptest! {
        #[test]
        fn accepted_paths_are_relative_and_never_climb(parts in proptest::collection::vec(segment(), 0..10), lead in any::<bool>()) {
            let raw = format!("{}{}", if lead { "/" } else { "" }, parts.join("/"));
            if let Ok(path) = VfsPath::parse(&raw) {
                prop_assert!(!path.as_str().starts_with('/'));
                prop_assert!(path.as_str().split('/').all(|c| c != ".." && c != "."));
                prop_assert!(!path.as_str().contains('\0') && !path.as_str().contains('\\'));
                prop_assert!(!path.as_str().split('/').any(str::is_empty) || path.is_root());
            }
        }
    }
}
