//! The capsule's own key-value namespace (chosen by the host: a capsule cannot name
//! another's). Keys are 1–256 bytes of UTF-8 without NUL; values up to 1 MiB.

use crate::abi;
use crate::error::{Error, Result};

fn status(code: i32) -> Result<i32> {
    if code >= 0 { Ok(code) } else { Err(Error::kv(i64::from(code))) }
}

/// The value of `key`, if set.
pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    // SAFETY: a valid buffer for the duration of the call.
    match abi::unpack(unsafe { abi::kv_get(key.as_ptr(), key.len()) }) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(-1) => Ok(None),
        Err(code) => Err(Error::kv(code)),
    }
}

/// Sets `key` to `value`.
pub fn set(key: &str, value: &[u8]) -> Result<()> {
    // SAFETY: valid buffers for the duration of the call.
    status(unsafe { abi::kv_set(key.as_ptr(), key.len(), value.as_ptr(), value.len()) }).map(|_| ())
}

/// Deletes `key`; whether it existed.
pub fn delete(key: &str) -> Result<bool> {
    // SAFETY: a valid buffer for the duration of the call.
    status(unsafe { abi::kv_delete(key.as_ptr(), key.len()) }).map(|n| n == 1)
}

/// The keys starting with `prefix`, sorted.
pub fn list_keys(prefix: &str) -> Result<Vec<String>> {
    // SAFETY: a valid buffer for the duration of the call.
    let bytes = abi::unpack(unsafe { abi::kv_list_keys(prefix.as_ptr(), prefix.len()) }).map_err(Error::kv)?;
    serde_json::from_slice(&bytes).map_err(|_| Error::InvalidInput)
}

/// Deletes every key starting with `prefix`; how many there were.
pub fn clear_prefix(prefix: &str) -> Result<u64> {
    // SAFETY: a valid buffer for the duration of the call.
    let code = unsafe { abi::kv_clear_prefix(prefix.as_ptr(), prefix.len()) };
    if code >= 0 { Ok(code as u64) } else { Err(Error::kv(code)) }
}

/// Sets `key` to `new` (`None` deletes) only if it currently holds `expected` (`None`:
/// absent); whether it did. The building block for counters and locks without races.
pub fn cas(key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool> {
    let parts = |v: Option<&[u8]>| v.map_or((std::ptr::null(), -1), |v| (v.as_ptr(), v.len() as isize));
    let ((expected_ptr, expected_len), (new_ptr, new_len)) = (parts(expected), parts(new));
    // SAFETY: valid buffers (or null with length -1, meaning absent) for the call.
    status(unsafe { abi::kv_cas(key.as_ptr(), key.len(), expected_ptr, expected_len, new_ptr, new_len) })
        .map(|n| n == 1)
}
