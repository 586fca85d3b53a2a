//! The raw host ABI (see `docs/capsule-abi.md`): the only module of the SDK with `unsafe`.
//!
//! Buffers go to the host as `(ptr, len)`; buffers come back packed as `(ptr << 32) | len`,
//! allocated by the host through [`alloc`] (exported by [`crate::capsule!`] as
//! `astrid_alloc`), and are taken back here as an owned `Vec<u8>`. A negative packed value is
//! a status code.

use std::alloc::Layout;

#[link(wasm_import_module = "astrid")]
unsafe extern "C" {
    pub(crate) safe fn clock_ms() -> i64;
    pub(crate) safe fn signal_ready();
    pub(crate) fn log(ptr: *const u8, len: usize);
    pub(crate) fn random_bytes(ptr: *mut u8, len: usize) -> i32;
    pub(crate) fn get_config(ptr: *const u8, len: usize) -> i64;
    pub(crate) fn elicit(ptr: *const u8, len: usize) -> i64;
    pub(crate) fn has_config(ptr: *const u8, len: usize) -> i32;
    pub(crate) fn request_approval(ptr: *const u8, len: usize) -> i32;

    pub(crate) fn kv_get(key: *const u8, key_len: usize) -> i64;
    pub(crate) fn kv_set(key: *const u8, key_len: usize, value: *const u8, value_len: usize) -> i32;
    pub(crate) fn kv_delete(key: *const u8, key_len: usize) -> i32;
    pub(crate) fn kv_list_keys(prefix: *const u8, prefix_len: usize) -> i64;
    pub(crate) fn kv_clear_prefix(prefix: *const u8, prefix_len: usize) -> i64;
    pub(crate) fn kv_cas(
        key: *const u8,
        key_len: usize,
        expected: *const u8,
        expected_len: isize,
        new: *const u8,
        new_len: isize,
    ) -> i32;

    pub(crate) fn ipc_publish(topic: *const u8, topic_len: usize, json: *const u8, json_len: usize) -> i32;
    pub(crate) fn ipc_subscribe(pattern: *const u8, pattern_len: usize) -> i32;
    pub(crate) safe fn ipc_recv(handle: i32, timeout_ms: i32) -> i64;
    pub(crate) safe fn ipc_poll(handle: i32) -> i64;
    pub(crate) safe fn ipc_unsubscribe(handle: i32) -> i32;

    pub(crate) fn fs_read(path: *const u8, path_len: usize) -> i64;
    pub(crate) fn fs_write(path: *const u8, path_len: usize, data: *const u8, data_len: usize) -> i32;
    pub(crate) fn fs_exists(path: *const u8, path_len: usize) -> i32;
    pub(crate) fn fs_stat(path: *const u8, path_len: usize) -> i64;
    pub(crate) fn fs_readdir(path: *const u8, path_len: usize) -> i64;
    pub(crate) fn fs_mkdir(path: *const u8, path_len: usize) -> i32;
    pub(crate) fn fs_unlink(path: *const u8, path_len: usize) -> i32;

    pub(crate) fn http_request(request: *const u8, request_len: usize, body: *const u8, body_len: usize) -> i64;
    pub(crate) fn http_stream_start(request: *const u8, request_len: usize, body: *const u8, body_len: usize) -> i64;
    pub(crate) fn http_stream_open(request: *const u8, request_len: usize, body: *const u8, body_len: usize) -> i32;
    pub(crate) safe fn http_stream_head(handle: i32, timeout_ms: i32) -> i64;
    pub(crate) safe fn http_stream_read(handle: i32) -> i64;
    pub(crate) safe fn http_stream_wait(handle: i32, timeout_ms: i32) -> i64;
    pub(crate) safe fn http_stream_close(handle: i32) -> i32;

    pub(crate) fn process_spawn(request: *const u8, request_len: usize) -> i64;
    pub(crate) safe fn process_read(handle: i32, timeout_ms: i32) -> i64;
    pub(crate) safe fn process_wait(handle: i32, timeout_ms: i32) -> i64;
    pub(crate) safe fn process_kill(handle: i32) -> i32;
}

/// `astrid_alloc`: a buffer of `len` bytes for the host to fill.
pub fn alloc(len: usize) -> *mut u8 {
    match Layout::array::<u8>(len) {
        Ok(layout) if len > 0 => {
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { std::alloc::alloc(layout) };
            if ptr.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            ptr
        }
        _ => std::ptr::NonNull::<u8>::dangling().as_ptr(),
    }
}

/// `astrid_free`: gives back a buffer this module handed to the host.
///
/// # Safety
/// `ptr` and `len` must come from [`alloc`] or [`give`] and not have been freed.
pub unsafe fn free(ptr: *mut u8, len: usize) {
    if len > 0 {
        // SAFETY: per the contract, the buffer was allocated with exactly this layout.
        drop(unsafe { Vec::from_raw_parts(ptr, len, len) });
    }
}

/// Takes ownership of a buffer the host filled through [`alloc`].
///
/// # Safety
/// `ptr`/`len` must describe a buffer returned by [`alloc`] and filled by the host.
pub unsafe fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if len == 0 {
        return Vec::new();
    }
    // SAFETY: `alloc` used `Layout::array::<u8>(len)`, exactly what a Vec<u8> of capacity
    // `len` owns, and the host wrote `len` bytes into it.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// The bytes behind a packed host result, or its status code.
pub fn unpack(packed: i64) -> Result<Vec<u8>, i64> {
    if packed < 0 {
        return Err(packed);
    }
    let (ptr, len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
    // SAFETY: a non-negative result is a buffer the host obtained from `astrid_alloc`.
    Ok(unsafe { take(ptr as *mut u8, len) })
}

/// Hands `bytes` to the host as a packed buffer it will give back through `astrid_free`.
pub fn give(bytes: Vec<u8>) -> i64 {
    let mut bytes = std::mem::ManuallyDrop::new(bytes.into_boxed_slice());
    let (ptr, len) = (bytes.as_mut_ptr() as usize as i64, bytes.len() as i64);
    (ptr << 32) | len
}
