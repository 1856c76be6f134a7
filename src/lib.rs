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
//! anything is definitely lost, so that CI fails. `DEBUG_MEMORY=leaks`
//! tracks leaks only, without the checks for heap errors that cost the
//! most (red zones, poisoning, the quarantine): 1.35 to 2 times as fast
//! where allocation dominates.
//!
//! Without `DEBUG_MEMORY`, `Warden` costs one relaxed atomic load per call.
//! With the `tracking` cargo feature off (`default-features = false`) it is
//! a plain pass-through and no tracking code is compiled.
//!
//! See `docs/guide.md` for reading reports and using memwarden in CI, and
//! `docs/architecture.md` for how it works.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod warden;

#[cfg(all(feature = "tracking", target_os = "linux", target_env = "gnu"))]
#[doc(hidden)]
pub mod c_heap;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod check;
pub mod checked;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod env;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod exit;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod guard;
pub mod pool;
pub mod rc;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod reach;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod registry;
mod report;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod roots;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod scan;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod scope;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod stack;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod state;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod stw;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod suppress;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod sync;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod sys;
/// `tracing` events: see [`trace::spawn_stats_events`].
#[cfg(all(feature = "tracing", target_os = "linux"))]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod trace;
#[cfg(all(feature = "tracking", target_os = "linux"))]
mod unwind;

pub use report::{Amount, Frame, HeapErrorKind, HeapErrorReport, Leak, LeakKind, Report, Summary};
#[cfg(all(feature = "tracking", target_os = "linux"))]
#[doc(hidden)]
pub use unwind::__bench;
pub use warden::Warden;

/// Tracks C's heap too, in a program that mixes Rust and C: put it once in
/// the binary crate, next to the `#[global_allocator]` line.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: memwarden::Warden = memwarden::Warden::new();
/// memwarden::track_c_heap!();
/// # fn main() {}
/// ```
///
/// It defines C's allocation functions (`malloc`, `calloc`, `realloc`,
/// `reallocarray`, `free`, `posix_memalign`, `aligned_alloc`, `memalign`,
/// `valloc`, `pvalloc` and `malloc_usable_size`) in the binary, which
/// replaces glibc's for the whole process, C libraries included. With
/// tracking on, blocks that C code allocates are then tracked as Rust's
/// are: leaked ones are reported with the C function that allocated them
/// (and the Rust code that called it), C's double frees, invalid frees,
/// overruns and uses after free are caught, and a Rust block that only a
/// C structure points to counts as reachable, as Valgrind counts it.
/// With tracking off, each call costs one relaxed load on top of glibc's.
///
/// Only on Linux with glibc and the `tracking` feature; elsewhere it
/// expands to nothing and C keeps glibc's allocator. Blocks may be freed
/// across the two languages (a `Box` freed with C's `free`, say) only while
/// the Rust allocator's inner allocator is `System`, which is glibc's
/// `malloc`, as without memwarden. See "C code" in docs/guide.md.
#[macro_export]
macro_rules! track_c_heap {
    () => {
        $crate::__track_c_heap!();
    };
}

#[cfg(not(all(feature = "tracking", target_os = "linux", target_env = "gnu")))]
#[doc(hidden)]
#[macro_export]
macro_rules! __track_c_heap {
    () => {};
}

/// Live heap figures of the tracked allocations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes in tracked blocks alive now.
    pub live_bytes: u64,
    /// Tracked blocks alive now.
    pub live_blocks: u64,
    /// Most bytes alive at once. Exact in a program that allocates on one
    /// thread; with several, within 16 KiB per thread (each thread adds
    /// its share of the live bytes to the global figure when that share
    /// has changed by 16 KiB or may make a new peak, so that no shared
    /// counter is written on every allocation).
    pub peak_bytes: u64,
    /// Tracked allocations so far (`alloc`, `alloc_zeroed`, `realloc`).
    pub total_allocs: u64,
    /// Bytes asked for by those allocations.
    pub total_bytes: u64,
    /// When the peak happened: the number of tracked allocations made by
    /// then (compare with `total_allocs`).
    pub peak_at_alloc: u64,
}

/// An allocation site holding live memory: see [`top_sites`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Site {
    /// Live bytes allocated here.
    pub bytes: u64,
    /// Live blocks allocated here.
    pub blocks: u64,
    /// The allocation stack; `frames[0]` is the program's own line.
    pub frames: Vec<Frame>,
}

/// The `n` allocation sites holding the most live bytes now, largest first
/// (the same stacks and sizes as the exit report; no reachability scan).
/// Empty with tracking off, and with the `tracking` feature off.
pub fn top_sites(n: usize) -> Vec<Site> {
    #[cfg(not(all(feature = "tracking", target_os = "linux")))]
    {
        let _ = n;
        Vec::new()
    }
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    top_sites_tracked(n)
}

#[cfg(all(feature = "tracking", target_os = "linux"))]
fn top_sites_tracked(n: usize) -> Vec<Site> {
    let top = scope::top_stacks(n);
    let _busy = guard::Reentry::enter();
    let mut cache = std::collections::HashMap::new();
    top.into_iter()
        .map(|(bytes, blocks, id)| Site {
            bytes,
            blocks,
            frames: report::symbols::user_frames(
                report::symbols::symbolize(&stack::frames(id), &mut cache),
                state::frames(),
            ),
        })
        .collect()
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

/// Turns leak tracking only on from now on, as `DEBUG_MEMORY=leaks` does
/// from the start: no red zones, poisoning or quarantine, unless
/// `DEBUG_MEMORY_REDZONES`, `DEBUG_MEMORY_POISON` or
/// `DEBUG_MEMORY_QUARANTINE` ask for them (docs/guide.md, "Leak tracking
/// only").
///
/// If tracking was ever on before in the process (`DEBUG_MEMORY`,
/// [`enable`], or a scoped check such as [`assert_no_leaks`], which
/// switches it on for itself), this acts as [`enable`] and keeps the
/// settings tracking had: blocks already tracked have their layout. Does
/// nothing with the `tracking` feature off.
pub fn enable_leaks_only() {
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    state::enable_leaks_only();
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

/// Turns tracking on if `args` hold `--debug-memory`, or leak tracking only
/// ([`enable_leaks_only`]) if they hold `--debug-memory=leaks` (with both,
/// the first decides); returns whether tracking is on afterwards.
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
    let switch_on = args.into_iter().find_map(|a| match a.as_ref().to_str() {
        Some("--debug-memory") => Some(enable as fn()),
        Some("--debug-memory=leaks") => Some(enable_leaks_only as fn()),
        _ => None,
    });
    if let Some(switch_on) = switch_on {
        switch_on();
    }
    is_enabled()
}

/// Runs `f` and panics, with the leak report in the message, if what `f`
/// allocated is still alive and unreachable (definitely or indirectly lost)
/// when it returns. Returns what `f` returns.
///
/// Only allocations made by the calling thread during `f`, and by threads
/// `f` started, count: tests running beside it under `cargo test`'s
/// parallel runner cannot make it fail. Memory `f` stores somewhere still
/// reachable (a static, a thread-local, a value it returns) is not a leak.
///
/// Tracking is switched on for the check if it is off (without arming the
/// exit report). With the `tracking` feature off, this just runs `f`.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: memwarden::Warden = memwarden::Warden::new();
/// let total = memwarden::assert_no_leaks(|| {
///     let v: Vec<u64> = (1..=10).collect();
///     v.iter().sum::<u64>()
/// });
/// assert_eq!(total, 55);
/// ```
#[track_caller]
pub fn assert_no_leaks<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    {
        let (value, report) = scope::check_leaks(f);
        if scope::fails(&report) {
            let report = scope::lost_only(report);
            panic!(
                "memwarden: leak found by assert_no_leaks at {}: {} definitely lost, {} indirectly lost\n{report}",
                std::panic::Location::caller(),
                report.summary.definitely_lost,
                report.summary.indirectly_lost,
            );
        }
        value
    }
    #[cfg(not(all(feature = "tracking", target_os = "linux")))]
    {
        f()
    }
}

/// Runs `f` and returns its value with the report of what it allocated
/// that is still alive (every kind, still reachable included): the
/// non-panicking form of [`assert_no_leaks`], with the same rules. With
/// the `tracking` feature off, the report is empty.
pub fn check_leaks<R>(f: impl FnOnce() -> R) -> (R, Report) {
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    {
        scope::check_leaks(f)
    }
    #[cfg(not(all(feature = "tracking", target_os = "linux")))]
    {
        (f(), Report::empty())
    }
}

/// A mark in the allocation history: what was allocated after it and is
/// still alive can be reported, with its reachability. Cheap to take (one
/// atomic load), so it can be taken per request in a long-running program.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: memwarden::Warden = memwarden::Warden::new();
/// let mark = memwarden::checkpoint();
/// let kept = Box::new([0u8; 32]);
/// let report = mark.report();
/// # // Without the `tracking` feature the report is empty.
/// # if memwarden::is_enabled() {
/// assert_eq!(report.summary.still_reachable.blocks, 1);
/// # }
/// drop(kept);
/// ```
///
/// With the `tracking` feature off, its reports are empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    seq: u64,
}

impl Checkpoint {
    /// Everything allocated after this mark (on any thread) and still
    /// alive, classified by reachability. Scanning stops the other threads
    /// briefly.
    // Always inlined: the caller's stack is scanned from the caller's own
    // stack pointer, so that no dead frame below it counts as a root.
    #[inline(always)]
    pub fn report(&self) -> Report {
        #[cfg(all(feature = "tracking", target_os = "linux"))]
        {
            scope::report_since(roots::stack_pointer(), self.seq)
        }
        #[cfg(not(all(feature = "tracking", target_os = "linux")))]
        {
            let _ = self.seq;
            Report::empty()
        }
    }

    /// Like [`Checkpoint::report`], keeping only the lost blocks
    /// (definitely, indirectly and possibly lost).
    #[inline(always)]
    pub fn leaks(&self) -> Report {
        #[cfg(all(feature = "tracking", target_os = "linux"))]
        {
            scope::lost_only(scope::report_since(roots::stack_pointer(), self.seq))
        }
        #[cfg(not(all(feature = "tracking", target_os = "linux")))]
        {
            self.report()
        }
    }
}

/// Takes a [`Checkpoint`] (switching tracking on if it is off, without
/// arming the exit report).
pub fn checkpoint() -> Checkpoint {
    Checkpoint {
        #[cfg(all(feature = "tracking", target_os = "linux"))]
        seq: scope::checkpoint_seq(),
        #[cfg(not(all(feature = "tracking", target_os = "linux")))]
        seq: 0,
    }
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
        let entry_sp = roots::stack_pointer();
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
        let (total_allocs, total_bytes, live_bytes, peak_bytes, peak_at_alloc) =
            registry::counters();
        Stats {
            live_bytes,
            live_blocks: registry::live_blocks() as u64,
            peak_bytes,
            total_allocs,
            total_bytes,
            peak_at_alloc,
        }
    }
    #[cfg(not(all(feature = "tracking", target_os = "linux")))]
    {
        Stats::default()
    }
}
