//! Global lifecycle of tracking.
//!
//! ```text
//!            first allocation / enable()
//!  UNINIT ───────────────────────────────┬──────────────▶ OFF
//!    │      (DEBUG_MEMORY unset or 0)    │                 │ enable()
//!    │                                   ▼                 ▼
//!    └────────── DEBUG_MEMORY=1 ───────▶ ON ◀──────────── enable()
//!                                        │  ▲
//!                              disable() ▼  │ enable()
//!                                       PAUSED
//! ```
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
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, Ordering};

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

/// The current mode, reading the environment first if nobody has yet.
#[inline]
pub(crate) fn mode() -> u8 {
    let m = MODE.load(Ordering::Relaxed);
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
    let m = if cfg.enabled {
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

/// Turns tracking on (see `memwarden::enable`).
pub(crate) fn enable() {
    mode();
    hook_exit();
    MODE.store(ON, Ordering::Release);
}

/// Stops recording new allocations (see `memwarden::disable`).
pub(crate) fn disable() {
    if mode() == ON {
        MODE.store(PAUSED, Ordering::Release);
    }
}

/// True when allocations are being recorded.
pub(crate) fn is_enabled() -> bool {
    mode() == ON
}

/// True once tracking has been on at some point in this process.
pub(crate) fn ever_enabled() -> bool {
    matches!(mode(), ON | PAUSED)
}
