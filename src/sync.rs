//! The lock used by the registry and the stack table, and the lock around
//! memwarden's calls into the dynamic loader ([`loader`]).
//!
//! Why not `std::sync::Mutex`, `parking_lot` or `dashmap`'s locks: a lock
//! on the allocation path must never allocate through the global allocator
//! (that would re-enter `Warden` while the lock is held). `parking_lot`
//! allocates its parking table on contention, `dashmap` allocates its maps
//! through the global allocator, and `std`'s mutex is only allocation-free
//! on some platforms. dhat-rs hit exactly this (its issues #18 and #25) and
//! moved to a spin lock; so do we.
//!
//! [`SpinLock`] spins briefly and then yields the CPU with `sched_yield`, a
//! plain system call. Critical sections under it are short (a hash-table
//! probe, sometimes a table growth through `malloc`) and never call into
//! the global allocator, so a holder always makes progress.
use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

/// A test-and-test-and-set lock with yield back-off.
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one thread at a time.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value, which is Send.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        SpinGuard { lock: self }
    }

    /// Takes the lock without a guard (for `fork` handlers, which lock in
    /// one callback and unlock in another).
    pub(crate) fn raw_lock(&self) {
        std::mem::forget(self.lock());
    }

    /// The value, read while this thread holds the lock through
    /// [`SpinLock::raw_lock`] (in the `fork` window).
    ///
    /// # Safety
    /// The calling thread must hold the lock, taken with `raw_lock`, and
    /// nobody may change the value meanwhile.
    pub(crate) unsafe fn raw_get(&self) -> &T {
        // SAFETY: the lock is held by this thread (the contract): no one
        // else touches the value.
        unsafe { &*self.value.get() }
    }

    /// Releases a lock taken with [`SpinLock::raw_lock`].
    ///
    /// # Safety
    /// The caller must have taken the lock with `raw_lock` and must not use
    /// the value through any guard after this call without locking again.
    pub(crate) unsafe fn raw_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    #[cold]
    fn lock_contended(&self) {
        let mut spins = 0u32;
        loop {
            while self.locked.load(Ordering::Relaxed) {
                if spins < 64 {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    std::thread::yield_now();
                }
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

/// Access to the value of a locked [`SpinLock`]; unlocks on drop.
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: holding the guard means holding the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: holding the guard means holding the lock, exclusively.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// memwarden's own lock around each of its calls that take the dynamic
/// loader's lock (`dl_iterate_phdr`: the unwinder's module table, the
/// scan's list of loaded objects, and `backtrace`'s one listing of them
/// for symbolizing, `report::symbols::list_libraries_once`).
///
/// glibc does not reset its loader lock in a child made by `fork`: a
/// child forked while another thread of the parent was inside
/// `dl_iterate_phdr` hangs at its own first call (the unwinder meeting new
/// code at an allocation, say). The `fork` handlers take this lock before
/// `fork` (see `exit::before_fork`), so that no memwarden call is inside
/// the loader when the process is copied, and release it in both processes.
///
/// Not around the slow path's `_Unwind_Backtrace` (libgcc: the stack
/// capture when the fast unwinder gives up, and the only one on
/// architectures other than x86_64), where every allocation would wait
/// on one lock. libgcc from GCC 12 on finds unwind tables through glibc's
/// `_dl_find_object` (glibc 2.35 on), which takes no lock.
///
/// A `pthread_mutex_t`, not a [`SpinLock`]: a scan holds it while it lists
/// the loaded objects (allocating), and waiters should sleep, not spin.
/// Locking and unlocking it never allocate.
pub(crate) mod loader {
    use std::cell::UnsafeCell;

    struct Lock(UnsafeCell<libc::pthread_mutex_t>);
    // SAFETY: a pthread mutex is made to be shared between threads; it is
    // only used through the pthread functions.
    unsafe impl Sync for Lock {}

    static LOCK: Lock = Lock(UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));

    fn lock() {
        // SAFETY: a statically initialised default mutex, never destroyed.
        // (A default mutex does not detect a thread locking it twice: it
        // hangs. The `forking` checks below are what rule that out for the
        // fork window.)
        unsafe { libc::pthread_mutex_lock(LOCK.0.get()) };
    }

    fn try_lock() -> bool {
        // SAFETY: as in `lock`; trylock never waits.
        unsafe { libc::pthread_mutex_trylock(LOCK.0.get()) == 0 }
    }

    fn unlock() {
        // SAFETY: as above; called only by the thread that locked it (or by
        // the child's copy of that thread, after `fork`).
        unsafe { libc::pthread_mutex_unlock(LOCK.0.get()) };
    }

    /// Unlocks when dropped (when `f` returns or unwinds).
    struct Unlock;
    impl Drop for Unlock {
        fn drop(&mut self) {
            unlock();
        }
    }

    /// Runs `f`, which may call into the loader, under the lock. The thread
    /// that holds it for a `fork` (in the fork window, where other fork
    /// handlers may call memwarden) runs `f` as it is.
    pub(crate) fn with<R>(f: impl FnOnce() -> R) -> R {
        if crate::guard::forking() {
            return f();
        }
        lock();
        let _unlock = Unlock;
        f()
    }

    /// As [`with`], but `None` at once, without running `f`, when another
    /// thread holds the lock: for the allocation path (the unwinder meeting
    /// new code), which must never wait on it: `backtrace`'s listing of
    /// the loaded objects takes `backtrace`'s own global lock under it, and
    /// a program thread inside `backtrace::trace` (which holds that lock)
    /// may allocate. The caller falls back to libgcc's unwinder for that
    /// one stack.
    pub(crate) fn try_with<R>(f: impl FnOnce() -> R) -> Option<R> {
        if crate::guard::forking() {
            return Some(f());
        }
        if !try_lock() {
            return None;
        }
        let _unlock = Unlock;
        Some(f())
    }

    /// Takes the lock for a `fork` (`exit::before_fork`).
    pub(crate) fn hold_for_fork() {
        lock();
    }

    /// Releases the lock after a `fork`, in the parent and in the child.
    ///
    /// # Safety
    /// This thread (or, in the child, the thread it copies) took the lock
    /// with [`hold_for_fork`].
    pub(crate) unsafe fn release_after_fork() {
        unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_exactly_under_contention() {
        let lock = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 80_000);
    }
}
