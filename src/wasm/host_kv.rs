//! KV host functions: a capsule's own namespace, chosen by the host.
//!
//! ABI (documented in `docs/capsule-abi.md`): keys and values travel as `(ptr, len)` pairs in
//! guest memory. Results that carry bytes are placed in a buffer the guest allocates through
//! its `astrid_alloc(len) -> ptr` export and returned packed as `(ptr << 32) | len` in an
//! `i64`; negative values are typed errors ([`KvStatus`]), never traps. A capsule can only
//! name keys, never a namespace: the host fixes it per instance (`<principal>:capsule:<name>`).

use wasmi::{Caller, Linker};

use super::context::CapsuleContext;
use super::host_call::{HostCall, HostReply};
use super::sandbox::{HOST_MODULE, HostState, forward, forward_status, read_guest};
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

/// Adds the KV functions to the linker (the guest side: copy out, forward, copy back).
pub(super) fn link(linker: &mut Linker<HostState>) -> Result<(), wasmi::errors::LinkerError> {
    linker.func_wrap(
        HOST_MODULE,
        "kv_get",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i64, wasmi::Error> {
            let key = read_guest(&mut caller, ptr, len, MAX_KEY)?;
            forward(&mut caller, HostCall::KvGet { key: key.into() })
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "kv_set",
        |mut caller: Caller<'_, HostState>,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         value_len: i32|
         -> Result<i32, wasmi::Error> {
            let key = read_guest(&mut caller, key_ptr, key_len, MAX_KEY)?;
            if usize::try_from(value_len).is_ok_and(|len| len > MAX_VALUE) {
                return Ok(KvStatus::TooLarge as i32);
            }
            let value = read_guest(&mut caller, value_ptr, value_len, MAX_VALUE)?;
            forward_status(&mut caller, HostCall::KvSet { key: key.into(), value: value.into() })
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "kv_delete",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i32, wasmi::Error> {
            let key = read_guest(&mut caller, ptr, len, MAX_KEY)?;
            forward_status(&mut caller, HostCall::KvDelete { key: key.into() })
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "kv_list_keys",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i64, wasmi::Error> {
            let prefix = read_guest(&mut caller, ptr, len, MAX_KEY)?;
            forward(&mut caller, HostCall::KvListKeys { prefix: prefix.into() })
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "kv_clear_prefix",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i64, wasmi::Error> {
            let prefix = read_guest(&mut caller, ptr, len, MAX_KEY)?;
            forward(&mut caller, HostCall::KvClearPrefix { prefix: prefix.into() })
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "kv_cas",
        |mut caller: Caller<'_, HostState>,
         key_ptr: i32,
         key_len: i32,
         expected_ptr: i32,
         expected_len: i32,
         new_ptr: i32,
         new_len: i32|
         -> Result<i32, wasmi::Error> {
            let key = read_guest(&mut caller, key_ptr, key_len, MAX_KEY)?;
            // A length of -1 means "absent": expect no value, or delete.
            let expected = optional(&mut caller, expected_ptr, expected_len)?;
            let new = optional(&mut caller, new_ptr, new_len)?;
            let call =
                HostCall::KvCas { key: key.into(), expected: expected.map(Into::into), new: new.map(Into::into) };
            forward_status(&mut caller, call)
        },
    )?;
    Ok(())
}

fn optional(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Option<Vec<u8>>, wasmi::Error> {
    if len == -1 {
        return Ok(None);
    }
    read_guest(caller, ptr, len, MAX_VALUE).map(Some)
}
