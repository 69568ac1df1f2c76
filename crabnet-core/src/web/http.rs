//! HTTP plumbing: JSON errors, strict extractors, and the middleware that enforces the rules
//! every route shares (methods, bodies, hosts, the bearer token, panics, headers).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use super::AppState;
use crate::error::{Error, ErrorKind};

/// Name of the cookie that carries the token for browsers.
pub(crate) const TOKEN_COOKIE: &str = "crabnet_token";

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub(crate) error: ErrorDetail,
}

/// An error's details.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// The HTTP status code.
    pub(crate) status: u16,
    /// A stable name: an error kind of the core (`validation`, `not_found`, `stopped`,
    /// `store`, ...) or an HTTP one (`unauthorized`, `forbidden`, `method_not_allowed`,
    /// `unavailable`).
    pub(crate) kind: String,
    /// A human-readable explanation.
    pub(crate) message: String,
}

/// An error answered as JSON.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match e.kind() {
            ErrorKind::Validation => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Stopped | ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!("monitoring API: {e}");
        }
        ApiError {
            status,
            kind: e.kind().as_str(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                status: self.status.as_u16(),
                kind: self.kind.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"crabnet\""),
                );
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            _ => {}
        }
        response
    }
}

/// `Query<T>` whose failures are 400 JSON errors.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(ApiQuery(q.0)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// `Path<T>` whose failures are 400 JSON errors.
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(ApiPath(p.0)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Adds the shared rules around `router`.
pub(crate) fn wrap(router: Router, state: Arc<AppState>) -> Router {
    router
        .layer(middleware::from_fn_with_state(state, guard))
        .layer(middleware::from_fn(outer))
}

/// Panics become 500 JSON errors; every response gets the security headers.
async fn outer(req: Request, next: Next) -> Response {
    let mut response = match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!("monitoring API handler panicked: {what}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request handler failed",
            )
            .into_response()
        }
    };
    let headers = response.headers_mut();
    let set = |h: &mut HeaderMap, name, value: &'static str| {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    };
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::CACHE_CONTROL, "no-store");
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    );
    response
}

/// Methods, bodies, hosts and the token.
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} is not allowed: the monitoring API is read-only (GET and HEAD)",
                req.method()
            ),
        )
        .into_response();
    }
    let headers = req.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || match headers.get(header::CONTENT_LENGTH) {
            None => false,
            Some(v) => v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) != Some(0),
        };
    if has_body {
        return ApiError::bad_request("requests to the monitoring API take no body")
            .into_response();
    }
    let path = req.uri().path();
    match &state.token {
        None => {
            if let Some(host) = headers.get(header::HOST)
                && !loopback_host(host)
            {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "without a token the monitoring API answers only requests addressed to a \
                     loopback host (127.0.0.1, [::1] or localhost)",
                )
                .into_response();
            }
        }
        Some(token) if path != "/health" => {
            if !authorized(headers, token) {
                // A browser opens `/?token=TOKEN` once; the cookie carries it from then on.
                if let Some(response) = token_login(&req, token) {
                    return response;
                }
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this monitoring API needs its token: send `Authorization: Bearer TOKEN`, \
                     or open /?token=TOKEN in a browser",
                )
                .into_response();
            }
        }
        Some(_) => {}
    }
    next.run(req).await
}

/// Whether the `Host` header names a loopback address or `localhost` (any port).
fn loopback_host(host: &HeaderValue) -> bool {
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((ip, _)) => ip,
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, value) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| value.trim())
        })
        .any(|v| same(v, token));
    bearer
        || headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == TOKEN_COOKIE && same(value, token))
}

/// For a dashboard page opened with the right `?token=`: a redirect to the same path that
/// sets the cookie (so the token leaves the address bar and the history).
fn token_login(req: &Request, token: &str) -> Option<Response> {
    let path = req.uri().path();
    if path.starts_with("/api/") || path == "/api" || path == "/metrics" {
        return None;
    }
    let given = query_param(req.uri(), "token")?;
    if !same(&given, token) {
        return None;
    }
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    // One leading slash: `//host` would send the browser elsewhere.
    let location = format!("/{}", path.trim_start_matches('/'));
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_str(&location).ok()?);
    headers.insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).ok()?);
    Some(response)
}

fn query_param(uri: &axum::http::Uri, key: &str) -> Option<String> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    pairs.0.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Compares secrets in time that depends only on their lengths.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "127.0.0.1:80",
            "127.0.0.1",
            "localhost:7980",
            "LOCALHOST",
            "[::1]:7980",
            "127.1.2.3:9",
        ] {
            assert!(loopback_host(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "evil.example:7980",
            "10.0.0.1:80",
            "[::2]:1",
            "[::1",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(&HeaderValue::from_static(bad)), "{bad}");
        }
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        let uri = "/?a=1&token=x%20y".parse().unwrap();
        assert_eq!(query_param(&uri, "token").as_deref(), Some("x y"));
    }
}
