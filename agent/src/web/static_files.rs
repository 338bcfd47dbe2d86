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
    let mut response = if not_modified {
        let mut r = Response::new(full(bytes::Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if meta.len() <= SMALL_FILE {
        small_file(&file, &meta, mime.as_deref(), &req)
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

/// Files up to this size are read in one go from the page cache and served from memory; larger
/// ones are streamed by tower-http's ServeFile.
const SMALL_FILE: u64 = 256 * 1024;

/// Serves a small file from memory: HEAD, a single byte range (206/416), Last-Modified and
/// If-Modified-Since.
fn small_file(
    file: &Path,
    meta: &std::fs::Metadata,
    mime: Option<&str>,
    req: &Request<Incoming>,
) -> Response<Body> {
    let modified = meta.modified().ok();
    if let (Some(m), Some(since)) = (
        modified,
        req.headers()
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok()),
    ) && m.duration_since(since).map_or(true, |d| d.as_secs() == 0)
    {
        let mut r = Response::new(full(bytes::Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return r;
    }
    let Ok(data) = std::fs::read(file) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let len = data.len() as u64;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, body, content_range) = match range {
        None | Some(Err(RangeError::Ignore)) => (StatusCode::OK, bytes::Bytes::from(data), None),
        Some(Ok((start, end))) => (
            StatusCode::PARTIAL_CONTENT,
            bytes::Bytes::from(data).slice(start as usize..=end as usize),
            Some(format!("bytes {start}-{end}/{len}")),
        ),
        Some(Err(RangeError::Unsatisfiable)) => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let body_len = body.len();
    let mut r = Response::new(if req.method() == http::Method::HEAD {
        full(bytes::Bytes::new())
    } else {
        full(body)
    });
    *r.status_mut() = status;
    let h = r.headers_mut();
    let mime = mime.map(str::to_owned).unwrap_or_else(|| {
        mime_guess::from_path(file)
            .first_or_octet_stream()
            .to_string()
    });
    if let Ok(v) = HeaderValue::from_str(&mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(v) = content_range.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::CONTENT_RANGE, v);
    }
    if let Some(v) = modified.and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok())
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    r
}

#[derive(Debug, PartialEq, Eq)]
enum RangeError {
    /// Malformed or multi-range: serve the whole file.
    Ignore,
    /// Outside the file: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=` range against a file of `len` bytes into inclusive offsets.
fn parse_range(header: &str, len: u64) -> Result<(u64, u64), RangeError> {
    let spec = header
        .trim()
        .strip_prefix("bytes=")
        .ok_or(RangeError::Ignore)?;
    if spec.contains(',') {
        return Err(RangeError::Ignore);
    }
    let (a, b) = spec.split_once('-').ok_or(RangeError::Ignore)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| RangeError::Ignore)?;
            if n == 0 {
                return Err(RangeError::Unsatisfiable);
            }
            (
                len.saturating_sub(n),
                len.checked_sub(1).ok_or(RangeError::Unsatisfiable)?,
            )
        }
        (s, "") => (
            s.parse().map_err(|_| RangeError::Ignore)?,
            len.checked_sub(1).ok_or(RangeError::Unsatisfiable)?,
        ),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| RangeError::Ignore)?;
            let e: u64 = e.parse().map_err(|_| RangeError::Ignore)?;
            if e < s {
                return Err(RangeError::Ignore);
            }
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start >= len {
        return Err(RangeError::Unsatisfiable);
    }
    Ok((start, end))
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
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range("bytes=10-19", 100), Ok((10, 19)));
        assert_eq!(parse_range("bytes=90-", 100), Ok((90, 99)));
        assert_eq!(parse_range("bytes=-5", 100), Ok((95, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Ok((95, 99)));
        assert_eq!(
            parse_range("bytes=100-", 100),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(parse_range("bytes=1-2,5-6", 100), Err(RangeError::Ignore));
        assert_eq!(parse_range("items=1-2", 100), Err(RangeError::Ignore));
    }

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
