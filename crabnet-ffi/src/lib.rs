//! The Crabnet C ABI: C and C++ hosts drive a whole node through `include/crabnet.h`.
//!
//! This crate holds no domain logic. It wraps [`crabnet_core::BlockingNode`] and turns Rust
//! values into C values and back:
//!
//! - [`error`]: the [`crabnet_status`](error::crabnet_status) codes (one per
//!   [`crabnet_core::ErrorKind`] plus the ABI's own), the thread-local last-error message, and
//!   [`error::ffi`], the one panic boundary every export goes through.
//! - [`handle`]: how handles, string arguments and out-parameters cross the boundary, written
//!   once for every function.
//! - [`config`], [`node`], [`json`], [`web`], [`log`]: the exported functions.
//!
//! The rules a C caller relies on (ownership, threading, callbacks) are written in the doc
//! comments, which cbindgen copies into the header; `tests/header.rs` fails when the committed
//! header differs from what the sources generate.
//!
//! Every export is an `unsafe extern "C" fn`: its pointer arguments must be NULL or valid as
//! the header describes (the general rules are in the header's preamble, `cbindgen.toml`).
#![deny(missing_docs)]
#![allow(clippy::missing_safety_doc)]

pub mod config;
pub mod error;
pub mod handle;
pub mod json;
pub mod log;
pub mod node;
pub mod web;

#[cfg(test)]
mod tests;
