//! The exception hierarchy, derived from [`ErrorKind`]: one class per kind, all rooted at
//! `crabnet.CrabnetError`. Each class carries its kind name as the class attribute `kind`;
//! an instance raised for a lifecycle error also carries the violated rule as `violation`.

use crabnet_core::{Error, ErrorKind};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

pyo3::create_exception!(
    crabnet,
    CrabnetError,
    PyException,
    "Base class of every Crabnet error. `kind` names the core's error kind; `violation` is the lifecycle rule a `StateError` (or `NotFoundError`, `ValidationError`) broke, if any."
);

macro_rules! kinds {
    ($($kind:ident => $class:ident : $doc:literal),* $(,)?) => {
        $(pyo3::create_exception!(crabnet, $class, CrabnetError, $doc);)*

        /// The exception class for a kind; the base class for kinds added to the core later.
        fn class_for(py: Python<'_>, kind: ErrorKind) -> Bound<'_, PyType> {
            match kind {
                $(ErrorKind::$kind => py.get_type::<$class>(),)*
                _ => py.get_type::<CrabnetError>(),
            }
        }

        /// Adds the classes to the module, each with its `kind` class attribute.
        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            let py = m.py();
            let base = py.get_type::<CrabnetError>();
            base.setattr("kind", "error")?;
            base.setattr("violation", py.None())?;
            m.add("CrabnetError", base)?;
            // Every kind of the core, so that the tests see a kind that has no class yet.
            let all: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
            m.add("ERROR_KINDS", pyo3::types::PyTuple::new(py, all)?)?;
            $(
                let class = py.get_type::<$class>();
                class.setattr("kind", ErrorKind::$kind.as_str())?;
                m.add(stringify!($class), class)?;
            )*
            Ok(())
        }
    };
}

kinds! {
    Validation => ValidationError: "Bad input: a malformed id, a price out of range, an invalid seed.",
    State => StateError: "The operation is not allowed in the seed's current state.",
    NotFound => NotFoundError: "The seed (or other object) is not known to this node.",
    Store => StoreError: "The node's database failed or is unusable.",
    Network => NetworkError: "The transport failed.",
    Crypto => CryptoError: "A cryptographic check failed.",
    Runner => RunnerError: "The task runner could not run the command.",
    Busy => BusyError: "The resource is held by someone else (e.g. another node on the data directory).",
    Config => ConfigError: "Invalid configuration.",
    Io => IoError: "A file system or other I/O operation failed.",
    Stopped => StoppedError: "The node is not running (stopped, or not started yet).",
    Internal => InternalError: "A bug in Crabnet: an internal invariant did not hold.",
}

static VIOLATION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Converts a core error into the matching Python exception, keeping the core's message.
pub fn to_py_err(py: Python<'_>, err: Error) -> PyErr {
    let exc = PyErr::from_type(class_for(py, err.kind()), err.to_string());
    if let Err(e) = annotate(py, &exc, &err) {
        // The exception still carries the kind and message; the reason it lacks details is
        // reported rather than dropped.
        e.write_unraisable(py, Some(exc.value(py).as_any()));
    }
    exc
}

fn annotate(py: Python<'_>, exc: &PyErr, err: &Error) -> PyResult<()> {
    let value = exc.value(py);
    value.setattr("kind", err.kind().as_str())?;
    if let Some(violation) = err.violation() {
        let fields = pythonize::pythonize(py, violation)
            .map_err(|e| InternalError::new_err(format!("cannot convert a violation: {e}")))?;
        let build = VIOLATION.get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("crabnet._model")?
                    .getattr("Violation")?
                    .getattr("_from_json")?
                    .unbind(),
            )
        })?;
        value.setattr("violation", build.call1(py, (fields,))?)?;
    }
    Ok(())
}

/// Extension trait: `result.py(py)?` turns a core error into a Python exception.
pub trait IntoPyResult<T> {
    /// Converts the error, if any.
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for crabnet_core::Result<T> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py_err(py, e))
    }
}

/// A `ValidationError` raised by the binding itself (bad argument shape).
pub fn validation(message: impl Into<String>) -> PyErr {
    Python::attach(|py| to_py_err(py, Error::new(ErrorKind::Validation, message)))
}

/// A `StoppedError` raised by the binding itself.
pub fn stopped(message: impl Into<String>) -> PyErr {
    Python::attach(|py| to_py_err(py, Error::new(ErrorKind::Stopped, message)))
}

/// An `InternalError` for a serialization failure (a bug).
pub fn internal(message: impl Into<String>) -> PyErr {
    Python::attach(|py| to_py_err(py, Error::new(ErrorKind::Internal, message)))
}
