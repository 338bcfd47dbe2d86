//! `static`: files from a directory, with HEAD, single byte ranges (If-Range), ETag and
//! Last-Modified with the conditional requests (If-None-Match, If-Modified-Since, If-Match,
//! If-Unmodified-Since), `cache_timeout`, `mime_types`, `default_file` and an optional listing.
//!
//! Small files are served from memory; large ones from the file, by the kernel (`sendfile`, see
//! [`super::sendfile`]) on plaintext HTTP/1.x and read in large chunks otherwise. Edits are
//! seen at once: every answer checks the file's identity first (see [`Cached`]).
//!
//! Path traversal is impossible: the request path is percent-decoded segment by segment and any
//! `..` or `.` segment (however encoded) is refused, and the resolved file must lie inside the
//! canonical root after following symlinks.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::body::{Frame, Incoming, SizeHint};
use percent_encoding::percent_decode_str;
use switchyard::pb::agent::v1::StaticOptions;

use super::sendfile::{FileBody, Jobs};
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

/// A `static` service: its canonical root, its options and a cache of the files it served.
#[derive(Debug)]
pub struct Site {
    root: PathBuf,
    options: StaticOptions,
    cache: Mutex<HashMap<String, Arc<Cached>>>,
}

/// Files up to this size are held in memory (and served from there over TLS and HTTP/2).
const SMALL_FILE: u64 = 256 * 1024;
/// On plaintext HTTP/1.x, files from this size on are sent by the kernel (`sendfile`), from
/// memory below it: a write from memory costs less than the open, fstat and close of a file.
const SENDFILE_FROM: u64 = 64 * 1024;
/// Large files are read in chunks of this size where `sendfile` cannot be used.
const READ_CHUNK: usize = 256 * 1024;
/// Bounds of the cache; when either is reached the cache starts over.
const CACHE_ENTRIES: usize = 4096;
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A file the site served: where it is (its symlink-free canonical path), the identity it had
/// and the headers that follow from it, and its bytes if it is small. An entry is used only while
/// the file still shows that identity: `stat` of the path for an answer from memory, `fstat` of
/// the file opened by that path for an answer from the file. So a changed, replaced or removed
/// file, or a path component swapped for a symlink, is resolved and checked again, and no file
/// descriptor is kept between requests.
#[derive(Debug)]
struct Cached {
    path: PathBuf,
    identity: Identity,
    data: Option<Bytes>,
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

/// Where an answer's bytes come from.
enum Source {
    Memory(Bytes),
    File(Arc<File>),
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

    /// Serves `rest` (the URL path below the service's mount point). `files` is the
    /// connection's `sendfile` queue on plaintext connections.
    pub fn serve(
        &self,
        rest: &str,
        req: &Request<Incoming>,
        files: Option<&Jobs>,
    ) -> Response<Body> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let sendfile = files.filter(|_| req.version() <= Version::HTTP_11);
        let cached = crate::lock(&self.cache).get(rest).cloned();
        if let Some(entry) = cached {
            if let Some(source) = entry.still_valid(sendfile.is_some()) {
                return self.answer(&entry, source, req, sendfile);
            }
            crate::lock(&self.cache).remove(rest);
        }
        let path = match self.locate(rest, req.uri().path()) {
            Ok(path) => path,
            Err(response) => return *response,
        };
        let mime = self.configured_mime(&path);
        let Some((entry, file)) = open(path, mime) else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        let entry = Arc::new(entry);
        self.remember(rest, &entry);
        let source = match &entry.data {
            Some(data) if !entry.wants_sendfile(sendfile.is_some()) => Source::Memory(data.clone()),
            _ => Source::File(Arc::new(file)),
        };
        self.answer(&entry, source, req, sendfile)
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
        let held = |c: &Cached| c.data.as_ref().map_or(0, Bytes::len);
        let bytes: usize = cache.values().map(|c| held(c)).sum();
        if cache.len() >= CACHE_ENTRIES || bytes + held(entry) > CACHE_BYTES {
            cache.clear();
        }
        cache.insert(rest.to_owned(), Arc::clone(entry));
    }

    /// The answer for `entry` with its bytes from `source`: 304 or 412 by the conditional
    /// headers, HEAD, a single byte range (206/416), and the headers every answer for a file
    /// carries (ETag, Last-Modified, Cache-Control when configured).
    fn answer(
        &self,
        entry: &Cached,
        source: Source,
        req: &Request<Incoming>,
        sendfile: Option<&Jobs>,
    ) -> Response<Body> {
        let mut response = match entry.precondition(req) {
            Some(status) => empty(status),
            None => entry.body(source, req, sendfile),
        };
        let h = response.headers_mut();
        h.insert(header::ETAG, entry.etag.clone());
        if let Some(v) = &entry.last_modified {
            h.insert(header::LAST_MODIFIED, v.clone());
        }
        if let Some(age) = self.options.cache_timeout
            && let Ok(v) = HeaderValue::from_str(&format!("max-age={age}"))
        {
            h.insert(header::CACHE_CONTROL, v);
        }
        response
    }
}

/// Opens `path` for reading without blocking: a FIFO put in the root must not stall the
/// listener's thread (it is then refused as not a regular file).
fn open_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Opens the file at `path` and makes its cache entry (reading it if it is small); `None` if it
/// cannot be opened or read, or changed while it was read.
fn open(path: PathBuf, mime: Option<HeaderValue>) -> Option<(Cached, File)> {
    let mut file = open_file(&path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let data = if meta.len() <= SMALL_FILE {
        let mut data = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut data).ok()?;
        if data.len() as u64 != meta.len() {
            return None;
        }
        Some(Bytes::from(data))
    } else {
        None
    };
    let content_type = mime.unwrap_or_else(|| {
        HeaderValue::from_str(
            mime_guess::from_path(&path)
                .first_or_octet_stream()
                .as_ref(),
        )
        .unwrap_or(HeaderValue::from_static("application/octet-stream"))
    });
    let modified = meta.modified().ok();
    let entry = Cached {
        identity: Identity::of(&meta),
        etag: etag_of(&meta),
        last_modified: modified
            .and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok()),
        modified,
        content_type,
        data,
        path,
    };
    Some((entry, file))
}

impl Cached {
    fn len(&self) -> u64 {
        self.identity.len
    }

    /// Whether the kernel should send this file's bytes (on a connection that can).
    fn wants_sendfile(&self, sendfile: bool) -> bool {
        sendfile && self.len() >= SENDFILE_FROM
    }

    /// Where to serve the entry's bytes from, if the file is still the one it describes.
    fn still_valid(&self, sendfile: bool) -> Option<Source> {
        match &self.data {
            Some(data) if !self.wants_sendfile(sendfile) => {
                let meta = std::fs::metadata(&self.path).ok()?;
                (Identity::of(&meta) == self.identity).then(|| Source::Memory(data.clone()))
            }
            _ => {
                let file = open_file(&self.path).ok()?;
                let meta = file.metadata().ok()?;
                (Identity::of(&meta) == self.identity).then(|| Source::File(Arc::new(file)))
            }
        }
    }

    /// The status the conditional headers answer with instead of the file: 412 for a failed
    /// If-Match / If-Unmodified-Since, 304 for a matching If-None-Match / If-Modified-Since
    /// (RFC 9110, 13.2.2).
    fn precondition(&self, req: &Request<Incoming>) -> Option<StatusCode> {
        let headers = req.headers();
        let date = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
        };
        // Modified after `since`, at the one-second resolution of HTTP dates.
        let modified_after = |since: SystemTime| {
            self.modified
                .is_none_or(|m| m.duration_since(since).is_ok_and(|d| d.as_secs() >= 1))
        };
        if let Some(v) = headers.get(header::IF_MATCH) {
            if !etag_listed(v, &self.etag, false) {
                return Some(StatusCode::PRECONDITION_FAILED);
            }
        } else if date(header::IF_UNMODIFIED_SINCE).is_some_and(modified_after) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
        if let Some(v) = headers.get(header::IF_NONE_MATCH) {
            return etag_listed(v, &self.etag, true).then_some(StatusCode::NOT_MODIFIED);
        }
        date(header::IF_MODIFIED_SINCE)
            .is_some_and(|since| !modified_after(since))
            .then_some(StatusCode::NOT_MODIFIED)
    }

    /// Whether a Range header applies: it does unless an If-Range names another version.
    fn range_applies(&self, req: &Request<Incoming>) -> bool {
        let Some(v) = req.headers().get(header::IF_RANGE) else {
            return true;
        };
        if v.as_bytes().starts_with(b"\"") {
            return v.as_bytes() == self.etag.as_bytes();
        }
        self.last_modified.as_ref() == Some(v)
    }

    /// The 200, 206 or 416 answer with the bytes of `source`.
    fn body(
        &self,
        source: Source,
        req: &Request<Incoming>,
        sendfile: Option<&Jobs>,
    ) -> Response<Body> {
        let len = self.len();
        let range = req
            .headers()
            .get(header::RANGE)
            .filter(|_| self.range_applies(req))
            .and_then(|v| v.to_str().ok())
            .map(|v| parse_range(v, len));
        let (status, start, end) = match range {
            None | Some(Err(RangeError::Ignore)) => (StatusCode::OK, 0, len),
            Some(Ok((first, last))) => (StatusCode::PARTIAL_CONTENT, first, last + 1),
            Some(Err(RangeError::Unsatisfiable)) => {
                let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
        };
        let count = end - start;
        let body = match source {
            _ if req.method() == Method::HEAD || count == 0 => full(Bytes::new()),
            Source::Memory(data) => full(data.slice(start as usize..end as usize)),
            Source::File(file) => match sendfile {
                Some(jobs) => Body::stream(FileBody::new(jobs.clone(), file, start, count)),
                None => Body::stream(ReadBody {
                    file,
                    offset: start,
                    left: count,
                }),
            },
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, self.content_type.clone());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if status == StatusCode::PARTIAL_CONTENT
            && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        r
    }
}

/// A file range read in chunks, on the connection's own thread (where `sendfile` cannot be
/// used: TLS and HTTP/2). A file that gets shorter while read ends the body with an error, so
/// the connection is closed rather than short of its Content-Length.
struct ReadBody {
    file: Arc<File>,
    offset: u64,
    left: u64,
}

impl hyper::body::Body for ReadBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let mut buf = vec![0; this.left.min(READ_CHUNK as u64) as usize];
        let n = match this.file.read_at(&mut buf, this.offset) {
            Ok(0) => {
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file got shorter while it was read",
                ))));
            }
            Ok(n) => n,
            Err(e) => return Poll::Ready(Some(Err(e))),
        };
        buf.truncate(n);
        this.offset += n as u64;
        this.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
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

/// Whether an If-Match (strong comparison) or If-None-Match (`weak`) list names `etag` or is `*`.
fn etag_listed(list: &HeaderValue, etag: &HeaderValue, weak: bool) -> bool {
    let etag = etag.as_bytes();
    list.as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|t| t == etag || t == b"*" || (weak && t.strip_prefix(b"W/") == Some(etag)))
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
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
