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

#[cfg(all(feature = "tracking", target_os = "linux", target_env = "gnu"))]
pub(crate) use tracked::may_be_quarantined;
#[cfg(all(feature = "tracking", target_os = "linux", target_env = "gnu"))]
pub(crate) use tracked::report_c_double_free;

#[cfg(all(feature = "tracking", target_os = "linux"))]
mod tracked {
    use super::*;
    use crate::check::{self, Found};
    use crate::guard::{self, Reentry};
    use crate::registry::{self, Evicted, Freed, Freeing, INTERNAL, Lookup, Record};
    use crate::report::HeapErrorKind;
    use crate::stack::StackId;
    use crate::stack::here;
    use crate::state::{self, MODE, OFF, ON};
    use std::sync::atomic::Ordering;

    /// Bytes at the start of a new (not zeroed) block filled with
    /// [`JUNK`], so that stale pointers left by earlier owners of the memory
    /// do not make leaked blocks look reachable (Valgrind ignores undefined
    /// bytes for the same reason), and so reads of uninitialised memory
    /// stand out. As much as a freed block is poisoned: memory comes back
    /// from the inner allocator unpoisoned after blocks the quarantine did
    /// not keep (too big for it, no quarantine, `DEBUG_MEMORY_POISON=0`),
    /// and after the old block of a `realloc` that moved; a stale pointer
    /// 12,000 bytes into such memory kept a leaked block reachable when this
    /// was AddressSanitizer's 4 KiB (`max_malloc_fill_size`).
    const FILL_LIMIT: usize = check::POISON_LIMIT;
    /// Bytes of the part a `realloc` grows filled with [`JUNK`], as many:
    /// a block grown in place takes in the memory after it as it was, and
    /// collections that grow by `realloc` seldom write all of their new
    /// capacity (a stale pointer there made a leak look reachable).
    const GROW_FILL_LIMIT: usize = check::POISON_LIMIT;
    /// The fill byte for new memory.
    pub(crate) const JUNK: u8 = 0xbe;

    /// The stack pointer of the `GlobalAlloc` method (or of the function
    /// it was inlined into): every frame whose stack pointer is below it is
    /// memwarden's own and is left out of captured stacks.
    macro_rules! entry_sp {
        () => {
            crate::roots::stack_pointer()
        };
    }

    // SAFETY: a tracked block is the middle of an inner block allocated with
    // `check::inner_layout`, aligned as the caller asked; `dealloc` and
    // `realloc` find the inner block again from the registry's record (never
    // from the caller's possibly wrong layout) and hand it to the inner
    // allocator exactly once. Pointers the registry does not know are
    // forwarded unchanged only when they may be untracked blocks, and
    // refused (reported) otherwise. Bookkeeping never allocates through
    // `self`.
    unsafe impl<A: GlobalAlloc> GlobalAlloc for Warden<A> {
        #[inline]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if MODE.load(Ordering::Relaxed) != OFF {
                // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
                return unsafe { self.alloc_tracked(layout, false, entry_sp!(), false) };
            }
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
            unsafe { self.inner.alloc(layout) }
        }

        #[inline]
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if MODE.load(Ordering::Relaxed) != OFF {
                // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
                return unsafe { self.alloc_tracked(layout, true, entry_sp!(), false) };
            }
            // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
            unsafe { self.inner.alloc_zeroed(layout) }
        }

        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if MODE.load(Ordering::Relaxed) != OFF {
                // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
                return unsafe { self.dealloc_tracked(ptr, layout, entry_sp!()) };
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
        /// An allocation of C's `malloc` family (`track_c_heap!`): tracked
        /// as `alloc` would, its record marked as C's (see `check_block`).
        ///
        /// # Safety
        /// The contract of `GlobalAlloc::alloc` (or `alloc_zeroed`), but
        /// for a zero size, which the inner allocator must take.
        #[cfg(target_env = "gnu")]
        #[inline(always)]
        pub(crate) unsafe fn alloc_c(&self, layout: Layout, zeroed: bool) -> *mut u8 {
            // SAFETY: per the contract.
            unsafe { self.alloc_tracked(layout, zeroed, entry_sp!(), true) }
        }

        /// # Safety
        /// The contract of `GlobalAlloc::alloc` (or `alloc_zeroed`). `c`:
        /// the block is one of C's `malloc` family.
        #[inline(never)]
        unsafe fn alloc_tracked(
            &self,
            layout: Layout,
            zeroed: bool,
            entry_sp: usize,
            c: bool,
        ) -> *mut u8 {
            #[cfg(target_env = "gnu")]
            if !c {
                crate::c_heap::note_rust_warden();
            }
            if state::mode() != ON {
                // SAFETY: the caller upholds the `alloc` contract.
                return unsafe { self.alloc_inner(layout, zeroed) };
            }
            let Some(_busy) = Reentry::enter() else {
                // memwarden's own allocation: untracked, but recorded so that
                // its free is not mistaken for an invalid one.
                // SAFETY: the caller upholds the `alloc` contract.
                let p = unsafe { self.alloc_inner(layout, zeroed) };
                if guard::forking() {
                    // A `fork` handler's, while this thread holds every
                    // shard's lock (see `guard::enter_fork`): not recorded.
                    state::note_untracked();
                } else if !p.is_null() {
                    let rec =
                        Record::new(p as usize, layout.size(), layout.align(), 0, INTERNAL, 0);
                    if !registry::insert(rec) {
                        state::note_untracked();
                    }
                }
                return p;
            };
            let (size, align) = (layout.size(), layout.align());
            let Some(il) = check::inner_layout(size, align) else {
                return std::ptr::null_mut();
            };
            // SAFETY: `il` has a non-zero size (it includes the caller's
            // non-zero size).
            let inner = unsafe { self.alloc_inner(il, zeroed) };
            if inner.is_null() {
                return inner;
            }
            // SAFETY: the front red zone lies inside the inner block.
            let user = unsafe { inner.add(check::front(align)) };
            // The table slot its record will take, fetched for writing
            // while the stack is captured: once a program's live blocks
            // outgrow the caches, that slot is a miss to memory, which
            // the insert waited for whole (`string_maps`: 1.29 times as
            // fast with this, under `DEBUG_MEMORY=leaks`).
            registry::prefetch_slot(user as usize);
            if state::redzones() {
                // SAFETY: `user` was allocated with `inner_layout(size, align)`.
                unsafe { check::paint(user, size, align) };
            }
            // Recorded before the junk fill: the registry's lock and the
            // counters are atomic read-modify-writes, which wait for every
            // store before them to reach the cache, and the fill's stores
            // (up to 64 KiB, to lines often not in cache) took most of an
            // allocation's time there. (Red zones first: a heap check may
            // look at them as soon as the block is recorded.)
            // (A leak scan that stops this thread before `alloc` returns
            // finds the block through `in_flight`.)
            guard::in_flight(user as usize);
            if !track(user as usize, size, align, entry_sp, c) {
                guard::in_flight(0);
                // SAFETY: `inner` was just allocated with `il`, and handed
                // to nobody; the caller upholds the `alloc` contract.
                return unsafe {
                    self.inner.dealloc(inner, il);
                    self.alloc_inner(layout, zeroed)
                };
            }
            if !zeroed {
                // SAFETY: `user` starts `size` fresh bytes of the inner block.
                unsafe { check::fill(user, JUNK, size.min(FILL_LIMIT)) };
            }
            guard::in_flight(0);
            user
        }

        /// A copy of the block `user` of `size` bytes aligned to `align`,
        /// which the registry could not record (its tables could not
        /// grow), in a plain block with the program's layout from the
        /// allocator that made the block (glibc's for one of C's, `c`):
        /// an untracked block, whose free then goes to that allocator
        /// with that layout, like every untracked block's. The caller
        /// frees the tracked block. `None` if there is no memory for the
        /// copy.
        ///
        /// # Safety
        /// `user` must be readable for `size` bytes, `size` non-zero.
        #[cold]
        #[inline(never)]
        unsafe fn untracked_copy(
            &self,
            c: bool,
            user: *const u8,
            size: usize,
            align: usize,
        ) -> Option<*mut u8> {
            let layout = Layout::from_size_align(size, align).ok()?;
            // SAFETY: a layout of non-zero size.
            let plain = unsafe { self.alloc_by(c, layout) };
            if plain.is_null() {
                return None;
            }
            // SAFETY: both blocks hold `size` bytes and are distinct.
            unsafe { std::ptr::copy_nonoverlapping(user, plain, size) };
            Some(plain)
        }

        /// # Safety
        /// The contract of `GlobalAlloc::alloc`.
        #[inline]
        unsafe fn alloc_inner(&self, layout: Layout, zeroed: bool) -> *mut u8 {
            // SAFETY: per the contract.
            unsafe {
                if zeroed {
                    self.inner.alloc_zeroed(layout)
                } else {
                    self.inner.alloc(layout)
                }
            }
        }

        /// # Safety
        /// The contract of `GlobalAlloc::dealloc`, except that a pointer this
        /// allocator does not know, or a wrong layout, is reported rather
        /// than undefined behaviour.
        #[inline(never)]
        unsafe fn dealloc_tracked(&self, ptr: *mut u8, layout: Layout, entry_sp: usize) {
            let addr = ptr as usize;
            // Until its record has left the table, the block is referenced
            // only from this call's frames and registers, which a scan
            // stopping this thread inside memwarden would not read.
            guard::in_flight(addr);
            // The checks below read the block's red zones, often out of
            // cache (freed long after it was written, or on another core):
            // start fetching them now, while the stack is captured.
            crate::sys::prefetch(addr.wrapping_sub(check::BACK));
            crate::sys::prefetch(addr.wrapping_add(layout.size()));
            // And the registry's lines for it (its record, its shard).
            registry::prefetch_slot(addr);
            // Reports are made only outside memwarden's own code.
            let busy = Reentry::enter();
            let report = busy.is_some();
            if !report && guard::forking() {
                guard::in_flight(0);
                // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
                return unsafe { self.dealloc_in_fork_window(ptr, layout) };
            }
            let budget = registry::Budget::new(state::quarantine());
            // The freeing stack, for the quarantine and for any error
            // found: taken before the registry's lock, not under it. Without
            // a quarantine only an error needs it: taken then (`here_or`).
            let free_stack = if report && budget.keeps_any() {
                here(entry_sp)
            } else {
                0
            };
            let here_or = |stack: StackId| if stack != 0 { stack } else { here(entry_sp) };
            let poison = state::poison();
            // Two variables, not one tuple: the usual case then writes a
            // bool and nothing else (a 40-byte tuple written through the
            // closure was copied in overlapping pieces, and the load that
            // spanned two earlier stores stalled: 3% of a two-thread run).
            let mut mismatch = false;
            let mut overrun = None;
            let mut evicted = Evicted::new();
            let thread = guard::thread_id();
            let freeing = registry::free(
                addr,
                free_stack,
                thread,
                budget,
                // SAFETY: `ptr` is a block handed back to us (`dealloc`'s
                // contract), not yet freed: the registry has no record of it.
                || unsafe { may_be_quarantined(ptr) },
                |rec, kept| {
                    // Counted before the poison's stores, which the
                    // counter's atomic add would otherwise wait for.
                    registry::count_free(rec.size(), thread);
                    // SAFETY: a live tracked block, which nobody else can
                    // free while the registry's lock is held.
                    let (m, o) = unsafe { check_block(rec, layout) };
                    mismatch = m;
                    if o.is_some() {
                        overrun = o;
                    }
                    if kept && poison {
                        // SAFETY: as above; the block is ours now.
                        unsafe { check::poison(rec.addr as *mut u8, rec.size()) };
                    }
                },
                &mut evicted,
            );
            guard::in_flight(0);
            match freeing {
                Freeing::Internal(_) => {
                    // memwarden's own buffers hold the addresses of the
                    // blocks it scanned and reported: wiped, so that none
                    // survives into a block the program gets next, where
                    // the scan would take it for a pointer.
                    // SAFETY: an internal block, allocated with exactly this
                    // layout by memwarden's own code, and no longer used.
                    unsafe {
                        ptr.write_bytes(check::FREED, layout.size());
                        self.inner.dealloc(ptr, layout)
                    }
                }
                Freeing::Live { rec, kept } => {
                    if report && (mismatch || overrun.is_some()) {
                        block_errors(&rec, layout, (mismatch, overrun), here_or(free_stack));
                    }
                    if !kept {
                        // SAFETY: the block's record is gone; it is freed
                        // exactly once, here.
                        unsafe { self.free_inner(rec) };
                    }
                    for old in evicted.as_slice() {
                        if poison {
                            // SAFETY: a block that just left the quarantine
                            // is still allocated and no longer the program's.
                            let changed = unsafe {
                                check::check_poison(old.rec.addr as *const u8, old.rec.size())
                            };
                            if let (Some(off), true) = (changed, report) {
                                use_after_free(old, off, here_or(free_stack));
                            }
                        }
                        // SAFETY: the evicted block left the quarantine
                        // and is freed exactly once, here.
                        unsafe { self.free_inner(old.rec) };
                    }
                }
                Freeing::Freed(f) => {
                    check::report(
                        Found::new(HeapErrorKind::DoubleFree, addr, here_or(free_stack)).freed(&f),
                    );
                }
                Freeing::Unknown => {
                    if state::all_tracked() {
                        check::report(Found::new(
                            HeapErrorKind::InvalidFree,
                            addr,
                            here_or(free_stack),
                        ));
                    } else {
                        // Allocated while tracking was off: not ours to judge.
                        // SAFETY: the caller upholds the `dealloc` contract.
                        unsafe { self.inner.dealloc(ptr, layout) }
                    }
                }
            }
        }

        /// A free in the fork window (see `guard::enter_fork`): this
        /// thread holds the registry's locks, so the block's record cannot
        /// be looked up, and the free is done when the window closes. With
        /// an inner allocator that has state (not zero-sized), the block is
        /// never freed: the `Warden` whose method was called might be gone
        /// by then (a leak, reported as such).
        ///
        /// # Safety
        /// The contract of `GlobalAlloc::dealloc`.
        #[cold]
        #[inline(never)]
        unsafe fn dealloc_in_fork_window(&self, ptr: *mut u8, layout: Layout) {
            if size_of::<A>() == 0 {
                guard::defer_free(guard::Deferred {
                    free: Self::dealloc_later,
                    ptr: ptr as usize,
                    layout,
                });
            }
        }

        /// `dealloc`, as `guard::Deferred::free` calls it (for a free made
        /// in the fork window).
        ///
        /// # Safety
        /// `A` must be zero-sized; the contract of `GlobalAlloc::dealloc`.
        unsafe fn dealloc_later(ptr: *mut u8, layout: Layout) {
            // SAFETY: `A`, and so `Self`, is zero-sized (the contract): a
            // reference to one is valid at any aligned non-null address,
            // and every value of it is the same, the one whose `dealloc`
            // was called in the window.
            let this = unsafe { std::ptr::NonNull::<Self>::dangling().as_ref() };
            // SAFETY: per the contract.
            unsafe { this.dealloc(ptr, layout) }
        }

        /// A `realloc` in the fork window (see
        /// [`Self::dealloc_in_fork_window`]): a new block from the inner
        /// allocator, untracked (as the window's allocations are), the
        /// bytes copied, and the old block's free deferred.
        ///
        /// # Safety
        /// The contract of `GlobalAlloc::realloc`.
        #[cold]
        #[inline(never)]
        unsafe fn realloc_in_fork_window(
            &self,
            ptr: *mut u8,
            layout: Layout,
            new_size: usize,
        ) -> *mut u8 {
            let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                return std::ptr::null_mut();
            };
            // SAFETY: `new_size` is non-zero (`realloc`'s contract).
            let new = unsafe { self.inner.alloc(new_layout) };
            if !new.is_null() {
                state::note_untracked();
                // SAFETY: both blocks are live and distinct, the old one of
                // `layout.size()` bytes, the new one of `new_size`; the old
                // one is the caller's to free (`realloc`'s contract).
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc_in_fork_window(ptr, layout);
                }
            }
            new
        }

        /// Moves the block at `ptr` (allocated from the inner allocator
        /// with `layout`) into a new block of `new_size` bytes from
        /// `alloc`: copies the bytes, wipes the old block if `wipe`, and
        /// frees it with the inner allocator. Null (the old block kept) if
        /// the layout is invalid or `alloc` fails.
        ///
        /// # Safety
        /// The contract of `GlobalAlloc::realloc` for `ptr`, `layout` and
        /// `new_size`; `alloc` must return null or a live block of at least
        /// the layout it is given, distinct from `ptr`.
        unsafe fn move_block(
            &self,
            ptr: *mut u8,
            layout: Layout,
            new_size: usize,
            wipe: bool,
            alloc: impl FnOnce(Layout) -> *mut u8,
        ) -> *mut u8 {
            let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                return std::ptr::null_mut();
            };
            let new = alloc(new_layout);
            if !new.is_null() {
                // SAFETY: both blocks are live and distinct; the old one has
                // `layout.size()` bytes, the new one `new_size`; the old one
                // is freed exactly once, with its layout.
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    if wipe {
                        ptr.write_bytes(check::FREED, layout.size());
                    }
                    self.inner.dealloc(ptr, layout);
                }
            }
            new
        }

        /// `realloc` of one of memwarden's own blocks: a new block, the
        /// bytes copied, the old one wiped (as an internal free is) and
        /// freed. The inner allocator's `realloc` would free the old block
        /// with the block addresses a scan put there still in it.
        ///
        /// # Safety
        /// The contract of `GlobalAlloc::realloc`, for an internal block.
        unsafe fn realloc_internal(
            &self,
            ptr: *mut u8,
            layout: Layout,
            new_size: usize,
        ) -> *mut u8 {
            // SAFETY: per the contract; the inner allocator's `alloc` gets a
            // layout with the non-zero `new_size` (realloc's contract) and
            // returns null or a new block.
            unsafe { self.move_block(ptr, layout, new_size, true, |l| self.inner.alloc(l)) }
        }

        /// Moves an untracked block into a new tracked one of `new_size`
        /// bytes: a tracked block has red zones, so the inner allocator's
        /// `realloc` cannot make it in place.
        ///
        /// # Safety
        /// The contract of `GlobalAlloc::realloc` for an untracked block.
        unsafe fn adopt(
            &self,
            ptr: *mut u8,
            layout: Layout,
            new_size: usize,
            entry_sp: usize,
        ) -> *mut u8 {
            // SAFETY: per the contract; `alloc_tracked` gets a layout with
            // the non-zero `new_size` (realloc's contract) and returns null
            // or a new block.
            unsafe {
                self.move_block(ptr, layout, new_size, false, |l| {
                    self.alloc_tracked(l, false, entry_sp, false)
                })
            }
        }

        /// # Safety
        /// `rec` must be a tracked block no longer in the registry or the
        /// quarantine, not freed yet.
        unsafe fn free_inner(&self, rec: Record) {
            let Some(il) = check::inner_layout(rec.size(), rec.align()) else {
                return;
            };
            // SAFETY: the block was allocated as `il` at `addr - front`.
            let inner = unsafe { (rec.addr as *mut u8).sub(check::front(rec.align())) };
            // A block of C's `malloc` family is glibc's, whatever `A` is
            // (it may be freed here by a Rust `dealloc`, or leave the
            // quarantine at a Rust free).
            #[cfg(target_env = "gnu")]
            if rec.is_c() {
                // SAFETY: as above; `LibcHeap` allocated it.
                return unsafe { crate::c_heap::LibcHeap.dealloc(inner, il) };
            }
            // SAFETY: as above; `self.inner` allocated it.
            unsafe { self.inner.dealloc(inner, il) }
        }

        /// A block of `layout` from the allocator that makes blocks of C's
        /// `malloc` family (`c`: glibc's, whatever `A` is) or of Rust's
        /// (see [`Self::free_inner`]).
        ///
        /// # Safety
        /// The contract of `GlobalAlloc::alloc`.
        unsafe fn alloc_by(&self, c: bool, layout: Layout) -> *mut u8 {
            #[cfg(target_env = "gnu")]
            if c {
                // SAFETY: per the contract.
                return unsafe { crate::c_heap::LibcHeap.alloc(layout) };
            }
            let _ = c;
            // SAFETY: per the contract.
            unsafe { self.inner.alloc(layout) }
        }

        /// `realloc` of the inner block `inner` (`il`) of `rec`, by the
        /// allocator that made it (see [`Self::free_inner`]).
        ///
        /// # Safety
        /// The contract of `GlobalAlloc::realloc` for `inner`, `il` and
        /// `new_size`.
        #[inline(always)]
        unsafe fn realloc_inner(
            &self,
            rec: &Record,
            inner: *mut u8,
            il: Layout,
            new_size: usize,
        ) -> *mut u8 {
            #[cfg(target_env = "gnu")]
            if rec.is_c() {
                // SAFETY: per the contract; `LibcHeap` allocated it.
                return unsafe { crate::c_heap::LibcHeap.realloc(inner, il, new_size) };
            }
            let _ = rec;
            // SAFETY: per the contract; `self.inner` allocated it.
            unsafe { self.inner.realloc(inner, il, new_size) }
        }

        /// # Safety
        /// The contract of `GlobalAlloc::realloc`, except that an unknown or
        /// freed pointer, or a wrong layout, is reported rather than
        /// undefined behaviour (an unknown or freed pointer gives null).
        #[inline(never)]
        unsafe fn realloc_tracked(
            &self,
            ptr: *mut u8,
            layout: Layout,
            new_size: usize,
            entry_sp: usize,
        ) -> *mut u8 {
            if guard::forking() {
                // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
                return unsafe { self.realloc_in_fork_window(ptr, layout, new_size) };
            }
            let addr = ptr as usize;
            // Between the removal of its record and the insertion of the
            // new one, the block is in no snapshot: its bytes are a root.
            // (Not memwarden's own blocks, which hold block addresses.)
            let flight = (!guard::busy()).then(|| guard::InFlightBytes::new(addr, layout.size()));
            // Remove the record before the inner allocator may free the old
            // block: otherwise another thread could be handed the same
            // address and record it before we drop the old record.
            // SAFETY: as in `dealloc_tracked`.
            let old = match registry::remove(addr, || unsafe { may_be_quarantined(ptr) }) {
                Lookup::Live(rec) => rec,
                Lookup::Freed(f) => {
                    let _busy = Reentry::enter();
                    check::report(
                        Found::new(HeapErrorKind::DoubleFree, addr, here(entry_sp)).freed(&f),
                    );
                    return std::ptr::null_mut();
                }
                Lookup::Unknown => {
                    if state::all_tracked() {
                        let _busy = Reentry::enter();
                        check::report(Found::new(HeapErrorKind::InvalidFree, addr, here(entry_sp)));
                        return std::ptr::null_mut();
                    }
                    // Allocated while tracking was off. While tracking is on,
                    // the new block becomes a tracked one (a static
                    // collection filled before `enable()` and grown since is
                    // then seen, with the pointers it holds); otherwise it
                    // stays untracked.
                    if state::mode() == ON && !crate::guard::busy() {
                        // SAFETY: the caller upholds the `realloc` contract.
                        return unsafe { self.adopt(ptr, layout, new_size, entry_sp) };
                    }
                    // SAFETY: the caller upholds the `realloc` contract.
                    return unsafe { self.inner.realloc(ptr, layout, new_size) };
                }
            };
            if old.is_internal() {
                // SAFETY: an internal block with exactly this layout.
                let new = unsafe { self.realloc_internal(ptr, layout, new_size) };
                let rec = if new.is_null() {
                    old
                } else {
                    Record::new(new as usize, new_size, layout.align(), 0, INTERNAL, 0)
                };
                if !registry::insert(rec) {
                    state::note_untracked();
                }
                return new;
            }
            if let Some(f) = &flight {
                // SAFETY: a live tracked block of `old.size()` bytes, which
                // the inner allocator has not seen yet.
                unsafe { f.keep_head(old.size()) };
            }
            let thread = guard::thread_id();
            registry::count_free(old.size(), thread);
            let busy = Reentry::enter();
            // SAFETY: a live tracked block, ours until we put it back.
            let found = unsafe { check_block(&old, layout) };
            if busy.is_some() && (found.0 || found.1.is_some()) {
                block_errors(&old, layout, found, here(entry_sp));
            }
            let align = old.align();
            let front = check::front(align);
            if let Some(f) = &flight {
                f.moving();
            }
            let new = match (
                check::inner_layout(old.size(), align),
                check::inner_layout(new_size, align),
            ) {
                // SAFETY: the old block was allocated as `il` at `ptr -
                // front`; `nl` has a non-zero size and the same alignment.
                (Some(il), Some(nl)) => unsafe {
                    self.realloc_inner(&old, ptr.sub(front), il, nl.size())
                },
                _ => std::ptr::null_mut(),
            };
            if new.is_null() {
                if let Some(f) = &flight {
                    f.stayed();
                }
                // The old block is still the program's: put its record back.
                registry::restore(old, thread);
            } else {
                // SAFETY: the new inner block has room for the front red
                // zone, `new_size` bytes and the back red zone.
                let user = unsafe { new.add(front) };
                if let Some(f) = &flight {
                    f.moved(user as usize, old.size().min(new_size));
                }
                if new_size > old.size() {
                    let grown = (new_size - old.size()).min(GROW_FILL_LIMIT);
                    // SAFETY: bytes old.size()..new_size are the block's.
                    unsafe { user.add(old.size()).write_bytes(JUNK, grown) };
                }
                if state::redzones() {
                    // SAFETY: `user` has the inner layout of `new_size`.
                    unsafe { check::paint(user, new_size, align) };
                }
                let recorded = if busy.is_some() && state::mode() == ON {
                    track(user as usize, new_size, align, entry_sp, old.is_c())
                } else {
                    // Tracking paused: keep the block tracked under its
                    // original stack.
                    let seq = registry::count_alloc(new_size, thread);
                    let rec =
                        Record::new(user as usize, new_size, align, seq, old.stack, old.thread)
                            .marked_c(old.is_c());
                    record(rec, thread)
                };
                if !recorded {
                    // SAFETY: `user` holds `new_size` (non-zero) bytes.
                    let copy = unsafe { self.untracked_copy(old.is_c(), user, new_size, align) };
                    if let Some(plain) = copy {
                        if let Some(f) = &flight {
                            f.moved(plain as usize, new_size);
                        }
                        let rec = Record::new(user as usize, new_size, align, 0, 0, 0)
                            .marked_c(old.is_c());
                        // SAFETY: the tracked block, allocated with the
                        // inner layout of `new_size` by the allocator of
                        // `old`, has no record and nobody else knows it:
                        // freed once, here.
                        unsafe { self.free_inner(rec) };
                        return plain;
                    }
                    // No memory for the copy either: the block goes out
                    // without a record (see docs/architecture.md).
                }
            }
            if new.is_null() {
                new
            } else {
                // SAFETY: as above.
                unsafe { new.add(front) }
            }
        }
    }

    /// Whether `ptr`, handed back to `dealloc` or `realloc` with no record
    /// in the registry, may be a small block in quarantine (whose record is
    /// in its shard's FIFO), so that the registry searches for it there.
    /// Always, when every block was tracked: an address with no record is
    /// then an error, and the search tells a double free from an invalid
    /// free. Otherwise most such addresses are blocks allocated untracked
    /// (before `enable()`, while paused, during the exit report), and a
    /// quarantined block starts with the poison byte (with
    /// `DEBUG_MEMORY_POISON` on) and has the red-zone pattern right before
    /// it (with `DEBUG_MEMORY_REDZONES` on; when those bytes lie on the
    /// page before, they are not read, and the search is made): a read or
    /// two spares the others the search. With both off there is no sign to
    /// read, and every such free searches. (A block freed, then written
    /// over at its first byte and right before it, and freed again while
    /// blocks go untracked, would go to the inner allocator a second time
    /// unseen; the checks still report both writes, the poison's when the
    /// block leaves the quarantine.)
    ///
    /// # Safety
    /// When not every block was tracked, `ptr` must be readable for one
    /// byte (any block the program hands back is).
    #[inline]
    pub(crate) unsafe fn may_be_quarantined(ptr: *const u8) -> bool {
        if state::all_tracked() {
            return true;
        }
        let poison = state::poison();
        if !poison && !state::redzones() {
            return true;
        }
        // SAFETY: not every block was tracked: `ptr` is readable for one
        // byte, per the contract (`may_follow_a_red_zone` needs no more).
        unsafe { (poison && ptr.read() == check::FREED) || check::may_follow_a_red_zone(ptr) }
    }

    /// Checks a tracked block being freed or reallocated with the
    /// program's `layout`: is the layout other than the block's, and where
    /// are its red zones written, if they are.
    ///
    /// # Safety
    /// `rec` must be a live tracked block that nobody else frees meanwhile.
    #[inline(always)]
    unsafe fn check_block(rec: &Record, layout: Layout) -> (bool, Option<check::Overrun>) {
        let mismatch = if rec.is_c() {
            // A block of C's `malloc` family freed through Rust's allocator
            // (taken over with `CString::from_raw`, say, or allocated by
            // `System` while tracking switched on between `Warden`'s look
            // at the mode and `malloc`'s): its size must match, and its
            // alignment be what it had, at least malloc's 16 bytes.
            rec.size() != layout.size()
                || layout.align() > rec.align().max(crate::sys::MALLOC_ALIGN)
        } else {
            (rec.size(), rec.align()) != (layout.size(), layout.align())
        };
        // SAFETY: per the contract, the block and its red zones are live.
        let overrun =
            unsafe { check::check_redzones(rec.addr as *const u8, rec.size(), rec.align()) };
        (mismatch, overrun)
    }

    /// Reports what [`check_block`] found, at stack `here`.
    #[cold]
    #[inline(never)]
    fn block_errors(
        rec: &Record,
        layout: Layout,
        (mismatch, overrun): (bool, Option<check::Overrun>),
        here: StackId,
    ) {
        if mismatch {
            let mut f = Found::new(HeapErrorKind::LayoutMismatch, rec.addr, here);
            f.block = Some(*rec);
            f.passed = Some((layout.size(), layout.align()));
            check::report(f);
        }
        if let Some(o) = overrun {
            let mut f = Found::new(HeapErrorKind::Overrun, rec.addr, here);
            f.block = Some(*rec);
            f.overrun = Some(o);
            check::report(f);
        }
    }

    /// Reports a second `free` (or a `realloc`) of C's block `addr`, which
    /// the registry no longer knows but whose first `free` left its mark
    /// (see `c_heap::mark_freed`), at the stack above `entry_sp`. The
    /// record is gone: the report has no allocating or freeing stack.
    #[cfg(target_env = "gnu")]
    #[cold]
    #[inline(never)]
    pub(crate) fn report_c_double_free(addr: usize, entry_sp: usize) {
        let Some(_busy) = Reentry::enter() else {
            return;
        };
        check::report(Found::new(HeapErrorKind::DoubleFree, addr, here(entry_sp)));
    }

    /// Reports a change found in quarantined block `old` at offset `off`.
    #[cold]
    #[inline(never)]
    fn use_after_free(old: &Freed, off: usize, here: StackId) {
        let mut f = Found::new(HeapErrorKind::UseAfterFree, old.rec.addr, here).freed(old);
        f.offset = Some(off);
        check::report(f);
    }

    /// Records a new tracked block with the current call stack; `false`
    /// if the registry's tables could not grow for it (then every block is
    /// no longer tracked, and the caller hands out an untracked block
    /// instead, which the inner allocator frees with the program's layout,
    /// as it does every untracked block).
    #[inline(always)]
    fn track(addr: usize, size: usize, align: usize, entry_sp: usize, c: bool) -> bool {
        let stack = here(entry_sp);
        let thread = guard::thread_id();
        let seq = registry::count_alloc(size, thread);
        record(
            Record::new(addr, size, align, seq, stack, thread).marked_c(c),
            thread,
        )
    }

    /// Inserts `rec`, counted by `thread` already; `false`, with the count
    /// undone and every block no longer tracked, if the registry's tables
    /// could not grow for it (see [`track`]).
    #[inline(always)]
    fn record(rec: Record, thread: u32) -> bool {
        let stored = registry::insert(rec);
        if !stored {
            registry::count_free(rec.size(), thread);
            state::note_untracked();
        }
        stored
    }
}
