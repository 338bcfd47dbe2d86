//! `static`: files from a directory, with HEAD, ranges, Last-Modified (tower-http's ServeFile),
//! ETag / If-None-Match, `cache_timeout`, `mime_types`, `default_file` and an optional listing.
//!
//! Path traversal is impossible: the request path is percent-decoded segment by segment and any
//! `..` or `.` segment (however encoded) is refused, and the resolved file must lie inside the
//! canonical root after following symlinks.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
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

/// A `static` service: its canonical root, its options and a cache of small files.
#[derive(Debug)]
pub struct Site {
    root: PathBuf,
    options: StaticOptions,
    cache: Mutex<HashMap<String, Arc<Cached>>>,
}

/// Files up to this size are read in one go and served from memory (and cached); larger ones are
/// streamed by tower-http's ServeFile.
const SMALL_FILE: u64 = 256 * 1024;
/// Bounds of the small-file cache; when either is reached the cache starts over.
const CACHE_ENTRIES: usize = 4096;
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A small file held in memory with the identity it was read with. An entry is used only while
/// `stat` of its (symlink-free, canonical) path still shows that identity, so a changed, replaced
/// or removed file, or a path component swapped for a symlink, is resolved and checked again.
#[derive(Debug)]
struct Cached {
    path: PathBuf,
    identity: Identity,
    data: Bytes,
    etag: HeaderValue,
    content_type: HeaderValue,
    last_modified: Option<HeaderValue>,
    modified: Option<SystemTime>,
}

/// What `stat` says about a file: enough to notice any change to it.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Site {
    /// A site serving `root` (already canonical).
    pub fn new(root: PathBuf, options: StaticOptions) -> Self {
        Self {
            root,
            options,
            cache: Mutex::default(),
        }
    }

    /// Serves `rest` (the URL path below the service's mount point).
    pub async fn serve(&self, rest: &str, req: Request<Incoming>) -> Response<Body> {
        if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let cached = crate::lock(&self.cache).get(rest).cloned();
        if let Some(entry) = cached {
            match std::fs::metadata(&entry.path) {
                Ok(meta) if Identity::of(&meta) == entry.identity => {
                    return self.finish(small_file(&entry, &req), &entry.etag);
                }
                _ => {
                    crate::lock(&self.cache).remove(rest);
                }
            }
        }
        let file = match self.locate(rest, req.uri().path()) {
            Ok(file) => file,
            Err(response) => return *response,
        };
        let Ok(meta) = std::fs::metadata(&file) else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        let mime = self.configured_mime(&file);
        if meta.len() <= SMALL_FILE {
            let Some(entry) = read_small(file, &meta, mime) else {
                return text(StatusCode::NOT_FOUND, "not found\n");
            };
            let entry = Arc::new(entry);
            self.remember(rest, &entry);
            return self.finish(small_file(&entry, &req), &entry.etag);
        }
        let etag = etag_of(&meta);
        let response = if not_modified(&req, &etag) {
            empty(StatusCode::NOT_MODIFIED)
        } else {
            match tower_http::services::ServeFile::new(&file)
                .oneshot(req)
                .await
            {
                Ok(r) => {
                    let mut r = r.map(|b| {
                        b.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                            .boxed_unsync()
                    });
                    if let Some(v) = mime {
                        r.headers_mut().insert(header::CONTENT_TYPE, v);
                    }
                    r
                }
                Err(never) => match never {},
            }
        };
        self.finish(response, &etag)
    }

    /// The file `rest` names: a file inside the root, or a directory's default file. `Err` is the
    /// response to give instead (403, 404, or a directory listing).
    fn locate(&self, rest: &str, url_path: &str) -> Result<PathBuf, Box<Response<Body>>> {
        let file = match resolve(&self.root, rest) {
            Ok(p) => p,
            Err(StatusCode::FORBIDDEN) => {
                return Err(Box::new(text(StatusCode::FORBIDDEN, "forbidden\n")));
            }
            Err(status) => return Err(Box::new(text(status, "not found\n"))),
        };
        if !file.is_dir() {
            return Ok(file);
        }
        let default = self.options.default_file.as_deref().unwrap_or("index.html");
        match std::fs::canonicalize(file.join(default)) {
            Ok(c) if c.starts_with(&self.root) && c.is_file() => Ok(c),
            _ if self.options.enable_directory_listing => Err(Box::new(listing(&file, url_path))),
            _ => Err(Box::new(text(StatusCode::NOT_FOUND, "not found\n"))),
        }
    }

    /// The content type `mime_types` configures for `file`'s extension (`.ext` or `ext`).
    fn configured_mime(&self, file: &Path) -> Option<HeaderValue> {
        let e = file.extension()?.to_str()?;
        let m = self
            .options
            .mime_types
            .get(&format!(".{e}"))
            .or_else(|| self.options.mime_types.get(e))?;
        HeaderValue::from_str(m).ok()
    }

    fn remember(&self, rest: &str, entry: &Arc<Cached>) {
        let mut cache = crate::lock(&self.cache);
        let bytes: usize = cache.values().map(|c| c.data.len()).sum();
        if cache.len() >= CACHE_ENTRIES || bytes + entry.data.len() > CACHE_BYTES {
            cache.clear();
        }
        cache.insert(rest.to_owned(), Arc::clone(entry));
    }

    /// Headers every answer for a file carries: ETag and, when configured, Cache-Control.
    fn finish(&self, mut response: Response<Body>, etag: &HeaderValue) -> Response<Body> {
        response.headers_mut().insert(header::ETAG, etag.clone());
        if let Some(age) = self.options.cache_timeout
            && let Ok(v) = HeaderValue::from_str(&format!("max-age={age}"))
        {
            response.headers_mut().insert(header::CACHE_CONTROL, v);
        }
        response
    }
}

fn etag_of(meta: &std::fs::Metadata) -> HeaderValue {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    HeaderValue::from_str(&format!("\"{:x}-{:x}\"", meta.len(), mtime))
        .expect("hex digits and quotes are a valid header value")
}

fn not_modified(req: &Request<Incoming>, etag: &HeaderValue) -> bool {
    let etag = etag.as_bytes();
    req.headers().get(header::IF_NONE_MATCH).is_some_and(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| t == etag || t == b"*")
    })
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// Reads a small file into a cache entry; `None` if it cannot be read or changed while read.
fn read_small(
    path: PathBuf,
    meta: &std::fs::Metadata,
    mime: Option<HeaderValue>,
) -> Option<Cached> {
    let data = std::fs::read(&path).ok()?;
    if data.len() as u64 != meta.len() {
        return None;
    }
    let content_type = mime.unwrap_or_else(|| {
        HeaderValue::from_str(
            mime_guess::from_path(&path)
                .first_or_octet_stream()
                .as_ref(),
        )
        .unwrap_or(HeaderValue::from_static("application/octet-stream"))
    });
    let modified = meta.modified().ok();
    Some(Cached {
        identity: Identity::of(meta),
        etag: etag_of(meta),
        last_modified: modified
            .and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok()),
        modified,
        content_type,
        data: Bytes::from(data),
        path,
    })
}

/// Answers from a small file in memory: If-None-Match / If-Modified-Since (304), HEAD, and a
/// single byte range (206/416).
fn small_file(entry: &Cached, req: &Request<Incoming>) -> Response<Body> {
    if not_modified(req, &entry.etag) {
        return empty(StatusCode::NOT_MODIFIED);
    }
    if let (Some(m), Some(since)) = (
        entry.modified,
        req.headers()
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok()),
    ) && m.duration_since(since).map_or(true, |d| d.as_secs() == 0)
    {
        return empty(StatusCode::NOT_MODIFIED);
    }
    let len = entry.data.len() as u64;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, body, content_range) = match range {
        None | Some(Err(RangeError::Ignore)) => (StatusCode::OK, entry.data.clone(), None),
        Some(Ok((start, end))) => (
            StatusCode::PARTIAL_CONTENT,
            entry.data.slice(start as usize..=end as usize),
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
        full(Bytes::new())
    } else {
        full(body)
    });
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, entry.content_type.clone());
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(v) = content_range.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::CONTENT_RANGE, v);
    }
    if let Some(v) = &entry.last_modified {
        h.insert(header::LAST_MODIFIED, v.clone());
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
