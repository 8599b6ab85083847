//! Giving memory back to the operating system once devices leave.
//!
//! Each connection allocates a few buffers of a center's size (178 kB in fp32): the Welcome's
//! encoded center, read and write buffers. They are freed when it ends, but glibc's allocator
//! keeps freed memory of its heaps for reuse (after a first large free it also raises its
//! `mmap` threshold, so later 178 kB buffers come from the heaps too): after 1,000 fp32
//! clients left, the relay stayed about 0.35 MB per connection above its idle size. So when
//! connections end, the relay asks glibc to return its free pages (`malloc_trim`), at most
//! once per [`TRIM_AFTER`], on a blocking thread. Elsewhere this does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long after a connection ends the trim runs (ends in between share it).
pub const TRIM_AFTER: Duration = Duration::from_secs(1);

/// Whether a trim is already scheduled.
static SCHEDULED: AtomicBool = AtomicBool::new(false);

/// A connection ended: schedules one trim within [`TRIM_AFTER`] unless one is scheduled.
pub fn connection_ended() {
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        SCHEDULED.store(false, Ordering::Release);
        return;
    };
    rt.spawn(async {
        tokio::time::sleep(TRIM_AFTER).await;
        SCHEDULED.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(trim).await;
    });
}

/// Returns the allocator's free memory to the operating system now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases the allocator's free chunks; it has no
    // preconditions and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// This process's resident set size in bytes (Linux, 4 KiB pages; `None` elsewhere).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
