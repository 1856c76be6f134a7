//! Fast stack capture: a cached DWARF CFI walker for x86_64 Linux.
//!
//! [`capture_fast`] returns the same return addresses as
//! `backtrace::trace_unsynchronized` (libgcc's `_Unwind_Backtrace`) after the
//! same `entry_sp` skipping, or `None`, and then the caller falls back to
//! the slow path for the whole stack. It runs the same CFI as libgcc, with
//! the same lookups, for the frames whose rule fits a few simple shapes,
//! and gives up on anything else rather than guess.
//!
//! # How it walks
//!
//! Inline assembly reads rip, rsp and rbp in this function. For each frame
//! the rule for its code address is looked up in [`rules`], a lock-free
//! two-way cache of one `AtomicU64` per slot; on a miss, [`modules`]
//! finds the loaded module holding the address and [`cfi`] runs its
//! `.eh_frame` program with gimli, exactly as libgcc would, and caches the
//! resulting rule. A rule gives the canonical frame address (CFA) as rsp or
//! rbp plus an offset; the return address is read at `CFA - 8` and the
//! caller's rbp, if this frame saved it, below the CFA; the caller's rsp is
//! the CFA. A frame's reported stack pointer is this CFA, as
//! `_Unwind_GetCFA` reports it for the caller's frame.
//!
//! Like libgcc, the rule of a return address `ra` is the one for `ra - 1`
//! (the call instruction), and only the first frame (this function, at the
//! address read by the assembly) uses its exact address.
//!
//! # When it gives up
//!
//! `None` comes back when this thread's stack bounds are unknown or the
//! current stack pointer is outside them (an alternate signal stack, a
//! coroutine), when `entry_sp` is not above this function's frame inside
//! this thread's stack, for an address in no loaded module (JIT code), for
//! a CFI rule not in the cached shapes (expressions, a CFA based on another
//! register, a saved rsp, the return address elsewhere than `CFA - 8`, a
//! signal frame), when a CFA does not increase or leaves the stack, when a
//! saved rbp is outside the frame, when a library was unloaded during the
//! capture, and after 1024 frames. Reading memory is therefore confined to
//! this thread's stack between the current stack pointer and its top.
//!
//! Measured on the test suite and the examples with every capture also
//! taken by the slow path and compared: no difference, and no `None` but
//! for a bogus `entry_sp`. About 5 ns per frame once the cache is warm
//! (libgcc: about 120 ns); a miss costs 1 to 3 µs, once per return
//! address for the life of the process (`benches/unwind.rs`).
//!
//! # Never allocates, never blocks
//!
//! The cache is a static array, stack bounds are a `const` thread-local
//! read once per thread from `pthread_getattr_np` (glibc reads
//! `/proc/self/maps` with `malloc` for the main thread: libc's allocator,
//! not the global one), module tables live in `mmap` memory, and gimli's
//! unwind context has fixed-size storage on the miss path's stack. The
//! only locks ever taken are the dynamic loader's, inside `dl_iterate_phdr`
//! on a cache miss, and memwarden's own around it (`sync::loader`, which
//! `fork` waits for), with no other memwarden lock held; memwarden's is
//! only tried, never waited for (a miss while it is held takes the slow
//! path).
//!
//! Other architectures get `None` every time.

#[cfg(target_arch = "x86_64")]
mod cfi;
#[cfg(target_arch = "x86_64")]
mod modules;
#[cfg(target_arch = "x86_64")]
mod rules;

/// Captures up to `max` return addresses of the calling thread's stack,
/// innermost first, skipping every frame whose stack pointer (the CFA of
/// its callee, as `_Unwind_GetCFA` reports it) is below `entry_sp`, as
/// `stack::capture` does; returns how many were written to `out`.
///
/// `None` means "use the slow path": this function never returns a stack
/// it is not sure of. Never allocates, never panics, never takes a lock
/// of memwarden's.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
pub(crate) fn capture_fast(out: &mut [usize], max: usize, entry_sp: usize) -> Option<usize> {
    let (pc, rsp, rbp) = registers();
    walk(out, max, entry_sp, (pc, rsp, rbp), None)
}

/// The walk of [`capture_fast`] from registers `(pc, rsp, rbp)` read in the
/// function this is inlined into (its frame is the first one). With
/// `steps`, every frame's reads are recorded there for the trace cache
/// (see [`here_fast`]); the recording is cleared if it does not fit.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn walk(
    out: &mut [usize],
    max: usize,
    entry_sp: usize,
    (pc, mut rsp, mut rbp): (usize, usize, usize),
    mut steps: Option<&mut Steps>,
) -> Option<usize> {
    use rules::Rule;

    let max = max.min(out.len());
    if max == 0 {
        return Some(0);
    }
    let (lo, hi) = stack_bounds()?;
    if rsp < lo || rsp >= entry_sp || entry_sp >= hi {
        return None;
    }
    let epoch = rules::epoch()?;
    // Rules are cached by return address, and describe the instruction
    // before it (see `miss`); the first frame is the instruction at `pc`.
    let mut key = pc + 1;
    let mut n = 0;
    let mut walked = 0;
    // Where rbp's current value was read (None: it is the starting
    // value), and whether the trace recorded that read. A value matters to
    // the walk only once a frame's CFA is computed from it; until then it
    // may be anything (a caller's loop counter), and is not recorded.
    let mut rbp_from: Option<usize> = None;
    let mut rbp_recorded = false;
    loop {
        walked += 1;
        if walked > MAX_WALK {
            return None;
        }
        let rule = match rules::get(key) {
            Some(rule) => rule,
            None => miss(key)?,
        };
        let Some(cfa) = rule.cfa(rsp, rbp) else {
            if rule == Rule::END {
                break;
            }
            return None;
        };
        // The CFA only grows, stays in this thread's stack, and leaves room
        // for the return address above the current stack pointer.
        if cfa % 8 != 0 || cfa < rsp.saturating_add(8) || cfa > hi {
            return None;
        }
        // SAFETY: `rsp <= cfa - 8` and `cfa <= hi`, so the word at `cfa - 8`
        // lies in this thread's stack between the current stack pointer
        // and its top: mapped, and part of a live caller frame.
        let ra = unsafe { ((cfa - 8) as *const usize).read() };
        if rule.uses_rbp() && !rbp_recorded {
            rbp_recorded = true;
            if let Some(s) = steps.as_deref_mut() {
                match rbp_from {
                    None => s.entry_rbp_used = true,
                    Some(at) => s.push(at, rbp),
                }
            }
        }
        let below = rule.rbp_below_cfa();
        if below != 0 {
            let at = cfa.wrapping_sub(below);
            if at < rsp || at > cfa - 8 {
                return None;
            }
            // SAFETY: `rsp <= at <= cfa - 8 < hi`, inside this thread's
            // stack as above; `at` is 8-aligned since `cfa` and `below` are.
            rbp = unsafe { (at as *const usize).read() };
            rbp_from = Some(at);
            rbp_recorded = false;
        }
        if let Some(s) = steps.as_deref_mut() {
            s.push(cfa - 8, ra);
        }
        rsp = cfa;
        if ra == 0 {
            break; // libgcc hands out a zero ip at the end: the slow path stops there
        }
        if cfa >= entry_sp {
            out[n] = ra;
            n += 1;
            if n == max {
                break;
            }
        }
        key = ra;
    }
    if let Some(s) = steps {
        s.epoch = epoch;
    }
    // A flush while we walked may have cleared a rule of an unloaded
    // library that we had already used.
    (rules::epoch() == Some(epoch)).then_some(n)
}

/// A word one walk read from the stack (kept as `word ^ HIDE`), and its
/// address.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Read {
    at: usize,
    word: usize,
}

/// What the trace cache XORs every stack word it keeps with. The cache is
/// thread-local, and the leak scan reads thread-local storage as a root: a
/// saved rbp is often a heap pointer, and kept as it was it would make a
/// leaked block look reachable. With the top 16 bits set, no kept word is
/// a user-space address.
#[cfg(target_arch = "x86_64")]
const HIDE: usize = 0xa5c3_0000_0000_0000;

/// Stack words a cached trace holds at most (a return address per frame,
/// and the saved rbp of frames that saved it); longer walks are not
/// cached.
#[cfg(target_arch = "x86_64")]
const TRACE_READS: usize = 56;

/// The stack words one walk read, in order.
#[cfg(target_arch = "x86_64")]
struct Steps {
    len: usize,
    /// More than [`TRACE_READS`] words were read: not cacheable.
    overflow: bool,
    /// A frame's CFA came from rbp as it was at the start: the walk
    /// depends on that register. (Otherwise rbp is only an ordinary
    /// register of some caller, a loop counter say, and a cached walk
    /// holds whatever it is.)
    entry_rbp_used: bool,
    epoch: u64,
    read: [Read; TRACE_READS],
}

#[cfg(target_arch = "x86_64")]
impl Steps {
    const fn new() -> Self {
        Steps {
            len: 0,
            overflow: false,
            entry_rbp_used: false,
            epoch: 0,
            read: [Read { at: 0, word: 0 }; TRACE_READS],
        }
    }

    #[inline(always)]
    fn push(&mut self, at: usize, word: usize) {
        if self.len < TRACE_READS {
            self.read[self.len] = Read {
                at,
                word: word ^ HIDE,
            };
            self.len += 1;
        } else {
            self.overflow = true;
        }
    }

    /// True if every recorded word still holds its value.
    ///
    /// # Safety
    /// Only on the thread that recorded the walk, with the stack pointer
    /// it started from: every address is then in a live frame of this
    /// thread's stack (above the stack pointer, below its top).
    #[inline(always)]
    unsafe fn unchanged(&self) -> bool {
        // No early exit: a branch-free sum of differences runs at several
        // words a cycle, and a mismatch is rare.
        let mut diff = 0;
        for r in &self.read[..self.len.min(TRACE_READS)] {
            // SAFETY: per the contract.
            diff |= unsafe { (r.at as *const usize).read() } ^ HIDE ^ r.word;
        }
        diff == 0
    }
}

/// One cached walk and the stack id it gave: valid for a later walk that
/// starts with the same registers, the same `entry_sp` and `max`, in the
/// same rule epoch, and finds every recorded word unchanged.
#[cfg(target_arch = "x86_64")]
struct Trace {
    /// 0: empty.
    id: u32,
    rsp: usize,
    /// The starting rbp, `^ HIDE` (see [`HIDE`]).
    rbp: usize,
    entry_sp: usize,
    max: usize,
    steps: Steps,
}

/// Cached traces per thread.
#[cfg(target_arch = "x86_64")]
const TRACE_WAYS: usize = 4;

#[cfg(target_arch = "x86_64")]
struct TraceCache {
    /// Set while a capture uses the cache: a capture that interrupts it
    /// (a signal handler that allocates) walks without it.
    busy: bool,
    /// The way to replace next.
    next: usize,
    way: [Trace; TRACE_WAYS],
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// This thread's cached traces (see [`here_fast`]).
    static TRACES: std::cell::UnsafeCell<TraceCache> = const {
        std::cell::UnsafeCell::new(TraceCache {
            busy: false,
            next: 0,
            way: [const {
                Trace { id: 0, rsp: 0, rbp: 0, entry_sp: 0, max: 0, steps: Steps::new() }
            }; TRACE_WAYS],
        })
    };
}

/// Captures the calling thread's stack as [`capture_fast`] does, at most
/// `max` frames, and returns its id from `intern`, going through a
/// per-thread cache of recent walks.
///
/// A walk is a function of the registers it starts from and of the stack
/// words it reads (each frame's return address, and the caller's rbp where
/// the frame saved it and a later frame's CFA is computed from it): with
/// the same rules (the same epoch), the same starting registers and the
/// same words, every step computes the same frame again. So a cached walk whose starting registers match is
/// replayed by reading its recorded words only, comparing each with what
/// it was, and its stack id is reused when all match: no rule lookups and
/// no hashing of the stack. rbp is compared only if some frame's CFA
/// came from its starting value: in code without frame pointers it is an
/// ordinary register (a caller's loop counter, say) that the walk never
/// reads. A loop allocating at one place from one caller hits every time. Any difference, and the walk runs in full and
/// replaces the oldest cached one.
///
/// The words read lie between the current stack pointer (equal to the
/// cached walk's) and the top of this thread's stack, as the full walk's
/// do. `None`: the fast walk gave up; use the slow path.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
pub(crate) fn here_fast(
    max: usize,
    entry_sp: usize,
    intern: impl FnOnce(&[usize]) -> u32,
) -> Option<u32> {
    let regs = registers();
    let (_, rsp, rbp) = regs;
    let Ok(cache) = TRACES.try_with(|c| c.get()) else {
        return walk_and_intern(max, entry_sp, regs, None, intern);
    };
    // SAFETY: the cache is this thread's; `busy` keeps a nested capture
    // (from a signal handler interrupting this one) from using it at the
    // same time, and nothing else on this thread touches it.
    let cache = unsafe { &mut *cache };
    if cache.busy {
        return walk_and_intern(max, entry_sp, regs, None, intern);
    }
    cache.busy = true;
    let epoch = rules::epoch();
    let hit = cache.way.iter().find(|t| {
        t.id != 0
            && t.rsp == rsp
            && (t.rbp == rbp ^ HIDE || !t.steps.entry_rbp_used)
            && t.entry_sp == entry_sp
            && t.max == max
            && epoch == Some(t.steps.epoch)
            // SAFETY: this thread's walk, from this stack pointer.
            && unsafe { t.steps.unchanged() }
    });
    if let Some(t) = hit {
        let id = t.id;
        cache.busy = false;
        return Some(id);
    }
    // Replace the ways in turn: a few stacks used alternately (an
    // allocation and its free, a loop allocating at two places) stay.
    let victim = cache.next % TRACE_WAYS;
    cache.next = cache.next.wrapping_add(1);
    let t = &mut cache.way[victim];
    t.steps.len = 0;
    t.steps.overflow = false;
    t.steps.entry_rbp_used = false;
    t.id = 0;
    let id = walk_and_intern(max, entry_sp, regs, Some(&mut t.steps), intern);
    if let (Some(id), false) = (id, t.steps.overflow) {
        t.id = id;
        t.rsp = rsp;
        t.rbp = rbp ^ HIDE;
        t.entry_sp = entry_sp;
        t.max = max;
    }
    cache.busy = false;
    id
}

/// The full walk of [`here_fast`] (a cache miss), inlined into it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn walk_and_intern(
    max: usize,
    entry_sp: usize,
    regs: (usize, usize, usize),
    steps: Option<&mut Steps>,
    intern: impl FnOnce(&[usize]) -> u32,
) -> Option<u32> {
    let mut out = [0usize; crate::stack::MAX_CAPTURE];
    let n = walk(&mut out, max, entry_sp, regs, steps)?;
    Some(intern(&out[..n]))
}

/// The calling thread's stack: unknown off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn stack_bounds() -> Option<(usize, usize)> {
    None
}

/// Stack that the cold paths of a capture need below the stack pointer:
/// the CFI parser (gimli, whose unoptimised code in a debug build took
/// more than 32 KiB for one lookup) and libgcc's unwinder.
const COLD_ROOM: usize = if cfg!(debug_assertions) {
    48 << 10
} else {
    16 << 10
};

/// True unless the calling thread is known to have less than
/// [`COLD_ROOM`] bytes of stack left: a thread with a small stack (glibc's
/// `SIGEV_THREAD` timer thread has 16 KiB) overflowed it in the CFI
/// parser. Such a thread's allocations that need the cold paths are
/// recorded without a stack.
pub(crate) fn room_for_cold_path() -> bool {
    room_for(COLD_ROOM)
}

/// True unless the calling thread is known to have less than `bytes` of
/// stack left below the stack pointer. (A stack pointer outside the
/// thread's stack, on a coroutine's or a signal's stack, is not known.)
#[inline]
pub(crate) fn room_for(bytes: usize) -> bool {
    let sp = crate::roots::stack_pointer();
    match exact_stack() {
        Some((lo, hi)) if sp >= lo && sp < hi => sp - lo >= bytes,
        _ => true,
    }
}

/// The calling thread's stack, `lo..hi`, if its lowest address is known for
/// sure: the main thread's stack as far as its limit lets it grow, or a
/// thread's stack above its guard page. For a stack found in a mapping
/// that may hold more than the stack (one the program allocated itself),
/// `None`: nothing below the stack pointer is known to be this stack's.
/// (The thread may be running on another stack now: a signal's, a
/// coroutine's.)
#[cfg(target_arch = "x86_64")]
pub(crate) fn exact_stack() -> Option<(usize, usize)> {
    known_stack().filter(|&(lo, _)| lo & 1 == 0)
}

/// Unknown off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn exact_stack() -> Option<(usize, usize)> {
    None
}

/// [`capture_fast`] elsewhere: always the slow path.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn capture_fast(_out: &mut [usize], _max: usize, _entry_sp: usize) -> Option<usize> {
    None
}

/// [`here_fast`] elsewhere: always the slow path.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn here_fast(
    _max: usize,
    _entry_sp: usize,
    _intern: impl FnOnce(&[usize]) -> u32,
) -> Option<u32> {
    None
}

/// Frames walked at most, memwarden's own included.
#[cfg(target_arch = "x86_64")]
const MAX_WALK: usize = 1024;

/// The rule for return address `ra` on a cache miss, cached unless the
/// address is in no module; `None` makes the capture give up.
///
/// Like libgcc, the rule is the one for `ra - 1`, inside the call
/// instruction: the call may be the last instruction of its function.
#[cfg(target_arch = "x86_64")]
#[cold]
#[inline(never)]
fn miss(ra: usize) -> Option<rules::Rule> {
    if !room_for_cold_path() {
        return None;
    }
    let addr = ra.checked_sub(1)?;
    let rule = match modules::find(addr) {
        modules::Found::In(module) => cfi::rule_for(&module, addr),
        modules::Found::Nowhere | modules::Found::Unloaded => return None,
    };
    rules::put(ra, rule);
    Some(rule)
}

/// The address of the instruction right after the assembly, and rsp and
/// rbp as they are there.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn registers() -> (usize, usize, usize) {
    let (pc, sp, bp): (usize, usize, usize);
    // SAFETY: reads three registers into outputs; touches no memory, no
    // stack and no flags. `lea` gives the address of the next instruction,
    // and the CFI row there describes the state right after the `mov`s:
    // nothing in between moves rsp.
    unsafe {
        std::arch::asm!(
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            "lea {pc}, [rip]",
            pc = out(reg) pc,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    (pc, sp, bp)
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// This thread's stack as `lo..hi`: (0, 0) until first asked, (1, 1)
    /// when it could not be found out. `lo`'s lowest bit set: `lo` is only
    /// a bound on where the walk may start, not the stack's true end (see
    /// [`exact_stack`]).
    static STACK: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// The calling thread's stack, `lo..hi`, if known.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn stack_bounds() -> Option<(usize, usize)> {
    let (lo, hi) = known_stack()?;
    Some((lo & !1, hi))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn known_stack() -> Option<(usize, usize)> {
    let known = STACK.try_with(std::cell::Cell::get).ok()?;
    let bounds = if known.1 != 0 {
        known
    } else {
        let found = query_stack_bounds().unwrap_or((1, 1));
        let _ = STACK.try_with(|s| s.set(found));
        found
    };
    (bounds.1 > 1).then_some(bounds)
}

/// Finds the calling thread's stack: from the thread library
/// (`pthread_getattr_np`), or, once `track_c_heap!`'s functions are in use,
/// from `/proc/self/maps` (see [`query_from_maps`]).
#[cfg(target_arch = "x86_64")]
#[cold]
#[inline(never)]
fn query_stack_bounds() -> Option<(usize, usize)> {
    #[cfg(target_env = "gnu")]
    if crate::c_heap::in_use() {
        return query_from_maps();
    }
    query_from_thread_library()
}

/// The calling thread's stack as the thread library knows it.
#[cfg(target_arch = "x86_64")]
fn query_from_thread_library() -> Option<(usize, usize)> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::zeroed();
    // SAFETY: `attr` is writable storage for an attribute object, filled
    // in by the call (zeroed first, as std does on Linux).
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) } != 0 {
        return None;
    }
    let mut addr = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: `attr` was initialised by pthread_getattr_np and is destroyed
    // exactly once, after the read.
    let ok = unsafe {
        let ok = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        ok
    };
    let lo = addr as usize;
    let hi = lo.checked_add(size)?;
    // Rounded up to even: the lowest bit is a mark (see `STACK`).
    (ok && lo != 0 && size != 0).then_some((lo.next_multiple_of(2), hi))
}

/// The calling thread's stack from `/proc/self/maps`, read with plain
/// system calls into a buffer on the stack: the mapping that holds a
/// pointer glibc keeps into the thread's own stack (the main thread's
/// `__libc_stack_end`; another thread's descriptor, which glibc puts at
/// the top of its stack), so that a thread running on another stack at
/// the time (a signal's alternate stack, a coroutine's) still gets its
/// own. For the main thread's stack, which grows down on demand, the low
/// end is as far as the stack limit (`RLIMIT_STACK`) and the mapping
/// below let it grow, as glibc's `pthread_getattr_np` says: the walk
/// reads only above its frames.
///
/// Used instead of `pthread_getattr_np` once `track_c_heap!`'s functions
/// are in use: glibc holds the thread's lock while that function
/// allocates (`fopen` of the same file for the main thread, a `realloc`
/// for every thread), so an allocation's stack capture came back to it
/// and waited on that lock for ever. (Otherwise the thread library is
/// asked: one read of the maps costs 25 µs, a third of a short thread's
/// life.)
#[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
fn query_from_maps() -> Option<(usize, usize)> {
    // SAFETY: getpid and gettid have no preconditions.
    let main_thread = unsafe { libc::getpid() == libc::gettid() };
    let anchor = if main_thread {
        unsafe extern "C" {
            /// Near the top of the main thread's stack (glibc's loader).
            static __libc_stack_end: *const std::ffi::c_void;
        }
        // SAFETY: set by the loader before any code of ours ran.
        unsafe { __libc_stack_end as usize }
    } else {
        // SAFETY: no preconditions; glibc's thread descriptor lies at the
        // top of the thread's stack block.
        unsafe { libc::pthread_self() as usize }
    };
    let m = crate::sys::mapping_of(anchor)?;
    // The main thread's anchor outside `[stack]` (under an emulator, say):
    // the stack pointer's own mapping, taken as it is.
    let m = if main_thread && !m.main_stack {
        crate::sys::mapping_of(crate::roots::stack_pointer())?
    } else {
        m
    };
    if !m.main_stack {
        // A thread's stack: exact above glibc's guard page; otherwise the
        // mapping may be more than the stack (marked, see `STACK`).
        return Some((m.lo | usize::from(!m.guard_below), m.hi));
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is writable storage for the answer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) } == 0;
    let gap = m.hi.saturating_sub(m.prev_end);
    let reach = match limit.rlim_cur {
        n if ok && n != libc::RLIM_INFINITY => usize::try_from(n).unwrap_or(usize::MAX).min(gap),
        _ => gap,
    };
    // Rounded up to even: the lowest bit is a mark (see `STACK`).
    let lo = m.lo.min(m.hi.saturating_sub(reach)).next_multiple_of(2);
    Some((lo, m.hi))
}

/// Hooks for `benches/unwind.rs`; not part of the API.
#[doc(hidden)]
pub mod __bench {
    /// Runs the fast capture (see `src/unwind.rs`): up to `max` return
    /// addresses of frames whose stack pointer is at or above `entry_sp`,
    /// or `None` where the slow path is needed.
    #[inline(never)]
    pub fn capture_fast(out: &mut [usize], max: usize, entry_sp: usize) -> Option<usize> {
        super::capture_fast(out, max, entry_sp)
    }

    /// Runs the slow path (libgcc's unwinder), as `stack::capture` falls
    /// back to it, with the same skipping rule.
    #[inline(never)]
    pub fn capture_slow(out: &mut [usize], max: usize, entry_sp: usize) -> usize {
        crate::stack::capture_slow(out, max, entry_sp)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
