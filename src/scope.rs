//! Leak checks while the program runs: `assert_no_leaks`, `check_leaks`,
//! checkpoints, and the live top allocation sites.
//!
//! A scoped check must count only what its closure allocated — on its own
//! thread and on threads the closure started — so that tests running beside
//! it under `cargo test` cannot make it fail. Sequence numbers give the
//! "after the start" part. For "threads it started", memwarden tags the
//! calling thread with a per-thread value the kernel copies into every
//! thread it creates: the timer slack (`prctl(PR_SET_TIMERSLACK)`; the
//! default is 50 µs, the tag changes it by less than 1 µs, which no timer
//! can notice). When a thread is first seen by the allocator, its timer
//! slack tells which scope, if any, it was born in (children of children
//! too). Thread pools created before the check are not part of it.
use std::sync::atomic::{AtomicU32, Ordering};

use crate::guard::{self, Reentry};
use crate::registry;
use crate::report::{Classified, LeakKind, Report};
use crate::scan::{self, Caveats};
use crate::state;
use crate::sync::SpinLock;
use crate::sys::SysVec;

/// Timer slack of a thread nobody changed (50 µs, in ns).
const DEFAULT_SLACK: u64 = 50_000;
/// Scope tags are `DEFAULT_SLACK + 1 ..= DEFAULT_SLACK + MAX_TAG`.
const MAX_TAG: u32 = 999;

static NEXT_TAG: AtomicU32 = AtomicU32::new(0);
/// Scope tag of each memwarden thread number (0: none).
static THREAD_TAG: SpinLock<SysVec<u16>> = SpinLock::new(SysVec::new());

fn timer_slack() -> u64 {
    // SAFETY: PR_GET_TIMERSLACK takes no pointer arguments.
    let s = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
    if s < 0 { DEFAULT_SLACK } else { s as u64 }
}

fn set_timer_slack(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes a value, no pointers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}

/// Called once per thread when it gets its memwarden number: remembers
/// the scope it was born in. Allocation-free (the table grows through
/// `System`).
pub(crate) fn on_new_thread(id: u32) {
    let slack = timer_slack();
    if slack <= DEFAULT_SLACK || slack > DEFAULT_SLACK + u64::from(MAX_TAG) {
        return;
    }
    let tag = (slack - DEFAULT_SLACK) as u16;
    let mut t = THREAD_TAG.lock();
    let i = id as usize;
    if t.len() <= i {
        let mut grown = SysVec::new();
        if !grown.fill(0u16, (i + 1).next_power_of_two().max(64)) {
            return;
        }
        grown.as_mut_slice()[..t.len()].copy_from_slice(t.as_slice());
        *t = grown;
    }
    t.as_mut_slice()[i] = tag;
}

fn tag_of(id: u32) -> u16 {
    THREAD_TAG
        .lock()
        .as_slice()
        .get(id as usize)
        .copied()
        .unwrap_or(0)
}

/// Lost blocks reported by scoped checks: (address, sequence number,
/// thread), which names one allocation (sequence numbers are counted per
/// thread: see `registry`).
static REPORTED: SpinLock<SysVec<(usize, u64, u32)>> = SpinLock::new(SysVec::new());

fn note_reported(blocks: &[Classified]) {
    let mut r = REPORTED.lock();
    for b in blocks.iter().filter(|b| b.kind != LeakKind::StillReachable) {
        let _ = r.push((b.rec.addr, b.rec.seq, b.rec.thread));
    }
}

/// The blocks scoped checks reported as lost, (address, sequence number,
/// thread), sorted.
pub(crate) fn reported() -> Vec<(usize, u64, u32)> {
    let n = REPORTED.lock().as_slice().len();
    let mut v = Vec::with_capacity(n + 16);
    {
        // Copy without allocating under the lock: `v` has room already,
        // unless another thread added entries meanwhile.
        let r = REPORTED.lock();
        let take = r.as_slice().len().min(v.capacity());
        v.extend_from_slice(&r.as_slice()[..take]);
    }
    v.sort_unstable();
    v
}

/// A scope: the calling thread, the threads it starts, and a start point.
struct Scope {
    seq: u64,
    thread: u32,
    tag: u16,
    old_slack: u64,
}

impl Scope {
    fn open() -> Scope {
        if !state::is_enabled() {
            state::enable_quietly();
        }
        let tag = (NEXT_TAG.fetch_add(1, Ordering::Relaxed) % MAX_TAG + 1) as u16;
        let old_slack = timer_slack();
        set_timer_slack(DEFAULT_SLACK + u64::from(tag));
        Scope {
            seq: registry::mark(),
            thread: guard::thread_id(),
            tag,
            old_slack,
        }
    }

    fn contains(&self, b: &Classified) -> bool {
        b.rec.seq > self.seq && (b.rec.thread == self.thread || tag_of(b.rec.thread) == self.tag)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        set_timer_slack(self.old_slack);
    }
}

/// Scans the process and builds a report of the blocks `keep` selects.
/// The calling thread's stack is scanned from `caller_sp` up: the caller's
/// own frame and its callers, never the dead frames below it (nor this
/// function's, which may hold stale pointers left there by the code that
/// ran before).
#[inline(never)]
fn scan_report(caller_sp: usize, keep: &dyn Fn(&Classified) -> bool) -> Report {
    let report = scan_report_inner(caller_sp, keep);
    // The scan held the addresses of the blocks it classified, lost ones
    // included, in its own (now dead) frames.
    scrub_dead_stack();
    report
}

#[inline(never)]
fn scan_report_inner(caller_sp: usize, keep: &dyn Fn(&Classified) -> bool) -> Report {
    let entry_sp = caller_sp;
    let Some(_busy) = Reentry::enter() else {
        return Report::empty();
    };
    let mut caveats = Caveats::default();
    let blocks: Vec<Classified> = scan::classify_all(entry_sp, &mut caveats)
        .into_iter()
        .filter(|b| keep(b))
        .collect();
    note_reported(&blocks);
    for line in scan::caveat_lines(&caveats) {
        eprintln!("{line}");
    }
    scan::debug_reach(entry_sp, &blocks);
    scan::build_report(&blocks)
}

/// Bytes of dead stack below the caller that [`scrub_dead_stack`] zeroes
/// (less when the thread's stack has less room left).
const SCRUB: usize = 32 << 10;

/// Zeroes the dead stack just below the caller, where the closure of a
/// scoped check (or the scan) ran. The pointers left there (to a block the
/// closure leaked, say)
/// would otherwise linger, and whatever runs at that depth next (a panic
/// message, std's backtrace printer) may copy such stale words into its
/// own memory, uninitialised bytes and all, where the exit report's scan
/// would find them and call the leak reachable.
#[inline(never)]
pub(crate) fn scrub_dead_stack() {
    let sp = crate::roots::stack_pointer();
    // Keep 16 KiB of headroom above the thread's guard page. On another
    // stack than the thread's own (a signal's, a coroutine's), whose size
    // is not known, nothing.
    let room = match crate::unwind::exact_stack() {
        Some((lo, hi)) if (lo..hi).contains(&sp) => sp.saturating_sub(lo).saturating_sub(16 << 10),
        Some(_) => 0,
        None => 8 << 10,
    };
    if room >= SCRUB {
        scrub::<SCRUB>();
    } else if room >= SCRUB / 4 {
        scrub::<{ SCRUB / 4 }>();
    }
}

/// Zeroes `N` bytes of this frame.
#[inline(never)]
fn scrub<const N: usize>() {
    let mut dead = [0u8; N];
    std::hint::black_box(&mut dead);
}

/// Runs `f` in a frame of its own, so that its locals (and pointers they
/// held) die with that frame instead of lingering in the caller's.
#[inline(never)]
fn isolated<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// See `memwarden::check_leaks`.
#[inline(never)]
pub(crate) fn check_leaks<R>(f: impl FnOnce() -> R) -> (R, Report) {
    let scope = Scope::open();
    let value = isolated(f);
    let value = std::hint::black_box(value);
    scrub_dead_stack();
    let report = scan_report(crate::roots::stack_pointer(), &|b| scope.contains(b));
    drop(scope);
    (value, report)
}

/// True if `report` has leaks a scoped check fails on.
pub(crate) fn fails(report: &Report) -> bool {
    report.summary.definitely_lost.blocks > 0 || report.summary.indirectly_lost.blocks > 0
}

/// See `memwarden::checkpoint`.
pub(crate) fn checkpoint_seq() -> u64 {
    if !state::is_enabled() {
        state::enable_quietly();
    }
    registry::mark()
}

/// Everything allocated after `seq`, still live, with its reachability;
/// the calling thread's stack is scanned from `caller_sp` up.
pub(crate) fn report_since(caller_sp: usize, seq: u64) -> Report {
    scan_report(caller_sp, &|b| b.rec.seq > seq)
}

/// Keeps only the leak kinds a report of live data wants: lost ones.
pub(crate) fn lost_only(mut r: Report) -> Report {
    r.leaks.retain(|l| l.kind != LeakKind::StillReachable);
    r
}

/// The `n` stacks holding the most live bytes now, largest first: (bytes,
/// blocks, stack).
pub(crate) fn top_stacks(n: usize) -> Vec<(u64, u64, crate::stack::StackId)> {
    let _busy = Reentry::enter();
    let mut pairs: SysVec<(u32, usize)> = SysVec::new();
    // Under each shard lock only copy, into `System` memory.
    registry::for_each_shard(|shard| {
        for r in shard.records().filter(|r| !r.is_internal()) {
            let _ = pairs.push((r.stack, r.size()));
        }
    });
    let mut by_stack: std::collections::HashMap<u32, (u64, u64)> = std::collections::HashMap::new();
    for &(stack, size) in pairs.as_slice() {
        let e = by_stack.entry(stack).or_default();
        e.0 += size as u64;
        e.1 += 1;
    }
    let mut top: Vec<(u64, u64, u32)> = by_stack
        .into_iter()
        .map(|(stack, (bytes, blocks))| (bytes, blocks, stack))
        .collect();
    top.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    top.truncate(n);
    top
}
