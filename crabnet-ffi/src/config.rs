//! `crabnet_config`: a node configuration built from TOML, JSON, a file or setters.

use std::ffi::c_char;
use std::path::{Path, PathBuf};

use crabnet_core::Config;
use serde_json::Value;

use crate::error::{FfiError, FfiResult, crabnet_status, ffi};
use crate::handle::{Handle, arg_str, ffi_out, to_json};

/// A node configuration (opaque).
///
/// Created by `crabnet_config_new`, `crabnet_config_from_toml`, `crabnet_config_from_json` or
/// `crabnet_config_from_file`; freed with `crabnet_config_free`. Starting a node copies the
/// configuration, so the handle may be changed or freed right after. A configuration is not
/// synchronized: do not use one from two threads at the same time while one of them changes
/// it.
#[allow(non_camel_case_types)]
pub struct crabnet_config {
    pub(crate) config: Config,
}

impl Handle for crabnet_config {}

fn config_error(message: String) -> FfiError {
    FfiError::new(crabnet_status::Config, message)
}

fn from_json(text: &str) -> FfiResult<Config> {
    let config: Config = serde_json::from_str(text)
        .map_err(|e| config_error(format!("invalid config JSON: {e}")))?;
    config.validate()?;
    Ok(config)
}

impl crabnet_config {
    /// Applies `change` to a copy, validates the copy, and keeps it only if it is valid.
    fn update(&mut self, change: impl FnOnce(&mut Config) -> FfiResult<()>) -> FfiResult<()> {
        let mut next = self.config.clone();
        change(&mut next)?;
        next.validate()?;
        self.config = next;
        Ok(())
    }
}

/// Merges `patch` into `target`: objects key by key (recursively), anything else replaces.
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                match target.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        target.insert(key, value);
                    }
                }
            }
        }
        (target, patch) => *target = patch,
    }
}

/// Creates a configuration with default values and the given data directory (created when
/// the node starts, mode 0700).
///
/// On success `*out_config` receives a new handle, freed with `crabnet_config_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `CONFIG` (empty directory).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_new(
    data_dir: *const c_char,
    out_config: *mut *mut crabnet_config,
) -> crabnet_status {
    // SAFETY (for every `unsafe` block in this module): pointer arguments are NULL or valid,
    // as the header requires of the caller.
    unsafe {
        ffi_out("crabnet_config_new", out_config, "out_config", || {
            let dir = arg_str(data_dir, "data_dir")?;
            let config = Config::with_data_dir(dir);
            config.validate()?;
            Ok(Box::new(crabnet_config { config }))
        })
    }
}

/// Parses a configuration from a TOML document (the format of `config.toml`, see the README);
/// every key is optional, unknown keys are errors.
///
/// On success `*out_config` receives a new handle, freed with `crabnet_config_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `CONFIG` (syntax, unknown key, bad value).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_from_toml(
    toml: *const c_char,
    out_config: *mut *mut crabnet_config,
) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_config_from_toml", out_config, "out_config", || {
            let config = Config::from_toml(arg_str(toml, "toml")?)?;
            Ok(Box::new(crabnet_config { config }))
        })
    }
}

/// Parses a configuration from a JSON object with the same keys as the TOML form, e.g.
/// `{"data_dir": DIR, "name": "n1", "network": {"tick_ms": 50}}` where `DIR` is a JSON string
/// naming the node's own directory (for a test or an example, a private temporary one such as
/// `mkdtemp` makes); every key is optional, unknown keys are errors.
///
/// On success `*out_config` receives a new handle, freed with `crabnet_config_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `CONFIG` (bad JSON, unknown key, bad value).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_from_json(
    json: *const c_char,
    out_config: *mut *mut crabnet_config,
) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_config_from_json", out_config, "out_config", || {
            let config = from_json(arg_str(json, "json")?)?;
            Ok(Box::new(crabnet_config { config }))
        })
    }
}

/// Reads a configuration file: JSON when the path ends in `.json`, TOML otherwise.
///
/// On success `*out_config` receives a new handle, freed with `crabnet_config_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `CONFIG` (unreadable file, bad contents).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_from_file(
    path: *const c_char,
    out_config: *mut *mut crabnet_config,
) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_config_from_file", out_config, "out_config", || {
            let path = Path::new(arg_str(path, "path")?);
            let config = if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    config_error(format!("cannot read config file {}: {e}", path.display()))
                })?;
                from_json(&text)
                    .map_err(|e| config_error(format!("{}: {}", path.display(), e.message)))?
            } else {
                Config::from_file(path)?
            };
            Ok(Box::new(crabnet_config { config }))
        })
    }
}

/// Frees a configuration. NULL is a no-op. The handle must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_free(config: *mut crabnet_config) {
    unsafe { crabnet_config::free("crabnet_config_free", config) }
}

/// Writes the configuration as a JSON object (every key, with its current value).
///
/// On success `*out_json` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_to_json(
    config: *const crabnet_config,
    out_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_config_to_json", out_json, "out_json", || {
            to_json(&crabnet_config::borrow(config, "config")?.config)
        })
    }
}

/// Writes the configuration as a TOML document.
///
/// On success `*out_toml` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_to_toml(
    config: *const crabnet_config,
    out_toml: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_config_to_toml", out_toml, "out_toml", || {
            Ok(crabnet_config::borrow(config, "config")?.config.to_toml())
        })
    }
}

/// Merges a JSON object into the configuration: keys present in `json_patch` replace the
/// current values, objects are merged key by key, e.g.
/// `{"runner": {"cpu_seconds": 30}, "store": {"busy_timeout_ms": 2000}}`. Reaches every
/// setting, including those without a setter below.
///
/// The configuration is unchanged when the call fails.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `CONFIG` (bad JSON, unknown key, bad value).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_merge_json(
    config: *mut crabnet_config,
    json_patch: *const c_char,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_merge_json", config, |c| {
            let patch: Value = serde_json::from_str(arg_str(json_patch, "json_patch")?)
                .map_err(|e| config_error(format!("invalid config JSON: {e}")))?;
            if !patch.is_object() {
                return Err(config_error(
                    "the config patch must be a JSON object".into(),
                ));
            }
            let mut current = serde_json::to_value(&*c)
                .map_err(|e| config_error(format!("cannot serialize the config: {e}")))?;
            merge(&mut current, patch);
            *c = serde_json::from_value(current)
                .map_err(|e| config_error(format!("invalid config: {e}")))?;
            Ok(())
        })
    }
}

/// The body of every setter: validates the changed copy and keeps it only if it is valid.
unsafe fn set(
    function: &str,
    config: *mut crabnet_config,
    change: impl FnOnce(&mut Config) -> FfiResult<()>,
) -> crabnet_status {
    ffi(function, || {
        // SAFETY: the caller passes NULL or a live handle it does not share during the call.
        unsafe { crabnet_config::borrow_mut(config, "config") }?.update(change)
    })
}

/// Sets the data directory (keys, database, event log; task working directories are under
/// `crabnet_config_set_work_root`).
///
/// The configuration is unchanged when the call fails.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `CONFIG` (empty).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_set_data_dir(
    config: *mut crabnet_config,
    data_dir: *const c_char,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_set_data_dir", config, |c| {
            c.data_dir = PathBuf::from(arg_str(data_dir, "data_dir")?);
            Ok(())
        })
    }
}

/// Sets the node's human-readable name (not an identity).
///
/// The configuration is unchanged when the call fails.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_set_name(
    config: *mut crabnet_config,
    name: *const c_char,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_set_name", config, |c| {
            c.name = arg_str(name, "name")?.to_owned();
            Ok(())
        })
    }
}

/// Sets how often the node sends its outbox, closes due bidding and picks up events, in
/// milliseconds (default 250).
///
/// The configuration is unchanged when the call fails.
/// Errors: `NULL_ARGUMENT`, `CONFIG` (0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_set_tick_ms(
    config: *mut crabnet_config,
    tick_ms: u64,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_set_tick_ms", config, |c| {
            c.network.tick_ms = tick_ms;
            Ok(())
        })
    }
}

/// Turns the `events.ndjson` log in the data directory on or off (default on).
///
/// Errors: `NULL_ARGUMENT`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_set_event_log(
    config: *mut crabnet_config,
    enabled: bool,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_set_event_log", config, |c| {
            c.events.log_enabled = enabled;
            Ok(())
        })
    }
}

/// Sets how many events are buffered for each subscriber (callback or
/// `crabnet_node_next_event`) before it misses some and is told so by an `events_dropped`
/// event (default 1024).
///
/// The configuration is unchanged when the call fails.
/// Errors: `NULL_ARGUMENT`, `CONFIG` (0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_set_event_capacity(
    config: *mut crabnet_config,
    capacity: usize,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_set_event_capacity", config, |c| {
            c.events.bus_capacity = capacity;
            Ok(())
        })
    }
}

/// Sets the CPU time limit of every task, in seconds; 0 means unlimited (default 600).
///
/// Errors: `NULL_ARGUMENT`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_set_cpu_seconds(
    config: *mut crabnet_config,
    seconds: u64,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_set_cpu_seconds", config, |c| {
            c.runner.cpu_seconds = seconds;
            Ok(())
        })
    }
}

/// Sets how many bytes of a task's output its result keeps (default and maximum 16384); the
/// hash and the byte count always cover the whole output.
///
/// The configuration is unchanged when the call fails.
/// Errors: `NULL_ARGUMENT`, `CONFIG` (too large).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_set_max_output_bytes(
    config: *mut crabnet_config,
    bytes: usize,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_set_max_output_bytes", config, |c| {
            c.runner.max_output_bytes = bytes;
            Ok(())
        })
    }
}

/// Keeps (true) or removes (false, the default) each task's working directory after it ran
/// (`runner.keep_work_dirs`).
///
/// Errors: `NULL_ARGUMENT`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_set_keep_workdirs(
    config: *mut crabnet_config,
    keep: bool,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_set_keep_workdirs", config, |c| {
            c.runner.keep_work_dirs = keep;
            Ok(())
        })
    }
}

/// Sets the parent directory of the per-task working directories (`runner.work_root`); NULL
/// restores the default, a private directory under the system temp dir (never inside the data
/// directory).
///
/// The configuration is unchanged when the call fails.
/// Errors: `NULL_ARGUMENT` (the handle), `INVALID_UTF8`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_set_work_root(
    config: *mut crabnet_config,
    work_root: *const c_char,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_set_work_root", config, |c| {
            c.runner.work_root = if work_root.is_null() {
                None
            } else {
                Some(PathBuf::from(arg_str(work_root, "work_root")?))
            };
            Ok(())
        })
    }
}

/// Sets what the node does when the kernel cannot build the full task sandbox
/// (`runner.sandbox`): `"required"` (the default: refuse to bid and to run), `"best_effort"`
/// (run with a partial sandbox) or `"none"` (no sandbox: tasks run as the node's user).
///
/// The configuration is unchanged when the call fails.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `CONFIG` (unknown policy).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_set_sandbox(
    config: *mut crabnet_config,
    policy: *const c_char,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_set_sandbox", config, |c| {
            let name = arg_str(policy, "policy")?;
            c.runner.sandbox = serde_json::from_value(Value::String(name.to_owned()))
                .map_err(|e| config_error(format!("invalid runner.sandbox: {e}")))?;
            Ok(())
        })
    }
}

/// Lets the node bid on and run seeds that ask for network access (`runner.allow_network`,
/// default false). Other tasks never have network.
///
/// Errors: `NULL_ARGUMENT`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_config_set_allow_network(
    config: *mut crabnet_config,
    allow: bool,
) -> crabnet_status {
    unsafe {
        set("crabnet_config_set_allow_network", config, |c| {
            c.runner.allow_network = allow;
            Ok(())
        })
    }
}
