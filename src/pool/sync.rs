//! [`SyncPool`]: the thread-safe pool, with per-thread caches.
//!
//! # Design
//!
//! A lock-free free list (a Treiber stack) was the other candidate. Its pop
//! needs ABA protection (tagged indices or hazard pointers), and every
//! `alloc` and every drop would still be a compare-and-swap on one shared
//! cache line, which threads then pass back and forth. Per-thread caches,
//! as mimalloc, jemalloc's tcache and Bonwick's magazines have them, do
//! better: most operations touch only the calling thread's memory.
//!
//! * **Depot.** The pool's free slots not in any cache, as batches (linked
//!   lists), plus its chunks, behind a `Mutex`.
//! * **Thread caches.** Each thread keeps, in a thread-local list, one entry
//!   per pool it uses: a linked list of up to `thread_cache` free slots.
//!   `alloc` pops from it, a drop pushes onto it (on whatever thread the
//!   box is dropped: slots belong to no thread). The cache is two lists of
//!   at most `thread_cache / 2` slots, as Bonwick's magazines are: a
//!   working one and a full reserve. An empty working list takes the
//!   reserve, or a batch from the depot; a full one becomes the reserve,
//!   and the old reserve goes to the depot. Lists move whole, never
//!   walked: one lock per `thread_cache / 2` operations at most, and none
//!   in between. A thread's cache goes back to the depot when the thread
//!   exits.
//! * **Lifetime.** One atomic count, `refs`, keeps the shared core alive:
//!   pool handles + thread-cache entries + slots out of the depot (taken
//!   by a box, or in a thread cache). It changes by a whole batch when a
//!   cache exchanges slots with the depot, so taking and returning objects
//!   through a cache costs no atomic operation. Every term is at least
//!   zero, so `refs` reaches zero exactly when no handle, no cache and no
//!   box is left, and the core is freed then, by whichever thread that is.
//!   (A count per box, as `Arc` has, would be an atomic increment and
//!   decrement of one cache line shared by all threads on every object:
//!   the very cost the caches are there to avoid.)
//!
//! The thread-local caches have no destructor of their own, so that a
//! fast path reaches them without an "initialised yet?" check; a second,
//! empty thread-local with a destructor gives them back at thread exit. A
//! `busy` flag, set by slow paths (which may allocate) and for good at
//! thread exit, sends a re-entrant or late operation straight to the depot.
//!
//! **The fast path** looks at one thread-local entry, the cache of the pool
//! used last (`mru`), and compares its pool *pointer* with its own (no load
//! from the shared core: an entry holds a reference, so an equal pointer
//! is the same live pool). It does not read `busy`: a slow path takes the
//! entry out of `mru` (leaving an entry of no pool) while it works, so a
//! re-entrant fast path misses and goes the slow way. With the default
//! cache of 256 objects (half moved at a time), a thread that takes a
//! thousand objects and then returns them takes the depot's lock about 16
//! times; with 64, four times as often, which made `SyncPool` slower than
//! mimalloc in that pattern (see docs/pools.md).
use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::outstanding::{self, Outstanding, OutstandingKind, PoolView, capture_stack, next_id};
use super::slot::{Chunk, Slot, chunk_of, empty_chunks, sort_by_site};
use super::{Builder, PoolError, PoolErrorKind, PoolStats};

/// A thread-safe pool of `T` objects; see the [module docs](super) and the
/// design notes in the source.
///
/// `alloc` takes `&self`: share the pool by reference (scoped threads), in
/// an `Arc`, or clone the handle. Boxes may be sent to and dropped on any
/// thread.
///
/// ```
/// use memwarden::pool::SyncPool;
///
/// let pool: SyncPool<[u64; 4]> = SyncPool::new();
/// let b = pool.alloc([1, 2, 3, 4]).unwrap();
/// std::thread::spawn(move || assert_eq!(b[3], 4)).join().unwrap(); // dropped there
/// assert_eq!(pool.stats().live, 0);
/// ```
pub struct SyncPool<T> {
    shared: NonNull<Shared<T>>,
    _owns: PhantomData<Shared<T>>,
}

/// An object taken from a [`SyncPool`]; gives its slot back when dropped,
/// on any thread.
pub struct SyncPoolBox<T> {
    slot: NonNull<Slot<T>>,
    shared: NonNull<Shared<T>>,
    _owns: PhantomData<T>,
}

// SAFETY: the shared core is only changed through atomics, the depot's
// mutex, and thread-local caches; values of T move between threads (taken
// on one, dropped on another), hence `T: Send`.
unsafe impl<T: Send> Send for SyncPool<T> {}
// SAFETY: as above; `&SyncPool` only allows `alloc`, `stats`, `leaks` and
// `shrink`, all synchronised.
unsafe impl<T: Send> Sync for SyncPool<T> {}
// SAFETY: a box owns its T (moving it moves the T) and may give its slot
// back on any thread (see `Send for SyncPool`).
unsafe impl<T: Send> Send for SyncPoolBox<T> {}
// SAFETY: `&SyncPoolBox<T>` only gives `&T` (and the slot's site, atomic).
unsafe impl<T: Sync> Sync for SyncPoolBox<T> {}

/// The part of the shared core that thread caches use without knowing `T`.
#[repr(C)]
struct Header {
    /// Handles + cache entries + slots out of the depot (see the module
    /// notes).
    refs: AtomicUsize,
    /// Pool handles; 0 once the pool is dropped.
    handles: AtomicUsize,
    id: u64,
    /// Slots moved between a thread cache and the depot at once.
    batch: usize,
    /// Gives a list of free slots back to the depot.
    give_back: unsafe fn(NonNull<Header>, *mut u8, usize),
    /// Frees the core.
    destroy: unsafe fn(NonNull<Header>),
}

#[repr(C)]
struct Shared<T> {
    head: Header,
    depot: Mutex<Depot<T>>,
    capacity: usize,
    /// Most objects a thread cache holds; 0: no caches.
    cache: usize,
    /// Objects moved between a cache and the depot at once.
    batch: usize,
    registered: bool,
}

/// Free slots outside thread caches, and the chunks.
struct Depot<T> {
    /// Lists of free slots, linked, with their lengths.
    batches: Vec<(NonNull<Slot<T>>, usize)>,
    /// Never-used slots of the last chunk.
    bump: *mut Slot<T>,
    end: *mut Slot<T>,
    chunks: Vec<Chunk<T>>,
    /// Slots in `chunks`.
    slots: usize,
    /// Slots outside the depot (taken, or in a thread cache).
    out: usize,
    chunk_len: usize,
    capacity: usize,
    high_water: usize,
    /// Slots per batch.
    batch: usize,
    /// The pool is registered: its chunks are tracked (see `slot`).
    tracked: bool,
}

// SAFETY: the raw pointers are to chunk memory the depot owns; it is only
// reached through the mutex.
unsafe impl<T: Send> Send for Depot<T> {}

/// One thread's cache for one pool.
#[derive(Clone, Copy)]
struct Entry {
    /// Null in an empty `mru`.
    pool: *const Header,
    id: u64,
    /// Free slots, linked (`*mut Slot<T>` of the pool's `T`): at most
    /// `batch` of them.
    head: *mut u8,
    len: usize,
    /// A full list of `batch` free slots kept in reserve, or null.
    prev: *mut u8,
    /// The pool's `batch`, here so that a fast path reads only this entry.
    batch: usize,
}

const NO_ENTRY: Entry = Entry {
    pool: ptr::null(),
    id: 0,
    head: ptr::null_mut(),
    len: 0,
    prev: ptr::null_mut(),
    batch: 0,
};

/// This thread's caches.
///
/// No destructor, so that a fast path reaches it with no "initialised?"
/// check; [`ExitHook`] gives the caches back when the thread exits.
struct Local {
    /// True while a slow path changes the caches (which it does with the
    /// `mru` entry taken out, so that a fast path misses), and for good
    /// once the thread is exiting.
    busy: Cell<bool>,
    /// True once [`EXIT`] is registered on this thread.
    hooked: Cell<bool>,
    /// The cache of the pool used last: all a fast path looks at.
    mru: UnsafeCell<Entry>,
    /// The caches of other pools.
    others: UnsafeCell<ManuallyDrop<Vec<Entry>>>,
}

/// Gives this thread's caches back when it exits.
struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|l| {
            if l.busy.replace(true) {
                return; // cannot happen: no slow path runs during teardown
            }
            // SAFETY: `busy` is set for good: nothing else will touch the
            // caches again.
            let (mru, others) = unsafe {
                (
                    std::mem::replace(&mut *l.mru.get(), NO_ENTRY),
                    ManuallyDrop::take(&mut *l.others.get()),
                )
            };
            for e in std::iter::once(mru).chain(others) {
                if !e.pool.is_null() {
                    // SAFETY: the entry left the caches.
                    unsafe { release_entry(e) };
                }
            }
        });
    }
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            busy: Cell::new(false),
            hooked: Cell::new(false),
            mru: UnsafeCell::new(NO_ENTRY),
            others: UnsafeCell::new(ManuallyDrop::new(Vec::new())),
        }
    };
    static EXIT: ExitHook = const { ExitHook };
}

/// Gives a cache entry's slots back to its pool and drops its references
/// (one per cached slot, and the entry's own).
///
/// # Safety
/// `e` must be a non-empty entry taken out of a thread's caches.
unsafe fn release_entry(e: Entry) {
    // SAFETY: an entry's pointer is to a live `Shared` (it holds a
    // reference), with the provenance of the whole `Shared`.
    let pool = unsafe { NonNull::new_unchecked(e.pool.cast_mut()) };
    // SAFETY: as above.
    let h = unsafe { pool.as_ref() };
    let mut n = 1;
    if e.len > 0 {
        // SAFETY: the entry's slots are free and linked, now the depot's.
        unsafe { (h.give_back)(pool, e.head, e.len) };
        n += e.len;
    }
    if !e.prev.is_null() {
        // SAFETY: as above.
        unsafe { (h.give_back)(pool, e.prev, h.batch) };
        n += h.batch;
    }
    if h.refs.fetch_sub(n, Ordering::Release) == n {
        fence(Ordering::Acquire);
        // SAFETY: nothing refers to the core any more.
        unsafe { (h.destroy)(pool) };
    }
}

/// Removes entry `i` of `others`, and overwrites the copy left past the
/// end: the leak scan reads the whole buffer, and a stale entry's list
/// head may be a slot taken (and forgotten) since.
fn take_entry(others: &mut Vec<Entry>, i: usize) -> Entry {
    let e = others.swap_remove(i);
    if let Some(gone) = others.spare_capacity_mut().first_mut() {
        gone.write(NO_ENTRY);
    }
    e
}

/// The last entry of `others` (`NO_ENTRY` if none), as [`take_entry`].
fn pop_entry(others: &mut Vec<Entry>) -> Entry {
    match others.len() {
        0 => NO_ENTRY,
        n => take_entry(others, n - 1),
    }
}

/// True if the entry's pool has no handle left.
fn is_closed(e: &Entry) -> bool {
    // SAFETY: a non-empty entry keeps its core alive.
    !e.pool.is_null() && unsafe { &*e.pool }.handles.load(Ordering::Acquire) == 0
}

impl<T> Default for SyncPool<T> {
    fn default() -> Self {
        SyncPool::new()
    }
}

impl<T> SyncPool<T> {
    /// An empty pool with the default settings (chunks of about 16 KiB, no
    /// capacity limit, thread caches of 256 objects).
    pub fn new() -> Self {
        SyncPool::with_builder(Builder::new())
    }

    /// A [`Builder`] for a pool with other settings (`build_sync`).
    pub const fn builder() -> Builder<T> {
        Builder::new()
    }

    pub(super) fn with_builder(b: Builder<T>) -> Self {
        SyncPool::with_builder_as(b, crate::is_enabled())
    }

    /// A pool registered (and tracked) or not, whatever the mode: tests
    /// choose the layout they exercise.
    pub(super) fn with_builder_as(b: Builder<T>, registered: bool) -> Self {
        let shared = Box::new(Shared {
            head: Header {
                refs: AtomicUsize::new(1),
                handles: AtomicUsize::new(1),
                id: next_id(),
                batch: (b.thread_cache / 2).max(1),
                give_back: Shared::<T>::give_back,
                destroy: Shared::<T>::destroy,
            },
            depot: Mutex::new(Depot {
                batches: Vec::new(),
                bump: ptr::null_mut(),
                end: ptr::null_mut(),
                chunks: Vec::new(),
                slots: 0,
                out: 0,
                high_water: 0,
                chunk_len: b.chunk_len_for(),
                capacity: b.capacity,
                batch: (b.thread_cache / 2).max(1),
                tracked: registered,
            }),
            capacity: b.capacity,
            cache: b.thread_cache,
            batch: (b.thread_cache / 2).max(1),
            registered,
        });
        let shared = NonNull::from(Box::leak(shared));
        if registered {
            outstanding::register_pool(
                // SAFETY: just made.
                unsafe { shared.as_ref() }.head.id,
                shared.as_ptr().cast_const().cast(),
                Shared::<T>::list_erased,
                Shared::<T>::view_erased,
            );
        }
        SyncPool {
            shared,
            _owns: PhantomData,
        }
    }

    #[inline(always)]
    fn shared(&self) -> &Shared<T> {
        // SAFETY: a handle keeps the core alive.
        unsafe { self.shared.as_ref() }
    }

    /// Moves `value` into a free slot and returns its box, or gives `value`
    /// back in an error if the pool is at its capacity or a new chunk
    /// cannot be allocated. Never panics.
    ///
    /// With thread caches on, a capacity limit may be reported reached
    /// while other threads' caches hold free objects.
    #[track_caller]
    #[inline]
    pub fn alloc(&self, value: T) -> Result<SyncPoolBox<T>, PoolError<T>> {
        let sh = self.shared();
        let slot = match sh.pop_cached() {
            Some(s) => s,
            None => match sh.take_slow() {
                Ok(s) => s,
                Err(kind) => return Err(PoolError { value, kind }),
            },
        };
        // SAFETY: the slot was free and is now ours alone.
        unsafe { Slot::fill(slot, Location::caller(), value) };
        if sh.registered {
            // SAFETY: as above; a registered pool's chunks are tracked.
            unsafe { Slot::track(slot, Location::caller(), capture_stack()) };
        }
        Ok(SyncPoolBox {
            slot,
            shared: self.shared,
            _owns: PhantomData,
        })
    }

    /// The pool's figures. Walks every slot to count the live ones: the
    /// count is exact when no other thread is taking or returning objects.
    pub fn stats(&self) -> PoolStats {
        let d = self.shared().depot();
        let mut live = 0;
        for c in &d.chunks {
            for i in 0..c.len {
                // SAFETY: the chunk is alive while we hold the lock.
                if unsafe { Slot::site(c.slot(i)) }.is_some() {
                    live += 1;
                }
            }
        }
        PoolStats {
            chunks: d.chunks.len(),
            slots: d.slots,
            live,
            free: d.slots - live,
            high_water: d.high_water.max(live),
            bytes: d.chunks.iter().map(Chunk::bytes).sum(),
            capacity: self.shared().capacity,
        }
    }

    /// Every object taken and not returned yet, with where it was taken,
    /// sorted by file and line.
    pub fn leaks(&self) -> Vec<Outstanding> {
        let mut out = Vec::new();
        self.shared().list(true, &mut out);
        sort_by_site(&mut out);
        out
    }

    /// Gives back to the allocator every chunk whose objects are all free
    /// in the shared depot (this thread's cache is emptied into it first;
    /// objects cached by other threads keep their chunks); returns how many
    /// chunks were freed.
    pub fn shrink(&self) -> usize {
        let sh = self.shared();
        sh.flush_own_cache();
        // A registered pool frees chunks with the registry of pools locked:
        // a leak scan holds it while it reads the chunks it gathered.
        let _registry = sh.registered.then(outstanding::lock_pools);
        sh.depot().shrink()
    }

    /// True if both handles are to the same pool.
    pub fn ptr_eq(a: &SyncPool<T>, b: &SyncPool<T>) -> bool {
        a.shared == b.shared
    }
}

impl<T> Clone for SyncPool<T> {
    /// Another handle to the same pool.
    fn clone(&self) -> Self {
        let h = &self.shared().head;
        h.handles.fetch_add(1, Ordering::Relaxed);
        h.refs.fetch_add(1, Ordering::Relaxed);
        SyncPool {
            shared: self.shared,
            _owns: PhantomData,
        }
    }
}

impl<T> Drop for SyncPool<T> {
    fn drop(&mut self) {
        let sh = self.shared();
        if sh.head.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The pool is gone: give this thread's cache back at once (other
            // threads' go when they next miss their cache, or exit).
            sh.drop_own_cache();
        }
        if sh.head.refs.fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            // SAFETY: nothing refers to the core any more.
            unsafe { Shared::<T>::destroy(self.shared.cast()) };
        }
    }
}

impl<T> fmt::Debug for SyncPool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncPool")
            .field("type", &std::any::type_name::<T>())
            .field("stats", &self.stats())
            .finish()
    }
}

// === impl Shared ===

impl<T> Shared<T> {
    /// This pool's address, as thread-cache entries hold it.
    #[inline(always)]
    fn header(&self) -> *const Header {
        ptr::from_ref(self).cast::<Header>()
    }

    fn depot(&self) -> MutexGuard<'_, Depot<T>> {
        self.depot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pops a slot from this thread's cache, if it is this pool's and not
    /// empty. No lock, no atomic instruction.
    #[inline(always)]
    fn pop_cached(&self) -> Option<NonNull<Slot<T>>> {
        LOCAL
            .try_with(|l| {
                // SAFETY: a slow path takes the entry out of `mru` (leaving
                // `NO_ENTRY`, no pool's) for as long as it works on the
                // caches, and a fast path neither nests nor calls out: this
                // is the only reference.
                let e = unsafe { &mut *l.mru.get() };
                // The pointer, not the id: an entry holds a reference to its
                // pool, so an equal pointer is this very pool.
                if e.pool != self.header() {
                    return None;
                }
                let s = NonNull::new(e.head.cast::<Slot<T>>())?;
                // SAFETY: the cache's slots are free, linked and this
                // thread's.
                e.head = unsafe { Slot::next(s) }.cast();
                e.len -= 1;
                Some(s)
            })
            .ok()
            .flatten()
    }

    /// Pushes a free slot onto this thread's cache if it is this pool's
    /// and not full; false otherwise. No lock, no atomic instruction.
    #[inline(always)]
    fn push_cached(&self, slot: NonNull<Slot<T>>) -> bool {
        LOCAL
            .try_with(|l| {
                // SAFETY: as in `pop_cached`.
                let e = unsafe { &mut *l.mru.get() };
                if e.pool != self.header() || e.len >= e.batch {
                    return false;
                }
                // SAFETY: the slot is free (its value gone) and ours.
                unsafe { Slot::set_next(slot, e.head.cast()) };
                e.head = slot.as_ptr().cast();
                e.len += 1;
                true
            })
            .unwrap_or(false)
    }

    /// Runs `f` on this thread's caches (the most recent one, the others),
    /// marked busy; `None` if they are busy already (re-entered) or gone
    /// (the thread is exiting).
    fn with_caches<R>(&self, f: impl FnOnce(&mut Entry, &mut Vec<Entry>) -> R) -> Option<R> {
        LOCAL
            .try_with(|l| {
                if l.busy.replace(true) {
                    return None;
                }
                /// Puts the most recent entry back and clears `busy`, also
                /// on a panic.
                struct Done<'a> {
                    l: &'a Local,
                    mru: Entry,
                }
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        // SAFETY: no reference to `mru` is held: fast paths
                        // make theirs only for the length of their call.
                        unsafe { *self.l.mru.get() = self.mru };
                        self.l.busy.set(false);
                    }
                }
                if !l.hooked.get() {
                    if EXIT.try_with(|_| ()).is_err() {
                        l.busy.set(false);
                        return None; // exiting: cache nothing more
                    }
                    l.hooked.set(true);
                }
                // Take the most recent entry out while we work: a fast path
                // entered meanwhile (from a signal handler) finds no pool's
                // entry there, takes the slow path, finds `busy`, and uses
                // the depot.
                let mut done = Done {
                    l,
                    // SAFETY: as in `Done::drop`.
                    mru: std::mem::replace(unsafe { &mut *l.mru.get() }, NO_ENTRY),
                };
                // SAFETY: we set `busy`: a nested slow path returns above,
                // and fast paths do not touch `others`; this is the only
                // reference.
                let others = unsafe { &mut **l.others.get() };
                Some(f(&mut done.mru, others))
            })
            .ok()
            .flatten()
    }

    /// Runs `f` on this pool's cache entry, made the most recent one (and
    /// made at all if needed); `None` as for [`Shared::with_caches`].
    fn with_entry<R>(&self, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        self.with_caches(|mru, others| {
            if mru.id != self.head.id {
                self.bring_to_front(mru, others);
            }
            f(mru)
        })
    }

    fn bring_to_front(&self, mru: &mut Entry, others: &mut Vec<Entry>) {
        let old = if let Some(i) = others.iter().position(|e| e.id == self.head.id) {
            std::mem::replace(mru, take_entry(others, i))
        } else {
            // A miss: drop the caches of pools that are gone.
            let mut i = 0;
            while i < others.len() {
                if is_closed(&others[i]) {
                    // SAFETY: taken out of the caches.
                    unsafe { release_entry(take_entry(others, i)) };
                } else {
                    i += 1;
                }
            }
            // Our caller holds a handle or a box: `refs` is not zero.
            self.head.refs.fetch_add(1, Ordering::Relaxed);
            std::mem::replace(
                mru,
                Entry {
                    // From the whole `Shared`, not just its header: the
                    // depot is reached through this pointer too.
                    pool: self.header(),
                    id: self.head.id,
                    head: ptr::null_mut(),
                    len: 0,
                    prev: ptr::null_mut(),
                    batch: self.batch,
                },
            )
        };
        if is_closed(&old) {
            // SAFETY: taken out of the caches.
            unsafe { release_entry(old) };
        } else if !old.pool.is_null() {
            // Not memwarden-internal memory: the leak scan must see that
            // this thread's cache refers to the pool.
            others.push(old);
        }
    }

    /// `alloc` when the cache could not serve it.
    #[cold]
    #[inline(never)]
    fn take_slow(&self) -> Result<NonNull<Slot<T>>, PoolErrorKind> {
        if self.cache > 0 {
            let cached = self.with_entry(|e| {
                if e.head.is_null() && !e.prev.is_null() {
                    // The reserve list becomes the working one.
                    e.head = std::mem::replace(&mut e.prev, ptr::null_mut());
                    e.len = self.batch;
                } else if e.head.is_null() {
                    let (h, n) = self.depot().take(self.batch)?;
                    // The slots out of the depot now count as references.
                    self.head.refs.fetch_add(n, Ordering::Relaxed);
                    e.head = h.as_ptr().cast();
                    e.len = n;
                }
                let s = NonNull::new(e.head.cast::<Slot<T>>()).expect("refilled");
                // SAFETY: the cache's slots are free, linked and ours.
                e.head = unsafe { Slot::next(s) }.cast();
                e.len -= 1;
                Ok(s)
            });
            if let Some(r) = cached {
                return r;
            }
        }
        // No cache: straight from the depot.
        let (s, _) = self.depot().take(1)?;
        self.head.refs.fetch_add(1, Ordering::Relaxed);
        Ok(s)
    }

    /// Gives a free slot back (its value gone).
    ///
    /// # Safety
    /// `slot` must be a taken slot of `shared`, given back once.
    #[inline]
    unsafe fn release(shared: NonNull<Shared<T>>, slot: NonNull<Slot<T>>) {
        // SAFETY: the taken slot keeps the core alive.
        let sh = unsafe { shared.as_ref() };
        // SAFETY: the slot is in a live chunk.
        unsafe { Slot::clear(slot) };
        if !sh.push_cached(slot) {
            // SAFETY: forwarded.
            unsafe { Shared::release_slow(shared, slot) };
        }
    }

    /// # Safety
    /// As [`Shared::release`], with the slot already cleared.
    #[cold]
    #[inline(never)]
    unsafe fn release_slow(shared: NonNull<Shared<T>>, slot: NonNull<Slot<T>>) {
        // SAFETY: the taken slot keeps the core alive.
        let sh = unsafe { shared.as_ref() };
        if sh.cache > 0 && sh.head.handles.load(Ordering::Relaxed) > 0 {
            let cached = sh.with_entry(|e| {
                if e.len >= sh.batch {
                    // The working list is full: it becomes the reserve,
                    // and a reserve already there goes back to the depot
                    // with its references (the entry keeps its own, so
                    // this is not the last). Whole lists: no walking.
                    let full = std::mem::replace(&mut e.head, ptr::null_mut());
                    let old = std::mem::replace(&mut e.prev, full);
                    e.len = 0;
                    if let Some(old) = NonNull::new(old.cast::<Slot<T>>()) {
                        sh.depot().put(old, sh.batch);
                        sh.head.refs.fetch_sub(sh.batch, Ordering::Release);
                    }
                }
                // SAFETY: the slot is free and ours.
                unsafe { Slot::set_next(slot, e.head.cast()) };
                e.head = slot.as_ptr().cast();
                e.len += 1;
            });
            if cached.is_some() {
                return;
            }
        }
        // SAFETY: the slot is free; linked as a list of one.
        unsafe { Slot::set_next(slot, ptr::null_mut()) };
        sh.depot().put(slot, 1);
        if sh.head.refs.fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            // SAFETY: that was the last reference.
            unsafe { Shared::<T>::destroy(shared.cast()) };
        }
    }

    /// Empties this thread's cache of this pool into the depot.
    fn flush_own_cache(&self) {
        self.with_caches(|mru, others| {
            let id = self.head.id;
            if let Some(e) = std::iter::once(mru)
                .chain(others.iter_mut())
                .find(|e| e.id == id)
            {
                let lists = [(e.head, e.len), (e.prev, self.batch)];
                for (h, n) in lists {
                    if let Some(h) = NonNull::new(h.cast::<Slot<T>>()) {
                        self.depot().put(h, n);
                        // The entry keeps its own reference: not the last.
                        self.head.refs.fetch_sub(n, Ordering::Release);
                    }
                }
                *e = Entry {
                    head: ptr::null_mut(),
                    len: 0,
                    prev: ptr::null_mut(),
                    ..*e
                };
            }
        });
    }

    /// Removes this thread's cache of this pool, giving everything back.
    fn drop_own_cache(&self) {
        self.with_caches(|mru, others| {
            let id = self.head.id;
            let e = if mru.id == id {
                std::mem::replace(mru, pop_entry(others))
            } else if let Some(i) = others.iter().position(|e| e.id == id) {
                take_entry(others, i)
            } else {
                return;
            };
            // SAFETY: taken out of the caches; our caller still holds a
            // reference, so this does not free the core.
            unsafe { release_entry(e) };
        });
    }

    fn list(&self, pool_alive: bool, out: &mut Vec<Outstanding>) {
        let d = self.depot();
        for c in &d.chunks {
            // SAFETY: the chunk is alive while we hold the lock.
            unsafe { c.list(OutstandingKind::SyncPool, self.head.id, pool_alive, out) };
        }
    }

    /// # Safety
    /// `h` must be the header of a live `Shared<T>`; `head` a list of
    /// `len` free slots of it, linked.
    unsafe fn give_back(h: NonNull<Header>, head: *mut u8, len: usize) {
        // SAFETY: `Header` is the first field of the `repr(C)` `Shared<T>`.
        let sh = unsafe { h.cast::<Shared<T>>().as_ref() };
        if let Some(head) = NonNull::new(head.cast::<Slot<T>>()) {
            sh.depot().put(head, len);
        }
    }

    /// # Safety
    /// `h` must be the header of a `Shared<T>` nothing refers to any more.
    unsafe fn destroy(h: NonNull<Header>) {
        let shared = h.cast::<Shared<T>>();
        {
            // SAFETY: alive until the `Box` below drops.
            let sh = unsafe { shared.as_ref() };
            if sh.registered {
                outstanding::unregister_pool(sh.head.id);
            }
        }
        // SAFETY: per the contract; made by `Box::leak` in `with_builder`.
        drop(unsafe { Box::from_raw(shared.as_ptr()) });
    }

    /// [`outstanding::ListFn`].
    ///
    /// # Safety
    /// `p` must be a live registered `Shared<T>`.
    unsafe fn list_erased(p: *const (), out: &mut Vec<Outstanding>) {
        // SAFETY: per the contract.
        let sh = unsafe { &*p.cast::<Shared<T>>() };
        sh.list(sh.head.handles.load(Ordering::Relaxed) > 0, out);
    }

    /// [`outstanding::ViewFn`].
    ///
    /// # Safety
    /// As [`Shared::list_erased`].
    unsafe fn view_erased(p: *const (), out: &mut PoolView) {
        // SAFETY: per the contract.
        let sh = unsafe { &*p.cast::<Shared<T>>() };
        let d = sh.depot();
        out.internal.push(p as usize);
        for (cap, ptr) in [
            (d.chunks.capacity(), d.chunks.as_ptr() as usize),
            (d.batches.capacity(), d.batches.as_ptr() as usize),
        ] {
            if cap > 0 {
                out.internal.push(ptr);
            }
        }
        out.chunks.extend(d.chunks.iter().map(Chunk::view));
    }
}

// === impl Depot ===

impl<T> Depot<T> {
    /// Takes up to `max` (> 0) free slots, as a linked list, allocating a
    /// chunk if needed.
    fn take(&mut self, max: usize) -> Result<(NonNull<Slot<T>>, usize), PoolErrorKind> {
        let (head, n) = if let Some((head, len)) = self.batches.pop() {
            if len > max {
                let mut last = head;
                for _ in 1..max {
                    // SAFETY: depot slots are free and linked; `len > max`.
                    last = NonNull::new(unsafe { Slot::next(last) }).expect("linked");
                }
                // SAFETY: as above; the rest stays in the depot.
                let rest = NonNull::new(unsafe { Slot::next(last) }).expect("linked");
                self.batches.push((rest, len - max));
                // SAFETY: `last` is a free slot of ours.
                unsafe { Slot::set_next(last, ptr::null_mut()) };
                (head, max)
            } else {
                (head, len)
            }
        } else {
            self.carve(max)?
        };
        self.out += n;
        self.high_water = self.high_water.max(self.out);
        Ok((head, n))
    }

    /// Links up to `max` (> 0) never-used slots, allocating a chunk if
    /// needed.
    fn carve(&mut self, max: usize) -> Result<(NonNull<Slot<T>>, usize), PoolErrorKind> {
        if self.bump == self.end {
            let room = self.capacity - self.slots;
            if room == 0 {
                return Err(PoolErrorKind::CapacityReached {
                    capacity: self.capacity,
                });
            }
            let len = self.chunk_len.min(room);
            let chunk = Chunk::<T>::new(len, self.tracked)
                .map_err(|layout| PoolErrorKind::OutOfMemory { layout })?;
            self.bump = chunk.start.as_ptr();
            self.end = chunk.slot(len);
            self.slots += len;
            self.chunks.push(chunk);
        }
        let stride = Slot::<T>::stride(self.tracked);
        let avail = (self.end as usize - self.bump as usize) / stride;
        let n = max.min(avail);
        let head = self.bump;
        for i in 0..n {
            // SAFETY: slots `bump..bump + n` (`stride` bytes apart) are
            // never-used slots of the last chunk, ours under the lock.
            unsafe {
                let s = NonNull::new_unchecked(head.byte_add(i * stride));
                let next = if i + 1 < n {
                    head.byte_add((i + 1) * stride)
                } else {
                    ptr::null_mut()
                };
                Slot::set_next(s, next);
            }
        }
        // SAFETY: `n <= avail`: still within (or at the end of) the chunk.
        self.bump = unsafe { head.byte_add(n * stride) };
        // SAFETY: `head` is a slot of a chunk.
        Ok((unsafe { NonNull::new_unchecked(head) }, n))
    }

    /// Takes back a linked list of `len` free slots.
    fn put(&mut self, head: NonNull<Slot<T>>, len: usize) {
        self.batches.push((head, len));
        self.out -= len;
    }

    fn shrink(&mut self) -> usize {
        let mut free = Vec::new();
        for &(head, _) in &self.batches {
            let mut s = head.as_ptr();
            while let Some(n) = NonNull::new(s) {
                free.push(s);
                // SAFETY: depot slots are free and linked, ours under the
                // lock.
                s = unsafe { Slot::next(n) };
            }
        }
        let Some(empty) = empty_chunks(&self.chunks, &free, self.bump, self.end) else {
            return 0;
        };
        free.retain(|&s| !empty[chunk_of(&self.chunks, s)]);
        // Relink what stays, in batches of `batch`.
        self.batches.clear();
        for group in free.chunks(self.batch) {
            for (i, &s) in group.iter().enumerate() {
                let next = group.get(i + 1).copied().unwrap_or(ptr::null_mut());
                // SAFETY: a free slot of a chunk we keep, ours.
                unsafe { Slot::set_next(NonNull::new_unchecked(s), next) };
            }
            // SAFETY: slots are non-null.
            let head = unsafe { NonNull::new_unchecked(group[0]) };
            self.batches.push((head, group.len()));
        }
        if empty[empty.len() - 1] {
            self.bump = ptr::null_mut();
            self.end = ptr::null_mut();
        }
        let mut freed = 0;
        for (chunk, e) in std::mem::take(&mut self.chunks).into_iter().zip(empty) {
            if e {
                freed += 1;
                self.slots -= chunk.len;
                // SAFETY: every slot of the chunk is free and no list holds
                // one any more.
                unsafe { chunk.free() };
            } else {
                self.chunks.push(chunk);
            }
        }
        freed
    }
}

impl<T> Drop for Depot<T> {
    fn drop(&mut self) {
        for c in self.chunks.drain(..) {
            // SAFETY: the core is being freed: no slot is taken.
            unsafe { c.free() };
        }
    }
}

// === impl SyncPoolBox ===

super::pool_box_impls!(SyncPoolBox, shared, Shared);
