//! The settings of the monitoring HTTP API (config section `[web]`), owned here and gathered
//! into [`Config`](crate::config::Config) by `config.rs`. This module builds only on the
//! error type, so the configuration does not build on the server (nor on the node it serves).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result, check_range};

/// The port the monitoring API binds by default (on 127.0.0.1).
pub const DEFAULT_PORT: u16 = 7980;

/// Shortest accepted bearer token, in characters.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Largest accepted [`WebConfig::max_connections`] (and [`WebConfig::max_streams`]).
pub const MAX_CONNECTIONS: usize = 65_536;

/// Largest accepted [`WebConfig::header_timeout_secs`] (an hour).
pub const MAX_HEADER_TIMEOUT_SECS: u64 = 3_600;

/// Largest accepted [`WebConfig::idle_timeout_secs`] (a day).
pub const MAX_IDLE_TIMEOUT_SECS: u64 = 86_400;

/// Settings of the monitoring HTTP API (config section `[web]`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Whether `crabnet listen` serves the API (the CLI's `--no-http` turns it off).
    pub enabled: bool,
    /// Address to bind; port 0 picks a free port. Non-loopback addresses need [`Self::token`].
    pub bind: SocketAddr,
    /// Bearer token; when set, every route but `/health` requires it. At least
    /// [`MIN_TOKEN_CHARS`] characters: letters, digits and `-._~+/=`.
    pub token: Option<String>,
    /// A directory whose files replace the embedded dashboard assets of the same name
    /// (`index.html`, `app.js`, `style.css`, `favicon.svg`), read on every request.
    pub assets_dir: Option<PathBuf>,
    /// Most event streams (`/api/events/stream`) open at once; more get a 503.
    pub max_streams: usize,
    /// Seconds a client has to send a complete request head (request line and headers), on a
    /// new connection and once it has started the next request on a kept-alive one.
    pub header_timeout_secs: u64,
    /// Seconds a kept-alive connection may wait for its next request before it is closed.
    pub idle_timeout_secs: u64,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one source address (IPv6: one /64).
    pub max_connections_per_ip: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
            token: None,
            assets_dir: None,
            max_streams: 32,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 512,
            max_connections_per_ip: 64,
        }
    }
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("enabled", &self.enabled)
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("assets_dir", &self.assets_dir)
            .field("max_streams", &self.max_streams)
            .field("header_timeout_secs", &self.header_timeout_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .finish()
    }
}

impl WebConfig {
    /// These settings with the keys of the JSON object `json` replacing theirs, e.g.
    /// `{"bind": "127.0.0.1:0"}` (for embedders that describe settings as JSON).
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for JSON that is not an object, an unknown key or a bad value.
    pub fn with_json_overrides(&self, json: &str) -> Result<WebConfig> {
        let bad = |m: String| Error::new(ErrorKind::Config, m);
        let patch: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| bad(format!("invalid web settings JSON: {e}")))?;
        let serde_json::Value::Object(patch) = patch else {
            return Err(bad("the web settings must be a JSON object".into()));
        };
        let mut current = serde_json::to_value(self)
            .map_err(|e| Error::internal(format!("cannot encode the web settings: {e}")))?;
        if let serde_json::Value::Object(current) = &mut current {
            current.extend(patch);
        }
        serde_json::from_value(current).map_err(|e| bad(format!("invalid web settings: {e}")))
    }

    /// Defaults, bound to `127.0.0.1:port`.
    pub fn local(port: u16) -> Self {
        WebConfig {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            ..WebConfig::default()
        }
    }

    /// Checks the token's form, that a non-loopback bind has a token, and the ranges of the
    /// limits.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorKind::Config, m));
        if let Some(token) = &self.token {
            if token.chars().count() < MIN_TOKEN_CHARS {
                return bad(format!(
                    "web.token must have at least {MIN_TOKEN_CHARS} characters"
                ));
            }
            if !token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~+/=".contains(c))
            {
                return bad("web.token may only contain letters, digits and - . _ ~ + / =".into());
            }
        }
        if !self.bind.ip().is_loopback() && self.token.is_none() {
            return bad(format!(
                "the monitoring API may bind {} (not a loopback address) only with a bearer token: \
                 set `token` in the [web] section of the config (at least {MIN_TOKEN_CHARS} \
                 characters), or bind 127.0.0.1",
                self.bind
            ));
        }
        check_range("web.max_streams", self.max_streams, 1, MAX_CONNECTIONS)?;
        check_range(
            "web.header_timeout_secs",
            self.header_timeout_secs,
            1,
            MAX_HEADER_TIMEOUT_SECS,
        )?;
        check_range(
            "web.idle_timeout_secs",
            self.idle_timeout_secs,
            1,
            MAX_IDLE_TIMEOUT_SECS,
        )?;
        check_range(
            "web.max_connections",
            self.max_connections,
            1,
            MAX_CONNECTIONS,
        )?;
        if self.max_connections_per_ip < 1 || self.max_connections_per_ip > self.max_connections {
            return bad(format!(
                "web.max_connections_per_ip must be between 1 and web.max_connections ({}) \
                 (got {})",
                self.max_connections, self.max_connections_per_ip
            ));
        }
        if let Some(dir) = &self.assets_dir
            && dir.as_os_str().is_empty()
        {
            return bad("web.assets_dir must not be empty".into());
        }
        Ok(())
    }
}
