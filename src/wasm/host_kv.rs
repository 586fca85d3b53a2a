//! KV host functions: a capsule's own namespace, chosen by the host.
//!
//! ABI (documented in `docs/capsule-abi.md`): keys and values travel as `(ptr, len)` pairs in
//! guest memory. Results that carry bytes are placed in a buffer the guest allocates through
//! its `astrid_alloc(len) -> ptr` export and returned packed as `(ptr << 32) | len` in an
//! `i64`; negative values are typed errors ([`KvStatus`]), never traps. A capsule can only
//! name keys, never a namespace: the host fixes it per instance (`<principal>:capsule:<name>`).

use super::context::CapsuleContext;
use super::host_call::HostReply;
use crate::store::{KvError, KvStore, MAX_KEY, MAX_VALUE, Namespace};

/// What a KV host function returns on failure (negative, so never a valid packed result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum KvStatus {
    /// `kv_get`: no such key.
    Absent = -1,
    /// Empty, oversized or NUL-bearing key.
    InvalidInput = -2,
    /// Value over 1 MiB.
    TooLarge = -3,
    /// The namespace's quota is full.
    Quota = -4,
    /// The store failed.
    Storage = -5,
    /// This instance has no KV access.
    CapabilityDenied = -6,
}

fn status(e: &KvError) -> KvStatus {
    match e {
        KvError::KeyInvalid { .. } | KvError::KeyTooLong { .. } | KvError::InvalidNamespace { .. } => {
            KvStatus::InvalidInput
        }
        KvError::ValueTooLarge { .. } => KvStatus::TooLarge,
        KvError::QuotaExceeded { .. } => KvStatus::Quota,
        KvError::Locked { .. } | KvError::Storage(_) => KvStatus::Storage,
    }
}

/// The instance's store and namespace and the key (or prefix) as text, or the status to
/// return to the guest.
fn target<'a>(context: &CapsuleContext, key: &'a [u8]) -> Result<(KvStore, Namespace, &'a str), KvStatus> {
    let Some((store, namespace)) = context.kv.clone() else { return Err(KvStatus::CapabilityDenied) };
    if key.len() > MAX_KEY {
        return Err(KvStatus::InvalidInput);
    }
    std::str::from_utf8(key).map(|text| (store, namespace, text)).map_err(|_| KvStatus::InvalidInput)
}

fn reply(status: KvStatus) -> HostReply {
    HostReply::value(status as i32)
}

/// `kv_get`: the value, or `Absent`.
pub(super) fn get(context: &CapsuleContext, key: &[u8]) -> HostReply {
    let (store, namespace, key) = match target(context, key) {
        Ok(target) => target,
        Err(status) => return reply(status),
    };
    match store.get(&namespace, key) {
        Ok(Some(value)) => HostReply::bytes(value),
        Ok(None) => reply(KvStatus::Absent),
        Err(e) => reply(status(&e)),
    }
}

/// `kv_set`: 0 when stored.
pub(super) fn set(context: &CapsuleContext, key: &[u8], value: &[u8]) -> HostReply {
    let (store, namespace, key) = match target(context, key) {
        Ok(target) => target,
        Err(status) => return reply(status),
    };
    if value.len() > MAX_VALUE {
        return reply(KvStatus::TooLarge);
    }
    HostReply::value(store.set(&namespace, key, value).map_or_else(|e| status(&e) as i32, |()| 0))
}

/// `kv_delete`: 1 when something was deleted, 0 when there was nothing.
pub(super) fn delete(context: &CapsuleContext, key: &[u8]) -> HostReply {
    let (store, namespace, key) = match target(context, key) {
        Ok(target) => target,
        Err(status) => return reply(status),
    };
    HostReply::value(store.delete(&namespace, key).map_or_else(|e| status(&e) as i32, i32::from))
}

/// `kv_list_keys`: a JSON array of strings, the one structured result of the KV functions.
pub(super) fn list_keys(context: &CapsuleContext, prefix: &[u8]) -> HostReply {
    let (store, namespace, prefix) = match target(context, prefix) {
        Ok(target) => target,
        Err(status) => return reply(status),
    };
    match store.list_keys(&namespace, prefix) {
        Ok(keys) => HostReply::bytes(serde_json::to_vec(&keys).unwrap_or_default()),
        Err(e) => reply(status(&e)),
    }
}

/// `kv_clear_prefix`: how many keys went.
pub(super) fn clear_prefix(context: &CapsuleContext, prefix: &[u8]) -> HostReply {
    let (store, namespace, prefix) = match target(context, prefix) {
        Ok(target) => target,
        Err(status) => return reply(status),
    };
    HostReply::Value(
        store
            .clear_prefix(&namespace, prefix)
            .map_or_else(|e| status(&e) as i64, |n| i64::try_from(n).unwrap_or(i64::MAX)),
    )
}

/// `kv_cas`: 1 when swapped, 0 when the current value was not `expected`.
pub(super) fn cas(context: &CapsuleContext, key: &[u8], expected: Option<&[u8]>, new: Option<&[u8]>) -> HostReply {
    let (store, namespace, key) = match target(context, key) {
        Ok(target) => target,
        Err(status) => return reply(status),
    };
    if new.is_some_and(|new| new.len() > MAX_VALUE) {
        return reply(KvStatus::TooLarge);
    }
    HostReply::value(
        store.compare_and_swap(&namespace, key, expected, new).map_or_else(|e| status(&e) as i32, i32::from),
    )
}
