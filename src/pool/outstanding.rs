//! What pools and tracked pointers have handed out and not had back, and
//! the registry the exit report reads it from.
//!
//! # Registry
//!
//! Pools created while tracking is on (`crate::is_enabled()`) register
//! here; so do [`TrackedRc`](crate::rc::TrackedRc) and
//! [`TrackedArc`](crate::rc::TrackedArc) objects (in `rc`'s own table).
//! Two rules keep the registry out of the leak scan's way:
//!
//! * It stores addresses *hidden* (bitwise complemented), so that the
//!   conservative leak scan never mistakes the registry for a holder of a
//!   pool or an object: a leaked pool object stays leaked.
//! * Its own memory (the `Vec`s below) is allocated under memwarden's
//!   re-entrancy guard, so it is memwarden's internal memory, neither
//!   tracked nor reported.
//!
//! The lock is a `std::sync::Mutex` around memwarden-owned data only. It is
//! never taken inside `GlobalAlloc`; allocating while holding it is fine,
//! because the allocator never takes it. A leak scan holds it from the
//! gathering of the pools' views to the end of its classification (see
//! [`pool_views`]): registered pools free chunks only with it held, or
//! once unregistered.
use std::cell::Cell;
use std::fmt;
use std::panic::Location;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::slot::ChunkView;

/// What kind of thing is outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutstandingKind {
    /// An object of a [`Pool`](super::Pool), not returned.
    Pool,
    /// An object of a [`SyncPool`](super::SyncPool), not returned.
    SyncPool,
    /// A [`TrackedRc`](crate::rc::TrackedRc) allocation still alive.
    Rc,
    /// A [`TrackedArc`](crate::rc::TrackedArc) allocation still alive.
    Arc,
}

impl OutstandingKind {
    /// The name used in reports: `pool`, `sync_pool`, `rc`, `arc`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutstandingKind::Pool => "pool",
            OutstandingKind::SyncPool => "sync_pool",
            OutstandingKind::Rc => "rc",
            OutstandingKind::Arc => "arc",
        }
    }
}

impl fmt::Display for OutstandingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One strong reference still held to a tracked object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Where the reference was taken (`new`, `clone` or `upgrade`).
    pub taken_at: &'static Location<'static>,
    /// The [`Outstanding::id`] of the tracked object whose value holds this
    /// reference, if it was found stored directly inside one (a field, an
    /// `Option`, a `RefCell`, a `Mutex`); `None` if it is held elsewhere (a
    /// local, a static, a `Vec` or `Box` inside an object).
    pub inside: Option<u64>,
}

/// A pool object not returned, or a tracked `Rc`/`Arc` object still alive,
/// and where it was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outstanding {
    /// Pool object, or tracked pointer.
    pub kind: OutstandingKind,
    /// A number naming the pool object or tracked allocation while it
    /// lives (pool objects: the pool's id; tracked pointers: the object's).
    pub id: u64,
    /// `std::any::type_name` of the value.
    pub type_name: &'static str,
    /// Size of the value.
    pub bytes: usize,
    /// Where it was taken: the `alloc` call of a pool object, the `new` of
    /// a tracked pointer.
    pub taken_at: &'static Location<'static>,
    /// Tracked pointers: the strong references still held, one per
    /// reference (empty for pool objects).
    pub holders: Vec<Holder>,
    /// Tracked pointers: the id of the reference cycle this object is part
    /// of (the smallest id among its members), if every strong reference
    /// to it is held inside other tracked objects that are themselves held
    /// only that way and one of them leads back to it.
    pub cycle: Option<u64>,
    /// Tracked pointers: every strong reference to it is held inside tracked
    /// objects that nothing outside holds (it is in, or hangs off, a leaked
    /// cycle): it can never be freed. Conservative: a reference kept in a
    /// `Vec` or `Box` inside an object counts as held from outside.
    pub unreachable: bool,
    /// Pool objects: false once every handle to the pool has been dropped
    /// (the pool's memory lives on only for its outstanding objects).
    pub pool_alive: bool,
    /// Start and length of the memory block that is this object, for the
    /// exit report: a pool slot, or the tracked pointer's heap allocation.
    pub(crate) block: (usize, usize),
    /// Stack captured when the object was taken (0: none).
    #[allow(dead_code)] // read by the exit report when tracking is built in
    pub(crate) stack: u32,
}

impl fmt::Display for Outstanding {
    /// One line, e.g. `rc TrackedRc<app::Node> #3 (48 bytes) taken at
    /// src/main.rs:10:5, held by 2 references (in cycle #3)`; then one
    /// indented line per holder.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.taken_at;
        match self.kind {
            OutstandingKind::Pool | OutstandingKind::SyncPool => {
                write!(
                    f,
                    "{} object {} ({} bytes) taken at {}:{}:{} was never returned",
                    self.kind,
                    self.type_name,
                    self.bytes,
                    t.file(),
                    t.line(),
                    t.column()
                )?;
                if !self.pool_alive {
                    f.write_str(" (its pool was dropped)")?;
                }
                Ok(())
            }
            OutstandingKind::Rc | OutstandingKind::Arc => {
                let ty = if self.kind == OutstandingKind::Rc {
                    "TrackedRc"
                } else {
                    "TrackedArc"
                };
                write!(
                    f,
                    "{ty}<{}> #{} ({} bytes) created at {}:{}:{} is still held by {} reference{}",
                    self.type_name,
                    self.id,
                    self.bytes,
                    t.file(),
                    t.line(),
                    t.column(),
                    self.holders.len(),
                    if self.holders.len() == 1 { "" } else { "s" }
                )?;
                if let Some(c) = self.cycle {
                    write!(f, " (in reference cycle #{c})")?;
                } else if self.unreachable {
                    f.write_str(" (only from a leaked cycle)")?;
                }
                for h in &self.holders {
                    let s = h.taken_at;
                    write!(f, "\n   taken at {}:{}:{}", s.file(), s.line(), s.column())?;
                    if let Some(p) = h.inside {
                        write!(f, ", held inside #{p}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// JSON form, for the exit report's `outstanding` array:
///
/// ```json
/// {"kind": "rc", "id": 3, "type": "app::Node", "bytes": 40,
///  "file": "src/graph.rs", "line": 14, "column": 13,
///  "holders": [{"file": "src/graph.rs", "line": 17, "column": 32, "inside": 4}],
///  "cycle": 3, "unreachable": true, "pool_alive": null}
/// ```
///
/// `holders`, `cycle` and `unreachable` are for tracked pointers (`[]`,
/// `null` and `false` for pool objects); `pool_alive` for pool objects
/// (`null` for tracked pointers).
impl serde::Serialize for Outstanding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Holders<'a>(&'a [Holder]);
        impl serde::Serialize for Holders<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for h in self.0 {
                    seq.serialize_element(&HolderJson {
                        file: h.taken_at.file(),
                        line: h.taken_at.line(),
                        column: h.taken_at.column(),
                        inside: h.inside,
                    })?;
                }
                seq.end()
            }
        }
        #[derive(serde::Serialize)]
        struct HolderJson<'a> {
            file: &'a str,
            line: u32,
            column: u32,
            inside: Option<u64>,
        }
        let pool = matches!(self.kind, OutstandingKind::Pool | OutstandingKind::SyncPool);
        let mut st = s.serialize_struct("Outstanding", 12)?;
        st.serialize_field("kind", self.kind.as_str())?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("type", self.type_name)?;
        st.serialize_field("bytes", &self.bytes)?;
        st.serialize_field("file", self.taken_at.file())?;
        st.serialize_field("line", &self.taken_at.line())?;
        st.serialize_field("column", &self.taken_at.column())?;
        st.serialize_field("holders", &Holders(&self.holders))?;
        st.serialize_field("cycle", &self.cycle)?;
        st.serialize_field("unreachable", &self.unreachable)?;
        st.serialize_field("pool_alive", &pool.then_some(self.pool_alive))?;
        st.end()
    }
}

#[cfg(all(feature = "tracking", target_os = "linux"))]
impl Outstanding {
    /// The call stack captured when a pool object was taken (pools created
    /// while tracking was on), symbolized, the program's frames first;
    /// empty for tracked pointers, whose stack is their allocation's
    /// (find it by `block` among the scanned blocks).
    #[allow(dead_code)] // for the exit report
    pub(crate) fn frames(&self, max_frames: usize) -> Vec<crate::Frame> {
        if self.stack == 0 {
            return Vec::new();
        }
        let mut cache = std::collections::HashMap::new();
        crate::report::symbols::user_frames(
            crate::report::symbols::symbolize(&crate::stack::frames(self.stack), &mut cache),
            max_frames,
        )
    }
}

/// Every pool object not returned and every tracked `Rc`/`Arc` object
/// still alive, from pools and objects created while tracking was on.
///
/// Pool objects come first, then tracked pointers by id. This is what the
/// exit report lists; with the `tracking` feature off, or while tracking
/// has never been on, it is empty (a pool's own [`Pool::leaks`] still
/// works).
///
/// [`Pool::leaks`]: super::Pool::leaks
pub fn outstanding() -> Vec<Outstanding> {
    let mut out = pool_outstanding();
    out.extend(crate::rc::outstanding());
    out
}

/// Objects not returned to registered pools.
pub(crate) fn pool_outstanding() -> Vec<Outstanding> {
    quiet(|| {
        let pools = lock_pools();
        let mut out = Vec::new();
        for p in pools.iter() {
            // SAFETY: a registered pool is alive until it unregisters,
            // which takes this lock; `reveal` undoes `hide`.
            unsafe { (p.list)(reveal(p.hidden), &mut out) };
        }
        out
    })
}

/// A registered pool as the leak scan sees it.
#[derive(Debug, Default)]
#[allow(dead_code)] // read by the leak scan when tracking is built in
pub(crate) struct PoolView {
    /// Address of the pool's core: a heap block that every object taken
    /// from the pool keeps alive (through its box).
    pub(crate) core: usize,
    /// Start addresses of the pool's own heap blocks: the core, its chunk
    /// list and its free lists. Their words never keep a taken object
    /// alive (the chunk list points at the first slot of each chunk, a
    /// stale free-list entry at a slot taken since).
    pub(crate) internal: Vec<usize>,
    /// The pool's chunks: not blocks of their own. The leak scan reads
    /// their slots once the world is stopped (see [`ChunkView::walk`]):
    /// each object taken then is a block.
    pub(crate) chunks: Vec<ChunkView>,
}

/// The registered pools' views, with the registry of pools locked: while
/// this lives, no registered pool frees a chunk, nor is one freed (see
/// [`pool_views`]).
#[allow(dead_code)] // used by the leak scan when tracking is built in
pub(crate) struct PoolViews {
    pub(crate) views: Vec<PoolView>,
    _registry: PoolsGuard,
}

impl fmt::Debug for PoolViews {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.views.fmt(f)
    }
}

/// One object taken from a pool, as the leak scan found it with the world
/// stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // read by the leak scan when tracking is built in
pub(crate) struct PoolObject {
    /// Its slot (the header before the value): a box points here.
    pub(crate) slot: usize,
    /// The value, and its size: the block the report shows.
    pub(crate) value: usize,
    pub(crate) bytes: usize,
    /// Stack captured when it was taken (0: none).
    pub(crate) stack: u32,
    /// Sequence number and thread of the `alloc` that took it (see
    /// [`taken_now`]); `None` if not recorded.
    pub(crate) taken: Option<(u64, u32)>,
}

/// What the leak scan finds in a slot that is not free, once the world is
/// stopped (see [`ChunkView::walk`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // read by the leak scan when tracking is built in
pub(crate) enum ObjectNow {
    /// Being taken by a stopped thread, which has stored the value and not
    /// finished recording the take: not an object yet.
    BeingTaken,
    /// Taken: the sequence number and thread of that `alloc` (`None` if not
    /// recorded), and its stack (0: none).
    Taken {
        taken: Option<(u64, u32)>,
        stack: u32,
    },
}

/// The views of every registered pool, read under the registry's lock,
/// which the result keeps: for the leak scan (chunks are not blocks of
/// their own, each taken object is one), which holds it from before it
/// stops the world to the end of the classification, and reads the
/// chunks' slots in between. A pool unregisters before it frees its
/// chunks, and frees chunks while registered (`shrink`) only with the
/// registry locked, so every chunk of the views stays allocated, and
/// readable, while the result lives. (Chunks carved meanwhile are not in
/// the views: the scan takes them for ordinary blocks.)
#[allow(dead_code)] // used by the leak scan when tracking is built in
pub(crate) fn pool_views() -> PoolViews {
    quiet(|| {
        let pools = lock_pools();
        let mut views = Vec::with_capacity(pools.len());
        for p in pools.iter() {
            let core = reveal::<()>(p.hidden);
            let mut v = PoolView {
                core: core as usize,
                ..PoolView::default()
            };
            // SAFETY: as in `pool_outstanding`.
            unsafe { (p.view)(core, &mut v) };
            views.push(v);
        }
        PoolViews {
            views,
            _registry: pools,
        }
    })
}

// === registry of pools ===

/// Lists the outstanding objects of the pool at the address given.
///
/// # Safety
/// The address must be that of the registered pool's core, alive.
pub(crate) type ListFn = unsafe fn(*const (), &mut Vec<Outstanding>);
/// Fills in the [`PoolView`] of the pool at the address given (all but
/// `core`).
///
/// # Safety
/// As [`ListFn`].
pub(crate) type ViewFn = unsafe fn(*const (), &mut PoolView);

pub(crate) struct PoolEntry {
    id: u64,
    hidden: usize,
    list: ListFn,
    view: ViewFn,
}

static POOLS: Mutex<Vec<PoolEntry>> = Mutex::new(Vec::new());

/// The registry of pools, locked. Registered pools also take it to free
/// chunks (`shrink`), so that a leak scan reads no chunk freed under it,
/// and single-thread pools whenever they change their chunk list, so that
/// a report made on another thread sees a consistent list.
pub(crate) fn lock_pools() -> PoolsGuard {
    if FORK_HELD.try_with(Cell::get).unwrap_or(false) {
        // This thread holds the registry for the `fork` window: a `fork`
        // handler registered before memwarden's is making or dropping a
        // pool. It uses the registry through the guard taken for the
        // window.
        let mut held = FORK_GUARD.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ForkGuard(g)) = held.as_mut() {
            return PoolsGuard::Fork(&mut **g);
        }
    }
    PoolsGuard::Own(POOLS.lock().unwrap_or_else(PoisonError::into_inner))
}

/// The registry of pools, locked by [`lock_pools`].
pub(crate) enum PoolsGuard {
    Own(MutexGuard<'static, Vec<PoolEntry>>),
    /// In the `fork` window, on the thread that holds the registry for it
    /// (see [`hold_for_fork`]).
    Fork(*mut Vec<PoolEntry>),
}

impl std::ops::Deref for PoolsGuard {
    type Target = Vec<PoolEntry>;
    fn deref(&self) -> &Vec<PoolEntry> {
        match self {
            PoolsGuard::Own(g) => g,
            // SAFETY: the registry stays locked by this thread until the
            // `fork` handlers after `fork` release it, and only this thread
            // runs meanwhile (the others are held off by the lock).
            PoolsGuard::Fork(p) => unsafe { &**p },
        }
    }
}

impl std::ops::DerefMut for PoolsGuard {
    fn deref_mut(&mut self) -> &mut Vec<PoolEntry> {
        match self {
            PoolsGuard::Own(g) => g,
            // SAFETY: as in `deref`; a `PoolsGuard` is used by one function
            // at a time on this thread (none of them nests).
            PoolsGuard::Fork(p) => unsafe { &mut **p },
        }
    }
}

/// The guard of the registry of pools, held across `fork`.
struct ForkGuard(MutexGuard<'static, Vec<PoolEntry>>);

// SAFETY: taken in memwarden's `fork` prepare handler and dropped in the
// parent's or child's handler, which run on the same thread (in the child,
// its copy); it never moves to another thread.
unsafe impl Send for ForkGuard {}

static FORK_GUARD: Mutex<Option<ForkGuard>> = Mutex::new(None);

thread_local! {
    /// True on the thread that holds the registry of pools across `fork`.
    static FORK_HELD: Cell<bool> = const { Cell::new(false) };
}

/// Locks the registry of pools for `fork`, so that the child does not start
/// with it locked by a thread it does not have (a leak scan holds it from
/// gathering the pools' views to the end). Taken before memwarden's other
/// locks, in the order a scan takes them; released by
/// [`release_after_fork`].
#[allow(dead_code)] // the `fork` handlers exist when tracking is built in
pub(crate) fn hold_for_fork() {
    let g = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    *FORK_GUARD.lock().unwrap_or_else(PoisonError::into_inner) = Some(ForkGuard(g));
    let _ = FORK_HELD.try_with(|h| h.set(true));
}

/// Releases what [`hold_for_fork`] took, in the parent and in the child.
#[allow(dead_code)] // as above
pub(crate) fn release_after_fork() {
    let _ = FORK_HELD.try_with(|h| h.set(false));
    let g = FORK_GUARD
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    drop(g);
}

/// Registers a pool core.
pub(crate) fn register_pool(id: u64, core: *const (), list: ListFn, view: ViewFn) {
    quiet(|| {
        lock_pools().push(PoolEntry {
            id,
            hidden: hide(core),
            list,
            view,
        })
    });
}

/// Unregisters a pool core (before it is freed).
pub(crate) fn unregister_pool(id: u64) {
    quiet(|| {
        let mut pools = lock_pools();
        if let Some(i) = pools.iter().position(|p| p.id == id) {
            pools.swap_remove(i);
        }
    });
}

/// An address the leak scan will not take for a pointer.
pub(crate) fn hide<T>(p: *const T) -> usize {
    !(p.expose_provenance())
}

/// The pointer hidden by [`hide`].
pub(crate) fn reveal<T>(h: usize) -> *const T {
    std::ptr::with_exposed_provenance(!h)
}

/// Runs `f` as memwarden's own code: what it allocates is internal memory,
/// not the program's (neither tracked nor reported).
pub(crate) fn quiet<R>(f: impl FnOnce() -> R) -> R {
    // (Not under Miri, which cannot run the guard's stack-pointer read, and
    // where nothing is tracked: unit tests still register pools there.)
    #[cfg(all(feature = "tracking", target_os = "linux", not(miri)))]
    let _guard = crate::guard::Reentry::enter();
    f()
}

/// Captures the caller's stack if tracking is built in (0 otherwise).
#[inline(never)]
#[cold]
pub(crate) fn capture_stack() -> u32 {
    #[cfg(all(feature = "tracking", target_os = "linux", not(miri)))]
    {
        let marker = 0u8;
        let entry_sp = std::hint::black_box(&marker) as *const u8 as usize;
        match crate::guard::Reentry::enter() {
            Some(_g) => crate::stack::here(entry_sp),
            None => 0,
        }
    }
    #[cfg(not(all(feature = "tracking", target_os = "linux", not(miri))))]
    {
        0
    }
}

/// The sequence number and thread number of a pool object taken now, as a
/// heap block allocated now would have them (`registry::seq_now`,
/// `guard::thread_id`), without counting an allocation: a scoped check
/// keeps the objects taken after it started, on its threads, as it keeps
/// blocks. Reads only (after the thread's first call): the epoch and this
/// thread's own state. `(0, 0)` (not recorded) if tracking is not built
/// in.
#[inline]
pub(crate) fn taken_now() -> (u64, u32) {
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    {
        // Thread 0 under Miri, which has no `prctl` for a thread's first
        // number (and tracks nothing).
        let thread = if cfg!(miri) {
            0
        } else {
            crate::guard::thread_id()
        };
        (crate::registry::seq_now(thread), thread)
    }
    #[cfg(not(all(feature = "tracking", target_os = "linux")))]
    {
        (0, 0)
    }
}

/// A process-wide unique, non-zero number.
pub(crate) fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Reads the word at `p` without assuming anything about it: it may be
/// uninitialised padding, or written by another thread right now.
///
/// Inline assembly makes the read an opaque machine load, which yields some
/// bit pattern in every case; a Rust load of such memory would be undefined
/// behaviour. Under Miri, which cannot run assembly, memory is not read and
/// 0 is returned.
///
/// # Safety
/// `p` must be aligned and point to readable memory.
#[inline]
pub(crate) unsafe fn read_word(p: *const usize) -> usize {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        let v: usize;
        // SAFETY: the caller guarantees `p` is aligned and readable; the
        // instruction only loads from it.
        unsafe {
            std::arch::asm!(
                "mov {v}, qword ptr [{p}]",
                p = in(reg) p,
                v = lateout(reg) v,
                options(nostack, preserves_flags, readonly)
            );
        }
        v
    }
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    {
        let v: usize;
        // SAFETY: as above.
        unsafe {
            std::arch::asm!(
                "ldr {v}, [{p}]",
                p = in(reg) p,
                v = lateout(reg) v,
                options(nostack, preserves_flags, readonly)
            );
        }
        v
    }
    #[cfg(any(miri, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
    {
        let _ = p;
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hide_and_reveal_round_trip() {
        let x = 5u64;
        let h = hide(&x as *const u64);
        assert_ne!(h, &x as *const u64 as usize);
        // SAFETY: `reveal` gives back the pointer to `x`.
        assert_eq!(unsafe { *reveal::<u64>(h) }, 5);
    }

    #[test]
    #[cfg_attr(miri, ignore = "assembly")]
    fn read_word_reads() {
        let words = [7usize, 9];
        // SAFETY: aligned, readable.
        assert_eq!(unsafe { read_word(&words[1]) }, 9);
    }

    #[cfg(feature = "tracking")]
    #[test]
    fn json_shape() {
        let site = Location::caller();
        let o = Outstanding {
            kind: OutstandingKind::Rc,
            id: 3,
            type_name: "app::Node",
            bytes: 40,
            taken_at: site,
            holders: vec![Holder {
                taken_at: site,
                inside: Some(4),
            }],
            cycle: Some(3),
            unreachable: true,
            pool_alive: false,
            block: (0, 0),
            stack: 0,
        };
        let v: serde_json::Value = serde_json::to_value(&o).unwrap();
        assert_eq!(v["kind"], "rc");
        assert_eq!(v["type"], "app::Node");
        assert_eq!(v["line"], site.line());
        assert_eq!(v["holders"][0]["inside"], 4);
        assert_eq!(v["cycle"], 3);
        assert!(v["pool_alive"].is_null());
        let p = Outstanding {
            kind: OutstandingKind::Pool,
            holders: vec![],
            cycle: None,
            unreachable: false,
            pool_alive: true,
            ..o
        };
        let v: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(v["kind"], "pool");
        assert_eq!(v["pool_alive"], true);
        assert!(v["holders"].as_array().unwrap().is_empty());
    }

    #[test]
    fn ids_are_unique_and_non_zero() {
        let a = next_id();
        let b = next_id();
        assert!(a != 0 && b != 0 && a != b);
    }
}
