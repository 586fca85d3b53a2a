//! The runtime key: an ed25519 seed in `keys/runtime.key` (32 raw bytes, mode 0600),
//! created once. It signs every audit entry and the chain head.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::AuditError;

/// The daemon's signing key.
pub struct RuntimeKey(SigningKey);

impl fmt::Debug for RuntimeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RuntimeKey([REDACTED])")
    }
}

impl RuntimeKey {
    /// Loads the key, creating it (0600, exclusively) the first time.
    pub fn load_or_create(path: &Path) -> Result<Self, AuditError> {
        if !path.exists() {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed)
                .map_err(|e| AuditError::Key(format!("cannot read the OS random source: {e}")))?;
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(|e| AuditError::io("create", dir, e))?;
            }
            match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
                Ok(mut file) => {
                    file.write_all(&seed).map_err(|e| AuditError::io("write", path, e))?;
                    file.sync_all().map_err(|e| AuditError::io("fsync", path, e))?;
                }
                // Someone created it between our check and our open: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(AuditError::io("create", path, e)),
            }
        }
        Self::load(path)
    }

    /// Loads an existing key.
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let bytes = fs::read(path).map_err(|e| AuditError::io("read", path, e))?;
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            AuditError::Key(format!(
                "invalid runtime key at {}: expected 32 bytes, found {}",
                path.display(),
                bytes.len()
            ))
        })?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The public half, for verification.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.0.sign(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_private_and_checked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("keys/runtime.key");
        let key = RuntimeKey::load_or_create(&path).expect("create");
        assert_eq!(fs::read(&path).expect("read").len(), 32);
        assert_eq!(fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
        let again = RuntimeKey::load_or_create(&path).expect("reload");
        assert_eq!(key.verifying_key(), again.verifying_key());
        assert_eq!(format!("{key:?}"), "RuntimeKey([REDACTED])");
        fs::write(&path, [0u8; 16]).expect("write");
        let err = RuntimeKey::load(&path).expect_err("short");
        assert_eq!(err.to_string(), format!("invalid runtime key at {}: expected 32 bytes, found 16", path.display()));
    }
}
