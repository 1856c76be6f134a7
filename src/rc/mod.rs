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
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::panic::Location;
use std::ptr::NonNull;

pub use crate::pool::{Holder, Outstanding, OutstandingKind};

mod inner;
mod registry;

use inner::{ArcCounts, Counts, Inner, RcCounts};

// === TrackedRc and TrackedArc ===

/// Stamps out a strong and a weak pointer type over [`Inner`] with the
/// counts `$Counts` (`Cell`s or atomics: where `TrackedRc` and `TrackedArc`
/// differ). Takes the docs of the types and of the methods whose docs
/// differ between the two.
macro_rules! tracked_pointer {
    (
        $(#[$strong_doc:meta])*
        pub struct $Strong:ident;
        $(#[$weak_doc:meta])*
        pub struct $Weak:ident;
        counts: $Counts:ty;
        $(#[$strong_count_doc:meta])*
        fn strong_count;
        $(#[$weak_count_doc:meta])*
        fn weak_count;
        $(#[$try_unwrap_doc:meta])*
        fn try_unwrap;
        $(#[$into_inner_doc:meta])*
        fn into_inner;
    ) => {
        $(#[$strong_doc])*
        #[repr(C)] // the leak scan finds `ptr` followed by `site`
        pub struct $Strong<T> {
            ptr: NonNull<Inner<T, $Counts>>,
            site: &'static Location<'static>,
            _owns: PhantomData<Inner<T, $Counts>>,
        }

        $(#[$weak_doc])*
        pub struct $Weak<T> {
            ptr: NonNull<Inner<T, $Counts>>,
        }

        impl<T> $Strong<T> {
            /// Moves `value` to the heap. Tracked if tracking is on now.
            #[track_caller]
            #[inline]
            pub fn new(value: T) -> Self {
                let site = Location::caller();
                $Strong {
                    ptr: Inner::create(value, site),
                    site,
                    _owns: PhantomData,
                }
            }

            /// The handle of a strong reference to `ptr` just counted,
            /// taken at `site`; recorded if the object is tracked.
            #[inline(always)]
            fn taken(ptr: NonNull<Inner<T, $Counts>>, site: &'static Location<'static>) -> Self {
                // SAFETY: the reference just counted keeps the allocation
                // and value alive.
                let id = unsafe { ptr.as_ref() }.id;
                if id != 0 {
                    registry::taken(id, site);
                }
                $Strong {
                    ptr,
                    site,
                    _owns: PhantomData,
                }
            }

            #[inline(always)]
            fn inner(&self) -> &Inner<T, $Counts> {
                // SAFETY: a strong reference keeps the allocation and value
                // alive.
                unsafe { self.ptr.as_ref() }
            }

            /// A weak reference to the same object.
            pub fn downgrade(this: &Self) -> $Weak<T> {
                this.inner().counts.downgrade();
                $Weak { ptr: this.ptr }
            }

            $(#[$strong_count_doc])*
            pub fn strong_count(this: &Self) -> usize {
                this.inner().counts.strong()
            }

            $(#[$weak_count_doc])*
            pub fn weak_count(this: &Self) -> usize {
                this.inner().counts.weak()
            }

            /// True if both point to the same object.
            pub fn ptr_eq(a: &Self, b: &Self) -> bool {
                a.ptr == b.ptr
            }

            /// A pointer to the value.
            pub fn as_ptr(this: &Self) -> *const T {
                // SAFETY: this strong reference keeps the allocation alive.
                unsafe { Inner::value_ptr(this.ptr) }
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

            $(#[$try_unwrap_doc])*
            pub fn try_unwrap(this: Self) -> Result<T, Self> {
                if !this.inner().counts.take_unique() {
                    return Err(this);
                }
                let this = ManuallyDrop::new(this);
                let id = this.inner().id;
                if id != 0 {
                    registry::gone(id);
                }
                // SAFETY: the strong count went from 1 to 0 here.
                Ok(unsafe { Inner::take_value(this.ptr) })
            }

            $(#[$into_inner_doc])*
            pub fn into_inner(this: Self) -> Option<T> {
                let this = ManuallyDrop::new(this);
                let inner = this.inner();
                if !inner.counts.dec_strong(inner.id, this.site) {
                    return None;
                }
                // SAFETY: that was the last strong reference.
                Some(unsafe { Inner::take_value(this.ptr) })
            }

            /// A mutable reference to the value, if no other strong or weak
            /// reference exists.
            pub fn get_mut(this: &mut Self) -> Option<&mut T> {
                if this.inner().counts.is_unique() {
                    // SAFETY: the only reference of any kind, borrowed
                    // mutably.
                    Some(unsafe { &mut *Inner::value_ptr(this.ptr) })
                } else {
                    None
                }
            }
        }

        impl<T> Clone for $Strong<T> {
            /// Another strong reference, recorded as taken here.
            #[track_caller]
            #[inline]
            fn clone(&self) -> Self {
                self.inner().counts.inc_strong();
                $Strong::taken(self.ptr, Location::caller())
            }
        }

        impl<T> Drop for $Strong<T> {
            #[inline]
            fn drop(&mut self) {
                let inner = self.inner();
                if inner.counts.dec_strong(inner.id, self.site) {
                    // SAFETY: that was the last strong reference.
                    unsafe { Inner::drop_value(self.ptr) }
                }
            }
        }

        impl<T> $Weak<T> {
            #[inline(always)]
            fn inner(&self) -> &Inner<T, $Counts> {
                // SAFETY: a weak reference keeps the allocation (not the
                // value).
                unsafe { self.ptr.as_ref() }
            }

            /// A strong reference, if the value is still alive; recorded as taken
            /// here.
            #[track_caller]
            pub fn upgrade(&self) -> Option<$Strong<T>> {
                if !self.inner().counts.inc_strong_if_alive() {
                    return None;
                }
                Some($Strong::taken(self.ptr, Location::caller()))
            }

            /// Strong references to the object (0 once it is gone).
            pub fn strong_count(&self) -> usize {
                self.inner().counts.strong()
            }

            /// Weak references to the object (0 once it is gone).
            pub fn weak_count(&self) -> usize {
                self.inner().counts.weak_if_alive()
            }

            /// True if both point to the same object.
            pub fn ptr_eq(&self, other: &Self) -> bool {
                self.ptr == other.ptr
            }
        }

        impl<T> Clone for $Weak<T> {
            fn clone(&self) -> Self {
                self.inner().counts.inc_weak();
                $Weak { ptr: self.ptr }
            }
        }

        impl<T> Drop for $Weak<T> {
            fn drop(&mut self) {
                // SAFETY: this weak reference's count, given up once.
                unsafe { Inner::release_weak(self.ptr) }
            }
        }

        impl<T> fmt::Debug for $Weak<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!("(", stringify!($Weak), ")"))
            }
        }
    };
}

tracked_pointer! {
    /// A single-thread reference-counted pointer that records where each
    /// strong reference was taken; see the [module docs](self).
    pub struct TrackedRc;
    /// A weak reference to a [`TrackedRc`] object: does not keep the value
    /// alive, and is not a holder.
    pub struct WeakRc;
    counts: RcCounts;
    /// Strong references to the object.
    fn strong_count;
    /// Weak references to the object.
    fn weak_count;
    /// The value, if this is the only strong reference (weak ones are
    /// then left dangling); otherwise `this` back.
    fn try_unwrap;
    /// The value if this is the only strong reference; otherwise drops
    /// this reference and returns `None`.
    fn into_inner;
}

tracked_pointer! {
    /// A thread-safe reference-counted pointer that records where each strong
    /// reference was taken; see the [module docs](self).
    pub struct TrackedArc;
    /// A weak reference to a [`TrackedArc`] object.
    pub struct WeakArc;
    counts: ArcCounts;
    /// Strong references to the object (a snapshot).
    fn strong_count;
    /// Weak references to the object (a snapshot).
    fn weak_count;
    /// The value, if this is the only strong reference; otherwise `this`
    /// back.
    fn try_unwrap;
    /// The value if this is the only strong reference; otherwise drops
    /// this reference and returns `None`. Of several threads calling this
    /// on the last references, exactly one gets the value.
    fn into_inner;
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
