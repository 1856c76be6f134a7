//! The lock used by the registry and the stack table.
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
