//! The log callback: the node's warnings and diagnostics delivered to the host
//! ([`crabnet_core::logging`] does the filtering, queueing and threading).

use std::ffi::{CString, c_char, c_int, c_void};

use crabnet_core::logging::{self, Level, LevelFilter, Record};

use crate::error::{FfiError, FfiResult, crabnet_status, ffi};
use crate::handle::UserData;

/// The level of a log record, from the most severe (`CRABNET_LOG_LEVEL_ERROR`) to the most
/// verbose (`CRABNET_LOG_LEVEL_TRACE`).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum crabnet_log_level {
    /// Something failed and the node could not recover (an operation was lost).
    Error = 1,
    /// Something an operator should look at (tasks run without a sandbox, a peer that cannot
    /// be dialled, dropped log records).
    Warn = 2,
    /// Normal operation worth noting.
    Info = 3,
    /// Details for debugging.
    Debug = 4,
    /// Very verbose details (network internals).
    Trace = 5,
}

impl crabnet_log_level {
    fn from_c(level: c_int) -> Option<crabnet_log_level> {
        [
            crabnet_log_level::Error,
            crabnet_log_level::Warn,
            crabnet_log_level::Info,
            crabnet_log_level::Debug,
            crabnet_log_level::Trace,
        ]
        .into_iter()
        .find(|l| *l as c_int == level)
    }

    fn of(level: Level) -> crabnet_log_level {
        match level {
            Level::ERROR => crabnet_log_level::Error,
            Level::WARN => crabnet_log_level::Warn,
            Level::INFO => crabnet_log_level::Info,
            Level::DEBUG => crabnet_log_level::Debug,
            Level::TRACE => crabnet_log_level::Trace,
        }
    }

    fn filter(self) -> LevelFilter {
        match self {
            crabnet_log_level::Error => LevelFilter::ERROR,
            crabnet_log_level::Warn => LevelFilter::WARN,
            crabnet_log_level::Info => LevelFilter::INFO,
            crabnet_log_level::Debug => LevelFilter::DEBUG,
            crabnet_log_level::Trace => LevelFilter::TRACE,
        }
    }
}

/// A log callback: `user_data` as given to `crabnet_set_log_callback`, the record's level,
/// its target (where it comes from, a Rust module path such as `"crabnet_core::node"`) and its
/// message (the text followed by the record's fields as ` key=value`).
///
/// `target` and `message` are NUL-terminated UTF-8 owned by Crabnet and valid only during the
/// call: copy what you keep, do not free them. The callback runs on a thread owned by Crabnet
/// (`crabnet-log`), one record at a time, never while Crabnet holds a lock: it may call any
/// Crabnet function, including `crabnet_set_log_callback`. A slow callback delays only later
/// log records (which are dropped once 1024 wait, see `crabnet_log_dropped_count`), never the
/// nodes. It must return normally: no C++ exception and no longjmp may leave it.
#[allow(non_camel_case_types)]
pub type crabnet_log_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        level: crabnet_log_level,
        target: *const c_char,
        message: *const c_char,
    ),
>;

/// The host's callback and `user_data`, handed back only to that callback.
struct HostSink {
    callback: unsafe extern "C" fn(*mut c_void, crabnet_log_level, *const c_char, *const c_char),
    user_data: UserData,
}

impl HostSink {
    fn deliver(&self, record: &Record) {
        let target = c_string(&record.target);
        let message = c_string(&record.message);
        // SAFETY: the host registered this callback and user data for exactly this call; both
        // strings live until it returns.
        unsafe {
            (self.callback)(
                self.user_data.0,
                crabnet_log_level::of(record.level),
                target.as_ptr(),
                message.as_ptr(),
            )
        };
    }
}

fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).unwrap_or_default()
}

/// Delivers the node's log records to `callback`, from now on until the callback is replaced
/// or removed. Without it, Crabnet logs nothing (no output on stderr).
///
/// `level` (a `crabnet_log_level`) is the most verbose level delivered, unless the
/// environment variable `CRABNET_LOG` is set: then it alone decides, as a filter string such
/// as `warn` or `crabnet_core=debug,libp2p=info` (an invalid one is ignored, with a warning
/// through the callback). `CRABNET_LOG_LEVEL_WARN` is the usual choice.
///
/// There is one log callback per process. Calling this again replaces it (and re-reads
/// `CRABNET_LOG`); a NULL `callback` removes it (`level` is then ignored). When the call
/// returns, the previous callback is not running and will not be called again, so its
/// `user_data` may be freed; the one exception is a call from inside that very callback,
/// which simply returns first. Crabnet keeps `user_data` (without touching it) for the
/// callback. See `crabnet_log_callback` for the thread it runs on. Remove the callback before
/// the program exits: that also ends the log thread (memory checkers report a thread still
/// running at exit as a leak).
///
/// Errors: `VALIDATION` (level out of range), `BUSY` (the program installed its own global
/// Rust `tracing` subscriber, which then receives Crabnet's logs), `IO` (the log thread
/// cannot start).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_set_log_callback(
    level: c_int,
    callback: crabnet_log_callback,
    user_data: *mut c_void,
) -> crabnet_status {
    ffi("crabnet_set_log_callback", || -> FfiResult<()> {
        match callback {
            None => logging::remove_sink(),
            Some(callback) => {
                let level = crabnet_log_level::from_c(level).ok_or_else(|| {
                    FfiError::validation(format!(
                        "log level {level} is not a crabnet_log_level (1 to 5)"
                    ))
                })?;
                let sink = HostSink {
                    callback,
                    user_data: UserData(user_data),
                };
                logging::set_sink(level.filter(), move |r: &Record| sink.deliver(r))?;
            }
        }
        Ok(())
    })
}

/// How many log records were dropped since the process started because the log callback did
/// not keep up (the callback also receives a warning saying so).
#[unsafe(no_mangle)]
pub extern "C" fn crabnet_log_dropped_count() -> u64 {
    ffi("crabnet_log_dropped_count", logging::dropped_records)
}
