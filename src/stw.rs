//! Stopping the other threads for a leak scan.
//!
//! Memory held only by another running thread (in its registers or on its
//! stack) must count as reachable, and that thread must not move or free
//! it while we look. So, like a conservative garbage collector (Boehm GC
//! uses the same signal on Linux), we send each other thread `SIGPWR`. Its
//! handler records the thread's stack pointer and thread pointer (the
//! kernel has just saved every register in the signal frame above that
//! stack pointer, so scanning from it covers the registers too), then waits
//! on a futex until the scan is done.
//!
//! The handler only uses atomics and system calls, all async-signal-safe.
//! A thread that does not answer within [`STOP_TIMEOUT_MS`] (it blocks the
//! signal) is reported and scanned no further. If the program has its own
//! `SIGPWR` handler, memwarden does not replace it and scans without
//! stopping anyone.
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};

use crate::roots::{gettid, thread_pointer};

const SIGNAL: libc::c_int = libc::SIGPWR;
const MAX_THREADS: usize = 4096;
const STOP_TIMEOUT_MS: u64 = 2000;
/// Longest a stopped thread waits before it resumes on its own.
const MAX_STOP_MS: u64 = 120_000;

struct Slot {
    tid: AtomicI32,
    sp: AtomicUsize,
    tp: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const SLOT_INIT: Slot = Slot {
    tid: AtomicI32::new(0),
    sp: AtomicUsize::new(0),
    tp: AtomicUsize::new(0),
};
static SLOTS: [Slot; MAX_THREADS] = [SLOT_INIT; MAX_THREADS];
static NEXT: AtomicUsize = AtomicUsize::new(0);
static LEFT: AtomicUsize = AtomicUsize::new(0);
/// 0 while threads must stay stopped, 1 once they may go.
static RELEASE: AtomicU32 = AtomicU32::new(1);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A stopped thread, as its handler saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stopped {
    pub(crate) tid: i32,
    pub(crate) sp: usize,
    pub(crate) tp: usize,
}

/// The world, stopped. Dropping it lets the threads go.
#[derive(Debug)]
pub(crate) struct World {
    stopped: usize,
    /// Threads that were signalled but did not stop in time.
    pub(crate) missed: usize,
    /// True when no thread could be stopped at all (the program handles
    /// `SIGPWR` itself).
    pub(crate) unsupported: bool,
}

impl World {
    /// The threads that stopped.
    pub(crate) fn threads(&self) -> impl Iterator<Item = Stopped> + '_ {
        SLOTS[..self.stopped.min(MAX_THREADS)]
            .iter()
            .map(|s| Stopped {
                tid: s.tid.load(Ordering::Acquire),
                sp: s.sp.load(Ordering::Acquire),
                tp: s.tp.load(Ordering::Acquire),
            })
    }
}

extern "C" fn on_signal(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    let marker = 0usize;
    let sp = std::hint::black_box(&marker) as *const usize as usize;
    if RELEASE.load(Ordering::Acquire) == 0 {
        let i = NEXT.fetch_add(1, Ordering::AcqRel);
        if i < MAX_THREADS {
            SLOTS[i].tid.store(gettid(), Ordering::Relaxed);
            SLOTS[i].sp.store(sp, Ordering::Relaxed);
            SLOTS[i].tp.store(thread_pointer(), Ordering::Release);
        }
        let mut waited_ms = 0;
        while RELEASE.load(Ordering::Acquire) == 0 && waited_ms < MAX_STOP_MS {
            futex_wait(&RELEASE, 0, 50);
            waited_ms += 50;
        }
        LEFT.fetch_add(1, Ordering::AcqRel);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn futex_wait(word: &AtomicU32, expected: u32, ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a live AtomicU32 with a valid timeout; the
    // kernel only reads the word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live AtomicU32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

/// Installs the handler once, unless the program has its own.
fn install() -> bool {
    if INSTALLED.load(Ordering::Acquire) {
        return true;
    }
    // SAFETY: sigaction with a null new action only reads the current one
    // into a zeroed, valid struct.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sigaction(SIGNAL, std::ptr::null(), &mut old) } != 0 {
        return false;
    }
    if old.sa_sigaction != libc::SIG_DFL {
        return false;
    }
    // SAFETY: a zeroed sigaction is a valid starting point.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_signal as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `act.sa_mask` is a valid sigset to fill.
    unsafe { libc::sigfillset(&mut act.sa_mask) };
    // SAFETY: installs a handler that only uses async-signal-safe calls.
    // It stays installed: a late signal then finds it and returns at once
    // instead of killing the process with SIGPWR's default action.
    if unsafe { libc::sigaction(SIGNAL, &act, std::ptr::null_mut()) } != 0 {
        return false;
    }
    INSTALLED.store(true, Ordering::Release);
    true
}

/// Stops every thread in `tids` except the caller. Must not be nested.
///
/// The caller must not allocate or take any lock a stopped thread could
/// hold (malloc's, the loader's) until the returned `World` is dropped.
pub(crate) fn stop(tids: &[i32]) -> World {
    if !install() {
        return World {
            stopped: 0,
            missed: 0,
            unsupported: true,
        };
    }
    NEXT.store(0, Ordering::Release);
    LEFT.store(0, Ordering::Release);
    RELEASE.store(0, Ordering::Release);
    let me = gettid();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut sent = 0usize;
    for &tid in tids {
        if tid == me {
            continue;
        }
        // SAFETY: tgkill to a thread of our own process; a thread that has
        // exited meanwhile gives ESRCH, which we skip.
        if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, SIGNAL) } == 0 {
            sent += 1;
        }
    }
    let mut waited = 0;
    while NEXT.load(Ordering::Acquire) < sent && waited < STOP_TIMEOUT_MS {
        // SAFETY: usleep has no preconditions.
        unsafe { libc::usleep(1000) };
        waited += 1;
    }
    let stopped = NEXT.load(Ordering::Acquire).min(sent);
    World {
        stopped,
        missed: sent - stopped,
        unsupported: false,
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.unsupported {
            return;
        }
        RELEASE.store(1, Ordering::Release);
        futex_wake_all(&RELEASE);
        // Wait (briefly) until the stopped threads have left the handler, so
        // that the next scan starts from clean slots.
        let mut waited = 0;
        while LEFT.load(Ordering::Acquire) < self.stopped && waited < STOP_TIMEOUT_MS {
            // SAFETY: usleep has no preconditions.
            unsafe { libc::usleep(1000) };
            waited += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roots::thread_ids;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn stops_and_resumes_a_busy_thread() {
        let go = Arc::new(AtomicBool::new(true));
        let counter = Arc::new(AtomicUsize::new(0));
        let (g, c) = (Arc::clone(&go), Arc::clone(&counter));
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tx.send(gettid()).unwrap();
            while g.load(Ordering::Relaxed) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        let tid = rx.recv().unwrap();
        assert!(thread_ids().contains(&tid));
        let world = stop(&[tid]);
        assert!(!world.unsupported);
        assert_eq!(world.missed, 0);
        let seen: Vec<_> = world.threads().collect();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].tid, tid);
        assert_ne!(seen[0].sp, 0);
        let before = counter.load(Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            counter.load(Ordering::Relaxed),
            before,
            "the thread is stopped"
        );
        drop(world);
        let resumed = counter.load(Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            counter.load(Ordering::Relaxed) > resumed,
            "the thread runs again"
        );
        go.store(false, Ordering::Relaxed);
        t.join().unwrap();
    }
}
