//! Typed object pools: [`Pool`] for one thread, [`SyncPool`] for many.
//!
//! A pool hands out objects of one type carved from chunks (one global
//! allocation holds many objects) and takes them back on a free list, as C
//! programs' `mempool_create`/`mempool_alloc` do. Taking and returning an
//! object costs a few instructions instead of a `malloc`/`free` pair, and
//! in a debug build each object remembers the line that took it, so that
//! objects never returned show up with that line in the exit report and in
//! the pool's own [`Pool::leaks`].
//!
//! ```
//! use memwarden::pool::Pool;
//!
//! let pool: Pool<[u8; 64]> = Pool::new();
//! let mut a = pool.alloc([0; 64]).unwrap(); // a PoolBox: Deref, DerefMut
//! a[0] = 1;
//! let b = pool.alloc([2; 64]).unwrap();
//! assert_eq!(pool.stats().live, 2);
//! drop(a); // back on the free list
//! assert_eq!(pool.stats().live, 1);
//! assert_eq!(pool.leaks()[0].taken_at.line(), line!() - 4); // where `b` was taken
//! # drop(b);
//! ```
//!
//! Chunk size and a capacity limit are set with a [`Builder`]; `alloc`
//! never panics: it returns a [`PoolError`] (with the value) when the
//! capacity is reached or memory runs out. [`Pool::shrink`] gives chunks
//! whose objects are all free back to the allocator. See `docs/pools.md`
//! for when to choose a pool over `Box` or an arena, and for benchmarks.
//!
//! # Ownership: why shared, not borrowed
//!
//! A [`PoolBox`] keeps the pool's memory alive on its own: the pool handle
//! and every box count as owners of a shared core (an `Rc`-like count, not
//! atomic for [`Pool`]), and the core frees its chunks when the last of
//! them goes. So dropping a pool while boxes are alive is safe: the boxes
//! stay valid, and the memory goes when the last box returns.
//!
//! The other sound design, `PoolBox<'p, T>` borrowing the pool, was
//! rejected: boxes could not be stored next to their pool (in the same
//! struct), returned from the function that owns the pool, or sent to a
//! thread that is not scoped, which rules out most real uses of a
//! thread-safe pool. Its speed advantage is one non-atomic increment and
//! decrement per object, on a cache line `alloc` touches anyway (the free
//! list head sits next to the count): under a nanosecond, as the benchmarks
//! show.
//!
//! # Leaks
//!
//! `alloc` is `#[track_caller]`: each object records the file, line and
//! column of the `alloc` call (one store), whatever the build. Pools
//! created while tracking is on (`memwarden::is_enabled()`) also capture
//! the call stack of each `alloc`, and register with memwarden, so that
//! objects never returned (a box passed to `mem::forget`, kept in a leaked
//! cycle, or alive when the pool was dropped) are listed at exit, with
//! that line, by [`outstanding()`]. They also date each object (the
//! sequence number and thread of its `alloc`, kept after its slot), so that
//! `assert_no_leaks`, `check_leaks` and checkpoints count the objects taken
//! while they ran, whenever the chunk was allocated. With the `tracking`
//! cargo feature off, [`Pool::leaks`] still lists file:line per object,
//! without stacks, and [`outstanding()`] is empty.
//!
//! # Thread safety
//!
//! [`Pool`] and [`PoolBox`] are neither `Send` nor `Sync`: their counts and
//! free list use no atomics. [`SyncPool`] is `Sync`, and its boxes are
//! `Send` and may be dropped on any thread: see its docs for its per-thread
//! caches.
use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

mod outstanding;
mod slot;
mod sync;

pub use outstanding::{Holder, Outstanding, OutstandingKind, outstanding};
pub use sync::{SyncPool, SyncPoolBox};

#[allow(unused_imports)] // used by the exit report when tracking is built in
pub(crate) use outstanding::{
    ObjectNow, PoolObject, PoolView, PoolViews, hold_for_fork, pool_outstanding, pool_views,
    release_after_fork,
};
pub(crate) use outstanding::{hide, next_id, quiet, read_word, reveal};
#[allow(unused_imports)] // used by the leak scan when tracking is built in
pub(crate) use slot::ChunkView;

use outstanding::capture_stack;
use slot::{Chunk, Slot, chunk_of, empty_chunks, sort_by_site};
use std::alloc::Layout;

use crate::checked;

// === Builder ===

/// Settings for a new [`Pool`] or [`SyncPool`].
///
/// ```
/// use memwarden::pool::{Pool, SyncPool};
///
/// let pool: Pool<u64> = Pool::builder().chunk_len(256).capacity(1000).build();
/// let shared: SyncPool<u64> = SyncPool::builder().thread_cache(0).build_sync();
/// # drop((pool, shared));
/// ```
pub struct Builder<T> {
    chunk_len: Option<usize>,
    capacity: usize,
    thread_cache: usize,
    _for: PhantomData<fn() -> T>,
}

impl<T> Clone for Builder<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Builder<T> {}

impl<T> fmt::Debug for Builder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("chunk_len", &self.chunk_len)
            .field("capacity", &self.capacity)
            .field("thread_cache", &self.thread_cache)
            .finish()
    }
}

impl<T> Default for Builder<T> {
    fn default() -> Self {
        Builder::new()
    }
}

impl<T> Builder<T> {
    /// The defaults: chunks of about 16 KiB, no capacity limit, thread
    /// caches of 256 objects.
    pub const fn new() -> Self {
        Builder {
            chunk_len: None,
            capacity: usize::MAX,
            thread_cache: 256,
            _for: PhantomData,
        }
    }

    /// Objects per chunk (at least 1). The default makes chunks of about
    /// 16 KiB, and at least 16 objects.
    pub const fn chunk_len(mut self, objects: usize) -> Self {
        self.chunk_len = Some(if objects == 0 { 1 } else { objects });
        self
    }

    /// The most objects the pool holds at once (taken or free): `alloc`
    /// fails with [`PoolErrorKind::CapacityReached`] beyond it. The last
    /// chunk is cut short to fit. Unlimited by default.
    pub const fn capacity(mut self, objects: usize) -> Self {
        self.capacity = objects;
        self
    }

    /// [`SyncPool`] only: how many free objects each thread keeps for
    /// itself (default 256). Objects move between a thread's cache and the
    /// shared free list half a cache at a time, so most `alloc`s and drops
    /// take no lock and use no atomic instruction. 0 turns the caches off:
    /// every operation takes the pool's lock, and a capacity limit is
    /// exact (with caches, `alloc` may fail while other threads' caches
    /// hold free objects).
    pub const fn thread_cache(mut self, objects: usize) -> Self {
        self.thread_cache = objects;
        self
    }

    fn chunk_len_for(&self) -> usize {
        self.chunk_len.unwrap_or_else(Slot::<T>::default_chunk_len)
    }

    /// A single-thread [`Pool`] with these settings.
    pub fn build(self) -> Pool<T> {
        Pool::with_builder(self)
    }

    /// A thread-safe [`SyncPool`] with these settings.
    pub fn build_sync(self) -> SyncPool<T> {
        SyncPool::with_builder(self)
    }
}

// === errors and statistics ===

/// Why `alloc` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolErrorKind {
    /// The pool holds as many objects as its capacity allows.
    CapacityReached {
        /// The capacity.
        capacity: usize,
    },
    /// A new chunk could not be allocated (its layout, or `None` if its
    /// size overflows).
    OutOfMemory {
        /// The chunk's layout.
        layout: Option<std::alloc::Layout>,
    },
}

/// An object that could not be placed in a pool, and why. The value is
/// given back ([`PoolError::into_inner`]).
pub struct PoolError<T> {
    value: T,
    kind: PoolErrorKind,
}

impl<T> PoolError<T> {
    /// Why the allocation failed.
    pub fn kind(&self) -> PoolErrorKind {
        self.kind
    }

    /// The value that was to be placed in the pool.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> fmt::Debug for PoolError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PoolError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PoolErrorKind::CapacityReached { capacity } => write!(
                f,
                "pool is full: all {capacity} objects of its capacity are taken"
            ),
            PoolErrorKind::OutOfMemory { layout: Some(l) } => write!(
                f,
                "out of memory: cannot allocate a pool chunk of {} bytes",
                l.size()
            ),
            PoolErrorKind::OutOfMemory { layout: None } => {
                f.write_str("out of memory: a pool chunk's size overflows")
            }
        }
    }
}

impl<T> std::error::Error for PoolError<T> {}

/// Figures of a pool, from [`Pool::stats`] or [`SyncPool::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Chunks allocated now.
    pub chunks: usize,
    /// Objects the chunks have room for.
    pub slots: usize,
    /// Objects taken and not returned.
    pub live: usize,
    /// Room for more objects without a new chunk (`slots - live`).
    pub free: usize,
    /// Most objects taken at once. For a [`SyncPool`] with thread caches:
    /// most objects out of the shared free list at once (taken, or in a
    /// thread's cache), an upper bound.
    pub high_water: usize,
    /// Bytes of chunk memory.
    pub bytes: usize,
    /// The capacity limit (`usize::MAX`: none).
    pub capacity: usize,
}

// === Pool ===

/// A single-thread pool of `T` objects; see the [module docs](self).
///
/// Cloning a `Pool` gives another handle to the same pool.
pub struct Pool<T> {
    core: NonNull<Core<T>>,
    _owns: PhantomData<Core<T>>,
}

/// An object taken from a [`Pool`]: dereferences to the `T`, and gives its
/// slot back to the pool when dropped.
pub struct PoolBox<T> {
    slot: NonNull<Slot<T>>,
    core: NonNull<Core<T>>,
    _owns: PhantomData<(T, Core<T>)>,
}

/// What a [`Pool`] and its boxes share.
///
/// Invariants:
/// * The free slots are `hot` (if not null) and a stack of pointers,
///   `stack[..len]`, with room for every slot of `chunks` (`cap >=
///   slots`), so a push never grows it. An array rather than a list
///   linked through the slots: taking a slot does not wait for a load from
///   the previous one. `hot` holds the slot returned last, at a fixed
///   address: a slot taken and returned over and over never touches the
///   stack.
/// * `bump..end` are slots of the last chunk never taken yet; `carved`
///   counts the others. Every carved slot not free is taken by exactly one
///   live [`PoolBox`] (or by one that was forgotten), so `live = carved -
///   len - hot`.
/// * A slot is carved only when all carved ones are taken, so the most
///   objects ever taken at once is the most ever carved (`high_water`).
/// * `handles` counts the [`Pool`] handles; the core is freed when no
///   handle and no taken slot is left.
struct Core<T> {
    hot: Cell<*mut Slot<T>>,
    stack: Cell<*mut *mut Slot<T>>,
    len: Cell<usize>,
    cap: Cell<usize>,
    carved: Cell<usize>,
    high_water: Cell<usize>,
    /// Atomic only so that a report on another thread may read it; this
    /// thread changes it with plain loads and stores.
    handles: AtomicUsize,
    bump: Cell<*mut Slot<T>>,
    end: Cell<*mut Slot<T>>,
    /// Slots in `chunks`.
    slots: Cell<usize>,
    /// Changed only with the pool registry locked if `registered`.
    chunks: UnsafeCell<Vec<Chunk<T>>>,
    chunk_len: usize,
    capacity: usize,
    id: u64,
    /// Created while tracking was on: registered, captures stacks, and its
    /// chunks are tracked (a record of when and where each slot was taken
    /// after it: see `slot`).
    registered: bool,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool::new()
    }
}

impl<T> Pool<T> {
    /// An empty pool with the default settings (chunks of about 16 KiB, no
    /// capacity limit). Allocates nothing until the first `alloc`.
    pub fn new() -> Self {
        Pool::with_builder(Builder::new())
    }

    /// A [`Builder`] for a pool with other settings.
    pub const fn builder() -> Builder<T> {
        Builder::new()
    }

    fn with_builder(b: Builder<T>) -> Self {
        Pool::with_builder_as(b, crate::is_enabled())
    }

    /// A pool registered (and tracked) or not, whatever the mode: tests
    /// choose the layout they exercise.
    fn with_builder_as(b: Builder<T>, registered: bool) -> Self {
        let core = Box::new(Core {
            hot: Cell::new(ptr::null_mut()),
            stack: Cell::new(ptr::null_mut()),
            len: Cell::new(0),
            cap: Cell::new(0),
            carved: Cell::new(0),
            high_water: Cell::new(0),
            handles: AtomicUsize::new(1),
            bump: Cell::new(ptr::null_mut()),
            end: Cell::new(ptr::null_mut()),
            slots: Cell::new(0),
            chunks: UnsafeCell::new(Vec::new()),
            chunk_len: b.chunk_len_for(),
            capacity: b.capacity,
            id: next_id(),
            registered,
        });
        let core = NonNull::from(Box::leak(core));
        if registered {
            outstanding::register_pool(
                // SAFETY: just made.
                unsafe { core.as_ref() }.id,
                core.as_ptr().cast_const().cast(),
                Core::<T>::list_erased,
                Core::<T>::view_erased,
            );
        }
        Pool {
            core,
            _owns: PhantomData,
        }
    }

    #[inline(always)]
    fn core(&self) -> &Core<T> {
        // SAFETY: a handle keeps the core alive (`handles` > 0).
        unsafe { self.core.as_ref() }
    }

    /// Moves `value` into a free slot and returns its box, or gives `value`
    /// back in an error if the pool is at its capacity or a new chunk
    /// cannot be allocated. Never panics.
    ///
    /// The slot records the file and line of this call (`#[track_caller]`).
    #[track_caller]
    #[inline]
    pub fn alloc(&self, value: T) -> Result<PoolBox<T>, PoolError<T>> {
        let core = self.core();
        let hot = core.hot.get();
        let n = core.len.get();
        let slot = if !hot.is_null() {
            core.hot.set(ptr::null_mut());
            // SAFETY: checked just above.
            unsafe { NonNull::new_unchecked(hot) }
        } else if n > 0 {
            core.len.set(n - 1);
            // SAFETY: `stack[..len]` holds free slots (non-null), ours: the
            // pool is !Sync. The entry is cleared as it is taken, so that no
            // stale pointer to a taken object is left in the pool for the
            // leak scan to follow (a forgotten object stays definitely lost).
            unsafe {
                let top = core.stack.get().add(n - 1);
                let slot = NonNull::new_unchecked(*top);
                *top = ptr::null_mut();
                slot
            }
        } else {
            match core.carve() {
                Ok(s) => s,
                Err(kind) => return Err(PoolError { value, kind }),
            }
        };
        // SAFETY: `slot` was just taken off the stack or carved: free,
        // in a live chunk, and ours.
        unsafe { Slot::fill(slot, Location::caller(), value) };
        if core.registered {
            // SAFETY: as above; a registered pool's chunks are tracked.
            unsafe { Slot::track(slot, Location::caller(), capture_stack()) };
        }
        Ok(PoolBox {
            slot,
            core: self.core,
            _owns: PhantomData,
        })
    }

    /// The pool's figures now.
    pub fn stats(&self) -> PoolStats {
        let c = self.core();
        // SAFETY: the chunk list is only changed by this thread's own
        // calls, none of which is running.
        let chunks = unsafe { &*c.chunks.get() };
        let live = c.live();
        PoolStats {
            chunks: chunks.len(),
            slots: c.slots.get(),
            live,
            free: c.slots.get() - live,
            high_water: c.high_water.get(),
            bytes: chunks.iter().map(Chunk::bytes).sum(),
            capacity: c.capacity,
        }
    }

    /// Every object taken and not returned yet, with where it was taken,
    /// sorted by file and line. At the end of a piece of work that should
    /// have returned everything, these are its leaks.
    pub fn leaks(&self) -> Vec<Outstanding> {
        let mut out = Vec::new();
        // SAFETY: the core is alive (we hold a handle).
        unsafe { self.core().list(true, &mut out) };
        sort_by_site(&mut out);
        out
    }

    /// Gives back to the allocator every chunk whose objects are all free;
    /// returns how many chunks were freed.
    pub fn shrink(&self) -> usize {
        self.core().shrink()
    }

    /// True if both handles are to the same pool.
    pub fn ptr_eq(a: &Pool<T>, b: &Pool<T>) -> bool {
        a.core == b.core
    }
}

impl<T> Clone for Pool<T> {
    /// Another handle to the same pool.
    fn clone(&self) -> Self {
        let c = self.core();
        c.handles.store(c.handles.load(Relaxed) + 1, Relaxed);
        Pool {
            core: self.core,
            _owns: PhantomData,
        }
    }
}

impl<T> Drop for Pool<T> {
    fn drop(&mut self) {
        let c = self.core();
        let handles = c.handles.load(Relaxed) - 1;
        c.handles.store(handles, Relaxed);
        if handles == 0 && c.live() == 0 {
            // SAFETY: no handle and no box is left.
            unsafe { Core::destroy(self.core) };
        }
    }
}

impl<T> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("type", &std::any::type_name::<T>())
            .field("stats", &self.stats())
            .finish()
    }
}

// === impl Core ===

impl<T> Core<T> {
    /// Takes a never-used slot, allocating a chunk if needed.
    #[cold]
    #[inline(never)]
    fn carve(&self) -> Result<NonNull<Slot<T>>, PoolErrorKind> {
        if self.bump.get() == self.end.get() {
            let room = self.capacity - self.slots.get();
            if room == 0 {
                return Err(PoolErrorKind::CapacityReached {
                    capacity: self.capacity,
                });
            }
            let len = self.chunk_len.min(room);
            // Under the registry lock (if registered): a report reads the
            // stack's address.
            self.with_chunks(|_| self.reserve_stack(self.slots.get() + len))?;
            let chunk = Chunk::<T>::new(len, self.registered)
                .map_err(|layout| PoolErrorKind::OutOfMemory { layout })?;
            self.bump.set(chunk.start.as_ptr());
            self.end.set(chunk.slot(len));
            self.slots.set(self.slots.get() + len);
            self.with_chunks(|chunks| chunks.push(chunk));
        }
        let s = self.bump.get();
        // SAFETY: `bump < end`, both in the last chunk, whose slots are
        // `stride` bytes apart.
        self.bump
            .set(unsafe { s.byte_add(Slot::<T>::stride(self.registered)) });
        let carved = self.carved.get() + 1;
        self.carved.set(carved);
        self.high_water.set(self.high_water.get().max(carved));
        // SAFETY: slots of a chunk are non-null.
        Ok(unsafe { NonNull::new_unchecked(s) })
    }

    /// Makes room on the free stack for `want` slots.
    fn reserve_stack(&self, want: usize) -> Result<(), PoolErrorKind> {
        let cap = self.cap.get();
        if want <= cap {
            return Ok(());
        }
        let new_cap = want.max(cap.saturating_mul(2));
        let oom = |layout| PoolErrorKind::OutOfMemory { layout };
        let new_layout = checked::array_layout::<*mut Slot<T>>(new_cap).map_err(|_| oom(None))?;
        let p = if cap == 0 {
            // SAFETY: `want > 0`, so the layout is not zero-sized.
            unsafe { std::alloc::alloc(new_layout) }
        } else {
            let old = Layout::array::<*mut Slot<T>>(cap).expect("checked when made");
            // SAFETY: `stack` was allocated with `old`; the new size is
            // non-zero and checked.
            unsafe { std::alloc::realloc(self.stack.get().cast(), old, new_layout.size()) }
        };
        if p.is_null() {
            return Err(oom(Some(new_layout)));
        }
        self.stack.set(p.cast());
        self.cap.set(new_cap);
        Ok(())
    }

    /// Changes the chunk list, with the registry locked if registered.
    fn with_chunks<R>(&self, f: impl FnOnce(&mut Vec<Chunk<T>>) -> R) -> R {
        let _lock = self.registered.then(outstanding::lock_pools);
        // SAFETY: the pool is !Sync, so only this thread changes the list,
        // and a report reading it on another thread holds the lock we took.
        f(unsafe { &mut *self.chunks.get() })
    }

    /// Gives back a slot whose value has been dropped or moved out; frees
    /// the core if that was the last box of a dropped pool.
    ///
    /// # Safety
    /// `slot` must be a taken slot of `core`, given back once.
    #[inline]
    unsafe fn release(core: NonNull<Core<T>>, slot: NonNull<Slot<T>>) {
        // SAFETY: a taken slot keeps the core alive.
        let c = unsafe { core.as_ref() };
        // SAFETY: the slot is ours (taken) and in a live chunk.
        unsafe { Slot::clear(slot) };
        if c.hot.get().is_null() {
            c.hot.set(slot.as_ptr());
        } else {
            let n = c.len.get();
            // SAFETY: `len + 1 < cap`: the stack has room for every slot,
            // and neither this one nor `hot` is on it.
            unsafe { *c.stack.get().add(n) = slot.as_ptr() };
            c.len.set(n + 1);
        }
        if c.handles.load(Relaxed) == 0 {
            // SAFETY: forwarded.
            unsafe { Core::release_orphan(core) };
        }
    }

    /// A box came back to a pool without handles.
    ///
    /// # Safety
    /// As [`Core::release`], after it.
    #[cold]
    #[inline(never)]
    unsafe fn release_orphan(core: NonNull<Core<T>>) {
        // SAFETY: the core is alive until the last box is back.
        let c = unsafe { core.as_ref() };
        if c.live() == 0 {
            // SAFETY: no handle and no box is left.
            unsafe { Core::destroy(core) };
        }
    }

    /// Taken slots.
    #[inline]
    fn live(&self) -> usize {
        self.carved.get() - self.len.get() - usize::from(!self.hot.get().is_null())
    }

    /// # Safety
    /// No handle or box may be left.
    #[cold]
    unsafe fn destroy(core: NonNull<Core<T>>) {
        {
            // SAFETY: the core is alive until the `Box` below drops.
            let c = unsafe { core.as_ref() };
            if c.registered {
                // A report may be reading the core: wait for it.
                outstanding::unregister_pool(c.id);
            }
        }
        // SAFETY: per the contract nothing else uses the core, and the
        // registry no longer lists it: take it back.
        let c = unsafe { Box::from_raw(core.as_ptr()) };
        if c.cap.get() > 0 {
            let layout = Layout::array::<*mut Slot<T>>(c.cap.get()).expect("checked when made");
            // SAFETY: allocated with this layout by `reserve_stack`.
            unsafe { std::alloc::dealloc(c.stack.get().cast(), layout) };
        }
        for chunk in c.chunks.into_inner() {
            // SAFETY: no slot is taken any more.
            unsafe { chunk.free() };
        }
    }

    /// Lists the taken slots.
    ///
    /// # Safety
    /// The core must be alive; the chunk list must not change meanwhile.
    unsafe fn list(&self, pool_alive: bool, out: &mut Vec<Outstanding>) {
        // SAFETY: per the contract.
        for chunk in unsafe { &*self.chunks.get() } {
            // SAFETY: the chunk is alive while it is in the list.
            unsafe { chunk.list(OutstandingKind::Pool, self.id, pool_alive, out) };
        }
    }

    /// [`outstanding::ListFn`] for a registered core.
    ///
    /// # Safety
    /// `core` must be a live registered `Core<T>`, with the pool registry
    /// locked by the caller.
    unsafe fn list_erased(core: *const (), out: &mut Vec<Outstanding>) {
        // SAFETY: per the contract.
        let c = unsafe { &*core.cast::<Core<T>>() };
        let alive = c.handles.load(Relaxed) > 0;
        // SAFETY: registered cores change their chunk list only with the
        // registry locked, which our caller holds.
        unsafe { c.list(alive, out) };
    }

    /// [`outstanding::ViewFn`] for a registered core.
    ///
    /// # Safety
    /// As [`Core::list_erased`].
    unsafe fn view_erased(core: *const (), out: &mut PoolView) {
        // SAFETY: per the contract.
        let c = unsafe { &*core.cast::<Core<T>>() };
        // SAFETY: as in `list_erased`.
        let chunks = unsafe { &*c.chunks.get() };
        out.internal.push(core as usize);
        if chunks.capacity() > 0 {
            out.internal.push(chunks.as_ptr() as usize);
        }
        if c.cap.get() > 0 {
            out.internal.push(c.stack.get() as usize);
        }
        out.chunks.extend(chunks.iter().map(Chunk::view));
    }

    fn shrink(&self) -> usize {
        // SAFETY: only this thread changes the list, and not meanwhile.
        let chunks = unsafe { &*self.chunks.get() };
        let hot = self.hot.replace(ptr::null_mut());
        if !hot.is_null() {
            let n = self.len.get();
            // SAFETY: room for every slot; `hot` is not on the stack.
            unsafe { *self.stack.get().add(n) = hot };
            self.len.set(n + 1);
        }
        let free: &mut [*mut Slot<T>] = if self.cap.get() == 0 {
            &mut []
        } else {
            // SAFETY: `stack[..len]` is initialised, and ours alone: the
            // pool is !Sync and no other borrow of the stack exists.
            unsafe { std::slice::from_raw_parts_mut(self.stack.get(), self.len.get()) }
        };
        let Some(empty) = empty_chunks(chunks, free, self.bump.get(), self.end.get()) else {
            return 0;
        };
        // Keep the free slots of the chunks that stay, in order.
        let mut kept = 0;
        for i in 0..free.len() {
            if !empty[chunk_of(chunks, free[i])] {
                free[kept] = free[i];
                kept += 1;
            }
        }
        self.len.set(kept);
        let mut freed = (0, 0);
        let mut uncarved = 0;
        if empty[empty.len() - 1] {
            uncarved = (self.end.get() as usize - self.bump.get() as usize)
                / Slot::<T>::stride(self.registered);
            self.bump.set(ptr::null_mut());
            self.end.set(ptr::null_mut());
        }
        self.with_chunks(|list| {
            let old = std::mem::take(list);
            for (chunk, e) in old.into_iter().zip(empty) {
                if e {
                    freed.0 += 1;
                    freed.1 += chunk.len;
                    // SAFETY: every slot of the chunk is free, and none is
                    // on the stack any more.
                    unsafe { chunk.free() };
                } else {
                    list.push(chunk);
                }
            }
        });
        self.slots.set(self.slots.get() - freed.1);
        // Every slot of a freed chunk was carved, but the never-used tail.
        self.carved.set(self.carved.get() - (freed.1 - uncarved));
        freed.0
    }
}

// === impl PoolBox ===

/// The handle methods and traits [`PoolBox`] and [`SyncPoolBox`] share.
/// They differ only in their pool's shared core: the `$core` field, of
/// type `$Core<T>`, whose `unsafe fn release(NonNull<$Core<T>>,
/// NonNull<Slot<T>>)` gives a slot whose value is gone back to the pool.
macro_rules! pool_box_impls {
    ($Box:ident, $core:ident, $Core:ident) => {
        impl<T> $Box<T> {
            /// Where this object was taken (the `alloc` call).
            pub fn taken_at(this: &Self) -> &'static Location<'static> {
                // SAFETY: a taken slot in a live chunk has its site set.
                unsafe { Slot::site(this.slot.as_ptr()) }.expect("a taken slot has a site")
            }

            /// Moves the value out and gives the slot back to the pool.
            pub fn into_inner(this: Self) -> T {
                let this = std::mem::ManuallyDrop::new(this);
                // SAFETY: the slot holds a value, moved out exactly once
                // here (the box is not dropped), then given back once.
                unsafe {
                    let v = Slot::value(this.slot).read();
                    $Core::release(this.$core, this.slot);
                    v
                }
            }
        }

        impl<T> Deref for $Box<T> {
            type Target = T;
            #[inline(always)]
            fn deref(&self) -> &T {
                // SAFETY: a box's slot holds its value until the box goes.
                unsafe { &*Slot::value(self.slot) }
            }
        }

        impl<T> DerefMut for $Box<T> {
            #[inline(always)]
            fn deref_mut(&mut self) -> &mut T {
                // SAFETY: as in `deref`, and `&mut self` makes the access
                // unique.
                unsafe { &mut *Slot::value(self.slot) }
            }
        }

        impl<T> Drop for $Box<T> {
            #[inline]
            fn drop(&mut self) {
                /// Gives the slot back even if `T::drop` panics.
                struct Release<T>(NonNull<$Core<T>>, NonNull<Slot<T>>);
                impl<T> Drop for Release<T> {
                    #[inline(always)]
                    fn drop(&mut self) {
                        // SAFETY: the box's slot, value gone, given back once.
                        unsafe { $Core::release(self.0, self.1) }
                    }
                }
                let _release = Release(self.$core, self.slot);
                // SAFETY: the slot holds the box's value; dropped once.
                unsafe { ptr::drop_in_place(Slot::value(self.slot)) };
            }
        }

        impl<T> AsRef<T> for $Box<T> {
            fn as_ref(&self) -> &T {
                self
            }
        }

        impl<T> AsMut<T> for $Box<T> {
            fn as_mut(&mut self) -> &mut T {
                self
            }
        }

        impl<T: fmt::Debug> fmt::Debug for $Box<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&**self, f)
            }
        }

        impl<T: fmt::Display> fmt::Display for $Box<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&**self, f)
            }
        }
    };
}
use pool_box_impls;

pool_box_impls!(PoolBox, core, Core);

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn reuses_freed_slots_last_in_first_out() {
        let pool: Pool<u32> = Pool::builder().chunk_len(4).build();
        let a = pool.alloc(1).unwrap();
        let pa = &*a as *const u32;
        drop(a);
        let b = pool.alloc(2).unwrap();
        assert_eq!(&*b as *const u32, pa);
        assert_eq!(pool.stats().chunks, 1);
    }

    #[test]
    fn capacity_cuts_the_last_chunk_and_fails_without_panicking() {
        let pool: Pool<String> = Pool::builder().chunk_len(4).capacity(6).build();
        let boxes: Vec<_> = (0..6).map(|i| pool.alloc(i.to_string()).unwrap()).collect();
        let s = pool.stats();
        assert_eq!((s.chunks, s.slots, s.live, s.free), (2, 6, 6, 0));
        let err = pool.alloc("seven".into()).unwrap_err();
        assert_eq!(err.kind(), PoolErrorKind::CapacityReached { capacity: 6 });
        assert_eq!(
            err.to_string(),
            "pool is full: all 6 objects of its capacity are taken"
        );
        assert_eq!(err.into_inner(), "seven");
        drop(boxes);
        assert!(pool.alloc("again".into()).is_ok());
    }

    #[test]
    fn box_outlives_its_pool() {
        let pool: Pool<Vec<u8>> = Pool::new();
        let b = pool.alloc(vec![1, 2, 3]).unwrap();
        drop(pool);
        assert_eq!(*b, [1, 2, 3]);
        drop(b); // frees the chunks; Miri checks nothing leaks
    }

    #[test]
    fn values_are_dropped_once() {
        let counter = Rc::new(());
        let pool: Pool<Rc<()>> = Pool::builder().chunk_len(2).build();
        let boxes: Vec<_> = (0..5)
            .map(|_| pool.alloc(Rc::clone(&counter)).unwrap())
            .collect();
        assert_eq!(Rc::strong_count(&counter), 6);
        drop(boxes);
        assert_eq!(Rc::strong_count(&counter), 1);
        let b = pool.alloc(Rc::clone(&counter)).unwrap();
        let inner = PoolBox::into_inner(b);
        assert_eq!(Rc::strong_count(&counter), 2);
        drop(inner);
        assert_eq!(pool.stats().live, 0);
    }

    #[test]
    fn zero_sized_and_over_aligned_values() {
        for tracked in [false, true] {
            let units: Pool<()> = Pool::with_builder_as(Builder::new(), tracked);
            let a = units.alloc(()).unwrap();
            let b = units.alloc(()).unwrap();
            assert_eq!(units.stats().live, 2);
            drop((a, b));
            #[repr(align(64))]
            struct Big(u8);
            let big: Pool<Big> = Pool::with_builder_as(Builder::new().chunk_len(3), tracked);
            let boxes: Vec<_> = (0..7).map(|i| big.alloc(Big(i)).unwrap()).collect();
            for (i, b) in boxes.iter().enumerate() {
                assert_eq!(&**b as *const Big as usize % 64, 0);
                assert_eq!(b.0, i as u8);
            }
        }
    }

    #[test]
    fn shrink_frees_only_empty_chunks() {
        let pool: Pool<u64> = Pool::builder().chunk_len(4).build();
        let mut boxes: Vec<_> = (0..12).map(|i| pool.alloc(i).unwrap()).collect();
        assert_eq!(pool.stats().chunks, 3);
        // Free the middle chunk entirely, and one object of the first.
        let middle: Vec<_> = boxes.drain(4..8).collect();
        drop(middle);
        drop(boxes.remove(0));
        assert_eq!(pool.shrink(), 1);
        let s = pool.stats();
        assert_eq!((s.chunks, s.slots, s.live, s.free), (2, 8, 7, 1));
        // The one free slot left is reused; the next alloc grows again.
        let a = pool.alloc(100).unwrap();
        let b = pool.alloc(101).unwrap();
        assert_eq!(pool.stats().chunks, 3);
        assert_eq!(
            boxes.iter().map(|b| **b).sum::<u64>(),
            1 + 2 + 3 + 8 + 9 + 10 + 11
        );
        drop((a, b, boxes));
        assert_eq!(pool.shrink(), 3);
        assert_eq!(pool.stats().slots, 0);
        assert_eq!(*pool.alloc(5).unwrap(), 5);
    }

    #[test]
    fn leaks_name_the_alloc_line() {
        let pool: Pool<u8> = Pool::new();
        let line = line!() + 1;
        let kept = pool.alloc(1).unwrap();
        let mut forgotten = std::mem::ManuallyDrop::new(pool.alloc(2).unwrap());
        let leaks = pool.leaks();
        assert_eq!(leaks.len(), 2);
        assert_eq!(leaks[0].taken_at.line(), line);
        assert_eq!(leaks[1].taken_at.line(), line + 1);
        assert!(leaks[0].taken_at.file().ends_with("mod.rs"));
        assert_eq!(PoolBox::taken_at(&kept).line(), line);
        assert_eq!(leaks[0].type_name, "u8");
        assert!(leaks[0].to_string().contains(" was never returned"));
        // SAFETY: not used again.
        unsafe { std::mem::ManuallyDrop::drop(&mut forgotten) };
    }

    #[test]
    fn panicking_drop_still_returns_the_slot() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("boom");
            }
        }
        let pool: Pool<Bomb> = Pool::new();
        let b = pool.alloc(Bomb).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(b)));
        assert!(r.is_err());
        assert_eq!(pool.stats().live, 0);
    }

    /// Pools made as with tracking on (a `Taken` record after each slot)
    /// carve, reuse, cut at the capacity and shrink as the others do.
    #[test]
    fn tracked_chunks_behave_as_plain_ones() {
        for tracked in [false, true] {
            let b = Builder::new().chunk_len(4).capacity(10);
            let pool: Pool<u64> = Pool::with_builder_as(b, tracked);
            let mut boxes: Vec<_> = (0..10).map(|i| pool.alloc(i).unwrap()).collect();
            let s = pool.stats();
            assert_eq!((s.chunks, s.slots, s.live), (3, 10, 10));
            assert_eq!(s.bytes, 10 * Slot::<u64>::stride(tracked));
            assert!(pool.alloc(10).is_err());
            let mut addrs: Vec<usize> = boxes.iter().map(|b| &**b as *const u64 as usize).collect();
            addrs.sort_unstable();
            addrs.dedup();
            assert_eq!(addrs.len(), 10);
            drop(boxes.drain(4..8).collect::<Vec<_>>());
            assert_eq!(pool.shrink(), 1);
            drop(boxes.pop()); // the last chunk (2 slots) keeps one
            boxes.push(pool.alloc(20).unwrap());
            let s = pool.stats();
            assert_eq!((s.chunks, s.slots, s.live), (2, 6, 6));
            let values: Vec<u64> = boxes.iter().map(|b| **b).collect();
            assert_eq!(values, [0, 1, 2, 3, 8, 20]);
            drop(boxes);
            assert_eq!(pool.shrink(), 2);
            assert_eq!(*pool.alloc(5).unwrap(), 5);

            let sync: SyncPool<u64> = SyncPool::with_builder_as(b.thread_cache(2), tracked);
            let mut boxes: Vec<_> = (0..10).map(|i| sync.alloc(i).unwrap()).collect();
            assert_eq!(sync.stats().bytes, 10 * Slot::<u64>::stride(tracked));
            assert!(sync.alloc(10).is_err());
            drop(boxes.drain(4..8).collect::<Vec<_>>());
            let values: Vec<u64> = boxes.iter().map(|b| **b).collect();
            assert_eq!(values, [0, 1, 2, 3, 8, 9]);
            drop(boxes);
            assert_eq!(sync.stats().live, 0);
            assert_eq!(*sync.alloc(7).unwrap(), 7);
        }
    }

    /// A tracked pool's objects carry the sequence number and thread of the
    /// `alloc` that took them, for scoped checks: an object taken after a
    /// mark is newer than it, whenever its chunk was allocated.
    #[cfg(all(feature = "tracking", target_os = "linux", not(miri)))]
    #[test]
    fn tracked_objects_carry_their_own_sequence_number_and_thread() {
        use crate::guard::thread_id;
        let pool: Pool<[u8; 3]> = Pool::with_builder_as(Builder::new().chunk_len(8), true);
        let sync: SyncPool<[u8; 5]> = SyncPool::with_builder_as(Builder::new().chunk_len(8), true);
        let old = pool.alloc([1; 3]).unwrap();
        let old_sync = sync.alloc([1; 5]).unwrap();
        let mark = crate::registry::mark();
        let new = pool.alloc([2; 3]).unwrap(); // same chunk, allocated before the mark
        let (there, far) = std::thread::scope(|s| {
            s.spawn(|| (thread_id(), sync.alloc([2; 5]).unwrap()))
                .join()
                .unwrap()
        });
        assert_ne!(there, thread_id());
        let taken = |value: usize| {
            let views = super::pool_views();
            let mut found = None;
            for c in views.views.iter().flat_map(|v| &v.chunks) {
                // SAFETY: the chunks of the views stay allocated while
                // `views` lives, and were zeroed when made.
                let read = |a: usize| unsafe { super::read_word(a as *const usize) };
                c.walk(read, |_, v, now| {
                    if v == value {
                        found = Some(now);
                    }
                });
            }
            match found {
                Some(super::ObjectNow::Taken { taken, .. }) => taken,
                _ => None,
            }
        };
        let addr = |p: *const u8| p as usize;
        let (s_old, t_old) = taken(addr(old.as_ptr())).expect("recorded");
        let (s_new, t_new) = taken(addr(new.as_ptr())).expect("recorded");
        let (s_sync, t_sync) = taken(addr(old_sync.as_ptr())).expect("recorded");
        let (s_far, t_far) = taken(addr(far.as_ptr())).expect("recorded");
        assert!(s_old <= mark && s_sync <= mark, "{s_old} {s_sync} {mark}");
        assert!(s_new > mark && s_far > mark, "{s_new} {s_far} {mark}");
        assert_eq!(
            (t_old, t_new, t_sync, t_far),
            (thread_id(), thread_id(), thread_id(), there)
        );
        assert_eq!(pool.stats().chunks, 1);
        drop((old, new, old_sync, far));
        assert!(taken(addr(pool.alloc([3; 3]).unwrap().as_ptr())).is_some());
    }

    /// The leak scan's walk of a chunk tells a free slot (skipped), a slot
    /// being taken (its value stored, the take not recorded yet) and a
    /// taken one (with the record of that take) apart.
    #[cfg(all(feature = "tracking", target_os = "linux", not(miri)))]
    #[test]
    fn the_scan_tells_free_being_taken_and_taken_slots_apart() {
        let chunk = Chunk::<u64>::new(3, true).unwrap();
        let slot = |i| NonNull::new(chunk.slot(i)).unwrap();
        let site = Location::caller();
        let (before, thread) = super::outstanding::taken_now();
        // SAFETY: slots 1 and 2 are free slots of this live chunk, ours.
        unsafe {
            Slot::fill(slot(1), site, 1);
            Slot::fill(slot(2), site, 2);
            Slot::track(slot(2), site, 7);
        }
        let mut seen = Vec::new();
        // SAFETY: the chunk is alive, and was zeroed when made.
        let read = |a: usize| unsafe { super::read_word(a as *const usize) };
        chunk.view().walk(read, |s, v, now| seen.push((s, v, now)));
        let after = super::outstanding::taken_now().0;
        let at = |i| (slot(i).as_ptr() as usize, Slot::value(slot(i)) as usize);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], (at(1).0, at(1).1, super::ObjectNow::BeingTaken));
        assert_eq!((seen[1].0, seen[1].1), at(2));
        let super::ObjectNow::Taken {
            taken: Some((seq, by)),
            stack: 7,
        } = seen[1].2
        else {
            panic!("{seen:?}");
        };
        assert!(before <= seq && seq <= after && by == thread, "{seen:?}");
        // The header names the site, as before.
        // SAFETY: a slot of the live chunk.
        assert_eq!(unsafe { Slot::site(slot(2).as_ptr()) }, Some(site));
        // SAFETY: nothing uses the chunk any more; its values need no drop.
        unsafe { chunk.free() };
    }

    #[test]
    fn a_value_may_own_its_pool() {
        // The last handle is dropped from inside T::drop; the core goes
        // when the slot is given back right after.
        struct Holds(#[allow(dead_code)] Option<Pool<Holds>>);
        let pool: Pool<Holds> = Pool::new();
        let b = pool.alloc(Holds(Some(pool.clone()))).unwrap();
        drop(pool);
        drop(b);
    }
}
