//! Strings, the version, and small JSON helpers for hosts without a JSON library.

use std::ffi::{CStr, CString, c_char};

use serde_json::Value;

use crate::error::{FfiError, FfiResult, crabnet_status, ffi};
use crate::handle::{arg_str, ffi_out, to_json};

const VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("the version contains a NUL byte"),
    };

/// The Crabnet version, e.g. `"0.1.0"`: a static string, never NULL, never to be freed.
#[unsafe(no_mangle)]
pub extern "C" fn crabnet_version() -> *const c_char {
    ffi("crabnet_version", || VERSION.as_ptr())
}

/// Frees a string returned by Crabnet through an out-parameter. NULL is a no-op. Passing any
/// other pointer (a string not from Crabnet, or one freed already) is undefined behavior.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_string_free(string: *mut c_char) {
    ffi("crabnet_string_free", || {
        if !string.is_null() {
            // SAFETY: the caller gives back a string made by `CString::into_raw`, once.
            drop(unsafe { CString::from_raw(string) });
        }
    })
}

/// Parses `json` and finds the value at `pointer` (RFC 6901: `""` is the whole document,
/// `"/seed/id"` a key inside a key, `"/bids/0/price"` an array element).
unsafe fn lookup(json: *const c_char, pointer: *const c_char) -> FfiResult<(Value, String)> {
    // SAFETY: forwarded from the caller (NULL or NUL-terminated strings).
    let (json, pointer) = unsafe { (arg_str(json, "json")?, arg_str(pointer, "pointer")?) };
    let mut document: Value = serde_json::from_str(json)
        .map_err(|e| FfiError::validation(format!("invalid JSON: {e}")))?;
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(FfiError::validation(format!(
            "invalid JSON pointer {pointer:?}: it must be empty or start with '/'"
        )));
    }
    let value = document
        .pointer_mut(pointer)
        .map(Value::take)
        .ok_or_else(|| {
            FfiError::new(
                crabnet_status::NotFound,
                format!("no value at JSON pointer {pointer:?}"),
            )
        })?;
    Ok((value, pointer.to_owned()))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Writes the value at a JSON pointer (e.g. `"/seed/id"`, `"/bids/0/price"`) inside `json`,
/// as compact JSON text (`"\"open\""`, `"42"`, `"true"`, `"null"`, `"{...}"`).
///
/// On success `*out_json` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION` (bad JSON or pointer), `NOT_FOUND`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_json_get(
    json: *const c_char,
    pointer: *const c_char,
    out_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_json_get", out_json, "out_json", || {
            to_json(&lookup(json, pointer)?.0)
        })
    }
}

/// Writes the string at a JSON pointer inside `json`, unquoted and unescaped (e.g. a seed
/// id from `"/seed/id"`).
///
/// On success `*out_string` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION` (bad JSON or pointer, not a string,
/// a string with a NUL character), `NOT_FOUND`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_json_get_string(
    json: *const c_char,
    pointer: *const c_char,
    out_string: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        ffi_out(
            "crabnet_json_get_string",
            out_string,
            "out_string",
            || match lookup(json, pointer)? {
                (Value::String(s), _) => Ok(s),
                (other, pointer) => Err(FfiError::validation(format!(
                    "the value at {pointer:?} is {}, not a string",
                    type_name(&other)
                ))),
            },
        )
    }
}

/// Writes the unsigned integer at a JSON pointer inside `json` (e.g. `"/last_event_seq"`).
///
/// On success `*out_value` receives the number.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION` (bad JSON or pointer, not an
/// unsigned 64-bit integer), `NOT_FOUND`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_json_get_u64(
    json: *const c_char,
    pointer: *const c_char,
    out_value: *mut u64,
) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_json_get_u64", out_value, "out_value", || {
            let (value, pointer) = lookup(json, pointer)?;
            value.as_u64().ok_or_else(|| {
                FfiError::validation(format!(
                    "the value at {pointer:?} is {}, not an unsigned 64-bit integer",
                    type_name(&value)
                ))
            })
        })
    }
}

/// Writes `text` as a JSON string literal, quotes included (`say "hi"` becomes
/// `"say \"hi\""`), for building JSON arguments such as a publish request by hand.
///
/// On success `*out_json` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_json_quote(
    text: *const c_char,
    out_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_json_quote", out_json, "out_json", || {
            to_json(&arg_str(text, "text")?)
        })
    }
}
