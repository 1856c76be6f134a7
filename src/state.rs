//! Global lifecycle of tracking.
//!
//! ```text
//!            first allocation / enable()
//!  UNINIT ───────────────────────────────┬──────────────▶ OFF
//!    │      (DEBUG_MEMORY unset or 0)    │                 │ enable()
//!    │                                   ▼                 ▼
//!    └── DEBUG_MEMORY=1 or =leaks ─────▶ ON ◀──────────── enable(),
//!                                        │  ▲          enable_leaks_only()
//!                              disable() ▼  │ enable()
//!                                       PAUSED
//! ```
//!
//! The settings that shape tracked blocks (red zones, poison, quarantine)
//! are read with the mode at the first allocation, and change after it
//! only in `enable_leaks_only()`'s step from `OFF` to `ON`: see
//! [`SWITCHING`].
//!
//! * `OFF`: tracking has never been on. `alloc` and `dealloc` forward to the
//!   inner allocator after one relaxed load of [`MODE`]: this is the whole
//!   cost of memwarden when `DEBUG_MEMORY` is unset.
//! * `ON`: every allocation is recorded.
//! * `PAUSED`: new allocations are not recorded, but blocks recorded earlier
//!   may still be freed, so `dealloc` still looks them up.
//!
//! Once tracking has been on, the mode never returns to `OFF`, and the exit
//! report is registered (once).
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicUsize, Ordering};

use crate::env;

pub(crate) const UNINIT: u8 = 0;
pub(crate) const OFF: u8 = 1;
pub(crate) const ON: u8 = 2;
pub(crate) const PAUSED: u8 = 3;

/// The mode; see the module docs.
pub(crate) static MODE: AtomicU8 = AtomicU8::new(UNINIT);

static INITIALIZING: AtomicBool = AtomicBool::new(false);
static FRAMES: AtomicU32 = AtomicU32::new(env::DEFAULT_FRAMES);
static EXITCODE: AtomicI32 = AtomicI32::new(env::DEFAULT_EXITCODE);
static EXIT_HOOKED: AtomicBool = AtomicBool::new(false);
static ABORT_ON_ERROR: AtomicBool = AtomicBool::new(true);
static QUARANTINE: AtomicUsize = AtomicUsize::new(env::DEFAULT_QUARANTINE);
static REDZONES: AtomicBool = AtomicBool::new(true);
static POISON: AtomicBool = AtomicBool::new(true);
/// Leak tracking only: started with `DEBUG_MEMORY=leaks`, or switched on
/// by [`enable_leaks_only`] before tracking was ever on.
static LEAKS_ONLY: AtomicBool = AtomicBool::new(false);
/// True once an allocation may have been served untracked by the program
/// (tracking switched on late, or paused): an unknown pointer is then not
/// necessarily an invalid free.
static UNTRACKED_SEEN: AtomicBool = AtomicBool::new(false);

/// The current mode, reading the environment first if nobody has yet.
/// (An acquire load: a thread that sees `ON` also sees the settings stored
/// before it, [`enable_leaks_only`]'s included. Free on x86_64.)
#[inline]
pub(crate) fn mode() -> u8 {
    let m = MODE.load(Ordering::Acquire);
    if m != UNINIT { m } else { init() }
}

/// Reads the environment once and leaves the mode `OFF` or `ON`.
#[cold]
#[inline(never)]
fn init() -> u8 {
    if INITIALIZING.swap(true, Ordering::Acquire) {
        // Another thread is reading the environment: wait for it. It takes
        // no lock and does not allocate, so this ends quickly.
        loop {
            let m = MODE.load(Ordering::Acquire);
            if m != UNINIT {
                return m;
            }
            std::hint::spin_loop();
        }
    }
    let cfg = env::read();
    FRAMES.store(cfg.frames, Ordering::Relaxed);
    EXITCODE.store(cfg.exitcode, Ordering::Relaxed);
    ABORT_ON_ERROR.store(cfg.on_error == env::OnError::Abort, Ordering::Relaxed);
    QUARANTINE.store(cfg.quarantine, Ordering::Relaxed);
    set_redzones(cfg.redzones);
    POISON.store(cfg.poison, Ordering::Relaxed);
    LEAKS_ONLY.store(cfg.tracking == env::Tracking::Leaks, Ordering::Relaxed);
    let m = if cfg.enabled() {
        hook_exit();
        ON
    } else {
        OFF
    };
    // Only this thread leaves UNINIT; `enable()` waits for it through `mode()`.
    MODE.store(m, Ordering::Release);
    m
}

/// Stack frames to keep per allocation (`DEBUG_MEMORY_FRAMES`).
#[inline]
pub(crate) fn frames() -> usize {
    FRAMES.load(Ordering::Relaxed) as usize
}

/// Exit status for definite leaks (`DEBUG_MEMORY_EXITCODE`).
pub(crate) fn exitcode() -> i32 {
    EXITCODE.load(Ordering::Relaxed)
}

fn hook_exit() {
    if !EXIT_HOOKED.swap(true, Ordering::AcqRel) {
        crate::exit::register();
    }
}

/// Sets whether tracked blocks get red zones (before any is tracked).
/// Without them, a freed block of C's can no longer be told from one of
/// glibc's by the bytes before it: its free leaves a mark instead
/// (`c_heap::arm_marks`).
fn set_redzones(on: bool) {
    REDZONES.store(on, Ordering::Relaxed);
    #[cfg(target_env = "gnu")]
    if !on {
        crate::c_heap::arm_marks();
    }
}

/// Held while the program switches tracking on or off (every switch but
/// the first allocation's, in [`init`], which [`mode`] waits for), so
/// that [`enable_leaks_only`] changes the settings of blocks only while no
/// other switch can turn tracking on under it. A spin lock: switches are
/// rare and short. The holder may call `getenv`, write a warning, and, at
/// the first switch on, register the exit report (`atexit`,
/// `pthread_atfork`, which take glibc's locks and may allocate); no
/// allocation path takes this lock.
static SWITCHING: AtomicBool = AtomicBool::new(false);

/// Registers, once, before [`SWITCHING`] is first taken, the fork handler
/// that releases it in a child: the parent's thread that held it is not
/// in the child, which would otherwise wait for it for ever at its first
/// switch.
fn release_switching_in_children() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    extern "C" fn in_child() {
        SWITCHING.store(false, Ordering::Release);
    }
    REGISTERED.call_once(|| {
        // SAFETY: a child handler that only stores to an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

/// Runs `f` holding [`SWITCHING`].
fn switching<R>(f: impl FnOnce() -> R) -> R {
    release_switching_in_children();
    while SWITCHING.swap(true, Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let r = f();
    SWITCHING.store(false, Ordering::Release);
    r
}

/// Turns tracking on (see `memwarden::enable`).
pub(crate) fn enable() {
    switching(enable_now);
}

fn enable_now() {
    if mode() != ON {
        // The program has been allocating untracked until now.
        UNTRACKED_SEEN.store(true, Ordering::Relaxed);
    }
    hook_exit();
    MODE.store(ON, Ordering::Release);
}

/// Turns leak tracking only on (`--debug-memory=leaks`): as [`enable`],
/// with the settings of `DEBUG_MEMORY=leaks` (red zones, poison and
/// quarantine off unless their own variables ask for them) if tracking has
/// never been on in this process. Otherwise tracked blocks have their
/// layout already, which must not change, and this is [`enable`].
pub(crate) fn enable_leaks_only() {
    switching(|| {
        if mode() == OFF {
            // No tracked block exists, and none can be made before `MODE`
            // turns `ON` (no other switch runs meanwhile), whose release
            // store publishes these to every thread that sees it (`mode`
            // loads it with acquire): the layout may change.
            let (redzones, poison, quarantine) = env::leaks_only_checks();
            QUARANTINE.store(quarantine, Ordering::Relaxed);
            set_redzones(redzones);
            POISON.store(poison, Ordering::Relaxed);
            LEAKS_ONLY.store(true, Ordering::Relaxed);
        }
        enable_now();
    });
}

/// Turns tracking on without arming the exit report: for scoped checks
/// (`assert_no_leaks`, checkpoints) in a process started without
/// `DEBUG_MEMORY`, whose exit status must stay the program's.
pub(crate) fn enable_quietly() {
    switching(|| {
        if mode() != ON {
            UNTRACKED_SEEN.store(true, Ordering::Relaxed);
            MODE.store(ON, Ordering::Release);
        }
    });
}

/// Stops recording new allocations (see `memwarden::disable`).
pub(crate) fn disable() {
    switching(|| {
        if mode() == ON {
            UNTRACKED_SEEN.store(true, Ordering::Relaxed);
            MODE.store(PAUSED, Ordering::Release);
        }
    });
}

/// Abort on a heap error (`DEBUG_MEMORY_ON_ERROR=abort`, the default)?
pub(crate) fn abort_on_error() -> bool {
    ABORT_ON_ERROR.load(Ordering::Relaxed)
}

/// Quarantine bytes (`DEBUG_MEMORY_QUARANTINE`).
#[inline]
pub(crate) fn quarantine() -> usize {
    QUARANTINE.load(Ordering::Relaxed)
}

/// Red zones around tracked blocks (`DEBUG_MEMORY_REDZONES`)? Fixed once
/// tracking has started: every tracked block has the same layout.
#[inline]
pub(crate) fn redzones() -> bool {
    REDZONES.load(Ordering::Relaxed)
}

/// Poison freed blocks (`DEBUG_MEMORY_POISON`)?
#[inline]
pub(crate) fn poison() -> bool {
    POISON.load(Ordering::Relaxed)
}

/// True under leak tracking only (`DEBUG_MEMORY=leaks`, or
/// [`enable_leaks_only`] before tracking was ever on): the checks for heap
/// errors off unless asked for one by one.
pub(crate) fn leaks_only() -> bool {
    LEAKS_ONLY.load(Ordering::Relaxed)
}

/// Notes that a block of the program went untracked (tables out of memory).
pub(crate) fn note_untracked() {
    UNTRACKED_SEEN.store(true, Ordering::Relaxed);
}

/// True if every block the program allocated so far was tracked, so an
/// unknown pointer handed to `dealloc` is an invalid free.
#[inline]
pub(crate) fn all_tracked() -> bool {
    // The caller found the mode on (relaxed): read it again with acquire,
    // so that the flag set before the switch that turned it on is seen (on
    // a weakly ordered CPU a free racing a late `enable()` could see the
    // flag stale, and call an untracked block an invalid free).
    let _ = MODE.load(Ordering::Acquire);
    !UNTRACKED_SEEN.load(Ordering::Relaxed)
}

/// True when allocations are being recorded.
pub(crate) fn is_enabled() -> bool {
    mode() == ON
}

/// True once tracking has been on at some point in this process.
pub(crate) fn ever_enabled() -> bool {
    matches!(mode(), ON | PAUSED)
}
