//! The agent's only unsafe code: calls into the C library that have no safe wrapper.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Returns free heap memory of every malloc arena to the operating system (glibc
/// `malloc_trim(0)`). Returns whether memory was released.
pub fn malloc_trim() -> bool {
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it takes no
    // pointers from us and is thread-safe in glibc (it locks each arena).
    unsafe { libc::malloc_trim(0) != 0 }
}

/// A pidfd of process `pid` (Linux 5.3+, close-on-exec): it becomes readable once the process
/// has exited, whoever its parent is.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1;
    // no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just created for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Resolves once the process of pidfd `fd` has exited (the pidfd polls readable).
pub async fn pidfd_exited(fd: OwnedFd) -> std::io::Result<()> {
    // SAFETY: `fd` is an owned, open descriptor; the AsyncFd takes ownership of it and nothing
    // else closes or replaces it while the AsyncFd lives.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)?;
    fd.readable().await.map(drop)
}
