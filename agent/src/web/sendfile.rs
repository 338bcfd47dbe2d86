//! File bodies the kernel copies: `sendfile(2)` from the page cache to the socket on plaintext
//! HTTP/1.x, so a large static file never passes through user space.
//!
//! hyper writes responses through its own buffers and has no way to hand a file to the socket
//! (hyperium/hyper#3026). So the connection's socket is wrapped in [`Conn`], and a file body
//! ([`FileBody`]) yields *placeholders*: `Bytes` that point into one private static region of
//! zeroes, as long as the file range they stand for, each with a [`Job`] (file, offset, length)
//! queued on the connection. hyper counts them against the Content-Length and queues them, never
//! copying them, because it writes with `writev` when the socket is vectored (its `Queue`
//! strategy; [`Conn`] says it is, and the builder asks for `writev`). [`Conn`] writes every
//! other slice as given and, for a slice inside the placeholder region, calls `sendfile` for the
//! job at the front of the queue instead. A placeholder dropped before it was written (a
//! connection that ends) marks its job abandoned, so the queue and the byte stream stay in step;
//! a slice that does not match the front job is an error that closes the connection, never
//! zeroes on the wire.
//!
//! The response head is sent with MSG_MORE when file bytes follow, so it leaves in the same
//! segment as the file's first bytes (what nginx's `tcp_nopush` gets with TCP_CORK).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The largest placeholder: one `sendfile` call covers at most this much.
const PLACEHOLDER_LEN: usize = 1 << 20;

/// The placeholder region (in .bss: never written, never touched, so never resident).
static PLACEHOLDER: [u8; PLACEHOLDER_LEN] = [0; PLACEHOLDER_LEN];

fn is_placeholder(slice: &[u8]) -> bool {
    let region = PLACEHOLDER.as_ptr_range();
    let p = slice.as_ptr();
    !slice.is_empty() && region.start <= p && p < region.end
}

/// A file range to send, queued by a [`FileBody`] when it yields the range's placeholder.
#[derive(Debug)]
struct Job {
    file: Arc<File>,
    /// The next byte to send.
    offset: u64,
    /// Bytes still to send.
    left: usize,
    /// Set when the placeholder is dropped; a job never started is then skipped.
    abandoned: Arc<AtomicBool>,
    started: bool,
}

/// The jobs of one connection, in the order their placeholders were yielded.
#[derive(Debug, Clone, Default)]
pub struct Jobs(Arc<Mutex<VecDeque<Job>>>);

/// The owner of a placeholder's bytes: marks its job abandoned when hyper drops it.
struct Placeholder {
    len: usize,
    abandoned: Arc<AtomicBool>,
}

impl AsRef<[u8]> for Placeholder {
    fn as_ref(&self) -> &[u8] {
        &PLACEHOLDER[..self.len]
    }
}

impl Drop for Placeholder {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

impl Jobs {
    /// Queues `len` bytes of `file` from `offset` and returns their placeholder.
    fn push(&self, file: &Arc<File>, offset: u64, len: usize) -> Bytes {
        debug_assert!(len > 0 && len <= PLACEHOLDER_LEN);
        let abandoned = Arc::new(AtomicBool::new(false));
        crate::lock(&self.0).push_back(Job {
            file: Arc::clone(file),
            offset,
            left: len,
            abandoned: Arc::clone(&abandoned),
            started: false,
        });
        Bytes::from_owner(Placeholder { len, abandoned })
    }
}

/// A response body of `len` bytes of `file` from `offset`, sent by the connection's `sendfile`.
#[derive(Debug)]
pub struct FileBody {
    jobs: Jobs,
    file: Arc<File>,
    offset: u64,
    left: u64,
}

impl FileBody {
    /// The body for `len` bytes of `file` from `offset` on the connection of `jobs`.
    pub fn new(jobs: Jobs, file: Arc<File>, offset: u64, len: u64) -> Self {
        Self {
            jobs,
            file,
            offset,
            left: len,
        }
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let n = this.left.min(PLACEHOLDER_LEN as u64) as usize;
        let placeholder = this.jobs.push(&this.file, this.offset, n);
        this.offset += n as u64;
        this.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(placeholder))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A plaintext connection whose placeholder slices are sent with `sendfile`.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    jobs: Jobs,
}

impl Conn {
    /// Wraps `stream`; its responses queue their file ranges on `jobs`.
    pub fn new(stream: TcpStream, jobs: Jobs) -> Self {
        Self { stream, jobs }
    }

    /// Sends up to `len` bytes of the front job (whose placeholder slice is `len` bytes long).
    fn poll_send_file(&self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            let mut jobs = crate::lock(&self.jobs.0);
            while jobs
                .front()
                .is_some_and(|j| !j.started && j.abandoned.load(Ordering::Relaxed))
            {
                jobs.pop_front();
            }
            let Some(job) = jobs.front_mut() else {
                return Poll::Ready(Err(out_of_step("no file queued")));
            };
            if job.left != len {
                return Poll::Ready(Err(out_of_step("lengths differ")));
            }
            let mut offset = i64::try_from(job.offset)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset"))?;
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile64(&self.stream, &*job.file, Some(&mut offset), len)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file got shorter while it was sent",
                    )));
                }
                Ok(n) => {
                    job.started = true;
                    job.offset += n as u64;
                    job.left -= n;
                    if job.left == 0 {
                        jobs.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `bufs` (no placeholders among them), with MSG_MORE when file bytes follow.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        more: bool,
    ) -> Poll<io::Result<usize>> {
        if !more {
            return Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        }
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(&self.stream).send_vectored_with_flags(bufs, libc::MSG_MORE)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

fn out_of_step(what: &str) -> io::Error {
    io::Error::other(format!(
        "sendfile placeholder out of step with its file: {what}"
    ))
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut total = 0;
        let mut i = 0;
        while i < bufs.len() {
            let (end, want, polled) = if is_placeholder(&bufs[i]) {
                (i + 1, bufs[i].len(), this.poll_send_file(cx, bufs[i].len()))
            } else {
                let end = (i..bufs.len())
                    .find(|&j| is_placeholder(&bufs[j]))
                    .unwrap_or(bufs.len());
                let want = bufs[i..end].iter().map(|b| b.len()).sum();
                (
                    end,
                    want,
                    this.poll_send(cx, &bufs[i..end], end < bufs.len()),
                )
            };
            match polled {
                Poll::Ready(Ok(n)) => {
                    total += n;
                    if n < want {
                        break;
                    }
                    i = end;
                }
                // What was written counts; the error (or the wait) comes back on the next call.
                Poll::Ready(Err(_)) | Poll::Pending if total > 0 => break,
                other => return other,
            }
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
