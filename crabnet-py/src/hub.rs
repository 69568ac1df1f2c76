//! `MemoryHub`: the core's in-process network, shared by the nodes of one Python process.

use pyo3::prelude::*;

/// An in-process network: every message a member node sends reaches all the other members.
/// Nodes join with `crabnet.Node(..., hub=hub)`; no traffic leaves the process.
#[pyclass(module = "crabnet", frozen)]
pub struct MemoryHub {
    pub(crate) inner: crabnet_core::MemoryHub,
}

#[pymethods]
impl MemoryHub {
    #[new]
    fn new() -> Self {
        MemoryHub {
            inner: crabnet_core::MemoryHub::new(),
        }
    }

    /// Cuts the member nodes called `name` off (`True`) or reconnects them (`False`), as in a
    /// network partition: messages to or from them are dropped meanwhile.
    fn set_isolated(&self, name: &str, isolated: bool) {
        self.inner.set_isolated(name, isolated);
    }

    fn __repr__(&self) -> &'static str {
        "MemoryHub()"
    }
}
