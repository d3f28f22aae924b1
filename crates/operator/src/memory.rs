//! How the process uses glibc's allocator. Its defaults suit short programs, not an operator
//! that takes a burst of large responses at start (every watch lists its objects) and then runs
//! for months on a small, steady heap: each busy thread may get an arena of its own that keeps
//! its own free memory, and the pages freed after the burst stay resident. [`configure`] caps
//! the arenas before the runtime starts; [`release_every`] hands free pages back to the system
//! now and then. The allocator's thresholds keep their dynamic defaults: fixing them made every
//! large buffer a fresh mapping or the heap's top shrink and grow again (a profile at 1,000
//! QWorkers showed the cost), and the periodic release frees what they would have. Other
//! allocators and platforms are left as they are: the static (musl) build of the container
//! image allocates with mimalloc (`main.rs`; musl's own malloc is slow and keeps freed pages),
//! which [`configure`] sets to hand freed pages back at once (`purge_delay` 0 instead of 1 s)
//! and to commit arenas lazily (`arena_eager_commit` 0; the first arena, reserved before
//! `main`, gets that from the compile-time default in `.cargo/config.toml`). With mimalloc's
//! defaults the image's build held 32.3 MiB where the glibc build holds 24.2 MiB (200
//! QWorkers and 200 pools), with the purge delay alone 30.3 MiB, with both 23.5 MiB
//! (docs/install.md); [`release`] does nothing there.

use std::time::Duration;

/// Most malloc arenas: one per worker thread of the runtime (with one arena for both, the
/// threads waited on its lock).
pub const ARENAS: usize = 2;
/// How often free pages are handed back.
pub const RELEASE_PERIOD: Duration = Duration::from_secs(30);

/// Sets the allocator up (see the module documentation); call it before any thread starts.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS as libc::c_int);
    }
    #[cfg(target_env = "musl")]
    {
        // mimalloc v3.3's `mi_option_e`: arena_eager_commit is 4, purge_delay 15.
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: mi_option_set only changes allocator parameters (read at each use).
        unsafe {
            libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
            libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
        }
    }
}

/// Hands the allocator's free pages back to the system; whether any were.
pub fn release() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe (it takes each arena's lock) and frees nothing in use.
    unsafe {
        libc::malloc_trim(0) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Calls [`release`] every `period` until `shutdown` resolves.
pub async fn release_every(period: Duration, shutdown: impl std::future::Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {
                release();
            }
            _ = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_pages_go_back_to_the_system() {
        fn resident_kib() -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .expect("status")
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("VmRSS")
        }
        // 64 MiB in small blocks (below the mmap threshold: they come from an arena), touched,
        // then freed except every 64th, so the heap cannot simply shrink from its top.
        let mut blocks: Vec<Vec<u8>> = (0..16_384).map(|_| vec![1u8; 4096]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(64).map(std::mem::take).collect();
        let full = resident_kib();
        drop(blocks);
        assert!(release(), "free pages were handed back");
        let after = resident_kib();
        assert!(
            full.saturating_sub(after) > 32 * 1024,
            "at least half of the 64 MiB freed is no longer resident: {full} KiB -> {after} KiB"
        );
        assert_eq!(kept.len(), 256);
    }
}
