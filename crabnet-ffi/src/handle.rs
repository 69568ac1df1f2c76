//! How values cross the boundary, written once: handles, string arguments, out-parameters,
//! the host's `user_data`.

use std::ffi::{CStr, CString, c_char, c_void};

use crabnet_core::SeedId;

use crate::error::{FfiError, FfiResult, crabnet_status, ffi};

/// A type that C holds as an opaque pointer. The handle is a `Box` allocated by the function
/// that returns it; C gives it back to exactly one `_free` function, which accepts NULL.
pub trait Handle: Sized {
    /// Boxes the value and hands ownership to C.
    fn into_raw(self) -> *mut Self {
        Box::into_raw(Box::new(self))
    }

    /// Borrows a handle C passed in; NULL is an error.
    ///
    /// # Safety
    /// `ptr` is NULL or was returned by [`Handle::into_raw`] and not freed yet; the borrow
    /// must not outlive the call.
    unsafe fn borrow<'a>(ptr: *const Self, name: &str) -> FfiResult<&'a Self> {
        // SAFETY: the caller promises `ptr` is NULL or a live handle.
        unsafe { ptr.as_ref() }.ok_or_else(|| FfiError::null(name))
    }

    /// Borrows a handle mutably; NULL is an error.
    ///
    /// # Safety
    /// As [`Handle::borrow`], and no other thread uses the handle during the call.
    unsafe fn borrow_mut<'a>(ptr: *mut Self, name: &str) -> FfiResult<&'a mut Self> {
        // SAFETY: the caller promises `ptr` is NULL or a live handle used by this thread only.
        unsafe { ptr.as_mut() }.ok_or_else(|| FfiError::null(name))
    }

    /// Takes ownership back from C; `None` for NULL.
    ///
    /// # Safety
    /// `ptr` is NULL or was returned by [`Handle::into_raw`] and not freed yet; nothing uses
    /// it afterwards.
    unsafe fn from_raw(ptr: *mut Self) -> Option<Box<Self>> {
        // SAFETY: the caller gives back a pointer made by `into_raw`, exactly once.
        (!ptr.is_null()).then(|| unsafe { Box::from_raw(ptr) })
    }

    /// Runs before the handle is dropped by its `_free` function.
    fn before_free(&self) {}

    /// The body of every `_free` function: NULL is a no-op; panics are caught.
    ///
    /// # Safety
    /// As [`Handle::from_raw`].
    unsafe fn free(function: &str, ptr: *mut Self) {
        ffi(function, || {
            // SAFETY: forwarded from the caller.
            if let Some(handle) = unsafe { Self::from_raw(ptr) } {
                handle.before_free();
                drop(handle);
            }
        })
    }
}

/// The host's `user_data`, which the host allows Crabnet to pass to its callback on a thread
/// owned by Crabnet (a node's events thread, the log thread).
pub(crate) struct UserData(pub(crate) *mut c_void);

// SAFETY: Crabnet never dereferences the pointer; it only hands it back to the host's callback,
// which the host registered knowing it runs on another thread (documented on
// `crabnet_node_subscribe` and `crabnet_set_log_callback`).
unsafe impl Send for UserData {}
// SAFETY: as above; the pointer is only copied.
unsafe impl Sync for UserData {}

/// A Rust value that becomes a C value in an out-parameter.
pub trait IntoC {
    /// The C type written to the out-parameter.
    type C;
    /// Converts the value; C owns the result (see the function's docs for how to free it).
    fn into_c(self) -> FfiResult<Self::C>;
}

impl IntoC for String {
    type C = *mut c_char;
    fn into_c(self) -> FfiResult<*mut c_char> {
        CString::new(self).map(CString::into_raw).map_err(|e| {
            FfiError::validation(format!(
                "the text contains a NUL byte at offset {} and cannot be returned as a C string",
                e.nul_position()
            ))
        })
    }
}

impl IntoC for u64 {
    type C = u64;
    fn into_c(self) -> FfiResult<u64> {
        Ok(self)
    }
}

impl<T: Handle> IntoC for Box<T> {
    type C = *mut T;
    fn into_c(self) -> FfiResult<*mut T> {
        Ok(Box::into_raw(self))
    }
}

/// The body of every function with one out-parameter: `out` is checked before `body` runs (a
/// NULL `out` fails without side effects), and written only when `body` succeeded.
///
/// # Safety
/// `out` is NULL or valid for writing one `T::C`.
pub unsafe fn ffi_out<T: IntoC>(
    function: &str,
    out: *mut T::C,
    out_name: &str,
    body: impl FnOnce() -> FfiResult<T>,
) -> crabnet_status {
    ffi(function, || {
        if out.is_null() {
            return Err(FfiError::null(out_name));
        }
        let value = body()?.into_c()?;
        // SAFETY: non-NULL, and the caller promises it is writable.
        unsafe { out.write(value) };
        Ok(())
    })
}

/// Borrows a string argument: NULL and invalid UTF-8 are errors.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string that outlives the call.
pub unsafe fn arg_str<'a>(ptr: *const c_char, name: &str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(FfiError::null(name));
    }
    // SAFETY: non-NULL and NUL-terminated, as the caller promises.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str().map_err(|e| {
        FfiError::new(
            crabnet_status::InvalidUtf8,
            format!(
                "argument `{name}` is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Parses a seed id argument.
///
/// # Safety
/// As [`arg_str`].
pub unsafe fn arg_seed_id(ptr: *const c_char, name: &str) -> FfiResult<SeedId> {
    // SAFETY: forwarded from the caller.
    let text = unsafe { arg_str(ptr, name) }?;
    Ok(SeedId::parse(text)?)
}

/// Parses a JSON argument into `T`: NULL and invalid UTF-8 are errors as for [`arg_str`], bad
/// JSON (or JSON `T` does not accept) a `VALIDATION` error saying `invalid {what} JSON: ...`.
///
/// # Safety
/// As [`arg_str`].
pub unsafe fn arg_json<T: serde::de::DeserializeOwned>(
    ptr: *const c_char,
    name: &str,
    what: &str,
) -> FfiResult<T> {
    // SAFETY: forwarded from the caller.
    let text = unsafe { arg_str(ptr, name) }?;
    serde_json::from_str(text)
        .map_err(|e| FfiError::validation(format!("invalid {what} JSON: {e}")))
}

/// A value serialized as compact JSON.
pub fn to_json(value: &impl serde::Serialize) -> FfiResult<String> {
    serde_json::to_string(value).map_err(|e| {
        FfiError::new(
            crabnet_status::Internal,
            format!("cannot serialize to JSON: {e}"),
        )
    })
}
