//! Reference-counted pointers that know who holds them.
//!
//! [`TrackedRc`] and [`TrackedArc`] have the shape of `Rc` and `Arc`
//! (`new`, `clone`, `downgrade`/`upgrade`, `strong_count`, `weak_count`,
//! `ptr_eq`, `try_unwrap`, `into_inner`, `get_mut`, `Deref`), and the same
//! cost. The difference shows when tracking is on (`DEBUG_MEMORY=1` or
//! [`crate::enable`]) at the moment an object is created:
//!
//! * `new`, `clone` and `upgrade` are `#[track_caller]`: each strong
//!   reference records the file, line and column where it was taken, and
//!   dropping it removes that record. So a live object knows its holders,
//!   and an object that leaked tells who forgot to release it:
//!   [`TrackedRc::holders`], and the exit report.
//! * [`outstanding`] lists every tracked object still alive with its
//!   holders, and finds reference cycles: a reference stored directly in
//!   another tracked object's value (a field, an `Option`, a `RefCell`, a
//!   `Mutex`) is marked as held inside that object, and objects held only
//!   from inside each other, in a loop, are reported as one cycle.
//!
//! ```
//! use memwarden::rc::TrackedRc;
//!
//! memwarden::enable(); // or DEBUG_MEMORY=1
//! let a = TrackedRc::new(5);
//! let b = TrackedRc::clone(&a);
//! let held: Vec<u32> = TrackedRc::holders(&a).iter().map(|l| l.line()).collect();
//! # if memwarden::is_enabled() { // the `tracking` feature is on
//! assert_eq!(held, [line!() - 4, line!() - 3]);
//! drop(b);
//! assert_eq!(TrackedRc::holders(&a).len(), 1);
//! # }
//! ```
//!
//! # Cost
//!
//! A tracked pointer is two words: the pointer, and the `&'static
//! Location` of where the reference was taken. An object created while
//! tracking is off is never tracked: `clone` and `drop` are `Rc`'s and
//! `Arc`'s (the same counts, the same atomic orderings) plus one
//! well-predicted branch on a word next to the counts. An object created
//! while tracking is on takes memwarden's registry lock on each `clone` and
//! drop (a debug build's price). `T` must be `Sized`.
//!
//! # Without the `tracking` feature
//!
//! Tracking is never on, so these are plain `Rc`/`Arc` that also know
//! where each reference was taken ([`TrackedRc::taken_at`]);
//! [`TrackedRc::holders`] and [`outstanding`] are empty.
use std::borrow::Borrow;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::ops::Deref;
use std::panic::Location;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use crate::pool::{Holder, Outstanding, OutstandingKind};
use crate::pool::{hide, next_id, quiet, read_word, reveal};

/// Counts above this abort, as in `std` (a count that could overflow).
const MAX_REFCOUNT: usize = isize::MAX as usize;

// === TrackedRc ===

/// A single-thread reference-counted pointer that records where each
/// strong reference was taken; see the [module docs](self).
#[repr(C)] // the leak scan finds `ptr` followed by `site`
pub struct TrackedRc<T> {
    ptr: NonNull<RcInner<T>>,
    site: &'static Location<'static>,
    _owns: PhantomData<RcInner<T>>,
}

/// A weak reference to a [`TrackedRc`] object: does not keep the value
/// alive, and is not a holder.
pub struct WeakRc<T> {
    ptr: NonNull<RcInner<T>>,
}

#[repr(C)]
struct RcInner<T> {
    strong: Cell<usize>,
    /// Weak references, plus one for all the strong ones together.
    weak: Cell<usize>,
    /// Registry id; 0 if created while tracking was off.
    id: u64,
    value: T,
}

impl<T> TrackedRc<T> {
    /// Moves `value` to the heap. Tracked if tracking is on now.
    #[track_caller]
    #[inline]
    pub fn new(value: T) -> Self {
        let site = Location::caller();
        let id = if crate::is_enabled() { next_id() } else { 0 };
        let ptr = NonNull::from(Box::leak(Box::new(RcInner {
            strong: Cell::new(1),
            weak: Cell::new(1),
            id,
            value,
        })));
        if id != 0 {
            // SAFETY: just allocated.
            let value = unsafe { &raw const (*ptr.as_ptr()).value };
            registry::created(id, OutstandingKind::Rc, ptr.as_ptr(), value, site);
        }
        TrackedRc {
            ptr,
            site,
            _owns: PhantomData,
        }
    }

    #[inline(always)]
    fn inner(&self) -> &RcInner<T> {
        // SAFETY: a strong reference keeps the allocation and value alive.
        unsafe { self.ptr.as_ref() }
    }

    /// A weak reference to the same object.
    pub fn downgrade(this: &Self) -> WeakRc<T> {
        let w = this.inner().weak.get() + 1;
        if w > MAX_REFCOUNT {
            std::process::abort();
        }
        this.inner().weak.set(w);
        WeakRc { ptr: this.ptr }
    }

    /// Strong references to the object.
    pub fn strong_count(this: &Self) -> usize {
        this.inner().strong.get()
    }

    /// Weak references to the object.
    pub fn weak_count(this: &Self) -> usize {
        this.inner().weak.get() - 1
    }

    /// True if both point to the same object.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        a.ptr == b.ptr
    }

    /// A pointer to the value.
    pub fn as_ptr(this: &Self) -> *const T {
        // SAFETY: projecting to a field of the live allocation.
        unsafe { &raw const (*this.ptr.as_ptr()).value }
    }

    /// Where this reference was taken.
    pub fn taken_at(this: &Self) -> &'static Location<'static> {
        this.site
    }

    /// True if the object is tracked (created while tracking was on).
    pub fn is_tracked(this: &Self) -> bool {
        this.inner().id != 0
    }

    /// Where each strong reference still held was taken, oldest first
    /// (empty if the object is not tracked).
    pub fn holders(this: &Self) -> Vec<&'static Location<'static>> {
        registry::holders(this.inner().id)
    }

    /// The value, if this is the only strong reference (weak ones are
    /// then left dangling); otherwise `this` back.
    pub fn try_unwrap(this: Self) -> Result<T, Self> {
        if this.inner().strong.get() != 1 {
            return Err(this);
        }
        let this = std::mem::ManuallyDrop::new(this);
        let inner = this.inner();
        inner.strong.set(0);
        if inner.id != 0 {
            registry::gone(inner.id);
        }
        // SAFETY: strong was 1: the value is ours to move out, once.
        let value = unsafe { ptr::read(&raw const (*this.ptr.as_ptr()).value) };
        // SAFETY: the strong references' implicit weak one goes.
        unsafe { WeakRc::release(this.ptr) };
        Ok(value)
    }

    /// The value if this is the only strong reference; otherwise drops
    /// this reference and returns `None`.
    pub fn into_inner(this: Self) -> Option<T> {
        TrackedRc::try_unwrap(this).ok()
    }

    /// A mutable reference to the value, if no other strong or weak
    /// reference exists.
    pub fn get_mut(this: &mut Self) -> Option<&mut T> {
        let inner = this.inner();
        if inner.strong.get() == 1 && inner.weak.get() == 1 {
            // SAFETY: the only reference of any kind, borrowed mutably.
            Some(unsafe { &mut (*this.ptr.as_ptr()).value })
        } else {
            None
        }
    }
}

impl<T> Clone for TrackedRc<T> {
    /// Another strong reference, recorded as taken here.
    #[track_caller]
    #[inline]
    fn clone(&self) -> Self {
        let inner = self.inner();
        let s = inner.strong.get() + 1;
        if s > MAX_REFCOUNT {
            std::process::abort();
        }
        inner.strong.set(s);
        let site = Location::caller();
        if inner.id != 0 {
            registry::taken(inner.id, site);
        }
        TrackedRc {
            ptr: self.ptr,
            site,
            _owns: PhantomData,
        }
    }
}

impl<T> Drop for TrackedRc<T> {
    #[inline]
    fn drop(&mut self) {
        let inner = self.inner();
        let s = inner.strong.get() - 1;
        inner.strong.set(s);
        if inner.id != 0 {
            registry::released(inner.id, self.site, s == 0);
        }
        if s == 0 {
            // SAFETY: that was the last strong reference: drop the value
            // once (the registry no longer lists it), then the implicit
            // weak reference.
            unsafe {
                ptr::drop_in_place(&raw mut (*self.ptr.as_ptr()).value);
                WeakRc::release(self.ptr);
            }
        }
    }
}

impl<T> WeakRc<T> {
    /// A strong reference, if the value is still alive; recorded as taken
    /// here.
    #[track_caller]
    pub fn upgrade(&self) -> Option<TrackedRc<T>> {
        // SAFETY: a weak reference keeps the allocation (not the value).
        let inner = unsafe { self.ptr.as_ref() };
        let s = inner.strong.get();
        if s == 0 {
            return None;
        }
        if s + 1 > MAX_REFCOUNT {
            std::process::abort();
        }
        inner.strong.set(s + 1);
        let site = Location::caller();
        if inner.id != 0 {
            registry::taken(inner.id, site);
        }
        Some(TrackedRc {
            ptr: self.ptr,
            site,
            _owns: PhantomData,
        })
    }

    /// Strong references to the object (0 once it is gone).
    pub fn strong_count(&self) -> usize {
        // SAFETY: a weak reference keeps the allocation.
        unsafe { self.ptr.as_ref() }.strong.get()
    }

    /// Weak references to the object (0 once it is gone).
    pub fn weak_count(&self) -> usize {
        // SAFETY: as above.
        let inner = unsafe { self.ptr.as_ref() };
        if inner.strong.get() == 0 {
            0
        } else {
            inner.weak.get() - 1
        }
    }

    /// True if both point to the same object.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        self.ptr == other.ptr
    }

    /// Drops one weak count, freeing the allocation at zero.
    ///
    /// # Safety
    /// The caller gives up one weak count of `ptr` (a `WeakRc`, or the
    /// strong references' implicit one after the value was dropped or
    /// moved out).
    unsafe fn release(ptr: NonNull<RcInner<T>>) {
        // SAFETY: the count being given up keeps the allocation alive.
        let inner = unsafe { ptr.as_ref() };
        let w = inner.weak.get() - 1;
        inner.weak.set(w);
        if w == 0 {
            // SAFETY: no reference is left, and the value is gone: free the
            // memory `Box::new` gave, without dropping the value again.
            unsafe {
                std::alloc::dealloc(ptr.as_ptr().cast(), std::alloc::Layout::new::<RcInner<T>>())
            };
        }
    }
}

impl<T> Clone for WeakRc<T> {
    fn clone(&self) -> Self {
        // SAFETY: a weak reference keeps the allocation.
        let inner = unsafe { self.ptr.as_ref() };
        let w = inner.weak.get() + 1;
        if w > MAX_REFCOUNT {
            std::process::abort();
        }
        inner.weak.set(w);
        WeakRc { ptr: self.ptr }
    }
}

impl<T> Drop for WeakRc<T> {
    fn drop(&mut self) {
        // SAFETY: this weak reference's count, given up once.
        unsafe { WeakRc::release(self.ptr) }
    }
}

impl<T> fmt::Debug for WeakRc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(WeakRc)")
    }
}

// === TrackedArc ===

/// A thread-safe reference-counted pointer that records where each strong
/// reference was taken; see the [module docs](self).
#[repr(C)] // the leak scan finds `ptr` followed by `site`
pub struct TrackedArc<T> {
    ptr: NonNull<ArcInner<T>>,
    site: &'static Location<'static>,
    _owns: PhantomData<ArcInner<T>>,
}

/// A weak reference to a [`TrackedArc`] object.
pub struct WeakArc<T> {
    ptr: NonNull<ArcInner<T>>,
}

// SAFETY: as for `Arc`: the counts are atomic; the value is shared between
// threads (`Sync`) and dropped on whichever thread lets go last (`Send`).
unsafe impl<T: Send + Sync> Send for TrackedArc<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for TrackedArc<T> {}
// SAFETY: as above; a weak reference can be upgraded on another thread.
unsafe impl<T: Send + Sync> Send for WeakArc<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for WeakArc<T> {}

#[repr(C)]
struct ArcInner<T> {
    strong: AtomicUsize,
    /// Weak references, plus one for all the strong ones together;
    /// `usize::MAX` while `get_mut` checks uniqueness.
    weak: AtomicUsize,
    /// Registry id; 0 if created while tracking was off.
    id: u64,
    value: T,
}

impl<T> TrackedArc<T> {
    /// Moves `value` to the heap. Tracked if tracking is on now.
    #[track_caller]
    #[inline]
    pub fn new(value: T) -> Self {
        let site = Location::caller();
        let id = if crate::is_enabled() { next_id() } else { 0 };
        let ptr = NonNull::from(Box::leak(Box::new(ArcInner {
            strong: AtomicUsize::new(1),
            weak: AtomicUsize::new(1),
            id,
            value,
        })));
        if id != 0 {
            // SAFETY: just allocated.
            let value = unsafe { &raw const (*ptr.as_ptr()).value };
            registry::created(id, OutstandingKind::Arc, ptr.as_ptr(), value, site);
        }
        TrackedArc {
            ptr,
            site,
            _owns: PhantomData,
        }
    }

    #[inline(always)]
    fn inner(&self) -> &ArcInner<T> {
        // SAFETY: a strong reference keeps the allocation and value alive.
        unsafe { self.ptr.as_ref() }
    }

    /// A weak reference to the same object.
    pub fn downgrade(this: &Self) -> WeakArc<T> {
        let weak = &this.inner().weak;
        let mut cur = weak.load(Ordering::Relaxed);
        loop {
            if cur == usize::MAX {
                // `get_mut` is checking uniqueness on another thread.
                std::hint::spin_loop();
                cur = weak.load(Ordering::Relaxed);
                continue;
            }
            if cur > MAX_REFCOUNT {
                std::process::abort();
            }
            match weak.compare_exchange_weak(cur, cur + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return WeakArc { ptr: this.ptr },
                Err(old) => cur = old,
            }
        }
    }

    /// Strong references to the object (a snapshot).
    pub fn strong_count(this: &Self) -> usize {
        this.inner().strong.load(Ordering::Relaxed)
    }

    /// Weak references to the object (a snapshot).
    pub fn weak_count(this: &Self) -> usize {
        match this.inner().weak.load(Ordering::Relaxed) {
            usize::MAX => 0,
            n => n - 1,
        }
    }

    /// True if both point to the same object.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        a.ptr == b.ptr
    }

    /// A pointer to the value.
    pub fn as_ptr(this: &Self) -> *const T {
        // SAFETY: projecting to a field of the live allocation.
        unsafe { &raw const (*this.ptr.as_ptr()).value }
    }

    /// Where this reference was taken.
    pub fn taken_at(this: &Self) -> &'static Location<'static> {
        this.site
    }

    /// True if the object is tracked (created while tracking was on).
    pub fn is_tracked(this: &Self) -> bool {
        this.inner().id != 0
    }

    /// Where each strong reference still held was taken, oldest first
    /// (empty if the object is not tracked).
    pub fn holders(this: &Self) -> Vec<&'static Location<'static>> {
        registry::holders(this.inner().id)
    }

    /// The value, if this is the only strong reference; otherwise `this`
    /// back.
    pub fn try_unwrap(this: Self) -> Result<T, Self> {
        if this
            .inner()
            .strong
            .compare_exchange(1, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return Err(this);
        }
        fence(Ordering::Acquire);
        let this = std::mem::ManuallyDrop::new(this);
        if this.inner().id != 0 {
            registry::gone(this.inner().id);
        }
        // SAFETY: strong went from 1 to 0 here: the value is ours to move
        // out, once.
        let value = unsafe { ptr::read(&raw const (*this.ptr.as_ptr()).value) };
        // SAFETY: the strong references' implicit weak one goes.
        unsafe { WeakArc::release(this.ptr) };
        Ok(value)
    }

    /// The value if this is the only strong reference; otherwise drops
    /// this reference and returns `None`. Of several threads calling this
    /// on the last references, exactly one gets the value.
    pub fn into_inner(this: Self) -> Option<T> {
        let this = std::mem::ManuallyDrop::new(this);
        let inner = this.inner();
        if inner.id != 0 {
            registry::released(inner.id, this.site, false);
        }
        if inner.strong.fetch_sub(1, Ordering::Release) != 1 {
            return None;
        }
        fence(Ordering::Acquire);
        if inner.id != 0 {
            registry::gone(inner.id);
        }
        // SAFETY: the last strong reference: the value is ours, once.
        let value = unsafe { ptr::read(&raw const (*this.ptr.as_ptr()).value) };
        // SAFETY: the strong references' implicit weak one goes.
        unsafe { WeakArc::release(this.ptr) };
        Some(value)
    }

    /// A mutable reference to the value, if no other strong or weak
    /// reference exists.
    pub fn get_mut(this: &mut Self) -> Option<&mut T> {
        let inner = this.inner();
        // Lock out `downgrade` while checking, as `std` does: with the weak
        // count at MAX, no weak reference exists or can be made, so none
        // can be upgraded behind our back.
        if inner
            .weak
            .compare_exchange(1, usize::MAX, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let unique = inner.strong.load(Ordering::Acquire) == 1;
        inner.weak.store(1, Ordering::Release);
        if unique {
            // SAFETY: the only reference of any kind, borrowed mutably.
            Some(unsafe { &mut (*this.ptr.as_ptr()).value })
        } else {
            None
        }
    }
}

impl<T> Clone for TrackedArc<T> {
    /// Another strong reference, recorded as taken here.
    #[track_caller]
    #[inline]
    fn clone(&self) -> Self {
        let inner = self.inner();
        if inner.strong.fetch_add(1, Ordering::Relaxed) > MAX_REFCOUNT {
            std::process::abort();
        }
        let site = Location::caller();
        if inner.id != 0 {
            registry::taken(inner.id, site);
        }
        TrackedArc {
            ptr: self.ptr,
            site,
            _owns: PhantomData,
        }
    }
}

impl<T> Drop for TrackedArc<T> {
    #[inline]
    fn drop(&mut self) {
        let inner = self.inner();
        let id = inner.id;
        if id != 0 {
            registry::released(id, self.site, false);
        }
        if inner.strong.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        if id != 0 {
            registry::gone(id);
        }
        // SAFETY: that was the last strong reference: drop the value once
        // (the registry no longer lists it), then the implicit weak one.
        unsafe {
            ptr::drop_in_place(&raw mut (*self.ptr.as_ptr()).value);
            WeakArc::release(self.ptr);
        }
    }
}

impl<T> WeakArc<T> {
    /// A strong reference, if the value is still alive; recorded as taken
    /// here.
    #[track_caller]
    pub fn upgrade(&self) -> Option<TrackedArc<T>> {
        // SAFETY: a weak reference keeps the allocation (not the value).
        let inner = unsafe { self.ptr.as_ref() };
        let mut n = inner.strong.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return None;
            }
            if n > MAX_REFCOUNT {
                std::process::abort();
            }
            match inner
                .strong
                .compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(old) => n = old,
            }
        }
        let site = Location::caller();
        if inner.id != 0 {
            registry::taken(inner.id, site);
        }
        Some(TrackedArc {
            ptr: self.ptr,
            site,
            _owns: PhantomData,
        })
    }

    /// Strong references to the object (0 once it is gone).
    pub fn strong_count(&self) -> usize {
        // SAFETY: a weak reference keeps the allocation.
        unsafe { self.ptr.as_ref() }.strong.load(Ordering::Relaxed)
    }

    /// Weak references to the object (0 once it is gone).
    pub fn weak_count(&self) -> usize {
        // SAFETY: as above.
        let inner = unsafe { self.ptr.as_ref() };
        let weak = inner.weak.load(Ordering::Acquire);
        if inner.strong.load(Ordering::Acquire) == 0 || weak == usize::MAX {
            0
        } else {
            weak - 1
        }
    }

    /// True if both point to the same object.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        self.ptr == other.ptr
    }

    /// Drops one weak count, freeing the allocation at zero.
    ///
    /// # Safety
    /// As [`WeakRc::release`].
    unsafe fn release(ptr: NonNull<ArcInner<T>>) {
        // SAFETY: the count being given up keeps the allocation alive.
        let inner = unsafe { ptr.as_ref() };
        if inner.weak.fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            // SAFETY: no reference is left, and the value is gone.
            unsafe {
                std::alloc::dealloc(
                    ptr.as_ptr().cast(),
                    std::alloc::Layout::new::<ArcInner<T>>(),
                )
            };
        }
    }
}

impl<T> Clone for WeakArc<T> {
    fn clone(&self) -> Self {
        // SAFETY: a weak reference keeps the allocation.
        let inner = unsafe { self.ptr.as_ref() };
        if inner.weak.fetch_add(1, Ordering::Relaxed) > MAX_REFCOUNT {
            std::process::abort();
        }
        WeakArc { ptr: self.ptr }
    }
}

impl<T> Drop for WeakArc<T> {
    fn drop(&mut self) {
        // SAFETY: this weak reference's count, given up once.
        unsafe { WeakArc::release(self.ptr) }
    }
}

impl<T> fmt::Debug for WeakArc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(WeakArc)")
    }
}

// === shared trait impls ===

macro_rules! forward_impls {
    ($ty:ident) => {
        impl<T> Deref for $ty<T> {
            type Target = T;
            #[inline(always)]
            fn deref(&self) -> &T {
                &self.inner().value
            }
        }

        impl<T> AsRef<T> for $ty<T> {
            fn as_ref(&self) -> &T {
                self
            }
        }

        impl<T> Borrow<T> for $ty<T> {
            fn borrow(&self) -> &T {
                self
            }
        }

        impl<T: Default> Default for $ty<T> {
            #[track_caller]
            fn default() -> Self {
                $ty::new(T::default())
            }
        }

        impl<T: fmt::Debug> fmt::Debug for $ty<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&**self, f)
            }
        }

        impl<T: fmt::Display> fmt::Display for $ty<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&**self, f)
            }
        }

        impl<T> fmt::Pointer for $ty<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Pointer::fmt(&$ty::as_ptr(self), f)
            }
        }

        impl<T: PartialEq> PartialEq for $ty<T> {
            fn eq(&self, other: &Self) -> bool {
                **self == **other
            }
        }

        impl<T: Eq> Eq for $ty<T> {}

        impl<T: PartialOrd> PartialOrd for $ty<T> {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                (**self).partial_cmp(&**other)
            }
        }

        impl<T: Ord> Ord for $ty<T> {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                (**self).cmp(&**other)
            }
        }

        impl<T: Hash> Hash for $ty<T> {
            fn hash<H: Hasher>(&self, state: &mut H) {
                (**self).hash(state)
            }
        }
    };
}

forward_impls!(TrackedRc);
forward_impls!(TrackedArc);

// === registry of tracked objects ===

/// Every tracked object alive now, with its holders; cycles among them are
/// found as described in the [module docs](self). Sorted by id (creation
/// order). Empty if tracking has never been on.
///
/// The memory of each tracked value is read as raw words to find the
/// references stored in it (with reads that are sound even while another
/// thread writes it); under Miri, which cannot run them, no reference is
/// found inside an object.
pub fn outstanding() -> Vec<Outstanding> {
    registry::outstanding()
}

mod registry {
    use super::*;

    /// One tracked object.
    struct Obj {
        kind: OutstandingKind,
        type_name: &'static str,
        /// Hidden address and size of the allocation.
        block: (usize, usize),
        /// Hidden address and size of the value.
        value: (usize, usize),
        bytes: usize,
        taken_at: &'static Location<'static>,
        /// One entry per strong reference held.
        holders: Vec<&'static Location<'static>>,
    }

    static OBJECTS: Mutex<BTreeMap<u64, Obj>> = Mutex::new(BTreeMap::new());

    fn lock() -> MutexGuard<'static, BTreeMap<u64, Obj>> {
        OBJECTS.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cold]
    #[inline(never)]
    pub(super) fn created<T, B>(
        id: u64,
        kind: OutstandingKind,
        block: *const B,
        value: *const T,
        site: &'static Location<'static>,
    ) {
        let obj = Obj {
            kind,
            type_name: std::any::type_name::<T>(),
            block: (hide(block), size_of::<B>()),
            value: (hide(value), size_of::<T>()),
            bytes: size_of::<T>(),
            taken_at: site,
            holders: Vec::new(),
        };
        quiet(|| {
            let mut objs = lock();
            let o = objs.entry(id).or_insert(obj);
            o.holders.push(site);
        });
    }

    #[cold]
    #[inline(never)]
    pub(super) fn taken(id: u64, site: &'static Location<'static>) {
        quiet(|| {
            if let Some(o) = lock().get_mut(&id) {
                o.holders.push(site);
            }
        });
    }

    /// A strong reference taken at `site` was dropped; `last`: it was the
    /// last one (the object goes).
    #[cold]
    #[inline(never)]
    pub(super) fn released(id: u64, site: &'static Location<'static>, last: bool) {
        quiet(|| {
            let mut objs = lock();
            if last {
                objs.remove(&id);
            } else if let Some(o) = objs.get_mut(&id) {
                let i = o
                    .holders
                    .iter()
                    .rposition(|h| ptr::eq(*h, site))
                    .or_else(|| o.holders.iter().rposition(|h| **h == *site));
                if let Some(i) = i {
                    o.holders.remove(i);
                }
            }
        });
    }

    /// The object goes (its last strong reference was dropped or unwrapped).
    #[cold]
    #[inline(never)]
    pub(super) fn gone(id: u64) {
        quiet(|| {
            lock().remove(&id);
        });
    }

    pub(super) fn holders(id: u64) -> Vec<&'static Location<'static>> {
        if id == 0 {
            return Vec::new();
        }
        lock()
            .get(&id)
            .map(|o| o.holders.clone())
            .unwrap_or_default()
    }

    pub(super) fn outstanding() -> Vec<Outstanding> {
        quiet(|| {
            let objs = lock();
            let ids: Vec<u64> = objs.keys().copied().collect();
            let index: HashMap<u64, usize> =
                ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
            let by_block: HashMap<usize, usize> = objs
                .values()
                .enumerate()
                .map(|(i, o)| (reveal::<u8>(o.block.0) as usize, i))
                .collect();
            let mut holders: Vec<Vec<Holder>> = objs
                .values()
                .map(|o| {
                    o.holders
                        .iter()
                        .map(|&taken_at| Holder {
                            taken_at,
                            inside: None,
                        })
                        .collect()
                })
                .collect();
            // References stored in each value: a word holding an object's
            // address followed by a word holding one of its holders' sites.
            for (p, o) in objs.values().enumerate() {
                let start = reveal::<usize>(o.value.0);
                let words = o.value.1 / size_of::<usize>();
                if start as usize % align_of::<usize>() != 0 || words < 2 {
                    continue;
                }
                for w in 0..words - 1 {
                    // SAFETY: the object is listed, so its value is alive
                    // (it is unlisted before it is dropped, under this
                    // lock); both words lie inside it, aligned.
                    let (a, s) = unsafe { (read_word(start.add(w)), read_word(start.add(w + 1))) };
                    let Some(&target) = by_block.get(&a) else {
                        continue;
                    };
                    if let Some(h) = holders[target]
                        .iter_mut()
                        .find(|h| h.inside.is_none() && ptr::from_ref(h.taken_at) as usize == s)
                    {
                        h.inside = Some(ids[p]);
                    }
                }
            }
            let (unreachable, cycle) = analyse(&ids, &index, &holders);
            objs.values()
                .zip(holders)
                .enumerate()
                .map(|(i, (o, holders))| Outstanding {
                    kind: o.kind,
                    id: ids[i],
                    type_name: o.type_name,
                    bytes: o.bytes,
                    taken_at: o.taken_at,
                    holders,
                    cycle: cycle[i],
                    unreachable: unreachable[i],
                    pool_alive: false,
                    block: (reveal::<u8>(o.block.0) as usize, o.block.1),
                    stack: 0,
                })
                .collect()
        })
    }

    /// Which objects are held only from inside unreachable objects, and
    /// which of those form cycles (strongly connected components with a
    /// loop), named by their smallest id.
    fn analyse(
        ids: &[u64],
        index: &HashMap<u64, usize>,
        holders: &[Vec<Holder>],
    ) -> (Vec<bool>, Vec<Option<u64>>) {
        let n = ids.len();
        // Edges p -> o: o is held inside p.
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (o, hs) in holders.iter().enumerate() {
            for h in hs {
                if let Some(p) = h.inside.and_then(|id| index.get(&id)) {
                    out[*p].push(o);
                }
            }
        }
        // Reachable from objects that something outside holds.
        let mut reached = vec![false; n];
        let mut todo: Vec<usize> = (0..n)
            .filter(|&o| holders[o].iter().any(|h| h.inside.is_none()))
            .collect();
        for &o in &todo {
            reached[o] = true;
        }
        while let Some(p) = todo.pop() {
            for &o in &out[p] {
                if !reached[o] {
                    reached[o] = true;
                    todo.push(o);
                }
            }
        }
        let unreachable: Vec<bool> = reached.iter().map(|r| !r).collect();
        // Tarjan's strongly connected components over unreachable objects.
        let mut cycle = vec![None; n];
        let mut t = Tarjan {
            out: &out,
            keep: &unreachable,
            index: vec![usize::MAX; n],
            low: vec![0; n],
            on_stack: vec![false; n],
            stack: Vec::new(),
            next: 0,
            sccs: Vec::new(),
        };
        for (v, &lost) in unreachable.iter().enumerate() {
            if lost && t.index[v] == usize::MAX {
                t.visit(v);
            }
        }
        for scc in t.sccs {
            let looped = scc.len() > 1 || out[scc[0]].contains(&scc[0]);
            if looped {
                let name = scc.iter().map(|&v| ids[v]).min();
                for v in scc {
                    cycle[v] = name;
                }
            }
        }
        (unreachable, cycle)
    }

    struct Tarjan<'a> {
        out: &'a [Vec<usize>],
        keep: &'a [bool],
        index: Vec<usize>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        sccs: Vec<Vec<usize>>,
    }

    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            // Iterative, so that long chains do not overflow the stack.
            let mut call: Vec<(usize, usize)> = vec![(v, 0)];
            self.open(v);
            while let Some(&mut (v, ref mut i)) = call.last_mut() {
                if let Some(&w) = self.out[v].get(*i) {
                    *i += 1;
                    if !self.keep[w] {
                        continue;
                    }
                    if self.index[w] == usize::MAX {
                        self.open(w);
                        call.push((w, 0));
                    } else if self.on_stack[w] {
                        self.low[v] = self.low[v].min(self.index[w]);
                    }
                } else {
                    call.pop();
                    if let Some(&(u, _)) = call.last() {
                        self.low[u] = self.low[u].min(self.low[v]);
                    }
                    if self.low[v] == self.index[v] {
                        let mut scc = Vec::new();
                        while let Some(w) = self.stack.pop() {
                            self.on_stack[w] = false;
                            scc.push(w);
                            if w == v {
                                break;
                            }
                        }
                        self.sccs.push(scc);
                    }
                }
            }
        }

        fn open(&mut self, v: usize) {
            self.index[v] = self.next;
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untracked_counts_like_rc() {
        let a = TrackedRc::new(String::from("x"));
        let w = TrackedRc::downgrade(&a);
        let b = a.clone();
        assert_eq!(
            (TrackedRc::strong_count(&a), TrackedRc::weak_count(&a)),
            (2, 1)
        );
        assert!(TrackedRc::ptr_eq(&a, &b));
        drop(b);
        let a = TrackedRc::try_unwrap(a).unwrap();
        assert_eq!(a, "x");
        assert!(w.upgrade().is_none());
        assert_eq!((w.strong_count(), w.weak_count()), (0, 0));
    }

    #[test]
    fn get_mut_needs_uniqueness() {
        let mut a = TrackedArc::new(1);
        *TrackedArc::get_mut(&mut a).unwrap() += 1;
        let w = TrackedArc::downgrade(&a);
        assert!(TrackedArc::get_mut(&mut a).is_none());
        drop(w);
        assert_eq!(*a, 2);
        let b = a.clone();
        assert!(TrackedArc::get_mut(&mut a).is_none());
        assert_eq!(TrackedArc::into_inner(b), None);
        assert_eq!(TrackedArc::into_inner(a), Some(2));
    }
}
