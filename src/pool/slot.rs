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
//!   (small slots keep more objects per cache line).
//! * Chunks are allocated zeroed: every header reads as "free" until taken,
//!   so a report can walk a whole chunk, carved or not.
use std::alloc::Layout;
use std::cell::UnsafeCell;
use std::mem::ManuallyDrop;
use std::panic::Location;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, Ordering};

use super::outstanding::{Outstanding, OutstandingKind, PoolObject};
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

/// The interned record of `(site, stack)`; records live for the rest of
/// the process (one per distinct pair, like the stack table).
fn site_stack(site: &'static Location<'static>, stack: u32) -> &'static SiteStack {
    use std::collections::HashMap;
    use std::sync::{Mutex, PoisonError};
    type Table = HashMap<(usize, u32), &'static SiteStack>;
    static TABLE: Mutex<Option<Table>> = Mutex::new(None);
    super::quiet(|| {
        let mut t = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
        *t.get_or_insert_with(HashMap::new)
            .entry((ptr::from_ref(site) as usize, stack))
            .or_insert_with(|| Box::leak(Box::new(SiteStack { site, stack })))
    })
}

#[repr(C)]
union Cell<T> {
    value: ManuallyDrop<T>,
    next: *mut Slot<T>,
}

impl<T> Slot<T> {
    /// Slots per chunk for a chunk of about [`DEFAULT_CHUNK_BYTES`].
    pub(crate) fn default_chunk_len() -> usize {
        (DEFAULT_CHUNK_BYTES / size_of::<Slot<T>>()).max(16)
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

    /// Records the stack of the `alloc` that took the slot at `site`.
    ///
    /// # Safety
    /// `slot` must point into a live chunk.
    #[cold]
    pub(crate) unsafe fn set_stack(
        slot: NonNull<Slot<T>>,
        site: &'static Location<'static>,
        stack: u32,
    ) {
        if stack == 0 {
            return;
        }
        let rec = ptr::from_ref(site_stack(site, stack));
        // SAFETY: per the contract the slot is in a live chunk.
        unsafe {
            (*slot.as_ptr())
                .site
                .store(rec.cast_mut().map_addr(|a| a | 1).cast(), Ordering::Relaxed)
        };
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
        // SAFETY: per the contract the header is initialised.
        let p = unsafe { (*slot).site.load(Ordering::Relaxed) };
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
}

impl<T> Chunk<T> {
    /// Allocates a zeroed chunk of `len` (> 0) slots; `Err` with the layout
    /// asked for when memory runs out or the size overflows.
    pub(crate) fn new(len: usize) -> Result<Chunk<T>, Option<Layout>> {
        let layout = checked::array_layout::<Slot<T>>(len).map_err(|_| None)?;
        debug_assert!(layout.size() > 0);
        // SAFETY: a slot is never zero-sized (it has a header), and len > 0.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        match NonNull::new(p.cast::<Slot<T>>()) {
            Some(start) => Ok(Chunk { start, len }),
            None => Err(Some(layout)),
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.len * size_of::<Slot<T>>()
    }

    /// Slot `i` (`i <= len`: `len` gives the end).
    pub(crate) fn slot(&self, i: usize) -> *mut Slot<T> {
        debug_assert!(i <= self.len);
        self.start.as_ptr().wrapping_add(i)
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

    /// Lists the taken slots of this chunk for the leak scan.
    ///
    /// # Safety
    /// The chunk must be alive for the whole call.
    pub(crate) unsafe fn objects(&self, out: &mut Vec<PoolObject>) {
        for i in 0..self.len {
            let s = self.slot(i);
            // SAFETY: `s` lies in this live, zero-initialised chunk.
            if let Some((_, stack)) = unsafe { Slot::site_stack(s) } {
                out.push(PoolObject {
                    slot: s as usize,
                    // SAFETY: `s` is a slot of a live chunk, non-null.
                    value: Slot::value(unsafe { NonNull::new_unchecked(s) }) as usize,
                    bytes: size_of::<T>(),
                    stack,
                });
            }
        }
    }

    /// Frees the chunk.
    ///
    /// # Safety
    /// No slot of the chunk may be used afterwards; values still in it are
    /// not dropped.
    pub(crate) unsafe fn free(self) {
        let layout = Layout::array::<Slot<T>>(self.len).expect("checked at allocation");
        // SAFETY: allocated in `new` with this very layout.
        unsafe { std::alloc::dealloc(self.start.as_ptr().cast(), layout) };
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
    let untouched = (end as usize - bump as usize) / size_of::<Slot<T>>();
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
