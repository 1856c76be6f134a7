//! Per-thread state: the re-entrancy guard and the thread number.
//!
//! Both are `const`-initialised thread-locals of types without `Drop`, so
//! touching them never allocates, never registers a destructor, and works
//! during thread teardown too (such thread-locals are never destroyed).
use std::alloc::Layout;
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::roots::CALLEE_SAVED;
use crate::sync::SpinLock;

/// XOR-ed into the registers kept in [`ENTRY_REGS`]: every scan reads this
/// thread-local as a root, and a stale register value there would keep
/// the block it points to reachable. With these high bits set, no kept
/// value is an address.
const HIDE: usize = 0x9e37_0000_0000_0000;

thread_local! {
    /// True while this thread runs memwarden's own code: allocations made
    /// then are memwarden's, not the program's, and are not tracked.
    static BUSY: Cell<bool> = const { Cell::new(false) };
    /// The stack pointer where this thread entered memwarden code (valid
    /// while BUSY): a leak scan of this thread's stack starts there, so that
    /// memwarden's own frames (which hold addresses of blocks it is working
    /// on, or of every block while it scans) are never taken for roots.
    static ENTRY_SP: Cell<usize> = const { Cell::new(0) };
    /// The callee-saved registers where this thread entered memwarden code
    /// (valid while BUSY), each XOR-ed with [`HIDE`]: see
    /// [`entry_regs_hidden`].
    static ENTRY_REGS: Cell<[usize; CALLEE_SAVED]> = const { Cell::new([0; CALLEE_SAVED]) };
    /// This thread's number, 0 until first needed.
    static THREAD: Cell<u32> = const { Cell::new(0) };
    /// True between memwarden's `fork` handlers, in the forking thread,
    /// which then holds every registry and stack-table lock: see
    /// [`enter_fork`].
    static FORKING: Cell<bool> = const { Cell::new(false) };
    /// BUSY as it was when the fork window opened.
    static BUSY_BEFORE_FORK: Cell<bool> = const { Cell::new(false) };
    /// The block this thread is allocating, between its record's insertion
    /// and the end of `alloc`, or freeing, until its record has left the
    /// table (0 otherwise): see [`in_flight`].
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
    /// The bytes of the block this thread is reallocating, while the block
    /// has no record (start, length): see [`InFlightBytes`].
    static IN_FLIGHT_BYTES: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// The first words of that block, as they were before the inner
    /// allocator could write over them: see [`InFlightBytes`]. Not hidden
    /// (every scan reads this thread-local as a root, which is the point),
    /// and zeroed as soon as the reallocation is over.
    static IN_FLIGHT_HEAD: Cell<[usize; FLIGHT_HEAD_WORDS]> =
        const { Cell::new([0; FLIGHT_HEAD_WORDS]) };
}

/// Set in the length [`in_flight_bytes`] gives while the inner allocator's
/// `realloc` runs (see [`InFlightBytes::moving`]).
pub(crate) const MOVING: usize = 1 << (usize::BITS - 1);

/// Words of a block being reallocated kept aside by [`InFlightBytes`]:
/// as many as glibc writes into a chunk it frees (`fd`, `bk`,
/// `fd_nextsize`, `bk_nextsize`); other allocators write fewer.
const FLIGHT_HEAD_WORDS: usize = 4;

/// Marks the bytes of a block being reallocated as a root of any leak
/// scan until dropped: `realloc` takes the block's record out of the
/// registry before the inner allocator moves it, and puts the new one in
/// after, so for a moment the block is in no snapshot, and what it points
/// to would look lost. A scan reads these bytes (through the stop handler,
/// which reports them with the thread's stack pointer) as it reads stacks.
///
/// Until the inner allocator returns, those are the old block's bytes. An
/// allocator that moves the block frees the old one before it returns, and
/// its free writes free-list links over the block's first bytes (glibc,
/// for a chunk over 1 KiB: four words, the last two of which are the first
/// two of the program's bytes behind the front red zone). A scan stopping
/// the thread then would miss what those words pointed to (it found two of
/// 2,000 boxes of a growing `Vec` lost, about once in 200 runs of a test).
/// So the block's first words are also copied to a thread-local, which
/// every scan reads as a root, until the reallocation is over.
pub(crate) struct InFlightBytes(());

impl InFlightBytes {
    /// From now on, `len` bytes at `start`.
    #[inline(always)]
    pub(crate) fn new(start: usize, len: usize) -> InFlightBytes {
        let _ = IN_FLIGHT_BYTES.try_with(|f| f.set((start, len)));
        InFlightBytes(())
    }

    /// The block is `len` bytes long (its record's size, which a wrong
    /// layout given to `realloc` does not change): copies its first words
    /// aside, before the inner allocator may write over them.
    ///
    /// # Safety
    /// The block at the start given to [`InFlightBytes::new`] is live, `len`
    /// bytes long, and still unchanged by the inner allocator.
    #[inline(always)]
    pub(crate) unsafe fn keep_head(&self, len: usize) {
        let (start, _) = in_flight_bytes();
        let _ = IN_FLIGHT_BYTES.try_with(|f| f.set((start, len)));
        let mut head = [0usize; FLIGHT_HEAD_WORDS];
        for (i, w) in head.iter_mut().enumerate().take(len / size_of::<usize>()) {
            // SAFETY: word `i` lies within the block's `len` bytes at
            // `start` (the caller's promise); read unaligned, as the block
            // may be aligned to less than a word.
            *w = unsafe { (start as *const usize).add(i).read_unaligned() };
        }
        let _ = IN_FLIGHT_HEAD.try_with(|h| h.set(head));
    }

    /// The inner allocator's `realloc` starts: until [`InFlightBytes::moved`]
    /// or [`InFlightBytes::stayed`], the old bytes may be changing or gone
    /// (unmapped by `mremap`, or handed to another thread). A leak scan
    /// that stops this thread then stops the world again a moment later
    /// (`scan::classify_all`).
    #[inline(always)]
    pub(crate) fn moving(&self) {
        let _ = IN_FLIGHT_BYTES.try_with(|f| {
            let (start, len) = f.get();
            f.set((start, len | MOVING));
        });
    }

    /// The inner `realloc` failed: the old block is as it was.
    #[inline(always)]
    pub(crate) fn stayed(&self) {
        let _ = IN_FLIGHT_BYTES.try_with(|f| {
            let (start, len) = f.get();
            f.set((start, len & !MOVING));
        });
    }

    /// The block moved: `len` bytes at `start` now.
    #[inline(always)]
    pub(crate) fn moved(&self, start: usize, len: usize) {
        let _ = IN_FLIGHT_BYTES.try_with(|f| f.set((start, len)));
    }
}

impl Drop for InFlightBytes {
    #[inline(always)]
    fn drop(&mut self) {
        let _ = IN_FLIGHT_BYTES.try_with(|f| f.set((0, 0)));
        let _ = IN_FLIGHT_HEAD.try_with(|h| h.set([0; FLIGHT_HEAD_WORDS]));
    }
}

/// What [`InFlightBytes`] kept of the block's first words on this thread
/// (zeros if nothing).
#[cfg(test)]
pub(crate) fn in_flight_head() -> [usize; FLIGHT_HEAD_WORDS] {
    IN_FLIGHT_HEAD
        .try_with(Cell::get)
        .unwrap_or([0; FLIGHT_HEAD_WORDS])
}

/// What [`InFlightBytes`] holds on this thread now, (0, 0) if nothing; the
/// length has [`MOVING`] set while the inner `realloc` runs.
/// Async-signal-safe (a thread-local read).
#[inline]
pub(crate) fn in_flight_bytes() -> (usize, usize) {
    IN_FLIGHT_BYTES.try_with(Cell::get).unwrap_or((0, 0))
}

/// Holds `addr` (or, with 0, nothing) where a leak scan sees it: the scan
/// reads every thread's static thread-locals as roots, but not the frames
/// of a thread stopped inside memwarden, and a block recorded before its
/// junk fill is referenced only from those frames until `alloc` returns
/// (and a block being freed, only from them while its free waits for the
/// registry's lock, which a scan holds). Cleared at once after, so that
/// no stale address stays here.
#[inline(always)]
pub(crate) fn in_flight(addr: usize) {
    let _ = IN_FLIGHT.try_with(|f| f.set(addr));
}

static NEXT_THREAD: AtomicU32 = AtomicU32::new(1);

/// Marks this thread as running memwarden code until dropped.
///
/// Every piece of memwarden that can allocate (the report, symbolization,
/// reading `/proc`) runs under a `Reentry`, so that its allocations pass
/// through untracked instead of recursing into the tracker.
#[derive(Debug)]
pub(crate) struct Reentry {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Reentry {
    /// Enters memwarden code; `None` if this thread already is inside it.
    #[inline(always)]
    pub(crate) fn enter() -> Option<Reentry> {
        let was = BUSY.try_with(Cell::get).unwrap_or(true);
        if was {
            None
        } else {
            // Where it entered first, then BUSY: the stop handler, which
            // may run between any two instructions of this thread, reads
            // them when BUSY is set (with BUSY still clear it scans this
            // thread from where it stopped, which covers everything).
            let _ = ENTRY_SP.try_with(|e| e.set(crate::roots::stack_pointer()));
            if let Ok(regs) = ENTRY_REGS.try_with(Cell::as_ptr) {
                // SAFETY: this thread's own slot, `CALLEE_SAVED` words.
                unsafe { crate::roots::save_callee_saved(regs, HIDE) };
            }
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
            let _ = BUSY.try_with(|b| b.set(true));
            Some(Reentry {
                _not_send: std::marker::PhantomData,
            })
        }
    }
}

impl Drop for Reentry {
    #[inline]
    fn drop(&mut self) {
        let _ = BUSY.try_with(|b| b.set(false));
    }
}

/// Opens the fork window on this thread, which has just taken every lock
/// of memwarden's in its `fork` handler: until [`leave_fork`], the thread
/// counts as inside memwarden, so that the `fork` handlers that run after
/// memwarden's (those registered before it) allocate through the inner
/// allocator instead of waiting on those locks (see `c_heap`, and
/// `Warden::alloc_tracked`).
pub(crate) fn enter_fork() {
    let was = BUSY.try_with(|b| b.replace(true)).unwrap_or(true);
    let _ = BUSY_BEFORE_FORK.try_with(|b| b.set(was));
    let _ = FORKING.try_with(|f| f.set(true));
}

/// Closes the fork window opened by [`enter_fork`].
pub(crate) fn leave_fork() {
    let was = BUSY_BEFORE_FORK.try_with(Cell::get).unwrap_or(false);
    let _ = FORKING.try_with(|f| f.set(false));
    let _ = BUSY.try_with(|b| b.set(was));
}

/// True inside the fork window (see [`enter_fork`]).
#[inline]
pub(crate) fn forking() -> bool {
    FORKING.try_with(Cell::get).unwrap_or(false)
}

/// A free made in the fork window, where the block's record cannot be
/// looked up (the forking thread holds the registry's locks): done when
/// the window closes, by [`Deferred::free`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deferred {
    /// Frees the block as the call made in the window would have (C's
    /// `free`, or a `Warden`'s `dealloc` with this layout).
    pub(crate) free: unsafe fn(*mut u8, Layout),
    /// The block.
    pub(crate) ptr: usize,
    /// The layout the window's call passed (C's `free` passes none).
    pub(crate) layout: Layout,
}

/// How many frees the fork window keeps for later.
pub(crate) const DEFERRED_MAX: usize = 64;

/// The frees made in the fork window, in the order made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeferredFrees {
    len: usize,
    frees: [Option<Deferred>; DEFERRED_MAX],
}

/// Only the forking thread uses it, while it holds every registry lock,
/// which keeps any other thread out of the window: this lock is never
/// contended. (A lock of its own, not one of the registry's, so that it is
/// free to take in the window.)
static DEFERRED: SpinLock<DeferredFrees> = SpinLock::new(DeferredFrees {
    len: 0,
    frees: [None; DEFERRED_MAX],
});

/// Keeps a free made in the fork window, to be done when it closes.
/// Returns false, keeping nothing, past [`DEFERRED_MAX`] frees in one
/// window: the block is then never freed (a leak, reported as such, rather
/// than a block freed while its record cannot be changed).
pub(crate) fn defer_free(free: Deferred) -> bool {
    let mut d = DEFERRED.lock();
    let n = d.len;
    match d.frees.get_mut(n) {
        Some(slot) => {
            *slot = Some(free);
            d.len = n + 1;
            true
        }
        None => false,
    }
}

/// The frees [`defer_free`] kept, taken out while the window's locks are
/// still held (from glibc 2.36, another thread's `fork` may open its
/// window as soon as they are released), to be done once they are not
/// with [`DeferredFrees::run`].
pub(crate) fn take_deferred() -> DeferredFrees {
    let mut d = DEFERRED.lock();
    let taken = *d;
    d.len = 0;
    d.frees = [None; DEFERRED_MAX];
    taken
}

impl DeferredFrees {
    /// Does the frees, in the order they were made.
    ///
    /// # Safety
    /// Outside the fork window, once: each block was handed to a free in
    /// the window and not freed since (which [`take_deferred`] taking them
    /// out once ensures).
    pub(crate) unsafe fn run(self) {
        for d in self.frees.iter().take(self.len).flatten() {
            // SAFETY: per the contract, a block handed to a free in the
            // window (with this layout, where one was passed), freed
            // exactly once, here.
            unsafe { (d.free)(d.ptr as *mut u8, d.layout) };
        }
    }
}

/// Where this thread entered memwarden code, if it is inside it now.
/// Async-signal-safe (two thread-local reads).
#[inline]
pub(crate) fn busy_entry_sp() -> Option<usize> {
    if busy() {
        ENTRY_SP.try_with(|e| e.get()).ok().filter(|&sp| sp != 0)
    } else {
        None
    }
}

/// The registers where this thread entered memwarden code, if it is
/// inside it now (else zeros), XOR-ed with [`HIDE`] (undo it with
/// [`mask`]). A leak scan of a thread stopped inside memwarden
/// starts at [`busy_entry_sp`], above memwarden's frames; but a value the
/// program keeps in a callee-saved register may be saved by one of those
/// frames, below that point, or still be in the register: these are it.
/// Async-signal-safe (two thread-local reads).
#[inline]
pub(crate) fn entry_regs_hidden() -> [usize; CALLEE_SAVED] {
    if busy() {
        ENTRY_REGS.try_with(Cell::get).unwrap_or([0; CALLEE_SAVED])
    } else {
        [0; CALLEE_SAVED]
    }
}

/// A word XOR-ed with [`HIDE`] (and back), 0 staying 0: how memwarden
/// keeps an address in memory that every scan reads (a static, a
/// thread-local) without making it a root once it is stale.
pub(crate) fn mask(word: usize) -> usize {
    if word == 0 { 0 } else { word ^ HIDE }
}

/// True while this thread is inside memwarden code.
#[inline]
pub(crate) fn busy() -> bool {
    BUSY.try_with(|b| b.get()).unwrap_or(true)
}

/// A small number naming the calling thread (1 is the first thread that
/// allocated while tracking was on).
#[inline]
pub(crate) fn thread_id() -> u32 {
    THREAD
        .try_with(|t| {
            let id = t.get();
            if id != 0 {
                return id;
            }
            let id = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
            t.set(id);
            crate::registry::new_epoch();
            crate::scope::on_new_thread(id);
            id
        })
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reentry_is_exclusive_per_thread_and_released_on_drop() {
        let outer = Reentry::enter().expect("not inside yet");
        assert!(busy());
        assert!(Reentry::enter().is_none());
        drop(outer);
        assert!(!busy());
        assert!(Reentry::enter().is_some());
    }

    #[test]
    fn thread_ids_are_stable_and_distinct() {
        let here = thread_id();
        assert_eq!(here, thread_id());
        let there = std::thread::spawn(thread_id).join().unwrap();
        assert_ne!(here, there);
    }

    #[test]
    fn a_block_in_flight_keeps_its_first_words_until_dropped() {
        // Five words, one more than are kept; and a block of three, fewer.
        let block = [11usize, 22, 33, 44, 55];
        let f = InFlightBytes::new(block.as_ptr() as usize, size_of_val(&block));
        assert_eq!(in_flight_head(), [0; FLIGHT_HEAD_WORDS], "nothing kept yet");
        // SAFETY: `block` is readable and unchanged.
        unsafe { f.keep_head(size_of_val(&block)) };
        assert_eq!(in_flight_head(), [11, 22, 33, 44]);
        drop(f);
        assert_eq!(in_flight_bytes(), (0, 0));
        assert_eq!(in_flight_head(), [0; FLIGHT_HEAD_WORDS]);

        // A block of three words and three bytes, given to `realloc` with
        // a layout of 64 bytes: only its own length is read.
        let short = [7usize, 8, 9, 10];
        let f = InFlightBytes::new(short.as_ptr() as usize, 64);
        // SAFETY: as above; the last 3 bytes of the length make no word.
        unsafe { f.keep_head(3 * size_of::<usize>() + 3) };
        assert_eq!(in_flight_head(), [7, 8, 9, 0]);
        let len = 3 * size_of::<usize>() + 3;
        assert_eq!(in_flight_bytes().1, len);
        // The inner `realloc`'s window is marked in the length, and
        // unmarked when it fails or when the block has moved.
        f.moving();
        assert_eq!(in_flight_bytes().1, len | MOVING);
        f.stayed();
        assert_eq!(in_flight_bytes().1, len);
        f.moving();
        f.moved(64, 8);
        assert_eq!(in_flight_bytes(), (64, 8));
    }
}
