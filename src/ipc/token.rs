//! The session token: 32 random bytes, new on every boot, written to `run/system.token`
//! as 64 lowercase hex characters (no newline, mode 0600).
//!
//! A client proves it may talk to the daemon by reading that file, which only the owner
//! can. The comparison is constant-time and the token never appears in logs or `Debug`.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use subtle::ConstantTimeEq;

const TOKEN_BYTES: usize = 32;

/// Why a token could not be made, parsed or stored.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The hex text is not 64 characters long.
    #[error("session token hex must be 64 chars, got {0}")]
    Length(usize),
    /// The hex text holds a non-hex character.
    #[error("invalid hex digit: {0:#04x}")]
    Digit(u8),
    /// The OS random source failed.
    #[error("cannot read the OS random source: {0}")]
    Random(String),
    /// The token file is not a regular file of this user's.
    #[error("refusing {path}: it is not a regular file owned by you (uid {uid}; it belongs to uid {owner})")]
    Untrusted {
        /// The file.
        path: String,
        owner: u32,
        /// The effective uid.
        uid: u32,
    },
    /// Reading or writing the token file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
}

/// A 256-bit session token.
#[derive(Clone)]
pub struct SessionToken([u8; TOKEN_BYTES]);

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken([REDACTED])")
    }
}

impl SessionToken {
    /// A fresh token from the OS CSPRNG.
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// Parses 64 hex characters (either case, surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, TokenError> {
        let text = text.trim().as_bytes();
        if text.len() != TOKEN_BYTES * 2 {
            return Err(TokenError::Length(text.len()));
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Ok(Self(bytes))
    }

    /// The 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Compares in constant time, whatever the contents.
    pub fn matches(&self, other: &SessionToken) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Reads the token file a daemon wrote: never through a symbolic link, and only a
    /// regular file of this user's (the daemon runs as the user; a token anyone else could
    /// have written is not the daemon's).
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let io_err = |action| {
            let path = path.display().to_string();
            move |source| TokenError::Io { action, path, source }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err("read"))?;
        let meta = file.metadata().map_err(io_err("inspect"))?;
        let uid = nix::unistd::geteuid().as_raw();
        if !meta.is_file() || meta.uid() != uid {
            return Err(TokenError::Untrusted { path: path.display().to_string(), owner: meta.uid(), uid });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io_err("read"))?;
        Self::from_hex(&text)
    }

    /// Writes the token to `path` atomically: a 0600 temp file `system.<pid>.tmp` beside it,
    /// then a rename. Readers never see a partial token or a wider mode: the rename makes it
    /// whole at once for every process. It is not synced to disk: a token is only good for
    /// the daemon that wrote it, so after a power loss there is nothing worth keeping (the
    /// next boot writes a new one), and the fsync was 1.5 ms of every boot.
    pub fn write_atomic(&self, path: &Path) -> Result<(), TokenError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let temp = dir.join(format!("system.{}.tmp", std::process::id()));
        fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TokenError {
            let path = path.display().to_string();
            move |source| TokenError::Io { action, path, source }
        }
        // A temp file left by a crashed process with our pid would make create_new fail.
        let _ = fs::remove_file(&temp);
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
                .map_err(io_err("create", &temp))?;
            file.write_all(self.to_hex().as_bytes()).map_err(io_err("write", &temp))?;
            fs::rename(&temp, path).map_err(io_err("rename into place", path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }
}

fn hex_value(digit: u8) -> Result<u8, TokenError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(TokenError::Digit(digit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_differ_and_round_trip_through_hex() {
        let a = SessionToken::generate().expect("token");
        let b = SessionToken::generate().expect("token");
        assert!(!a.matches(&b));
        let hex = a.to_hex();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert!(SessionToken::from_hex(&hex.to_uppercase()).expect("upper").matches(&a));
    }

    #[test]
    fn malformed_hex_is_named() {
        assert!(SessionToken::from_hex("abcd").expect_err("short").to_string().contains("64 chars"));
        let zz = "zz".repeat(32);
        assert!(SessionToken::from_hex(&zz).expect_err("zz").to_string().contains("invalid hex digit"));
    }

    #[test]
    fn debug_is_redacted() {
        let token = SessionToken::generate().expect("token");
        assert_eq!(format!("{token:?}"), "SessionToken([REDACTED])");
    }

    #[test]
    fn file_round_trip_is_private_and_atomic() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("system.token");
        let token = SessionToken::generate().expect("token");
        token.write_atomic(&path).expect("write");
        assert_eq!(fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path).expect("read").len(), 64);
        assert!(SessionToken::read(&path).expect("read").matches(&token));
        assert_eq!(fs::read_dir(tmp.path()).expect("ls").count(), 1, "no temp file left");
    }
}
