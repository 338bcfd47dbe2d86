//! `static`: files from a directory, with HEAD, ranges, Last-Modified (tower-http's ServeFile),
//! ETag / If-None-Match, `cache_timeout`, `mime_types`, `default_file` and an optional listing.
//!
//! Path traversal is impossible: the request path is percent-decoded segment by segment and any
//! `..` or `.` segment (however encoded) is refused, and the resolved file must lie inside the
//! canonical root after following symlinks.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use switchyard::pb::agent::v1::StaticOptions;
use tower::ServiceExt;

use super::{Body, full, text};

/// Resolves `rest` (the URL path below the service's mount point) to a path inside `root`.
/// `Err` is the status to answer with.
pub fn resolve(root: &Path, rest: &str) -> Result<PathBuf, StatusCode> {
    let mut path = root.to_path_buf();
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        let segment = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        if segment == ".." || segment == "." || segment.contains(['/', '\\', '\0']) {
            return Err(StatusCode::FORBIDDEN);
        }
        path.push(segment.as_ref());
    }
    let canonical = std::fs::canonicalize(&path).map_err(|_| StatusCode::NOT_FOUND)?;
    if !canonical.starts_with(root) {
        return Err(StatusCode::FORBIDDEN);
    }
    Ok(canonical)
}

/// Serves `rest` from `root`.
pub async fn serve(
    root: &Path,
    options: &StaticOptions,
    rest: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let mut file = match resolve(root, rest) {
        Ok(p) => p,
        Err(StatusCode::FORBIDDEN) => return text(StatusCode::FORBIDDEN, "forbidden\n"),
        Err(status) => return text(status, "not found\n"),
    };
    if file.is_dir() {
        let default = options.default_file.as_deref().unwrap_or("index.html");
        let candidate = file.join(default);
        match std::fs::canonicalize(&candidate) {
            Ok(c) if c.starts_with(root) && c.is_file() => file = c,
            _ if options.enable_directory_listing => return listing(&file, req.uri().path()),
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
    let Ok(meta) = std::fs::metadata(&file) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let etag = format!("\"{:x}-{:x}\"", meta.len(), mtime);
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if not_modified {
        let mut r = Response::new(full(bytes::Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mime = file
            .extension()
            .and_then(|e| e.to_str())
            .and_then(|e| {
                options
                    .mime_types
                    .get(&format!(".{e}"))
                    .or_else(|| options.mime_types.get(e))
            })
            .cloned();
        match tower_http::services::ServeFile::new(&file)
            .oneshot(req)
            .await
        {
            Ok(r) => {
                let mut r = r.map(|b| {
                    b.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                        .boxed_unsync()
                });
                if let Some(v) = mime.and_then(|m| HeaderValue::from_str(&m).ok()) {
                    r.headers_mut().insert(header::CONTENT_TYPE, v);
                }
                r
            }
            Err(never) => match never {},
        }
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    if let Some(age) = options.cache_timeout
        && let Ok(v) = HeaderValue::from_str(&format!("max-age={age}"))
    {
        response.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    response
}

fn listing(dir: &Path, url_path: &str) -> Response<Body> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let mut n = e.file_name().to_string_lossy().into_owned();
                    if e.path().is_dir() {
                        n.push('/');
                    }
                    n
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let base = if url_path.ends_with('/') {
        url_path.to_owned()
    } else {
        format!("{url_path}/")
    };
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut html = format!(
        "<!doctype html><title>Index of {0}</title><h1>Index of {0}</h1><ul>",
        escape(&base)
    );
    for n in names {
        let href: String =
            percent_encoding::utf8_percent_encode(&n, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
                .replace("%2F", "/");
        html.push_str(&format!(
            "<li><a href=\"{}{}\">{}</a></li>",
            escape(&base),
            href,
            escape(&n)
        ));
    }
    html.push_str("</ul>\n");
    let mut r = Response::new(full(html));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused_however_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
        assert_eq!(resolve(&root, "/a.txt").unwrap(), root.join("a.txt"));
        for bad in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/%2e%2e/etc/passwd",
            "/a/..%2f..%2fetc",
            "/escape",
        ] {
            assert!(
                matches!(
                    resolve(&root, bad),
                    Err(StatusCode::FORBIDDEN | StatusCode::NOT_FOUND)
                ),
                "{bad}"
            );
        }
        assert_eq!(resolve(&root, "/escape"), Err(StatusCode::FORBIDDEN));
        assert_eq!(resolve(&root, "/missing"), Err(StatusCode::NOT_FOUND));
    }
}
