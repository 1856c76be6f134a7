//! The allocation behind [`TrackedRc`](super::TrackedRc) and
//! [`TrackedArc`](super::TrackedArc), and its two flavours of counts:
//! `Cell`s for `TrackedRc` (no atomics, as `Rc`), atomics with `Arc`'s
//! orderings for `TrackedArc`. Everything else about the two pointers is
//! the same, and is written once (here and in `tracked_pointer!`).
use std::cell::Cell;
use std::panic::Location;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering, fence};

use super::{OutstandingKind, registry};
use crate::pool::next_id;

/// Counts above this abort, as in `std` (a count that could overflow).
const MAX_REFCOUNT: usize = isize::MAX as usize;

/// An object's strong and weak counts, each step as `Rc` or `Arc` takes
/// it (the same checks, the same orderings). The weak count includes one
/// for all the strong references together.
pub(super) trait Counts: Sized {
    /// What the registry calls such an object.
    const KIND: OutstandingKind;
    /// One strong reference and the strong references' weak one.
    fn one() -> Self;
    /// Strong references (a snapshot).
    fn strong(&self) -> usize;
    /// Weak references, seen from a strong reference.
    fn weak(&self) -> usize;
    /// Weak references, seen from a weak one: 0 once the value is gone.
    fn weak_if_alive(&self) -> usize;
    /// One more strong reference, made from a strong one (`clone`).
    fn inc_strong(&self);
    /// One more strong reference if the value is still alive (`upgrade`).
    fn inc_strong_if_alive(&self) -> bool;
    /// One strong reference fewer: the one taken at `site`, which the
    /// registry is told of if the object is tracked (`id` not 0). True if
    /// it was the last: the value is the caller's to drop or move out, and
    /// the registry no longer lists it.
    fn dec_strong(&self, id: u64, site: &'static Location<'static>) -> bool;
    /// The last strong reference's step from 1 to 0, if it is the only
    /// one (`try_unwrap`); true if taken. The registry is not told.
    fn take_unique(&self) -> bool;
    /// True if there is one strong reference and no weak one (`get_mut`).
    fn is_unique(&self) -> bool;
    /// One more weak reference, made from a strong one (`downgrade`).
    fn downgrade(&self);
    /// One more weak reference, made from a weak one (`clone`).
    fn inc_weak(&self);
    /// One weak count fewer; true if it was the last: the memory goes.
    fn dec_weak(&self) -> bool;
}

/// `TrackedRc`'s counts: `Rc`'s.
#[repr(C)]
pub(super) struct RcCounts {
    strong: Cell<usize>,
    /// Weak references, plus one for all the strong ones together.
    weak: Cell<usize>,
}

impl Counts for RcCounts {
    const KIND: OutstandingKind = OutstandingKind::Rc;

    #[inline(always)]
    fn one() -> Self {
        RcCounts {
            strong: Cell::new(1),
            weak: Cell::new(1),
        }
    }

    #[inline(always)]
    fn strong(&self) -> usize {
        self.strong.get()
    }

    #[inline(always)]
    fn weak(&self) -> usize {
        self.weak.get() - 1
    }

    #[inline(always)]
    fn weak_if_alive(&self) -> usize {
        if self.strong.get() == 0 {
            0
        } else {
            self.weak.get() - 1
        }
    }

    #[inline(always)]
    fn inc_strong(&self) {
        let s = self.strong.get() + 1;
        if s > MAX_REFCOUNT {
            std::process::abort();
        }
        self.strong.set(s);
    }

    #[inline(always)]
    fn inc_strong_if_alive(&self) -> bool {
        let s = self.strong.get();
        if s == 0 {
            return false;
        }
        if s + 1 > MAX_REFCOUNT {
            std::process::abort();
        }
        self.strong.set(s + 1);
        true
    }

    #[inline(always)]
    fn dec_strong(&self, id: u64, site: &'static Location<'static>) -> bool {
        let s = self.strong.get() - 1;
        self.strong.set(s);
        if id != 0 {
            registry::released(id, site, s == 0);
        }
        s == 0
    }

    #[inline(always)]
    fn take_unique(&self) -> bool {
        if self.strong.get() != 1 {
            return false;
        }
        self.strong.set(0);
        true
    }

    #[inline(always)]
    fn is_unique(&self) -> bool {
        self.strong.get() == 1 && self.weak.get() == 1
    }

    #[inline(always)]
    fn downgrade(&self) {
        self.inc_weak();
    }

    #[inline(always)]
    fn inc_weak(&self) {
        let w = self.weak.get() + 1;
        if w > MAX_REFCOUNT {
            std::process::abort();
        }
        self.weak.set(w);
    }

    #[inline(always)]
    fn dec_weak(&self) -> bool {
        let w = self.weak.get() - 1;
        self.weak.set(w);
        w == 0
    }
}

/// `TrackedArc`'s counts: `Arc`'s.
#[repr(C)]
pub(super) struct ArcCounts {
    strong: AtomicUsize,
    /// Weak references, plus one for all the strong ones together;
    /// `usize::MAX` while `get_mut` checks uniqueness.
    weak: AtomicUsize,
}

impl Counts for ArcCounts {
    const KIND: OutstandingKind = OutstandingKind::Arc;

    #[inline(always)]
    fn one() -> Self {
        ArcCounts {
            strong: AtomicUsize::new(1),
            weak: AtomicUsize::new(1),
        }
    }

    #[inline(always)]
    fn strong(&self) -> usize {
        self.strong.load(Ordering::Relaxed)
    }

    #[inline(always)]
    fn weak(&self) -> usize {
        match self.weak.load(Ordering::Relaxed) {
            usize::MAX => 0,
            n => n - 1,
        }
    }

    #[inline(always)]
    fn weak_if_alive(&self) -> usize {
        let weak = self.weak.load(Ordering::Acquire);
        if self.strong.load(Ordering::Acquire) == 0 || weak == usize::MAX {
            0
        } else {
            weak - 1
        }
    }

    #[inline(always)]
    fn inc_strong(&self) {
        if self.strong.fetch_add(1, Ordering::Relaxed) > MAX_REFCOUNT {
            std::process::abort();
        }
    }

    #[inline(always)]
    fn inc_strong_if_alive(&self) -> bool {
        let mut n = self.strong.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return false;
            }
            if n > MAX_REFCOUNT {
                std::process::abort();
            }
            match self
                .strong
                .compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(old) => n = old,
            }
        }
    }

    #[inline(always)]
    fn dec_strong(&self, id: u64, site: &'static Location<'static>) -> bool {
        if id != 0 {
            registry::released(id, site, false);
        }
        if self.strong.fetch_sub(1, Ordering::Release) != 1 {
            return false;
        }
        fence(Ordering::Acquire);
        if id != 0 {
            registry::gone(id);
        }
        true
    }

    #[inline(always)]
    fn take_unique(&self) -> bool {
        if self
            .strong
            .compare_exchange(1, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        fence(Ordering::Acquire);
        true
    }

    #[inline(always)]
    fn is_unique(&self) -> bool {
        // Lock out `downgrade` while checking, as `std` does: with the weak
        // count at MAX, no weak reference exists or can be made, so none
        // can be upgraded behind our back.
        if self
            .weak
            .compare_exchange(1, usize::MAX, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let unique = self.strong.load(Ordering::Acquire) == 1;
        self.weak.store(1, Ordering::Release);
        unique
    }

    #[inline(always)]
    fn downgrade(&self) {
        let mut cur = self.weak.load(Ordering::Relaxed);
        loop {
            if cur == usize::MAX {
                // `get_mut` is checking uniqueness on another thread.
                std::hint::spin_loop();
                cur = self.weak.load(Ordering::Relaxed);
                continue;
            }
            if cur > MAX_REFCOUNT {
                std::process::abort();
            }
            match self.weak.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(old) => cur = old,
            }
        }
    }

    #[inline(always)]
    fn inc_weak(&self) {
        if self.weak.fetch_add(1, Ordering::Relaxed) > MAX_REFCOUNT {
            std::process::abort();
        }
    }

    #[inline(always)]
    fn dec_weak(&self) -> bool {
        if self.weak.fetch_sub(1, Ordering::Release) != 1 {
            return false;
        }
        fence(Ordering::Acquire);
        true
    }
}

/// A tracked object: its counts, its registry id and its value.
#[repr(C)]
pub(super) struct Inner<T, C> {
    pub(super) counts: C,
    /// Registry id; 0 if created while tracking was off.
    pub(super) id: u64,
    pub(super) value: T,
}

impl<T, C: Counts> Inner<T, C> {
    /// Moves `value` to the heap with one strong reference, taken at
    /// `site`; tracked if tracking is on now.
    #[inline]
    pub(super) fn create(value: T, site: &'static Location<'static>) -> NonNull<Self> {
        let id = if crate::is_enabled() { next_id() } else { 0 };
        let ptr = NonNull::from(Box::leak(Box::new(Inner {
            counts: C::one(),
            id,
            value,
        })));
        if id != 0 {
            // SAFETY: just allocated.
            let value = unsafe { &raw const (*ptr.as_ptr()).value };
            registry::created(id, C::KIND, ptr.as_ptr(), value, site);
        }
        ptr
    }

    /// A pointer to the value (no reference to it is made).
    ///
    /// # Safety
    /// `ptr` is a live allocation: the caller holds a strong or weak count.
    #[inline]
    pub(super) unsafe fn value_ptr(ptr: NonNull<Self>) -> *mut T {
        // SAFETY: projecting to a field of the live allocation.
        unsafe { &raw mut (*ptr.as_ptr()).value }
    }

    /// Moves the value out and gives up the strong references' implicit
    /// weak count.
    ///
    /// # Safety
    /// The strong count of `ptr` has just gone to 0 in the caller's hands
    /// (`dec_strong` or `take_unique` returned true), and the value was
    /// neither dropped nor moved out.
    #[inline]
    pub(super) unsafe fn take_value(ptr: NonNull<Self>) -> T {
        // SAFETY: the caller was the last strong reference: the value is
        // ours to move out, once; its implicit weak count keeps the memory.
        let value = unsafe { ptr::read(Self::value_ptr(ptr)) };
        // SAFETY: the strong references' implicit weak one goes.
        unsafe { Self::release_weak(ptr) };
        value
    }

    /// Drops the value and gives up the strong references' implicit weak
    /// count.
    ///
    /// # Safety
    /// As [`Inner::take_value`].
    #[inline]
    pub(super) unsafe fn drop_value(ptr: NonNull<Self>) {
        // SAFETY: that was the last strong reference: drop the value once
        // (the registry no longer lists it), then the implicit weak one.
        unsafe {
            ptr::drop_in_place(Self::value_ptr(ptr));
            Self::release_weak(ptr);
        }
    }

    /// Drops one weak count, freeing the allocation at zero.
    ///
    /// # Safety
    /// The caller gives up one weak count of `ptr` (a weak reference's,
    /// or the strong references' implicit one after the value was dropped
    /// or moved out).
    #[inline]
    pub(super) unsafe fn release_weak(ptr: NonNull<Self>) {
        // SAFETY: the count being given up keeps the allocation alive.
        let inner = unsafe { ptr.as_ref() };
        if inner.counts.dec_weak() {
            // SAFETY: no reference is left, and the value is gone: free the
            // memory `Box::new` gave, without dropping the value again.
            unsafe { std::alloc::dealloc(ptr.as_ptr().cast(), std::alloc::Layout::new::<Self>()) };
        }
    }
}
