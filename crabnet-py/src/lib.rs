//! The native part of the `crabnet` Python package (`crabnet._crabnet`).
//!
//! It only wraps [`crabnet_core::BlockingNode`] and friends: values cross the boundary as the
//! core's serde JSON and the pure-Python layer (`python/crabnet/`) turns them into typed,
//! frozen objects. Errors become the exception classes of [`errors`], one per
//! [`crabnet_core::ErrorKind`]. No domain logic lives here.

mod errors;
mod hub;
mod logs;
mod node;
mod request;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crabnet_core::Config;
use crabnet_core::demo::{DEFAULT_COMMAND, DemoOptions};
use pyo3::prelude::*;

use crate::errors::IntoPyResult;
use crate::node::{lock, parse_timeout, to_json, wait_interruptibly};

/// The default configuration (with the per-user data directory) as JSON.
#[pyfunction]
fn default_config() -> PyResult<String> {
    to_json(&Config::default())
}

/// Parses a TOML configuration (unknown keys are errors); returns it as JSON.
#[pyfunction]
fn config_from_toml(py: Python<'_>, text: &str) -> PyResult<String> {
    to_json(&Config::from_toml(text).py(py)?)
}

/// Reads a TOML configuration file; returns it as JSON.
#[pyfunction]
fn config_from_file(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    to_json(&Config::from_file(&path).py(py)?)
}

/// The exception a core error of kind `kind` (e.g. `"crypto"`) with `message` becomes, for
/// tests and diagnostics of the mapping (some kinds are hard to provoke on purpose).
#[pyfunction]
#[pyo3(name = "_exception_for_kind")]
fn exception_for_kind(py: Python<'_>, kind: &str, message: &str) -> PyResult<Py<PyAny>> {
    let kind = crabnet_core::ErrorKind::parse(kind)
        .ok_or_else(|| errors::validation(format!("unknown error kind {kind:?}")))?;
    let err = errors::to_py_err(py, crabnet_core::Error::new(kind, message));
    Ok(err.value(py).clone().into_any().unbind())
}

/// Runs the local demo network (the same as `crabnet demo`), calling `say(line)` for every
/// step, and returns the report as JSON: `{"seed", "digests", "base_dir"}`. Ctrl-C interrupts
/// the wait (the demo then finishes in the background without printing).
#[pyfunction]
#[pyo3(signature = (say, nodes=3, command=None, base_dir=None, keep=false, step_timeout=20.0))]
fn run_demo(
    py: Python<'_>,
    say: Py<PyAny>,
    nodes: usize,
    command: Option<String>,
    base_dir: Option<PathBuf>,
    keep: bool,
    step_timeout: f64,
) -> PyResult<String> {
    let step_timeout = parse_timeout(Some(step_timeout))?.unwrap_or(Duration::ZERO);
    let opts = DemoOptions {
        nodes,
        base_dir,
        keep,
        command: command.unwrap_or_else(|| DEFAULT_COMMAND.to_owned()),
        step_timeout,
    };
    // The first exception raised by `say` ends the printing and is raised after the demo.
    let failed: Arc<Mutex<Option<PyErr>>> = Arc::default();
    let interrupted = Arc::new(AtomicBool::new(false));
    let (failed2, interrupted2) = (failed.clone(), interrupted.clone());
    let outcome = wait_interruptibly(py, "crabnet-demo", move || {
        let mut say_line = |line: String| {
            if interrupted2.load(Ordering::SeqCst) || lock(&failed2).is_some() {
                return;
            }
            Python::attach(|py| {
                if let Err(e) = say.call1(py, (line,)) {
                    *lock(&failed2) = Some(e);
                }
            });
        };
        crabnet_core::embed::run_demo(&opts, &mut say_line)
            .map(|r| (r, opts.keep || opts.base_dir.is_some()))
    });
    let (report, kept) = match outcome {
        Ok(done) => done.py(py)?,
        Err(e) => {
            interrupted.store(true, Ordering::SeqCst);
            return Err(e);
        }
    };
    if let Some(e) = lock(&failed).take() {
        return Err(e);
    }
    to_json(&serde_json::json!({
        "seed": report.seed,
        "digests": report.digests,
        "base_dir": kept.then(|| report.base_dir.display().to_string()),
    }))
}

/// Every `message_rejected` reason the core reports, as in its JSON. The match has no
/// wildcard, so a reason added to the core fails this build until the Python layer
/// (`crabnet.RejectReason`) learns it too.
fn reject_reasons() -> Vec<&'static str> {
    use crabnet_core::monitor::RejectReason as R;
    let all = [
        R::Malformed,
        R::Oversized,
        R::Duplicate,
        R::BadSignature,
        R::UnknownSender,
        R::Replay,
        R::Expired,
        R::KeyMismatch,
        R::Rule,
        R::NotAdmitted,
        R::RateLimited,
        R::LamportAhead,
        R::RotatedKey,
    ];
    for reason in all {
        match reason {
            R::Malformed
            | R::Oversized
            | R::Duplicate
            | R::BadSignature
            | R::UnknownSender
            | R::Replay
            | R::Expired
            | R::KeyMismatch
            | R::Rule
            | R::NotAdmitted
            | R::RateLimited
            | R::LamportAhead
            | R::RotatedKey => {}
        }
    }
    all.iter().map(|r| r.as_str()).collect()
}

/// The native module; see the package `crabnet` for the Python API.
#[pymodule(gil_used = false)]
fn _crabnet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_DEMO_COMMAND", DEFAULT_COMMAND)?;
    m.add(
        "REJECT_REASONS",
        pyo3::types::PyTuple::new(m.py(), reject_reasons())?,
    )?;
    m.add_class::<hub::MemoryHub>()?;
    m.add_class::<node::NativeNode>()?;
    m.add_class::<node::NativeSubscription>()?;
    m.add_class::<node::NativeWeb>()?;
    m.add_function(wrap_pyfunction!(default_config, m)?)?;
    m.add_function(wrap_pyfunction!(config_from_toml, m)?)?;
    m.add_function(wrap_pyfunction!(config_from_file, m)?)?;
    m.add_function(wrap_pyfunction!(run_demo, m)?)?;
    m.add_function(wrap_pyfunction!(exception_for_kind, m)?)?;
    m.add_function(wrap_pyfunction!(logs::forward_logs, m)?)?;
    m.add_function(wrap_pyfunction!(logs::logs_dropped, m)?)?;
    errors::register(m)?;
    Ok(())
}
