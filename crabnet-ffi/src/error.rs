//! Status codes, the thread-local last-error message and the panic boundary.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crabnet_core::ErrorKind;

/// The result of every fallible Crabnet call.
///
/// `CRABNET_STATUS_OK` (0) is success; every other value is an error, and
/// `crabnet_last_error()` then describes it. Values 1 to 9 are the ABI's own errors; values
/// from 10 on correspond one to one to the kinds of error of the Crabnet core. The numbers are
/// stable; new codes may be added, so treat an unknown value like `CRABNET_STATUS_INTERNAL`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum crabnet_status {
    /// Success.
    Ok = 0,
    /// A pointer argument that must not be NULL was NULL (including an out-parameter).
    NullArgument = 1,
    /// A string argument was not valid UTF-8.
    InvalidUtf8 = 2,
    /// Crabnet hit a bug and caught it at the boundary instead of crashing. The handles
    /// involved stay memory-safe but may be in an unspecified state: stop and free them.
    Panic = 3,
    /// Bad input: malformed id, bad JSON, price out of range, unknown status name...
    Validation = 10,
    /// The operation is not allowed in the seed's current state (wrong status, not the
    /// publisher, bid window closed, not the winner...).
    State = 11,
    /// The seed (or other object) is unknown here.
    NotFound = 12,
    /// The database failed or is unusable.
    Store = 13,
    /// The transport failed.
    Network = 14,
    /// A cryptographic check failed.
    Crypto = 15,
    /// The task runner could not run the command.
    Runner = 16,
    /// The resource is held by someone else (another node listening on the data directory,
    /// a run in progress).
    Busy = 17,
    /// Invalid configuration (TOML, JSON or a value out of range).
    Config = 18,
    /// File system or other I/O failure.
    Io = 19,
    /// The node has been stopped.
    Stopped = 20,
    /// An invariant did not hold (a bug), or a kind of error this version does not know.
    Internal = 21,
}

/// Every status, in numeric order (not exported: cbindgen would turn it into a macro).
pub(crate) const ALL_STATUSES: [crabnet_status; 16] = [
    crabnet_status::Ok,
    crabnet_status::NullArgument,
    crabnet_status::InvalidUtf8,
    crabnet_status::Panic,
    crabnet_status::Validation,
    crabnet_status::State,
    crabnet_status::NotFound,
    crabnet_status::Store,
    crabnet_status::Network,
    crabnet_status::Crypto,
    crabnet_status::Runner,
    crabnet_status::Busy,
    crabnet_status::Config,
    crabnet_status::Io,
    crabnet_status::Stopped,
    crabnet_status::Internal,
];

impl crabnet_status {
    /// The status for a core error kind (one to one; unknown future kinds are internal).
    pub fn from_kind(kind: ErrorKind) -> crabnet_status {
        match kind {
            ErrorKind::Validation => crabnet_status::Validation,
            ErrorKind::State => crabnet_status::State,
            ErrorKind::NotFound => crabnet_status::NotFound,
            ErrorKind::Store => crabnet_status::Store,
            ErrorKind::Network => crabnet_status::Network,
            ErrorKind::Crypto => crabnet_status::Crypto,
            ErrorKind::Runner => crabnet_status::Runner,
            ErrorKind::Busy => crabnet_status::Busy,
            ErrorKind::Config => crabnet_status::Config,
            ErrorKind::Io => crabnet_status::Io,
            ErrorKind::Stopped => crabnet_status::Stopped,
            ErrorKind::Internal => crabnet_status::Internal,
            _ => crabnet_status::Internal,
        }
    }

    /// A short stable name: `"ok"`, `"null_argument"`, ..., equal to the core's kind names
    /// for the statuses that mirror a kind.
    pub fn name(self) -> &'static CStr {
        match self {
            crabnet_status::Ok => c"ok",
            crabnet_status::NullArgument => c"null_argument",
            crabnet_status::InvalidUtf8 => c"invalid_utf8",
            crabnet_status::Panic => c"panic",
            crabnet_status::Validation => c"validation",
            crabnet_status::State => c"state",
            crabnet_status::NotFound => c"not_found",
            crabnet_status::Store => c"store",
            crabnet_status::Network => c"network",
            crabnet_status::Crypto => c"crypto",
            crabnet_status::Runner => c"runner",
            crabnet_status::Busy => c"busy",
            crabnet_status::Config => c"config",
            crabnet_status::Io => c"io",
            crabnet_status::Stopped => c"stopped",
            crabnet_status::Internal => c"internal",
        }
    }
}

/// An error on its way to the C caller: a status and a message for `crabnet_last_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FfiError {
    /// The status returned to the caller.
    pub status: crabnet_status,
    /// The message `crabnet_last_error` returns.
    pub message: String,
}

impl FfiError {
    /// An error with the given status.
    pub fn new(status: crabnet_status, message: impl Into<String>) -> Self {
        FfiError {
            status,
            message: message.into(),
        }
    }

    /// A NULL argument.
    pub fn null(name: &str) -> Self {
        FfiError::new(
            crabnet_status::NullArgument,
            format!("argument `{name}` is NULL"),
        )
    }

    /// Bad input.
    pub fn validation(message: impl Into<String>) -> Self {
        FfiError::new(crabnet_status::Validation, message)
    }
}

impl From<crabnet_core::Error> for FfiError {
    fn from(e: crabnet_core::Error) -> Self {
        FfiError::new(crabnet_status::from_kind(e.kind()), e.to_string())
    }
}

/// Result alias for the exports' bodies.
pub type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Replaces the calling thread's last-error message (`None`: no error).
fn store_last_error(message: Option<CString>) {
    // `try_with`: the thread may be exiting (a call from a thread-local destructor).
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            *e = message;
        }
    });
}

fn set_last_error(function: &str, message: &str) {
    let text = format!("{function}: {message}").replace('\0', "\\0");
    store_last_error(Some(CString::new(text).unwrap_or_default()));
}

fn clear_last_error() {
    store_last_error(None);
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "unknown panic payload"
    }
}

/// What an export's body returns, and how that becomes the C return value.
pub trait Outcome {
    /// The C return type.
    type C;
    /// Called before the body runs.
    fn begin() {}
    /// Converts the body's result for C (records the error of a failed call).
    fn finish(self, function: &str) -> Self::C;
    /// The C return value after a caught panic.
    fn panicked() -> Self::C;
}

impl Outcome for FfiResult<()> {
    type C = crabnet_status;
    fn begin() {
        clear_last_error();
    }
    fn finish(self, function: &str) -> crabnet_status {
        match self {
            Ok(()) => crabnet_status::Ok,
            Err(e) => {
                set_last_error(function, &e.message);
                e.status
            }
        }
    }
    fn panicked() -> crabnet_status {
        crabnet_status::Panic
    }
}

impl Outcome for () {
    type C = ();
    fn finish(self, _: &str) {}
    fn panicked() {}
}

impl Outcome for u64 {
    type C = u64;
    fn finish(self, _: &str) -> u64 {
        self
    }
    fn panicked() -> u64 {
        0
    }
}

impl Outcome for *const c_char {
    type C = *const c_char;
    fn finish(self, _: &str) -> *const c_char {
        self
    }
    fn panicked() -> *const c_char {
        c"".as_ptr()
    }
}

/// The panic boundary: every export runs its body through this function and nothing else.
///
/// A panic is caught here (it never unwinds into C), recorded as the thread's last error and
/// turned into `CRABNET_STATUS_PANIC` (or a harmless value for functions without a status).
pub fn ffi<O: Outcome>(function: &str, body: impl FnOnce() -> O) -> O::C {
    O::begin();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(outcome) => outcome.finish(function),
        Err(payload) => {
            let message = format!("panic in Crabnet: {}", panic_message(&*payload));
            // Dropping the payload could itself panic: that second panic is caught too.
            if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                std::mem::forget(again);
            }
            set_last_error(function, &message);
            O::panicked()
        }
    }
}

/// The message describing the last failed call on the calling thread, or `""` when the last
/// call succeeded.
///
/// Every call that returns a `crabnet_status` clears the message when it starts and sets it
/// when it fails. The string is owned by Crabnet and stays valid until the next Crabnet call
/// that returns a `crabnet_status` on the same thread; copy it to keep it. Never NULL, never
/// to be freed. Each thread has its own message, so calls on other threads (including event
/// callbacks) never change it.
#[unsafe(no_mangle)]
pub extern "C" fn crabnet_last_error() -> *const c_char {
    ffi("crabnet_last_error", || {
        LAST_ERROR
            .try_with(|e| match e.try_borrow() {
                Ok(e) => e.as_ref().map_or(c"".as_ptr(), |m| m.as_ptr()),
                Err(_) => c"".as_ptr(),
            })
            .unwrap_or(c"".as_ptr())
    })
}

/// A static name for a status value (`"ok"`, `"null_argument"`, `"state"`, ...), or
/// `"unknown"` for a value that is not a `crabnet_status`. Never NULL, never to be freed.
#[unsafe(no_mangle)]
pub extern "C" fn crabnet_status_name(status: c_int) -> *const c_char {
    ffi("crabnet_status_name", || {
        ALL_STATUSES
            .into_iter()
            .find(|s| *s as c_int == status)
            .map_or(c"unknown", crabnet_status::name)
            .as_ptr()
    })
}
