//! TriggerGc: the Rust counterpart of a garbage collection run is returning freed heap to the
//! operating system (allocator trim).

use std::time::Instant;

use switchyard::pb::agent::v1::TriggerGcResponse;

/// Trims the allocator of the current process and measures the effect.
pub fn trim() -> TriggerGcResponse {
    let pid = std::process::id();
    let resident = || super::stats::read(pid).map_or(0, |s| s.resident);
    let before = resident();
    let start = Instant::now();
    crate::sys::malloc_trim();
    let duration = start.elapsed().as_secs_f64() * 1000.0;
    TriggerGcResponse {
        duration,
        resident_before: before,
        resident_after: resident(),
    }
}

/// Allocates `mib` MiB in small blocks and frees all but the last, leaving the heap fragmented
/// and resident until a trim: the worker's `--ballast-mib` test hook for TriggerGc.
pub fn ballast(mib: usize) {
    const BLOCK: usize = 4096;
    let mut blocks: Vec<Box<[u8]>> = (0..mib * 1024 * 1024 / BLOCK)
        .map(|i| vec![(i % 251) as u8; BLOCK].into_boxed_slice())
        .collect();
    // Keep the most recent block: it pins the top of the heap, so freeing the rest does not
    // shrink the heap by itself.
    let keep = blocks.pop();
    drop(blocks);
    std::mem::forget(keep);
}
