//! The agent's only unsafe code: calls into the C library that have no safe wrapper.
#![allow(unsafe_code)]

/// Returns free heap memory of every malloc arena to the operating system (glibc
/// `malloc_trim(0)`). Returns whether memory was released.
pub fn malloc_trim() -> bool {
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it takes no
    // pointers from us and is thread-safe in glibc (it locks each arena).
    unsafe { libc::malloc_trim(0) != 0 }
}
