//! Heap-misuse detection: red zones, poison, and the error reports.
//!
//! With red zones on, a tracked block sits inside a bigger inner block:
//!
//! ```text
//!  inner ptr                user ptr (aligned as asked)
//!  │                        │
//!  ▼                        ▼
//!  [ front red zone: F bytes ][ user: size bytes ][ back red zone: 16 bytes ]
//!    F = max(16, align)
//! ```
//!
//! Both red zones are filled with [`REDZONE`] and checked when the block is
//! freed or reallocated, by `memwarden::check_heap()`, and at exit. A freed
//! block is filled with [`FREED`] and kept in quarantine (see `registry`);
//! a changed byte found when it leaves quarantine, at `check_heap()` or at
//! exit is a use after free.
//!
//! Errors are reported when found: symbolized stacks on stderr, then the
//! process aborts (`DEBUG_MEMORY_ON_ERROR=abort`, the default) or the error
//! is kept for the exit report (`continue`). Reporting allocates, so it
//! runs with no registry lock held and under the re-entrancy guard.
use std::alloc::Layout;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::registry::{self, Freed, Record};
use crate::report::{Frame, HeapErrorKind, HeapErrorReport, symbols};
use crate::stack::{self, StackId};
use crate::state;

/// Fill byte of red zones.
pub(crate) const REDZONE: u8 = 0xfa;
/// Fill byte of freed (quarantined) memory.
pub(crate) const FREED: u8 = 0xdd;
/// Back red zone size, and the least front red zone.
pub(crate) const BACK: usize = 16;
/// Most bytes of a freed block poisoned: its first 64 KiB (the quarantine
/// takes blocks of up to 512 KiB by default), so that no pointer it held
/// there survives into the memory the inner allocator hands out next,
/// where the leak scan would find it and take a leaked block for
/// reachable.
pub(crate) const POISON_LIMIT: usize = 1 << 16;
/// Most bytes of a freed block checked when it leaves the quarantine: its
/// first 4 KiB. (All 64 KiB at first:
/// checking large freed buffers then took most of the time of programs
/// that grow and drop big `Vec`s, for the rare write past their first
/// pages.)
pub(crate) const CHECK_LIMIT: usize = 4096;

/// Front red zone size for a block of alignment `align` (0 without red zones).
#[inline]
pub(crate) fn front(align: usize) -> usize {
    if state::redzones() {
        align.max(BACK)
    } else {
        0
    }
}

/// Bytes after a tracked block, without red zones, that the inner
/// allocator is asked for on top. glibc lends a chunk's last 8 bytes to
/// the chunk after it (its header's first word), and its own records point
/// at that header: `main_arena`'s top chunk and bins, in the C library's
/// data, which the scan reads as a root. Without this gap such a pointer
/// lands 1 to 8 bytes before the end of a block whose size is 1 to 8 more
/// than a multiple of 16, as a pointer into it, and a lost block next to
/// the top chunk looked possibly lost, not definitely (and did not fail
/// the exit status). With glibc, blocks of those sizes above 16 (17-24,
/// 33-40, ...) then take a chunk 16 bytes bigger; the others, none. With red zones,
/// the back one keeps that header outside the block.
const TAIL: usize = 8;

/// The inner allocator's layout for a tracked block of `size`/`align`.
#[inline]
pub(crate) fn inner_layout(size: usize, align: usize) -> Option<Layout> {
    if !state::redzones() {
        return Layout::from_size_align(size.checked_add(TAIL)?, align).ok();
    }
    let total = front(align).checked_add(size)?.checked_add(BACK)?;
    Layout::from_size_align(total, align.max(BACK)).ok()
}

/// Fills both red zones of the block at `user`.
///
/// # Safety
/// `user` must be a tracked block of `size` bytes with alignment `align`,
/// allocated with [`inner_layout`] (red zones on).
#[inline]
pub(crate) unsafe fn paint(user: *mut u8, size: usize, align: usize) {
    let f = front(align);
    // SAFETY: per the contract, [user - f, user + size + BACK) is the inner
    // block. The front zone starts at the inner block, aligned to at least
    // 16; the back one may be unaligned (unaligned writes). `f` is a
    // multiple of 16.
    unsafe {
        let front = user.sub(f);
        if f == BACK {
            front.cast::<u128>().write_unaligned(ZONE_WORD);
        } else {
            front.write_bytes(REDZONE, f);
        }
        user.add(size).cast::<u128>().write_unaligned(ZONE_WORD);
    }
}

/// Sixteen red-zone bytes.
const ZONE_WORD: u128 = u128::from_ne_bytes([REDZONE; 16]);
const _: () = assert!(BACK == 16);

/// Where a red zone was found written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Overrun {
    /// True if bytes after the block were written, false if before it.
    pub(crate) after: bool,
    /// How far from the block's edge the farthest written byte is (1 = the
    /// first byte past the edge).
    pub(crate) distance: usize,
    /// How far from the block's edge the nearest written byte is.
    pub(crate) nearest: usize,
    /// How many bytes of that red zone were found changed.
    pub(crate) changed: usize,
}

/// False if the 16 bytes right before `user` show that it is no tracked
/// block: red zones are on, those bytes lie on `user`'s page, and they do
/// not hold the red-zone pattern that every tracked block (freed or not)
/// has there. True otherwise, including when they lie on the page before,
/// which is not read (it may not be mapped).
///
/// # Safety
/// `user` must be readable for one byte: then its page is mapped.
pub(crate) unsafe fn may_follow_a_red_zone(user: *const u8) -> bool {
    // The smallest page size: larger ones are multiples of it, so 16 bytes
    // that do not cross a 4 KiB boundary stay on `user`'s page.
    const PAGE: usize = 4096;
    state::redzones()
        && (user as usize % PAGE < 16
            // SAFETY: the 16 bytes lie on `user`'s page, which is mapped.
            || unsafe { user.sub(16).cast::<u128>().read_unaligned() } == ZONE_WORD)
}

/// Checks both red zones of a tracked block.
///
/// # Safety
/// As for [`paint`], and the block must not be freed meanwhile.
#[inline(always)]
pub(crate) unsafe fn check_redzones(user: *const u8, size: usize, align: usize) -> Option<Overrun> {
    if !state::redzones() {
        return None;
    }
    let f = front(align);
    // The usual case first, sixteen bytes at a time: nothing written.
    // SAFETY: the back red zone is BACK (16) bytes right after the block,
    // the front one `f` bytes (a multiple of 16) right before it.
    let clean = unsafe {
        user.add(size).cast::<u128>().read_unaligned() == ZONE_WORD && {
            let front = user.sub(f);
            let mut at = 0;
            while at < f && front.add(at).cast::<u128>().read_unaligned() == ZONE_WORD {
                at += 16;
            }
            at == f
        }
    };
    if clean {
        return None;
    }
    // SAFETY: as above.
    unsafe { find_overrun(user, size, f) }
}

/// Where the red zones of a block ([`check_redzones`]) were written.
///
/// # Safety
/// As for [`check_redzones`], with `f` the front red zone's size.
#[cold]
#[inline(never)]
unsafe fn find_overrun(user: *const u8, size: usize, f: usize) -> Option<Overrun> {
    // SAFETY: the back red zone is BACK bytes right after the block.
    let back = unsafe { std::slice::from_raw_parts(user.add(size), BACK) };
    if let Some(i) = back.iter().rposition(|&b| b != REDZONE) {
        let first = back.iter().position(|&b| b != REDZONE).unwrap_or(i);
        return Some(Overrun {
            after: true,
            distance: i + 1,
            nearest: first + 1,
            changed: back.iter().filter(|&&b| b != REDZONE).count(),
        });
    }
    // SAFETY: the front red zone is `f` bytes right before the block.
    let before = unsafe { std::slice::from_raw_parts(user.sub(f), f) };
    let i = before.iter().position(|&b| b != REDZONE)?;
    let last = before.iter().rposition(|&b| b != REDZONE).unwrap_or(i);
    Some(Overrun {
        after: false,
        distance: f - i,
        nearest: f - last,
        changed: before.iter().filter(|&&b| b != REDZONE).count(),
    })
}

/// Writes `byte` to `len` bytes at `at`: for the small blocks of a hot
/// allocation path, with a few unaligned 16-byte stores (overlapping at
/// the end) instead of a call to `memset`; larger ones go to `memset`.
///
/// # Safety
/// `at` must be valid for writes of `len` bytes.
#[inline(always)]
pub(crate) unsafe fn fill(at: *mut u8, byte: u8, len: usize) {
    let word = u128::from_ne_bytes([byte; 16]);
    // SAFETY: every store below lies in `at[..len]`: for 16 <= len <= 64,
    // the stores at 0, 16 and 32 (each only when it ends by `len`) and the
    // last one at `len - 16`, which together cover it.
    unsafe {
        // Straight-line stores: LLVM turns a store loop into a `memset`
        // call, which is what this avoids.
        let store = |i: usize| at.add(i).cast::<u128>().write_unaligned(word);
        if (16..=64).contains(&len) {
            store(0);
            if len > 32 {
                store(16);
            }
            if len > 48 {
                store(32);
            }
            store(len - 16);
        } else {
            at.write_bytes(byte, len);
        }
    }
}

/// Fills a freed block with [`FREED`].
///
/// # Safety
/// `user` must point to `size` bytes the caller owns.
#[inline]
pub(crate) unsafe fn poison(user: *mut u8, size: usize) {
    // SAFETY: per the contract.
    unsafe { fill(user, FREED, size.min(POISON_LIMIT)) };
}

/// Offset of the first byte of a poisoned block that changed, within its
/// first [`CHECK_LIMIT`] bytes.
///
/// # Safety
/// As for [`poison`], on a block poisoned by it.
pub(crate) unsafe fn check_poison(user: *const u8, size: usize) -> Option<usize> {
    // SAFETY: per the contract.
    let bytes = unsafe { std::slice::from_raw_parts(user, size.min(CHECK_LIMIT)) };
    // A cache line at a time, with one branch: the differences of its
    // eight words are OR-ed (which compiles to vector compares); only a
    // line that differs is looked at byte by byte. (Eight bytes and a
    // branch at a time took an eighth of a two-thread churn's time.)
    const WORD: u64 = u64::from_ne_bytes([FREED; 8]);
    let first_changed =
        |chunk: &[u8], at: usize| chunk.iter().position(|&b| b != FREED).map(|j| at + j);
    let mut lines = bytes.chunks_exact(64);
    for (i, line) in (&mut lines).enumerate() {
        let diff = line.chunks_exact(8).fold(0u64, |d, w| {
            d | (u64::from_ne_bytes(w.try_into().unwrap_or([FREED; 8])) ^ WORD)
        });
        if diff != 0 {
            return first_changed(line, i * 64);
        }
    }
    // The rest a word at a time, then byte by byte (at most seven).
    let rest = lines.remainder();
    let base = bytes.len() - rest.len();
    let mut words = rest.chunks_exact(8);
    for (i, w) in (&mut words).enumerate() {
        if u64::from_ne_bytes(w.try_into().unwrap_or([FREED; 8])) != WORD {
            return first_changed(w, base + i * 8);
        }
    }
    let tail = words.remainder();
    first_changed(tail, bytes.len() - tail.len())
}

// === error reports ===

/// The heap errors found so far: those kept for the reports, and the
/// contexts printed.
struct ErrorLog {
    kept: Vec<HeapErrorReport>,
    /// Each context printed in full, and how often it was found.
    contexts: Vec<(Context, u64)>,
    /// True once an error went unprinted for [`MAX_PRINTED_CONTEXTS`].
    capped: bool,
}

/// Where an error was found and what it concerns, as Valgrind tells one
/// error from another: its kind and its stacks (where found, where the
/// block was allocated, where it was freed), not its address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Context {
    kind: HeapErrorKind,
    here: StackId,
    alloc: StackId,
    free: StackId,
}

static ERRORS: Mutex<ErrorLog> = Mutex::new(ErrorLog {
    kept: Vec::new(),
    contexts: Vec::new(),
    capped: false,
});
/// How many heap errors are kept for the reports (each is counted all the
/// same): a program that goes on past a bug in a loop
/// (`DEBUG_MEMORY_ON_ERROR=continue`) would otherwise keep every one,
/// without bound.
/// (Ten in unit tests, which reach the limit without printing a thousand
/// reports.)
const MAX_KEPT_ERRORS: usize = if cfg!(test) { 10 } else { 1000 };
/// How many different errors (contexts) are printed in full. An error
/// found again in a context already printed is counted, not printed (one
/// line says so, the first time): a loop that frees twice 20,000 times
/// prints one report, not 20,000. Valgrind's limit is the same.
const MAX_PRINTED_CONTEXTS: usize = if cfg!(test) { 10 } else { 1000 };
static ERROR_COUNT: AtomicUsize = AtomicUsize::new(0);

/// A heap error found on the allocation path, before it is reported.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    pub(crate) kind: HeapErrorKind,
    pub(crate) addr: usize,
    /// Stack where it was found (0: unknown).
    pub(crate) here: StackId,
    /// The block, if known.
    pub(crate) block: Option<Record>,
    pub(crate) free_stack: StackId,
    /// Layout the program passed, for layout mismatches.
    pub(crate) passed: Option<(usize, usize)>,
    pub(crate) overrun: Option<Overrun>,
    /// Offset of the first changed byte, for use after free.
    pub(crate) offset: Option<usize>,
}

impl Found {
    pub(crate) fn new(kind: HeapErrorKind, addr: usize, here: StackId) -> Self {
        Found {
            kind,
            addr,
            here,
            block: None,
            free_stack: 0,
            passed: None,
            overrun: None,
            offset: None,
        }
    }

    pub(crate) fn freed(mut self, f: &Freed) -> Self {
        self.block = Some(f.rec);
        self.free_stack = f.free_stack;
        self
    }
}

/// Heap errors reported so far.
pub(crate) fn error_count() -> usize {
    ERROR_COUNT.load(Ordering::Relaxed)
}

/// The heap errors kept so far (under `continue`).
pub(crate) fn errors() -> Vec<HeapErrorReport> {
    ERRORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .kept
        .clone()
}

/// How many different heap errors (contexts, as Valgrind counts them)
/// were found so far, and whether there were more than that (past the
/// number printed in full).
pub(crate) fn error_contexts() -> (usize, bool) {
    let log = ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    (log.contexts.len(), log.capped)
}

/// What to do with one error found, by what was found before it.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A context not seen before: print it in full.
    New,
    /// Found before, once: say so in a line.
    Again,
    /// Found before more often, or a new one past the printed contexts'
    /// limit that is not the first: count it only.
    Counted,
    /// The first new one past the limit: say that no more are printed.
    OverLimit,
}

impl ErrorLog {
    /// Notes an error of `ctx`; returns how to show it and whether to
    /// keep it.
    fn note(&mut self, ctx: Context) -> (Seen, bool) {
        let keep = self.kept.len() < MAX_KEPT_ERRORS;
        if let Some((_, n)) = self.contexts.iter_mut().find(|(c, _)| *c == ctx) {
            *n += 1;
            return (if *n == 2 { Seen::Again } else { Seen::Counted }, keep);
        }
        if self.contexts.len() < MAX_PRINTED_CONTEXTS {
            self.contexts.push((ctx, 1));
            (Seen::New, keep)
        } else if !self.capped {
            self.capped = true;
            (Seen::OverLimit, keep)
        } else {
            (Seen::Counted, keep)
        }
    }
}

/// Checks the red zones of every live block and the poison of every
/// quarantined one now, reports what it finds, and returns how many
/// errors that was. Damage found is repaired so it is reported once.
pub(crate) fn check_all(here: StackId, may_abort: bool) -> usize {
    let mut bad: crate::sys::SysVec<Found> = crate::sys::SysVec::new();
    // Under each shard lock: reads and repairs only; `bad` grows through
    // `System`, never through the global allocator.
    registry::for_each_shard(|shard| {
        for r in shard.records().filter(|r| !r.is_internal()) {
            // SAFETY: a live tracked block cannot be freed while we hold
            // its shard's lock.
            if let Some(o) = unsafe { check_redzones(r.addr as *const u8, r.size(), r.align()) } {
                let mut f = Found::new(HeapErrorKind::Overrun, r.addr, here);
                f.block = Some(*r);
                f.overrun = Some(o);
                let _ = bad.push(f);
                // SAFETY: as above; repainting only touches red zones.
                unsafe { paint(r.addr as *mut u8, r.size(), r.align()) };
            }
        }
        if state::poison() {
            for q in shard.freed() {
                // SAFETY: a quarantined block stays allocated while in
                // the quarantine, which we hold locked.
                if let Some(off) = unsafe { check_poison(q.rec.addr as *const u8, q.rec.size()) } {
                    let mut f = Found::new(HeapErrorKind::UseAfterFree, q.rec.addr, here).freed(&q);
                    f.offset = Some(off);
                    let _ = bad.push(f);
                    // SAFETY: as above.
                    unsafe { poison(q.rec.addr as *mut u8, q.rec.size()) };
                }
            }
        }
    });
    for f in bad.as_slice() {
        report_with(*f, may_abort);
    }
    bad.as_slice().len()
}

fn frames_of(id: StackId) -> Vec<Frame> {
    if id == 0 || id == crate::registry::INTERNAL {
        return Vec::new();
    }
    let mut cache = std::collections::HashMap::new();
    symbols::user_frames(
        symbols::symbolize(&stack::frames(id), &mut cache),
        state::frames(),
    )
}

/// Reports `found`: prints it, keeps it, and aborts under the `abort`
/// policy. Must run under the re-entrancy guard with no registry lock held.
pub(crate) fn report(found: Found) {
    report_with(found, true);
}

/// As [`report`]; `may_abort` false keeps going whatever the policy (the
/// exit-time check, which still has a report to write).
pub(crate) fn report_with(found: Found, may_abort: bool) {
    // The `backtrace` crate's lock first, then REPORTING: symbolizing takes
    // it under REPORTING, and a thread that already holds it (inside
    // `backtrace::trace`) may find a heap error at a free and come here.
    symbols::under_backtrace_lock(|| report_locked(found, may_abort));
}

fn report_locked(found: Found, may_abort: bool) {
    // One report at a time, from the first look at the error log to the
    // abort: otherwise a second thread finding the same error could print
    // "the same as one printed above" (or abort) before the first one's
    // report was written.
    static REPORTING: Mutex<()> = Mutex::new(());
    let _one = REPORTING.lock().unwrap_or_else(|e| e.into_inner());
    let ctx = Context {
        kind: found.kind,
        here: found.here,
        alloc: found.block.map_or(0, |b| b.stack),
        free: found.free_stack,
    };
    ERROR_COUNT.fetch_add(1, Ordering::Relaxed);
    let (seen, keep) = ERRORS.lock().unwrap_or_else(|e| e.into_inner()).note(ctx);
    const P: &str = "memwarden: ";
    match seen {
        Seen::Again => crate::sys::write_stderr(
            format!(
                "{P}ERROR: {} at {:#x}, from the same stacks as one printed above: counted, and so are later ones from there, not printed\n",
                kind_name(found.kind),
                found.addr
            )
            .as_bytes(),
        ),
        Seen::OverLimit => crate::sys::write_stderr(
            format!(
                "{P}ERROR: more than {MAX_PRINTED_CONTEXTS} different heap errors: no more are printed (all are counted)\n"
            )
            .as_bytes(),
        ),
        Seen::New | Seen::Counted => {}
    }
    if seen == Seen::New || keep {
        // Symbolized only to be printed or kept.
        let err = HeapErrorReport {
            kind: found.kind,
            address: format!("{:#x}", found.addr),
            frames: frames_of(found.here),
            alloc_frames: found.block.map(|b| frames_of(b.stack)).unwrap_or_default(),
            free_frames: frames_of(found.free_stack),
        };
        if seen == Seen::New {
            crate::sys::write_stderr(render(&found, &err).as_bytes());
        }
        if keep {
            // (`note` said there was room, and under `REPORTING` nothing
            // else adds to the log meanwhile.)
            ERRORS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .kept
                .push(err);
        }
    }
    if may_abort && state::abort_on_error() {
        crate::sys::write_stderr(
            b"memwarden: aborting (DEBUG_MEMORY_ON_ERROR=abort; set it to continue to go on)\n",
        );
        crate::exit::write_json_on_abort();
        std::process::abort();
    }
}

/// The words for a kind of heap error, as its report's first line has them.
fn kind_name(kind: HeapErrorKind) -> &'static str {
    match kind {
        HeapErrorKind::DoubleFree => "double free",
        HeapErrorKind::InvalidFree => "invalid free",
        HeapErrorKind::LayoutMismatch => "layout mismatch",
        HeapErrorKind::Overrun => "heap block overrun",
        HeapErrorKind::UseAfterFree => "use after free",
    }
}

fn render(found: &Found, err: &HeapErrorReport) -> String {
    const P: &str = "memwarden: ";
    let mut s = String::new();
    let what = kind_name(found.kind);
    let _ = write!(s, "{P}ERROR: {what} at {}", err.address);
    if let Some(b) = found.block {
        let _ = write!(
            s,
            " (block of {} bytes, align {})",
            b.size(),
            shown_align(&b)
        );
    }
    s.push('\n');
    match found.kind {
        HeapErrorKind::InvalidFree => {
            let _ = writeln!(
                s,
                "{P}   this address was never handed out by the allocator (or was freed long ago)"
            );
        }
        HeapErrorKind::LayoutMismatch => {
            if let (Some((size, align)), Some(b)) = (found.passed, found.block) {
                let _ = writeln!(
                    s,
                    "{P}   freed with size {size}, align {align}; allocated with size {}, align {}",
                    b.size(),
                    shown_align(&b)
                );
            }
        }
        HeapErrorKind::Overrun => {
            if let Some(o) = found.overrun {
                let size = found.block.map_or(0, |b| b.size());
                let _ = writeln!(s, "{P}   {}", overrun_words(&o, size));
            }
        }
        HeapErrorKind::UseAfterFree => {
            if let Some(off) = found.offset {
                let _ = writeln!(
                    s,
                    "{P}   byte {off} of the block was written after it was freed"
                );
            }
        }
        _ => {}
    }
    let stack = |s: &mut String, title: &str, frames: &[Frame]| {
        if frames.is_empty() {
            return;
        }
        let _ = writeln!(s, "{P}  {title}");
        for (i, f) in frames.iter().enumerate() {
            if i > 0
                && f.function
                    .as_deref()
                    .is_some_and(|n| n.contains("__rust_begin_short_backtrace"))
            {
                break;
            }
            let _ = writeln!(s, "{P}    {} {f}", if i == 0 { "at" } else { "by" });
        }
    };
    stack(&mut s, "found here:", &err.frames);
    stack(&mut s, "the block was allocated here:", &err.alloc_frames);
    stack(&mut s, "and freed here:", &err.free_frames);
    s
}

/// The alignment a block really has: a block of C's `malloc` family is
/// recorded with the alignment it was asked for (1 for `malloc`), but is
/// aligned to at least `malloc`'s own.
fn shown_align(b: &Record) -> usize {
    if b.is_c() {
        b.align().max(crate::sys::MALLOC_ALIGN)
    } else {
        b.align()
    }
}

/// What an overrun changed, as offsets from the start of a block of
/// `size` bytes: `1 byte past the end of the block was written, at offset
/// 33`.
fn overrun_words(o: &Overrun, size: usize) -> String {
    // Offsets from the block's start of the nearest and farthest changed
    // bytes, in increasing order.
    let (low, high) = if o.after {
        (
            (size + o.nearest - 1) as isize,
            (size + o.distance - 1) as isize,
        )
    } else {
        (-(o.distance as isize), -(o.nearest as isize))
    };
    let side = if o.after {
        "past the end"
    } else {
        "before the start"
    };
    let (count, verb) = match o.changed {
        1 => ("1 byte".to_owned(), "was"),
        n => (format!("{n} bytes"), "were"),
    };
    let place = if low == high {
        format!("at offset {low}")
    } else if o.changed == 2 {
        format!("at offsets {low} and {high}")
    } else if (high - low + 1) as usize == o.changed {
        format!("at offsets {low} to {high}")
    } else {
        format!("between offsets {low} and {high}")
    };
    format!("{count} {side} of the block {verb} written, {place}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_errors_past_the_kept_ones_are_counted_not_kept() {
        let before = error_count();
        for i in 0..MAX_KEPT_ERRORS + 5 {
            report_with(
                Found::new(HeapErrorKind::InvalidFree, 0x1000 + i * 16, 0),
                false,
            );
        }
        assert_eq!(error_count() - before, MAX_KEPT_ERRORS + 5);
        assert_eq!(errors().len(), MAX_KEPT_ERRORS);
    }

    #[test]
    fn an_error_context_is_printed_once_and_new_ones_up_to_the_limit() {
        let mut log = ErrorLog {
            kept: Vec::new(),
            contexts: Vec::new(),
            capped: false,
        };
        let ctx = |here| Context {
            kind: HeapErrorKind::DoubleFree,
            here,
            alloc: 7,
            free: 9,
        };
        assert_eq!(log.note(ctx(1)), (Seen::New, true));
        assert_eq!(log.note(ctx(1)), (Seen::Again, true));
        assert_eq!(log.note(ctx(1)), (Seen::Counted, true));
        // Another kind from the same stacks is another error.
        let other = Context {
            kind: HeapErrorKind::InvalidFree,
            ..ctx(1)
        };
        assert_eq!(log.note(other).0, Seen::New);
        for here in 2..MAX_PRINTED_CONTEXTS as StackId {
            assert_eq!(log.note(ctx(here)).0, Seen::New);
        }
        assert_eq!(log.note(ctx(1000)).0, Seen::OverLimit);
        assert_eq!(log.note(ctx(1001)).0, Seen::Counted);
        // A context printed before is still told apart.
        assert_eq!(log.note(ctx(2)).0, Seen::Again);
        assert_eq!(log.contexts.len(), MAX_PRINTED_CONTEXTS);
        assert_eq!(log.contexts[0].1, 3);
    }

    /// What decides whether a pointer with no record is searched for in the
    /// quarantine: the red-zone pattern before it, read only on its page.
    #[test]
    fn a_red_zone_is_looked_for_only_on_the_blocks_page() {
        let layout = std::alloc::Layout::from_size_align(3 * 4096, 4096).unwrap();
        // SAFETY: a valid non-zero layout (the test's allocator is System).
        let page = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!page.is_null());
        // SAFETY: every pointer below lies inside the three pages.
        unsafe {
            let mid = page.add(4096 + 64);
            assert!(!may_follow_a_red_zone(mid), "zeros before it");
            mid.sub(16).write_bytes(REDZONE, 16);
            assert!(may_follow_a_red_zone(mid), "the pattern before it");
            mid.sub(1).write(0);
            assert!(!may_follow_a_red_zone(mid), "one byte of it changed");
            // At a page's start the bytes before are on another page: not
            // read, and taken as a maybe.
            let start = page.add(4096);
            assert!(may_follow_a_red_zone(start));
            assert!(!may_follow_a_red_zone(start.add(16)));
            std::alloc::dealloc(page, layout);
        }
    }

    #[test]
    fn fill_writes_exactly_its_bytes() {
        for len in 0..=80 {
            for offset in 0..3 {
                let mut buf = [0u8; 100];
                // SAFETY: offset + len <= 83 < 100.
                unsafe { fill(buf.as_mut_ptr().add(offset + 8), 0xab, len) };
                for (i, &b) in buf.iter().enumerate() {
                    let inside = (offset + 8..offset + 8 + len).contains(&i);
                    assert_eq!(b == 0xab, inside, "len {len} offset {offset} byte {i}");
                }
            }
        }
    }

    #[test]
    fn inner_layout_keeps_alignment_and_room_for_red_zones() {
        for align in [1, 8, 16, 64, 4096, 1 << 16] {
            let l = inner_layout(100, align).unwrap();
            assert_eq!(l.align() % align, 0);
            assert!(l.size() >= front(align) + 100 + BACK);
            assert_eq!(front(align) % align, 0, "user pointer stays aligned");
        }
        assert!(inner_layout(usize::MAX - 8, 8).is_none());
    }

    #[test]
    fn red_zones_find_overruns_on_both_sides() {
        let layout = inner_layout(24, 8).unwrap();
        let mut buf = vec![0u8; layout.size()];
        let user = buf.as_mut_ptr().wrapping_add(front(8));
        // SAFETY: `buf` has the inner layout's size; the block is its middle.
        unsafe {
            paint(user, 24, 8);
            assert_eq!(check_redzones(user, 24, 8), None);
            *user.add(24 + 2) = 1;
            let o = check_redzones(user, 24, 8);
            assert_eq!(
                o,
                Some(Overrun {
                    after: true,
                    distance: 3,
                    nearest: 3,
                    changed: 1,
                })
            );
            assert_eq!(
                overrun_words(&o.unwrap(), 24),
                "1 byte past the end of the block was written, at offset 26"
            );
            *user.add(24) = 1;
            let o = check_redzones(user, 24, 8).unwrap();
            assert_eq!((o.distance, o.nearest, o.changed), (3, 1, 2));
            assert_eq!(
                overrun_words(&o, 24),
                "2 bytes past the end of the block were written, at offsets 24 and 26"
            );
            *user.add(24 + 1) = 1;
            let o = check_redzones(user, 24, 8).unwrap();
            assert_eq!(
                overrun_words(&o, 24),
                "3 bytes past the end of the block were written, at offsets 24 to 26"
            );
            *user.add(24 + 9) = 1;
            let o = check_redzones(user, 24, 8).unwrap();
            assert_eq!(
                overrun_words(&o, 24),
                "4 bytes past the end of the block were written, between offsets 24 and 33"
            );
            paint(user, 24, 8);
            *user.sub(1) = 0;
            let o = check_redzones(user, 24, 8);
            assert_eq!(
                o,
                Some(Overrun {
                    after: false,
                    distance: 1,
                    nearest: 1,
                    changed: 1,
                })
            );
            assert_eq!(
                overrun_words(&o.unwrap(), 24),
                "1 byte before the start of the block was written, at offset -1"
            );
            *user.sub(16) = 0;
            let o = check_redzones(user, 24, 8).unwrap();
            assert_eq!(
                overrun_words(&o, 24),
                "2 bytes before the start of the block were written, at offsets -16 and -1"
            );
        }
    }

    #[test]
    fn poison_finds_the_first_changed_byte() {
        let mut buf = vec![0u8; 64];
        // SAFETY: `buf` is 64 bytes we own.
        unsafe {
            poison(buf.as_mut_ptr(), 64);
            assert_eq!(check_poison(buf.as_ptr(), 64), None);
        }
        buf[40] = 7;
        // SAFETY: as above.
        assert_eq!(unsafe { check_poison(buf.as_ptr(), 64) }, Some(40));
        // Every offset, over whole lines and a tail.
        let mut long = [FREED; 200];
        // SAFETY: `long` is 200 bytes we own.
        assert_eq!(unsafe { check_poison(long.as_ptr(), 200) }, None);
        for at in (0..200).rev() {
            long[at] = 0;
            // SAFETY: as above.
            assert_eq!(unsafe { check_poison(long.as_ptr(), 200) }, Some(at));
        }
        // A tail shorter than a word, and a change in it.
        let mut odd = [FREED; 13];
        // SAFETY: `odd` is 13 bytes we own.
        assert_eq!(unsafe { check_poison(odd.as_ptr(), 13) }, None);
        odd[11] = 0;
        // SAFETY: as above.
        assert_eq!(unsafe { check_poison(odd.as_ptr(), 13) }, Some(11));
    }
}
