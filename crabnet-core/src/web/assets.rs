//! The dashboard's files, embedded in the binary (`crabnet-core/web/`), each replaceable by a
//! file of the same name in the configured override directory.

use std::path::Path;

use axum::http::StatusCode;
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};

/// Name, content type and embedded content of every asset.
const EMBEDDED: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../web/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../web/favicon.svg"),
    ),
];

/// Whether `name` is one asset file name (no directories, no hidden files).
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The asset `name`: from the override directory when it holds that file, else embedded;
/// `None` when neither has it.
pub(crate) async fn load(dir: Option<&Path>, name: &str) -> Option<Response> {
    if !safe_name(name) {
        return None;
    }
    if let Some(dir) = dir {
        match tokio::fs::read(dir.join(name)).await {
            Ok(bytes) => return Some(respond(content_type(name), bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(
                    "cannot read dashboard asset {name} from {}: {e}",
                    dir.display()
                );
                return Some(
                    (StatusCode::INTERNAL_SERVER_ERROR, "cannot read the asset").into_response(),
                );
            }
        }
    }
    EMBEDDED
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ct, bytes)| respond(ct, bytes.to_vec()))
}

fn respond(content_type: &'static str, bytes: Vec<u8>) -> Response {
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small files; revalidating is cheap and an upgraded node never serves stale scripts.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_directory() {
        for ok in ["app.js", "style.css", "logo-2.png", "a_b.txt"] {
            assert!(safe_name(ok), "{ok}");
        }
        for bad in ["", "..", ".env", "../x", "a/b", "a\\b", "%2e%2e", "x y"] {
            assert!(!safe_name(bad), "{bad}");
        }
    }
}
