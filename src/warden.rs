//! `Warden`, the global allocator.
//!
//! With the `tracking` feature off, every method forwards to the inner
//! allocator and nothing else is compiled. With it on, each method first
//! does one relaxed load of the tracking mode; while tracking has never been
//! on (`DEBUG_MEMORY` unset) that load is the whole cost.
//!
//! The path of one tracked allocation (see docs/architecture.md):
//! `alloc` → inner allocator → re-entrancy guard → stack capture → stack
//! table → registry shard. A free goes: registry shard (remove) → inner
//! allocator. Blocks the registry does not know (allocated while tracking
//! was off, or by memwarden itself) are passed through untouched.
use std::alloc::{GlobalAlloc, Layout, System};

/// The memwarden global allocator: register it with one line.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: memwarden::Warden = memwarden::Warden::new();
/// # fn main() {}
/// ```
///
/// It wraps another allocator, [`System`] by default; use
/// [`Warden::wrap`] for any other `GlobalAlloc`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Warden<A = System> {
    inner: A,
}

impl Warden<System> {
    /// A `Warden` around the system allocator.
    pub const fn new() -> Self {
        Warden { inner: System }
    }
}

impl<A> Warden<A> {
    /// A `Warden` around any other global allocator, such as mimalloc:
    ///
    /// ```
    /// use std::alloc::System;
    /// #[global_allocator]
    /// static GLOBAL: memwarden::Warden<System> = memwarden::Warden::wrap(System);
    /// # fn main() {}
    /// ```
    pub const fn wrap(inner: A) -> Self {
        Warden { inner }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

#[cfg(not(all(feature = "tracking", target_os = "linux")))]
// SAFETY: every method forwards to the inner allocator with the caller's
// arguments unchanged, so the inner allocator's guarantees carry over.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Warden<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}

#[cfg(all(feature = "tracking", target_os = "linux"))]
mod tracked {
    use super::*;
    use crate::guard::{self, Reentry};
    use crate::registry::{self, Record};
    use crate::stack::{self, MAX_CAPTURE};
    use crate::state::{self, MODE, OFF, ON};
    use std::sync::atomic::Ordering;

    /// Bytes at the start of a new (not zeroed) block filled with
    /// [`JUNK`], so that stale pointers left by earlier owners of the memory
    /// do not make leaked blocks look reachable (Valgrind ignores undefined
    /// bytes for the same reason), and so reads of uninitialised memory
    /// stand out. Same limit as AddressSanitizer's `max_malloc_fill_size`.
    const FILL_LIMIT: usize = 4096;
    /// The fill byte for new memory.
    pub(crate) const JUNK: u8 = 0xbe;

    /// An address in the caller's stack frame: every frame at or below it
    /// belongs to memwarden and is left out of the captured stack.
    macro_rules! entry_sp {
        () => {{
            let marker = 0u8;
            std::hint::black_box(&marker) as *const u8 as usize
        }};
    }

    // SAFETY: blocks come from the inner allocator with the caller's layout
    // unchanged; `dealloc`/`realloc` forward the caller's pointer and layout
    // to the inner allocator exactly once, and only after the registry
    // dropped its record. Bookkeeping never allocates through `self`.
    unsafe impl<A: GlobalAlloc> GlobalAlloc for Warden<A> {
        #[inline]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if MODE.load(Ordering::Relaxed) != OFF {
                // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
                return unsafe { self.alloc_tracked(layout, false, entry_sp!()) };
            }
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
            unsafe { self.inner.alloc(layout) }
        }

        #[inline]
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if MODE.load(Ordering::Relaxed) != OFF {
                // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
                return unsafe { self.alloc_tracked(layout, true, entry_sp!()) };
            }
            // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
            unsafe { self.inner.alloc_zeroed(layout) }
        }

        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if MODE.load(Ordering::Relaxed) != OFF {
                // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
                return unsafe { self.dealloc_tracked(ptr, layout) };
            }
            // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
            unsafe { self.inner.dealloc(ptr, layout) }
        }

        #[inline]
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if MODE.load(Ordering::Relaxed) != OFF {
                // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
                return unsafe { self.realloc_tracked(ptr, layout, new_size, entry_sp!()) };
            }
            // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
            unsafe { self.inner.realloc(ptr, layout, new_size) }
        }
    }

    impl<A: GlobalAlloc> Warden<A> {
        /// # Safety
        /// The contract of `GlobalAlloc::alloc` (or `alloc_zeroed`).
        #[inline(never)]
        unsafe fn alloc_tracked(&self, layout: Layout, zeroed: bool, entry_sp: usize) -> *mut u8 {
            // SAFETY: the caller upholds the `alloc`/`alloc_zeroed` contract.
            let ptr = unsafe {
                if zeroed {
                    self.inner.alloc_zeroed(layout)
                } else {
                    self.inner.alloc(layout)
                }
            };
            if ptr.is_null() || state::mode() != ON {
                return ptr;
            }
            // Memwarden's own allocations (under a Reentry) stay untracked.
            let Some(_busy) = Reentry::enter() else {
                return ptr;
            };
            if !zeroed {
                // SAFETY: `ptr` is a fresh block of `layout.size()` bytes.
                unsafe { ptr.write_bytes(JUNK, layout.size().min(FILL_LIMIT)) };
            }
            track(ptr as usize, layout.size(), layout.align(), entry_sp);
            ptr
        }

        /// # Safety
        /// The contract of `GlobalAlloc::dealloc`.
        #[inline(never)]
        unsafe fn dealloc_tracked(&self, ptr: *mut u8, layout: Layout) {
            if let Some(rec) = registry::remove(ptr as usize) {
                registry::count_free(rec.size());
            }
            // SAFETY: the caller upholds the `dealloc` contract.
            unsafe { self.inner.dealloc(ptr, layout) }
        }

        /// # Safety
        /// The contract of `GlobalAlloc::realloc`.
        #[inline(never)]
        unsafe fn realloc_tracked(
            &self,
            ptr: *mut u8,
            layout: Layout,
            new_size: usize,
            entry_sp: usize,
        ) -> *mut u8 {
            // Remove the record before the inner allocator may free the old
            // block: otherwise another thread could be handed the same
            // address and record it before we drop the old record.
            let Some(old) = registry::remove(ptr as usize) else {
                // Not ours to track (allocated while tracking was off, or by
                // memwarden itself): the new block stays untracked too.
                // SAFETY: the caller upholds the `realloc` contract.
                return unsafe { self.inner.realloc(ptr, layout, new_size) };
            };
            registry::count_free(old.size());
            // SAFETY: the caller upholds the `realloc` contract.
            let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
            if new.is_null() {
                // The old block is still the program's: put its record back.
                registry::restore(old);
                return new;
            }
            match Reentry::enter() {
                Some(_busy) if state::mode() == ON => {
                    if new_size > old.size() {
                        let grown = (new_size - old.size()).min(FILL_LIMIT);
                        // SAFETY: bytes old.size()..new_size of the new block
                        // are fresh and belong to it.
                        unsafe { new.add(old.size()).write_bytes(JUNK, grown) };
                    }
                    track(new as usize, new_size, layout.align(), entry_sp);
                }
                _ => {
                    // Tracking paused (or memwarden's own realloc): keep the
                    // block tracked under its original stack.
                    let seq = registry::count_alloc(new_size);
                    let rec = Record::new(
                        new as usize,
                        new_size,
                        layout.align(),
                        seq,
                        old.stack,
                        old.thread,
                    );
                    if !registry::insert(rec) {
                        registry::count_free(new_size);
                    }
                }
            }
            new
        }
    }

    /// Records a new tracked block with the current call stack.
    #[inline(always)]
    fn track(addr: usize, size: usize, align: usize, entry_sp: usize) {
        let mut frames = [0usize; MAX_CAPTURE];
        let n = stack::capture(
            &mut frames,
            state::frames() + stack::INTERNAL_FRAMES,
            entry_sp,
        );
        let stack = stack::intern(&frames[..n]);
        let seq = registry::count_alloc(size);
        if !registry::insert(Record::new(
            addr,
            size,
            align,
            seq,
            stack,
            guard::thread_id(),
        )) {
            registry::count_free(size);
        }
    }
}
