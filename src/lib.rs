//! memwarden: a `#[global_allocator]` wrapper with a leak-tracking debug mode.
//!
//! Register it with one line:
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: memwarden::Warden = memwarden::Warden::new();
//! # fn main() {}
//! ```
//!
//! and run the program with `DEBUG_MEMORY=1`. At exit memwarden prints every
//! allocation still alive that nothing points to any more, grouped by call
//! stack, largest first, each naming the file and line of *your* code that
//! allocated it; it classifies leaks as Valgrind's memcheck does
//! (definitely, indirectly and possibly lost, still reachable), writes JSON
//! with `DEBUG_MEMORY_REPORT=path`, and ends the process with status 23 when
//! anything is definitely lost, so that CI fails.
//!
//! Without `DEBUG_MEMORY`, `Warden` costs one relaxed atomic load per call.
//! With the `tracking` cargo feature off (`default-features = false`) it is
//! a plain pass-through and no tracking code is compiled.
//!
//! See `docs/guide.md` for reading reports and using memwarden in CI, and
//! `docs/architecture.md` for how it works.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod warden;

#[cfg(all(feature = "tracking", target_os = "linux"))]
mod check;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod env;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod exit;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod guard;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod reach;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod registry;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod report;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod roots;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod scan;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod stack;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod state;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod stw;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod sync;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod sys;

#[cfg(all(feature = "tracking", target_os = "linux"))]
pub use report::{Amount, Frame, HeapErrorKind, HeapErrorReport, Leak, LeakKind, Report, Summary};
pub use warden::Warden;

/// Live heap figures of the tracked allocations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes in tracked blocks alive now.
    pub live_bytes: u64,
    /// Tracked blocks alive now.
    pub live_blocks: u64,
    /// Most bytes alive at once.
    pub peak_bytes: u64,
    /// Tracked allocations so far (`alloc`, `alloc_zeroed`, `realloc`).
    pub total_allocs: u64,
    /// Bytes asked for by those allocations.
    pub total_bytes: u64,
}

/// Turns tracking on from now on, as `DEBUG_MEMORY=1` does from the start.
///
/// Blocks allocated before are not tracked (and not reported); freeing them
/// later is fine. The exit report is registered on the first call. Does
/// nothing with the `tracking` feature off.
pub fn enable() {
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    state::enable();
}

/// Stops tracking new allocations. Blocks already tracked stay tracked
/// until freed, and the exit report still covers them.
pub fn disable() {
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    state::disable();
}

/// True while new allocations are being tracked.
pub fn is_enabled() -> bool {
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    {
        state::is_enabled()
    }
    #[cfg(not(all(feature = "tracking", target_os = "linux")))]
    {
        false
    }
}

/// Turns tracking on if `args` hold `--debug-memory`; returns whether
/// tracking is on afterwards.
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: memwarden::Warden = memwarden::Warden::new();
///
/// fn main() {
///     memwarden::init_from_args(std::env::args_os());
///     // ...
/// }
/// ```
pub fn init_from_args<I>(args: I) -> bool
where
    I: IntoIterator,
    I::Item: AsRef<std::ffi::OsStr>,
{
    if args.into_iter().any(|a| a.as_ref() == "--debug-memory") {
        enable();
    }
    is_enabled()
}

/// Checks the red zones of every live tracked block and the poison of every
/// quarantined (recently freed) block now, and reports what it finds as
/// heap errors (an overrun, a use after free), as a free would. Returns the
/// number of errors found (0 with tracking off).
///
/// Under `DEBUG_MEMORY_ON_ERROR=abort` (the default) the first error ends
/// the process after its report.
#[inline(never)]
pub fn check_heap() -> usize {
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    {
        if !state::ever_enabled() {
            return 0;
        }
        let marker = 0u8;
        let entry_sp = std::hint::black_box(&marker) as *const u8 as usize;
        let Some(_busy) = guard::Reentry::enter() else {
            return 0;
        };
        check::check_all(stack::here(entry_sp), true)
    }
    #[cfg(not(all(feature = "tracking", target_os = "linux")))]
    {
        0
    }
}

/// The live heap figures of tracked allocations (all zero while tracking
/// has never been on).
pub fn stats() -> Stats {
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    {
        if !state::ever_enabled() {
            return Stats::default();
        }
        let (total_allocs, total_bytes, live_bytes, peak_bytes, _) = registry::counters();
        Stats {
            live_bytes,
            live_blocks: registry::live_blocks() as u64,
            peak_bytes,
            total_allocs,
            total_bytes,
        }
    }
    #[cfg(not(all(feature = "tracking", target_os = "linux")))]
    {
        Stats::default()
    }
}
