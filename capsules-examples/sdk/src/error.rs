//! Typed failures of host calls, named as in the reference WIT (`capability-denied`, …).
//! Each host domain numbers its codes on its own (see `docs/capsule-abi.md`); the SDK turns
//! them into one enum.

use std::fmt;

/// Why a host call failed. A refusal by policy is a value the capsule can handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The capsule's grant does not cover this (the refusal is audited).
    CapabilityDenied,
    /// Malformed input (topic, key, path, JSON, handle).
    InvalidInput,
    /// No such file or directory.
    NotFound,
    /// The path leads outside the workspace.
    BoundaryEscape,
    /// A directory where a file was expected, or the reverse.
    WrongKind,
    /// Over a size limit.
    TooLarge,
    /// Over a count limit (subscriptions, keys).
    Quota,
    /// Nothing arrived in time.
    Timeout,
    /// The subscription was closed (the host is stopping the capsule).
    Closed,
    /// The host's storage or file system failed.
    Io,
    /// HTTP: the connection, TLS or protocol failed.
    Connection,
    /// HTTP: the host name does not resolve.
    Dns,
    /// HTTP: the host resolves to a private or loopback address (refused and audited).
    AddressRefused,
    /// Elicit: the person cancelled.
    Cancelled,
    /// Elicit: only install and upgrade hooks may ask.
    NotInLifecycle,
    /// The host gave this instance no access to the service.
    Unavailable,
    /// A code this SDK does not know.
    Unknown(i64),
}

/// A host call's result.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CapabilityDenied => f.write_str("capability-denied"),
            Self::InvalidInput => f.write_str("invalid-input"),
            Self::NotFound => f.write_str("not-found"),
            Self::BoundaryEscape => f.write_str("boundary-escape"),
            Self::WrongKind => f.write_str("wrong-kind"),
            Self::TooLarge => f.write_str("too-large"),
            Self::Quota => f.write_str("quota"),
            Self::Timeout => f.write_str("timeout"),
            Self::Closed => f.write_str("closed"),
            Self::Io => f.write_str("io"),
            Self::Connection => f.write_str("connection-error"),
            Self::Dns => f.write_str("dns-error"),
            Self::AddressRefused => f.write_str("address-refused"),
            Self::Cancelled => f.write_str("cancelled"),
            Self::NotInLifecycle => f.write_str("not-in-lifecycle"),
            Self::Unavailable => f.write_str("unavailable"),
            Self::Unknown(code) => write!(f, "unknown({code})"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// `Ok(value)` for a non-negative result of the always-available functions.
    pub(crate) fn check(code: i64) -> Result<i64> {
        if code >= 0 { Ok(code) } else { Err(Self::Unknown(code)) }
    }

    /// A negative KV code.
    pub(crate) fn kv(code: i64) -> Self {
        Self::from_table(code, &[Self::InvalidInput, Self::TooLarge, Self::Quota, Self::Io, Self::Unavailable], 2)
    }

    /// A negative IPC code.
    pub(crate) fn ipc(code: i64) -> Self {
        Self::from_table(code, &IPC_CODES, 1)
    }

    /// A negative HTTP code: the IPC codes, then its own.
    pub(crate) fn http(code: i64) -> Self {
        let table =
            [IPC_CODES.as_slice(), &[Self::TooLarge, Self::Connection, Self::Dns, Self::AddressRefused]].concat();
        Self::from_table(code, &table, 1)
    }

    /// A negative elicit code.
    pub(crate) fn elicit(code: i64) -> Self {
        match code {
            -1 => Self::Timeout,
            -2 => Self::InvalidInput,
            -5 => Self::Cancelled,
            -6 => Self::NotInLifecycle,
            -7 => Self::Io,
            other => Self::Unknown(other),
        }
    }

    /// A negative file code.
    pub(crate) fn fs(code: i64) -> Self {
        let table = [
            Self::NotFound,
            Self::InvalidInput,
            Self::CapabilityDenied,
            Self::BoundaryEscape,
            Self::WrongKind,
            Self::TooLarge,
            Self::Io,
        ];
        Self::from_table(code, &table, 1)
    }

    /// `table[0]` is code `-first`, `table[1]` is `-(first + 1)`, and so on (as numbered in
    /// `docs/capsule-abi.md`).
    fn from_table(code: i64, table: &[Self], first: i64) -> Self {
        usize::try_from(-code - first).ok().and_then(|i| table.get(i).copied()).unwrap_or(Self::Unknown(code))
    }
}

/// Codes `-1` to `-5` of IPC (and HTTP).
const IPC_CODES: [Error; 5] =
    [Error::Timeout, Error::InvalidInput, Error::CapabilityDenied, Error::Quota, Error::Closed];
