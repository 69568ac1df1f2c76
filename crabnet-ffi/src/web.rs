//! `crabnet_web`: the monitoring HTTP API and dashboard of a node, served from a C host.

use std::ffi::c_char;

use crabnet_core::BlockingWebHandle;

use crate::error::crabnet_status;
use crate::handle::{Handle, arg_str, ffi_out};
use crate::node::crabnet_node;

/// A running monitoring API and dashboard (opaque), the same server `crabnet listen` runs.
///
/// Created by `crabnet_node_serve_web`; stopped and freed with `crabnet_web_free`. It serves on
/// threads owned by its node; it keeps serving after `crabnet_node_stop` and
/// `crabnet_node_free` (then `/health` answers 503) until `crabnet_web_free`. Thread-safe.
#[allow(non_camel_case_types)]
pub struct crabnet_web {
    handle: std::sync::Mutex<BlockingWebHandle>,
}

impl Handle for crabnet_web {
    fn before_free(&self) {
        let mut handle = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        // A free cannot report errors; the server is stopped either way.
        let _ = handle.shutdown();
    }
}

/// Starts the monitoring HTTP API and dashboard of `node` (routes in the README, "Monitoring").
///
/// `web_json` is NULL (serve as the node's configuration, section `[web]`, says) or a JSON
/// object whose keys replace those settings, e.g. `{"bind": "127.0.0.1:0"}` (port 0: a free
/// port; `crabnet_web_url` tells which). A non-loopback address needs a `token`.
///
/// On success `*out_web` receives a new handle, freed with `crabnet_web_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `CONFIG` (bad JSON, unknown key, bad value),
/// `IO` (cannot bind), `STOPPED`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_serve_web(
    node: *const crabnet_node,
    web_json: *const c_char,
    out_web: *mut *mut crabnet_web,
) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_node_serve_web", out_web, "out_web", || {
            let node = crabnet_node::borrow(node, "node")?.blocking();
            let mut config = node.node().config().web.clone();
            if !web_json.is_null() {
                config = config.with_json_overrides(arg_str(web_json, "web_json")?)?;
            }
            let handle = node.serve_web(config)?;
            Ok(Box::new(crabnet_web {
                handle: std::sync::Mutex::new(handle),
            }))
        })
    }
}

/// Writes the dashboard's URL, e.g. `http://127.0.0.1:7980/` (with the real port when port 0
/// was asked for); `/health`, `/metrics` and `/api/...` are below it.
///
/// On success `*out_url` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_web_url(
    web: *const crabnet_web,
    out_url: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_web_url", out_url, "out_url", || {
            let web = crabnet_web::borrow(web, "web")?;
            Ok(web.handle.lock().unwrap_or_else(|p| p.into_inner()).url())
        })
    }
}

/// Stops serving (no new connections; open requests get up to 5 s to finish) and frees the
/// handle. NULL is a no-op. No other thread may use the handle during or after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_web_free(web: *mut crabnet_web) {
    unsafe { crabnet_web::free("crabnet_web_free", web) }
}
