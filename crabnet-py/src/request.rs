//! The checks of the arguments Python passes to the node's operations (types and integer
//! ranges), and the core's `PublishRequest` built from the arguments of `Node.publish`. They
//! run here only: the Python layer passes its arguments through unchanged.

use crabnet_core::model::{Deadlines, OutputHash, Replication, SandboxLevel};
use crabnet_core::{NodeId, PublishRequest};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};
use serde::Deserialize;
use serde::de::IntoDeserializer;

use crate::errors::validation;

/// The `TypeError` for an argument `name` that is not `expected` (an article and a type:
/// "an int"), naming the type it has, as Python's `type(value).__name__`.
fn wrong_type(name: &str, expected: &str, value: &Bound<'_, PyAny>) -> PyErr {
    let got = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".to_owned());
    PyTypeError::new_err(format!("{name} must be {expected}, got {got}"))
}

/// An unsigned integer argument below `2**bits` (`bool` is not one): `TypeError` for another
/// type, `ValidationError` when out of range.
pub(crate) fn uint(name: &str, value: &Bound<'_, PyAny>, bits: u32) -> PyResult<u64> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(wrong_type(name, "an int", value));
    }
    let max = u64::MAX >> (64 - bits);
    match value.extract::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(validation(format!(
            "{name} must be between 0 and {max}, got {value}"
        ))),
    }
}

/// A count or limit: an unsigned 64-bit integer argument as for [`uint`], as a `usize` (where
/// `usize` is narrower, larger values become `usize::MAX`).
pub(crate) fn usize_arg(name: &str, value: &Bound<'_, PyAny>) -> PyResult<usize> {
    Ok(usize::try_from(uint(name, value, 64)?).unwrap_or(usize::MAX))
}

/// A `str` argument (subclasses such as the string enums included, read with `str()`).
pub(crate) fn text(name: &str, value: &Bound<'_, PyAny>, expected: &str) -> PyResult<String> {
    if !value.is_instance_of::<PyString>() {
        return Err(wrong_type(name, expected, value));
    }
    Ok(value.str()?.to_cow()?.into_owned())
}

/// A `bool` argument (`True` or `False` only).
fn flag(name: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    if !value.is_instance_of::<PyBool>() {
        return Err(wrong_type(name, "a bool", value));
    }
    value.is_truthy()
}

/// A value of the core parsed from its JSON string form, as the core reads it from JSON.
fn parse<'de, T: Deserialize<'de>>(text: &'de str) -> PyResult<T> {
    T::deserialize(IntoDeserializer::<serde_json::Error>::into_deserializer(
        text,
    ))
    .map_err(|e| validation(format!("invalid publish request: {e}")))
}

/// The arguments of `Node.publish` (`private_to` as node ids); `None`: the core's default.
/// The Python layer passes them as one dict with these keys, every key present (a missing
/// one raises `KeyError`); [`PublishArgs::request`] checks them in `Node.publish`'s order.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub(crate) struct PublishArgs<'py> {
    command: Bound<'py, PyAny>,
    description: Option<Bound<'py, PyAny>>,
    min_price: Option<Bound<'py, PyAny>>,
    max_price: Option<Bound<'py, PyAny>>,
    bid_window_secs: Option<Bound<'py, PyAny>>,
    max_bids: Option<Bound<'py, PyAny>>,
    timeout_secs: Option<Bound<'py, PyAny>>,
    private_to: Vec<String>,
    network: Bound<'py, PyAny>,
    isolation: Bound<'py, PyAny>,
    claim_secs: Option<Bound<'py, PyAny>>,
    result_grace_secs: Option<Bound<'py, PyAny>>,
    settle_secs: Option<Bound<'py, PyAny>>,
    replicas: Bound<'py, PyAny>,
    quorum: Option<Bound<'py, PyAny>>,
    max_replicas: Option<Bound<'py, PyAny>>,
    hash_stdout: Bound<'py, PyAny>,
}

impl PublishArgs<'_> {
    /// Checks the arguments (in their order) and builds the request; the core checks the
    /// terms themselves (prices, windows, the replication's bounds).
    pub(crate) fn request(&self) -> PyResult<PublishRequest> {
        let mut req = PublishRequest::new(text("command", &self.command, "a str")?);
        if let Some(description) = &self.description {
            req.description = text("description", description, "a str")?;
        }
        if let Some(value) = &self.min_price {
            req.min_price = uint("min_price", value, 64)?;
        }
        if let Some(value) = &self.max_price {
            req.max_price = uint("max_price", value, 64)?;
        }
        if let Some(value) = &self.bid_window_secs {
            req.bid_window_secs = uint("bid_window_secs", value, 64)?;
        }
        if let Some(value) = &self.max_bids {
            req.max_bids = uint("max_bids", value, 32)? as u32;
        }
        if let Some(value) = &self.timeout_secs {
            req.timeout_secs = uint("timeout_secs", value, 64)?;
        }
        req.private_to = self
            .private_to
            .iter()
            .map(|id| parse::<NodeId>(id))
            .collect::<PyResult<_>>()?;
        req.network = flag("network", &self.network)?;
        let isolation = text("isolation", &self.isolation, "a SandboxLevel or str")?;
        req.isolation = parse::<SandboxLevel>(&isolation)?;
        let Deadlines {
            claim_secs,
            result_grace_secs,
            settle_secs,
        } = &mut req.deadlines;
        for (name, value, field) in [
            ("claim_secs", &self.claim_secs, claim_secs),
            (
                "result_grace_secs",
                &self.result_grace_secs,
                result_grace_secs,
            ),
            ("settle_secs", &self.settle_secs, settle_secs),
        ] {
            if let Some(value) = value {
                *field = uint(name, value, 64)?;
            }
        }
        let replicas = uint("replicas", &self.replicas, 32)? as u32;
        let hash_stdout = flag("hash_stdout", &self.hash_stdout)?;
        if replicas > 1 || self.quorum.is_some() || self.max_replicas.is_some() || hash_stdout {
            req.replication = Some(Replication {
                replicas,
                quorum: match &self.quorum {
                    Some(quorum) => uint("quorum", quorum, 32)? as u32,
                    None => replicas / 2 + 1,
                },
                max_replicas: match &self.max_replicas {
                    Some(max) => uint("max_replicas", max, 32)? as u32,
                    None => replicas,
                },
                hash: if hash_stdout {
                    OutputHash::Stdout
                } else {
                    OutputHash::Combined
                },
            });
        }
        Ok(req)
    }
}

/// A number of seconds: an `int` or a `float` (`bool` is not one), else `TypeError`.
pub(crate) fn seconds(name: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    if value.is_instance_of::<PyBool>()
        || !(value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>())
    {
        return Err(wrong_type(name, "a number of seconds", value));
    }
    value.extract::<f64>()
}
