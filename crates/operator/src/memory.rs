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
//! (docs/install.md); [`release`] does nothing there. The same loop drops the process's
//! mappings of the executable's pages now and then ([`release_code`]): the code a start runs
//! once otherwise stays resident for the life of the process. What runs again comes back a
//! few pages at a time (the kernel maps 64 KiB around each fault), so the release build links
//! the functions a resting operator runs next to each other (`symbol-order.txt`, `build.rs`):
//! at 1,000 QWorkers + 1,000 pools 2.8 MiB of the executable's code stayed resident at rest
//! instead of 8.1 MiB with those functions spread over its 12.7 MiB of code.

use std::time::Duration;

/// Most malloc arenas: one per worker thread of the runtime (with one arena for both, the
/// threads waited on its lock).
pub const ARENAS: usize = 2;
/// How often free pages are handed back.
pub const RELEASE_PERIOD: Duration = Duration::from_secs(30);
/// Code pages are dropped at the first [`RELEASE_PERIOD`] and then every this many of them
/// (5 minutes), so that the code of a burst (a start, a resync) does not stay mapped; the code
/// run at rest is mapped back from the page cache at once.
pub const CODE_RELEASE_PERIODS: u32 = 10;

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

/// Drops this process's mappings of the pages of its executable's code and read-only data
/// (`MADV_DONTNEED`); they stay in the page cache, and a page that runs again is mapped back
/// from it (a minor fault, no read from disk). Most of the code that a start runs (argument
/// parsing, CRD checks, the first lists' decoding, TLS set-up) is not run again for hours, yet
/// stays resident in the process: at 1,000 QWorkers and 1,000 pools 14.2 MiB of code and
/// libraries were resident before and 10.8 MiB a minute after (docs/performance.md). Only mappings that hold no private copy of a
/// page (`Anonymous: 0 kB`: no relocated data) are advised, so that nothing is lost: the
/// kernel maps the file's own content back. Returns how many bytes of mappings were advised.
pub fn release_code() -> usize {
    #[cfg(target_os = "linux")]
    {
        let (Ok(exe), Ok(smaps)) = (
            std::fs::read_link("/proc/self/exe"),
            std::fs::read_to_string("/proc/self/smaps"),
        ) else {
            return 0;
        };
        let Some(exe) = exe.to_str() else { return 0 };
        unshared_mappings(&smaps, exe)
            .into_iter()
            .map(|(start, len)| {
                // SAFETY: advice on a read-only, file-backed private mapping of this process's
                // own executable that holds no private copy of any page: its pages are mapped
                // back from the same file on access, with the same content; nothing is unmapped
                // for good.
                let done =
                    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
                if done == 0 { len } else { 0 }
            })
            .sum()
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// The mappings (start, length) of file `exe` in the text of `/proc/self/smaps` that are not
/// writable and hold no private (anonymous) page.
fn unshared_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    // The current mapping, if it is one of `exe`'s read-only ones.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(header) = Header::parse(line) {
            current = (header.path == Some(exe) && !header.perms.contains('w'))
                .then_some(header.range)
                .flatten();
        } else if let Some(kib) = line.strip_prefix("Anonymous:")
            && let Some(mapping) = current.take()
            && kib.split_whitespace().next() == Some("0")
        {
            found.push(mapping);
        }
    }
    found
}

/// KiB resident (`Rss`) in the mappings of file `exe`, from the text of a `/proc/PID/smaps`.
pub fn resident_kib_of(smaps: &str, exe: &str) -> u64 {
    let mut ours = false;
    let mut kib = 0;
    for line in smaps.lines() {
        if let Some(header) = Header::parse(line) {
            ours = header.path == Some(exe);
        } else if ours && let Some(v) = line.strip_prefix("Rss:") {
            kib += v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    kib
}

/// The header line of a mapping in `/proc/self/smaps` (or a line of `/proc/self/maps`):
/// `start-end perms offset dev inode [path]`.
struct Header<'a> {
    /// Start and length, when the range parses.
    range: Option<(usize, usize)>,
    perms: &'a str,
    path: Option<&'a str>,
}

impl<'a> Header<'a> {
    /// The header `line` is, or `None` for a field line (`Rss:   12 kB`, `VmFlags: rd ...`).
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let first = fields.next()?;
        if !first.contains('-') || first.ends_with(':') {
            return None;
        }
        let perms = fields.next().unwrap_or_default();
        let path = fields.nth(3);
        let range = first.split_once('-').and_then(|(a, b)| {
            let a = usize::from_str_radix(a, 16).ok()?;
            let b = usize::from_str_radix(b, 16).ok()?;
            Some((a, b.checked_sub(a)?))
        });
        Some(Self { range, perms, path })
    }
}

/// Calls [`release`] every `period` until `shutdown` resolves, and [`release_code`] at the
/// first and then every [`CODE_RELEASE_PERIODS`].
pub async fn release_every(period: Duration, shutdown: impl std::future::Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {
                release();
                if ticks.is_multiple_of(CODE_RELEASE_PERIODS) {
                    release_code();
                }
                ticks = ticks.wrapping_add(1);
            }
            _ = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_mappings_of_the_executable_without_private_pages_are_released() {
        let smaps = "\
55d0a0000000-55d0a0200000 r--p 00000000 fd:01 1234 /usr/bin/workerpool-operator
Rss:                1200 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
55d0a0200000-55d0a1200000 r-xp 00200000 fd:01 1234 /usr/bin/workerpool-operator
Rss:                9000 kB
Anonymous:             0 kB
55d0a1200000-55d0a1280000 r--p 01200000 fd:01 1234 /usr/bin/workerpool-operator
Rss:                 512 kB
Anonymous:           512 kB
55d0a1280000-55d0a1300000 rw-p 01280000 fd:01 1234 /usr/bin/workerpool-operator
Anonymous:            64 kB
55d0a2000000-55d0a3000000 rw-p 00000000 00:00 0 [heap]
Anonymous:          2048 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 99 /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000180000-7f0000190000 r--p 00000000 00:00 0
Anonymous:             0 kB
7f0000200000-7f0000300000 r-xp 00000000 fd:01 77 /usr/bin/workerpool-operator-old (deleted)
Anonymous:             0 kB
";
        assert_eq!(
            unshared_mappings(smaps, "/usr/bin/workerpool-operator"),
            vec![(0x55d0a0000000, 0x200000), (0x55d0a0200000, 0x1000000)],
            "code and read-only data; not relocated data (private pages), writable data, the \
             heap, libraries or anonymous mappings"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_executables_pages_are_unmapped_until_they_run_again() {
        /// KiB of the executable's mappings resident now.
        fn resident_code_kib() -> u64 {
            let exe = std::fs::read_link("/proc/self/exe").expect("exe");
            let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
            resident_kib_of(&smaps, exe.to_str().expect("path"))
        }
        let before = resident_code_kib();
        assert!(release_code() > 0, "the executable's mappings were advised");
        let after = resident_code_kib();
        println!("executable resident: {before} KiB -> {after} KiB");
        assert!(
            after * 2 < before,
            "most of the resident code was unmapped: {before} KiB -> {after} KiB"
        );
    }

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
