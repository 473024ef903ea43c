//! The extension's memory allocator: mimalloc, with its first arena kept out of
//! transparent huge pages.

/// The extension's global allocator (Rust allocations only; Python objects use
/// Python's own allocator).
// NOTE: the engine allocates and frees small objects on the publishing (Python) thread
// and the Tokio workers alike; glibc malloc serialises those cross-thread frees on an
// arena lock (measured: futex waits were the top cost of `publish_batch`). mimalloc
// frees to the owning thread's heap without a lock. Built with mimalloc's default
// (initial-exec) TLS model: measured 6 % faster on the hook stream than the
// `local_dynamic_tls` feature; its one thread-local pointer fits glibc's static TLS
// reserve for dlopen'd libraries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Virtual size of the arena mapped at load; memory is used only as it is touched.
#[cfg(target_os = "linux")]
pub const ARENA_BYTES: usize = 1 << 30;

// NOTE: where transparent huge pages are "always" on, the first touch of fresh memory
// in mimalloc's arenas made the kernel zero a whole 2 MiB page, the top cost of a
// burst of events on both threads (W6 ~1.9M -> ~2.4M events/s without it; the cold
// rounds of W9 ~370k -> ~550k durable events/s). mimalloc's own switch (allow_thp=0)
// turns huge pages off for the whole process with prctl, which is not ours to decide
// for the host program. Instead the extension maps an arena itself, advises just that
// mapping MADV_NOHUGEPAGE, and gives it to mimalloc from a loader constructor, before
// anything is allocated, so mimalloc uses it before reserving arenas of its own.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static RESERVE_ARENA: extern "C" fn() = reserve_arena;

#[cfg(target_os = "linux")]
extern "C" fn reserve_arena() {
    // SAFETY: a fresh private anonymous mapping that nothing else refers to, given to
    // mimalloc once and never unmapped after that (it lives as long as the process).
    // Each step is checked; on any failure mimalloc keeps its defaults.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            ARENA_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return;
        }
        if libc::madvise(p, ARENA_BYTES, libc::MADV_NOHUGEPAGE) != 0 {
            libc::munmap(p, ARENA_BYTES);
            return;
        }
        let mut id: libmimalloc_sys::mi_arena_id_t = std::ptr::null_mut();
        // Committed (Linux overcommits: pages fault in on use), not pinned (mimalloc
        // may give unused parts back), zeroed (fresh anonymous memory), any NUMA
        // node, not exclusive (the default heap allocates from it).
        if !libmimalloc_sys::mi_manage_os_memory_ex(
            p,
            ARENA_BYTES,
            true,
            false,
            true,
            -1,
            false,
            &mut id,
        ) {
            libc::munmap(p, ARENA_BYTES);
        }
    }
}
