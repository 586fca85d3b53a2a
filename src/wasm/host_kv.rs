//! KV host functions: a capsule's own namespace, chosen by the host.
//!
//! ABI (documented in `docs/capsule-abi.md`): keys and values travel as `(ptr, len)` pairs in
//! guest memory. Results that carry bytes are placed in a buffer the guest allocates through
//! its `astrid_alloc(len) -> ptr` export and returned packed as `(ptr << 32) | len` in an
//! `i64`; negative values are typed errors ([`KvStatus`]), never traps. A capsule can only
//! name keys, never a namespace: the host fixes it per instance (`<principal>:capsule:<name>`).

use wasmi::{Caller, Linker};

use super::sandbox::{HOST_MODULE, HostState, read_guest, write_guest};
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

/// The instance's store and namespace and the key (or prefix) at `(ptr, len)`, or the status
/// to return to the guest. A bad buffer is ABI misuse and traps.
fn target(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<Result<(KvStore, Namespace, String), KvStatus>, wasmi::Error> {
    let Some((store, namespace)) = caller.data().kv.clone() else { return Ok(Err(KvStatus::CapabilityDenied)) };
    let bytes = read_guest(caller, ptr, len, MAX_KEY)?;
    Ok(String::from_utf8(bytes).map(|text| (store, namespace, text)).map_err(|_| KvStatus::InvalidInput))
}

/// Adds the KV functions to the linker.
pub(super) fn link(linker: &mut Linker<HostState>) -> Result<(), wasmi::errors::LinkerError> {
    linker.func_wrap(
        HOST_MODULE,
        "kv_get",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i64, wasmi::Error> {
            let (store, namespace, key) = or_status!(target(&mut caller, ptr, len)?, i64);
            match store.get(&namespace, &key) {
                Ok(Some(value)) => write_guest(&mut caller, &value),
                Ok(None) => Ok(KvStatus::Absent as i64),
                Err(e) => Ok(status(&e) as i64),
            }
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
            let (store, namespace, key) = or_status!(target(&mut caller, key_ptr, key_len)?, i32);
            if usize::try_from(value_len).is_ok_and(|len| len > MAX_VALUE) {
                return Ok(KvStatus::TooLarge as i32);
            }
            let value = read_guest(&mut caller, value_ptr, value_len, MAX_VALUE)?;
            Ok(store.set(&namespace, &key, &value).map_or_else(|e| status(&e) as i32, |()| 0))
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "kv_delete",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i32, wasmi::Error> {
            let (store, namespace, key) = or_status!(target(&mut caller, ptr, len)?, i32);
            Ok(store.delete(&namespace, &key).map_or_else(|e| status(&e) as i32, i32::from))
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "kv_list_keys",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i64, wasmi::Error> {
            let (store, namespace, prefix) = or_status!(target(&mut caller, ptr, len)?, i64);
            match store.list_keys(&namespace, &prefix) {
                // A JSON array of strings: the one structured result of the KV functions.
                Ok(keys) => write_guest(&mut caller, &serde_json::to_vec(&keys).unwrap_or_default()),
                Err(e) => Ok(status(&e) as i64),
            }
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "kv_clear_prefix",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i64, wasmi::Error> {
            let (store, namespace, prefix) = or_status!(target(&mut caller, ptr, len)?, i64);
            Ok(store
                .clear_prefix(&namespace, &prefix)
                .map_or_else(|e| status(&e) as i64, |n| i64::try_from(n).unwrap_or(i64::MAX)))
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
            let (store, namespace, key) = or_status!(target(&mut caller, key_ptr, key_len)?, i32);
            // A length of -1 means "absent": expect no value, or delete.
            let expected = optional(&mut caller, expected_ptr, expected_len)?;
            let new = optional(&mut caller, new_ptr, new_len)?;
            Ok(store
                .compare_and_swap(&namespace, &key, expected.as_deref(), new.as_deref())
                .map_or_else(|e| status(&e) as i32, i32::from))
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
