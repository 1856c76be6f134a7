//! Slots and chunks, shared by [`Pool`](super::Pool) and
//! [`SyncPool`](super::SyncPool).
//!
//! A chunk is one allocation from the global allocator holding `len` slots
//! side by side. A slot is a small header followed by a union of the value
//! and the free-list link:
//!
//! ```text
//! chunk:  | slot 0 | slot 1 | ... | slot len-1 |
//! slot:   | site | value: T  or  next: *mut Slot<T> |
//! ```
//!
//! * `site` is the `&'static Location` of the `alloc` call that took the
//!   slot, null while the slot is free. It is an `AtomicPtr` written with
//!   relaxed stores (plain stores on every supported CPU), so that a leak
//!   report may read it from another thread without a data race.
//! * Pools created while tracking is on also keep the call stack of that
//!   `alloc`: `site` then points, tagged by its low bit, to an interned
//!   [`SiteStack`] record instead. The header stays one word either way
//!   (small slots keep more objects per cache line). In such a pool a
//!   header that holds a bare `Location` marks a take half-way: `alloc`
//!   stores it with the value, then captures the stack and writes the
//!   record (below) and the tagged header, last. The leak scan, which may
//!   stop a thread in between, tells the three states apart (free, being
//!   taken, taken) from the header alone; see [`ChunkView::walk`].
//! * Pools created while tracking is on also keep, after each slot, a
//!   [`Taken`] record: the sequence number and thread of the `alloc` that
//!   took the slot, which the slot's header has no room for (and its
//!   stack again, so that the leak scan reads the record alone). A scoped
//!   leak check (`check_leaks`, a checkpoint) keeps the objects taken after
//!   it started (on its threads) by these, as it keeps heap blocks by
//!   theirs.
//!   Other pools have no such room: their slots are exactly `Slot<T>`, and
//!   `alloc` and drop work the same in both (only carving and walking a
//!   chunk go by its [stride](Slot::stride)).
//!
//!   ```text
//!   tracked chunk:  | slot 0 | taken 0 | slot 1 | taken 1 | ... |
//!   ```
//!
//!   (A second header word in every pool was the other way: it would cost
//!   untracked pools a word per object, 20% of a 32-byte object's slot, for
//!   nothing; and a record per chunk, as before, dates every object of a
//!   chunk to the chunk's allocation, so that a check missed objects taken
//!   in it from a chunk allocated before it started.)
//! * Chunks are allocated zeroed: every header reads as "free" until taken,
//!   so a report can walk a whole chunk, carved or not.
use std::alloc::Layout;
use std::cell::{Cell as StdCell, UnsafeCell};
use std::mem::ManuallyDrop;
use std::panic::Location;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use super::outstanding::{ObjectNow, Outstanding, OutstandingKind, taken_now};
use crate::checked;

/// Default chunk size in bytes, when the builder is not told a length.
const DEFAULT_CHUNK_BYTES: usize = 16 * 1024;

#[repr(C)]
pub(crate) struct Slot<T> {
    /// Null, a `&'static Location`, or a `&'static SiteStack` with the low
    /// bit set.
    site: AtomicPtr<()>,
    cell: UnsafeCell<Cell<T>>,
}

/// Where a slot was taken, with the call stack (tracked pools).
#[repr(align(8))]
struct SiteStack {
    site: &'static Location<'static>,
    stack: u32,
}

/// When, on which thread and with which stack a slot of a tracked pool was
/// taken; kept right after the slot (see the module docs). Atomic so that
/// a report may read it from another thread; written with relaxed stores
/// (plain stores) and published by the release store of the slot's header.
/// The leak scan reads it as two raw words (see [`ChunkView::walk`]), so
/// that it needs nothing else of the slot: not the interned record the
/// header points to.
#[repr(C)]
struct Taken {
    /// Sequence number, comparable with the heap blocks' and with marks
    /// (`registry::seq_now`); 0 if never written.
    seq: AtomicU64,
    /// memwarden's number of the thread that took the slot (low 32 bits)
    /// and the stack captured then (high 32 bits, 0: none), one store.
    who: AtomicU64,
}

/// Entries of each thread's cache of interned `(site, stack)` records.
const RECENT: usize = 32;

/// A `(site address, stack)` pair and its interned record.
type Recent = StdCell<(usize, u32, Option<&'static SiteStack>)>;

thread_local! {
    /// This thread's recently used `(site, stack)` records, direct-mapped:
    /// a take from a tracked pool that hits here takes no lock and writes
    /// no shared memory. No destructor (a `const` array of `Cell`s).
    static RECENT_SITES: [Recent; RECENT] = const { [const { StdCell::new((0, 0, None)) }; RECENT] };
}

/// The interned record of `(site, stack)`; records live for the rest of
/// the process (one per distinct pair, like the stack table). Looked up in
/// this thread's cache first, then in the process-wide table (a lock).
fn site_stack(site: &'static Location<'static>, stack: u32) -> &'static SiteStack {
    use std::collections::HashMap;
    use std::sync::{Mutex, PoisonError};
    type Table = HashMap<(usize, u32), &'static SiteStack>;
    static TABLE: Mutex<Option<Table>> = Mutex::new(None);
    let key = ptr::from_ref(site) as usize;
    let i = ((key >> 3) ^ stack as usize).wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as usize)
        >> (usize::BITS - RECENT.trailing_zeros());
    let cached = RECENT_SITES
        .try_with(|r| match r[i].get() {
            (k, s, Some(rec)) if k == key && s == stack => Some(rec),
            _ => None,
        })
        .ok()
        .flatten();
    if let Some(rec) = cached {
        return rec;
    }
    let rec = super::quiet(|| {
        let mut t = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
        *t.get_or_insert_with(HashMap::new)
            .entry((key, stack))
            .or_insert_with(|| Box::leak(Box::new(SiteStack { site, stack })))
    });
    let _ = RECENT_SITES.try_with(|r| r[i].set((key, stack, Some(rec))));
    rec
}

#[repr(C)]
union Cell<T> {
    value: ManuallyDrop<T>,
    next: *mut Slot<T>,
}

impl<T> Slot<T> {
    /// Slots per chunk for a chunk of about [`DEFAULT_CHUNK_BYTES`] (a
    /// tracked pool's chunks are larger by their [`Taken`] records).
    pub(crate) fn default_chunk_len() -> usize {
        (DEFAULT_CHUNK_BYTES / size_of::<Slot<T>>()).max(16)
    }

    /// Alignment of a tracked pool's chunks: their slots', and their
    /// [`Taken`] records'.
    const TRACKED_ALIGN: usize = if align_of::<Taken>() > align_of::<Slot<T>>() {
        align_of::<Taken>()
    } else {
        align_of::<Slot<T>>()
    };

    /// Offset of a tracked slot's [`Taken`] record from the slot (right
    /// after it: the slot's size is a multiple of 8 on 64-bit targets).
    const TAKEN_AT: usize = size_of::<Slot<T>>().next_multiple_of(align_of::<Taken>());

    /// Bytes from one slot of a chunk to the next: `size_of::<Slot<T>>()`,
    /// plus the [`Taken`] record in a `tracked` pool's chunks (and what
    /// keeps the next slot and its record aligned).
    #[inline(always)]
    pub(crate) const fn stride(tracked: bool) -> usize {
        if tracked {
            (Self::TAKEN_AT + size_of::<Taken>()).next_multiple_of(Self::TRACKED_ALIGN)
        } else {
            size_of::<Slot<T>>()
        }
    }

    /// Alignment of a chunk of these slots.
    const fn chunk_align(tracked: bool) -> usize {
        if tracked {
            Self::TRACKED_ALIGN
        } else {
            align_of::<Slot<T>>()
        }
    }

    /// The [`Taken`] record after a slot of a tracked pool.
    ///
    /// # Safety
    /// `slot` must be a slot of a live chunk made with `tracked` set.
    #[inline(always)]
    unsafe fn taken(slot: *const Slot<T>) -> *const Taken {
        // SAFETY: per the contract the record lies after the slot, in the
        // same chunk: the chunk and the stride are multiples of the
        // record's alignment, and so is `TAKEN_AT`.
        unsafe { slot.byte_add(Self::TAKEN_AT).cast::<Taken>() }
    }

    /// The value inside a slot.
    #[inline(always)]
    pub(crate) fn value(slot: NonNull<Slot<T>>) -> *mut T {
        // SAFETY: projecting to a field of a live slot; no reference is
        // made. The union's fields all sit at offset 0 (`repr(C)`), and
        // `ManuallyDrop<T>` has the layout of `T`.
        unsafe {
            let cell = UnsafeCell::raw_get(&raw const (*slot.as_ptr()).cell);
            (&raw mut (*cell).value).cast::<T>()
        }
    }

    /// The free-list link of a free slot.
    ///
    /// # Safety
    /// `slot` must be a free slot whose link was set with [`Slot::set_next`],
    /// and the caller must have exclusive access to it.
    #[inline(always)]
    pub(crate) unsafe fn next(slot: NonNull<Slot<T>>) -> *mut Slot<T> {
        // SAFETY: per the contract, the `next` field is the one written last.
        unsafe { (*(*slot.as_ptr()).cell.get()).next }
    }

    /// Sets the free-list link of a slot that holds no value.
    ///
    /// # Safety
    /// `slot` must point into a live chunk, hold no value, and the caller
    /// must have exclusive access to its cell.
    #[inline(always)]
    pub(crate) unsafe fn set_next(slot: NonNull<Slot<T>>, next: *mut Slot<T>) {
        // SAFETY: per the contract; writing a `Copy` union field.
        unsafe { (*(*slot.as_ptr()).cell.get()).next = next }
    }

    /// Marks a slot taken at `site` and moves `value` into it.
    ///
    /// # Safety
    /// `slot` must be a free slot of a live chunk, exclusively the caller's.
    #[inline(always)]
    pub(crate) unsafe fn fill(slot: NonNull<Slot<T>>, site: &'static Location<'static>, value: T) {
        // SAFETY: per the contract the slot is ours and lies in a live chunk.
        unsafe {
            (*slot.as_ptr())
                .site
                .store(ptr::from_ref(site).cast_mut().cast(), Ordering::Relaxed);
            Slot::value(slot).write(value);
        }
    }

    /// Records, for a slot of a tracked pool just filled at `site`, the
    /// stack of that `alloc`, and when and on which thread it ran (its
    /// [`Taken`] record), then marks the take complete: the header becomes
    /// the tagged `(site, stack)` record, even with no stack (`stack` 0),
    /// so that a bare `Location` in the header always means a take
    /// half-way. In the usual case it allocates nothing and writes
    /// nothing shared: it reads the epoch and this thread's number and
    /// counters, and finds the `(site, stack)` record in this thread's
    /// cache. (A thread's first number, and a pair not in the thread's
    /// cache, take a lock; a pair new to the process allocates its record,
    /// once.)
    ///
    /// # Safety
    /// `slot` must be a taken slot, the caller's alone, of a live chunk made
    /// with `tracked` set.
    #[cold]
    pub(crate) unsafe fn track(
        slot: NonNull<Slot<T>>,
        site: &'static Location<'static>,
        stack: u32,
    ) {
        let (seq, thread) = taken_now();
        // SAFETY: per the contract the slot has a record after it.
        let taken = unsafe { &*Slot::taken(slot.as_ptr()) };
        taken.seq.store(seq, Ordering::Relaxed);
        taken.who.store(
            u64::from(thread) | u64::from(stack) << 32,
            Ordering::Relaxed,
        );
        let rec = ptr::from_ref(site_stack(site, stack));
        let header = rec.cast_mut().map_addr(|a| a | 1).cast();
        // Release: a report that reads this header (with acquire) reads
        // the record just written, not one of an earlier take of the slot.
        // (The leak scan reads both with the taking thread stopped.)
        // SAFETY: per the contract the slot is in a live chunk.
        unsafe { (*slot.as_ptr()).site.store(header, Ordering::Release) };
    }

    /// Marks a slot free (its value already dropped or moved out).
    ///
    /// # Safety
    /// `slot` must point into a live chunk.
    #[inline(always)]
    pub(crate) unsafe fn clear(slot: NonNull<Slot<T>>) {
        // SAFETY: per the contract the slot is in a live chunk.
        unsafe {
            (*slot.as_ptr())
                .site
                .store(ptr::null_mut(), Ordering::Relaxed)
        };
    }

    /// Where the slot was taken, if it is taken.
    ///
    /// # Safety
    /// `slot` must point into a live chunk (allocated zeroed, so every
    /// header is initialised).
    #[inline]
    pub(crate) unsafe fn site(slot: *const Slot<T>) -> Option<&'static Location<'static>> {
        // SAFETY: per the contract.
        unsafe { Slot::site_stack(slot) }.map(|(site, _)| site)
    }

    /// Where the slot was taken and the stack then (0: none), if taken.
    ///
    /// # Safety
    /// As [`Slot::site`].
    #[inline]
    unsafe fn site_stack(slot: *const Slot<T>) -> Option<(&'static Location<'static>, u32)> {
        // SAFETY: forwarded.
        unsafe { Slot::site_stack_with(slot, Ordering::Relaxed) }
    }

    /// [`Slot::site_stack`], loading the header with `order`.
    ///
    /// # Safety
    /// As [`Slot::site`].
    #[inline]
    unsafe fn site_stack_with(
        slot: *const Slot<T>,
        order: Ordering,
    ) -> Option<(&'static Location<'static>, u32)> {
        // SAFETY: per the contract the header is initialised.
        let p = unsafe { (*slot).site.load(order) };
        if p.is_null() {
            None
        } else if p.addr() & 1 == 0 {
            // SAFETY: an untagged non-null `site` is a `&'static Location`.
            Some((unsafe { &*p.cast::<Location<'static>>() }, 0))
        } else {
            // SAFETY: a tagged one is a `&'static SiteStack`.
            let rec = unsafe { &*p.map_addr(|a| a & !1).cast::<SiteStack>() };
            Some((rec.site, rec.stack))
        }
    }
}

/// One chunk of slots.
pub(crate) struct Chunk<T> {
    pub(crate) start: NonNull<Slot<T>>,
    pub(crate) len: usize,
    /// Made for a tracked pool: a [`Taken`] record after each slot.
    tracked: bool,
}

impl<T> Chunk<T> {
    /// The layout of a chunk of `len` slots.
    fn layout(len: usize, tracked: bool) -> Option<Layout> {
        let size = checked::bytes_mul(len, Slot::<T>::stride(tracked)).ok()?;
        Layout::from_size_align(size, Slot::<T>::chunk_align(tracked)).ok()
    }

    /// Allocates a zeroed chunk of `len` (> 0) slots, with a [`Taken`]
    /// record after each if `tracked`; `Err` with the layout asked for
    /// when memory runs out or the size overflows.
    pub(crate) fn new(len: usize, tracked: bool) -> Result<Chunk<T>, Option<Layout>> {
        let layout = Chunk::<T>::layout(len, tracked).ok_or(None)?;
        debug_assert!(layout.size() > 0);
        // SAFETY: a slot is never zero-sized (it has a header), and len > 0.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        match NonNull::new(p.cast::<Slot<T>>()) {
            Some(start) => Ok(Chunk {
                start,
                len,
                tracked,
            }),
            None => Err(Some(layout)),
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.len * self.stride()
    }

    /// Bytes from one slot to the next.
    #[inline]
    pub(crate) fn stride(&self) -> usize {
        Slot::<T>::stride(self.tracked)
    }

    /// Slot `i` (`i <= len`: `len` gives the end).
    pub(crate) fn slot(&self, i: usize) -> *mut Slot<T> {
        debug_assert!(i <= self.len);
        self.start.as_ptr().wrapping_byte_add(i * self.stride())
    }

    pub(crate) fn contains(&self, s: *const Slot<T>) -> bool {
        let a = s as usize;
        a >= self.start.as_ptr() as usize && a < self.slot(self.len) as usize
    }

    /// Lists the taken slots of this chunk.
    ///
    /// # Safety
    /// The chunk must be alive for the whole call.
    pub(crate) unsafe fn list(
        &self,
        kind: OutstandingKind,
        id: u64,
        pool_alive: bool,
        out: &mut Vec<Outstanding>,
    ) {
        for i in 0..self.len {
            let s = self.slot(i);
            // SAFETY: `s` lies in this live, zero-initialised chunk.
            if let Some((site, stack)) = unsafe { Slot::site_stack(s) } {
                out.push(Outstanding {
                    kind,
                    id,
                    type_name: std::any::type_name::<T>(),
                    bytes: size_of::<T>(),
                    taken_at: site,
                    holders: Vec::new(),
                    cycle: None,
                    unreachable: false,
                    pool_alive,
                    block: (s as usize, size_of::<Slot<T>>()),
                    stack,
                });
            }
        }
    }

    /// Where this chunk's slots are and how they are laid out, for the
    /// leak scan.
    pub(crate) fn view(&self) -> ChunkView {
        ChunkView {
            start: self.start.as_ptr() as usize,
            len: self.len,
            stride: self.stride(),
            value_at: std::mem::offset_of!(Slot<T>, cell),
            value_bytes: size_of::<T>(),
            record_at: self.tracked.then_some(Slot::<T>::TAKEN_AT),
        }
    }

    /// Frees the chunk.
    ///
    /// # Safety
    /// No slot of the chunk may be used afterwards; values still in it are
    /// not dropped.
    pub(crate) unsafe fn free(self) {
        let layout = Chunk::<T>::layout(self.len, self.tracked).expect("checked at allocation");
        // SAFETY: allocated in `new` with this very layout.
        unsafe { std::alloc::dealloc(self.start.as_ptr().cast(), layout) };
    }
}

/// A chunk as the leak scan sees it: where its slots are and how they are
/// laid out, without their type. Gathered before the scan stops the
/// world; its slots are read once the world is stopped ([`walk`]).
///
/// [`walk`]: ChunkView::walk
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // read by the leak scan when tracking is built in
pub(crate) struct ChunkView {
    /// Address of the first slot: the chunk's allocation.
    pub(crate) start: usize,
    /// Slots in the chunk.
    pub(crate) len: usize,
    /// Bytes from one slot to the next.
    pub(crate) stride: usize,
    /// Offset of a slot's value from the slot (its header comes first).
    value_at: usize,
    /// Size of a value.
    pub(crate) value_bytes: usize,
    /// Offset of a slot's [`Taken`] record from the slot: a tracked chunk.
    record_at: Option<usize>,
}

#[allow(dead_code)] // used by the leak scan when tracking is built in
impl ChunkView {
    /// Bytes of the chunk.
    pub(crate) fn bytes(&self) -> usize {
        self.len * self.stride
    }

    /// Calls `f(slot, value, what)` for each slot of the chunk that is not
    /// free, in address order, reading the chunk's words with `read` (an
    /// aligned address in, the word there out). Allocation-free: the leak
    /// scan runs it while the world is stopped, long enough after the view
    /// was gathered that any slot may have been taken, given back, or
    /// given back and taken again since. The header tells which state a
    /// slot is in now, and the [`Taken`] record which take it is:
    ///
    /// * A null header: free. Skipped.
    /// * A bare `Location` (low bit clear), in a tracked chunk: being taken
    ///   ([`ObjectNow::BeingTaken`]). `alloc` stored it with the value, and
    ///   a stopped thread has not finished recording the take: the record
    ///   may still be an earlier take's, and that thread may hold the
    ///   slot's address only where the scan does not look (in a register
    ///   that memwarden's own frames, in which the stack capture stopped
    ///   it, saved below the point the scan reads its stack from).
    /// * A tagged `(site, stack)` record: taken ([`ObjectNow::Taken`]), and
    ///   the record is this take's: [`Slot::track`] writes it before the
    ///   header. (In a chunk with no records, any header but null.)
    pub(crate) fn walk(
        &self,
        mut read: impl FnMut(usize) -> usize,
        mut f: impl FnMut(usize, usize, ObjectNow),
    ) {
        for i in 0..self.len {
            let slot = self.start + i * self.stride;
            let header = read(slot);
            if header == 0 {
                continue;
            }
            let now = match self.record_at {
                Some(_) if header & 1 == 0 => ObjectNow::BeingTaken,
                Some(at) => {
                    let seq = read_u64(&mut read, slot + at + std::mem::offset_of!(Taken, seq));
                    let who = read_u64(&mut read, slot + at + std::mem::offset_of!(Taken, who));
                    ObjectNow::Taken {
                        taken: (seq != 0).then_some((seq, who as u32)),
                        stack: (who >> 32) as u32,
                    }
                }
                None => ObjectNow::Taken {
                    taken: None,
                    stack: 0,
                },
            };
            f(slot, slot + self.value_at, now);
        }
    }
}

/// The 8 bytes at `a` (8-aligned), read a word at a time with `read`.
fn read_u64(read: &mut impl FnMut(usize) -> usize, a: usize) -> u64 {
    if size_of::<usize>() == 8 {
        read(a) as u64
    } else {
        let (first, second) = (read(a) as u64, read(a + size_of::<usize>()) as u64);
        if cfg!(target_endian = "little") {
            first | second << 32
        } else {
            first << 32 | second
        }
    }
}

/// Chunks whose slots are all free, for `shrink`: a slot is free if it is
/// in `free`, or in the never-used range `bump..end` of the last chunk.
/// Returns one flag per chunk (`None` if none is empty).
pub(crate) fn empty_chunks<T>(
    chunks: &[Chunk<T>],
    free: &[*mut Slot<T>],
    bump: *mut Slot<T>,
    end: *mut Slot<T>,
) -> Option<Vec<bool>> {
    if chunks.is_empty() {
        return None;
    }
    let mut count = vec![0usize; chunks.len()];
    for &s in free {
        count[chunk_of(chunks, s)] += 1;
    }
    let last = &chunks[chunks.len() - 1];
    let untouched = (end as usize - bump as usize) / last.stride();
    count[chunks.len() - 1] += untouched;
    let empty: Vec<bool> = chunks
        .iter()
        .zip(&count)
        .map(|(c, &f)| f == c.len)
        .collect();
    empty.contains(&true).then_some(empty)
}

/// Index of the chunk holding slot `s`.
pub(crate) fn chunk_of<T>(chunks: &[Chunk<T>], s: *const Slot<T>) -> usize {
    chunks
        .iter()
        .position(|c| c.contains(s))
        .expect("a free slot lies in a chunk")
}

/// Sorts outstanding pool objects by where they were taken.
pub(crate) fn sort_by_site(v: &mut [Outstanding]) {
    v.sort_by(|a, b| {
        (a.taken_at.file(), a.taken_at.line(), a.taken_at.column()).cmp(&(
            b.taken_at.file(),
            b.taken_at.line(),
            b.taken_at.column(),
        ))
    });
}
