//! The registry of live tracked allocations.
//!
//! A fixed array of [`SHARDS`] shards, each a spin-locked open-addressing
//! hash table keyed by block address (linear probing, backward-shift
//! deletion, no tombstones). A block's shard comes from a hash of its
//! address, so threads allocating at once rarely meet on a lock, and a free
//! on another thread than the allocation finds the record the same way.
//!
//! A record is 32 bytes: address, size and align (packed), sequence number,
//! stack id and thread number. Tables grow through `System`, never through
//! the global allocator (see `sys`).
//!
//! Each shard also keeps the blocks freed recently (the quarantine): their
//! records, with the stack that freed them, in a second table and a FIFO
//! bounded in bytes. A free of an address found there is a double free.
//!
//! memwarden's own allocations (made under the re-entrancy guard) are
//! recorded too, as *internal* records without a stack, so that freeing
//! them later is not mistaken for an invalid free; they never appear in a
//! report.
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stack::StackId;
use crate::sync::{SpinGuard, SpinLock};
use crate::sys::{MapVec, SysVec};

mod table;

use table::{Slot, Table, mix};

const SHARD_BITS: u32 = 7;
/// Number of shards.
pub(crate) const SHARDS: usize = 1 << SHARD_BITS;
const ALIGN_SHIFT: u32 = 58;
const SIZE_MASK: u64 = (1 << ALIGN_SHIFT) - 1;

/// One live tracked block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// Address handed to the program; 0 marks an empty table slot.
    pub(crate) addr: usize,
    size_align: u64,
    /// Allocation sequence number (1 is the first tracked allocation).
    pub(crate) seq: u64,
    /// Allocation stack.
    pub(crate) stack: StackId,
    /// Allocating thread (see `guard::thread_id`).
    pub(crate) thread: u32,
}

/// The stack id of memwarden's own (internal) blocks.
pub(crate) const INTERNAL: StackId = u32::MAX;

impl Slot for Record {
    const EMPTY: Record = Record {
        addr: 0,
        size_align: 0,
        seq: 0,
        stack: 0,
        thread: 0,
    };
    fn key(&self) -> usize {
        self.addr
    }
}

/// A block in quarantine: its record and who freed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Freed {
    pub(crate) rec: Record,
    pub(crate) free_stack: StackId,
    pub(crate) free_thread: u32,
}

impl Slot for Freed {
    const EMPTY: Freed = Freed {
        rec: Record::EMPTY,
        free_stack: 0,
        free_thread: 0,
    };
    fn key(&self) -> usize {
        self.rec.addr
    }
}

impl Record {
    pub(crate) fn new(
        addr: usize,
        size: usize,
        align: usize,
        seq: u64,
        stack: StackId,
        thread: u32,
    ) -> Self {
        Record {
            addr,
            size_align: (size as u64 & SIZE_MASK)
                | (u64::from(align.trailing_zeros()) << ALIGN_SHIFT),
            seq,
            stack,
            thread,
        }
    }

    pub(crate) fn size(&self) -> usize {
        (self.size_align & SIZE_MASK) as usize
    }

    pub(crate) fn align(&self) -> usize {
        1 << (self.size_align >> ALIGN_SHIFT)
    }

    /// True for memwarden's own blocks.
    pub(crate) fn is_internal(&self) -> bool {
        self.stack == INTERNAL
    }
}

/// A FIFO of addresses in `System` memory (a ring buffer whose capacity
/// is 0 or a power of two, so positions wrap with a mask, not a division).
struct Fifo {
    buf: SysVec<usize>,
    head: usize,
    len: usize,
}

impl Fifo {
    const fn new() -> Self {
        Fifo {
            buf: SysVec::new(),
            head: 0,
            len: 0,
        }
    }

    fn push(&mut self, v: usize) -> bool {
        let cap = self.buf.len();
        if self.len == cap {
            // Grow: unroll the ring into a buffer twice as big.
            let mut next = SysVec::new();
            if !next.fill(0usize, (cap * 2).max(64)) {
                return false;
            }
            for i in 0..self.len {
                next.as_mut_slice()[i] = self.buf.as_slice()[(self.head + i) & (cap - 1)];
            }
            self.buf = next;
            self.head = 0;
        }
        let mask = self.buf.len() - 1;
        self.buf.as_mut_slice()[(self.head + self.len) & mask] = v;
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let v = self.buf.as_slice()[self.head];
        self.head = (self.head + 1) & (self.buf.len() - 1);
        self.len -= 1;
        Some(v)
    }
}

/// One shard: live blocks, and the quarantine of recently freed ones.
pub(crate) struct Shard {
    live: Table<Record>,
    internal: usize,
    freed: Table<Freed>,
    fifo: Fifo,
    fifo_bytes: usize,
}

impl Shard {
    const fn new() -> Self {
        Shard {
            live: Table::new(),
            internal: 0,
            freed: Table::new(),
            fifo: Fifo::new(),
            fifo_bytes: 0,
        }
    }

    /// Live blocks of the program (memwarden's own not counted).
    pub(crate) fn len(&self) -> usize {
        self.live.len() - self.internal
    }

    /// Live records, memwarden's own included.
    pub(crate) fn records(&self) -> impl Iterator<Item = &Record> {
        self.live.iter()
    }

    /// Quarantined blocks.
    pub(crate) fn freed(&self) -> impl Iterator<Item = &Freed> {
        self.freed.iter()
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const SHARD_INIT: SpinLock<Shard> = SpinLock::new(Shard::new());
static SHARD: [SpinLock<Shard>; SHARDS] = [SHARD_INIT; SHARDS];

#[inline]
fn shard_of(addr: usize) -> &'static SpinLock<Shard> {
    &SHARD[(mix(addr) >> (64 - SHARD_BITS)) as usize]
}

/// Records a block; `false` if the table could not grow (the block then
/// stays untracked).
#[inline]
pub(crate) fn insert(rec: Record) -> bool {
    let mut s = shard_of(rec.addr).lock();
    match s.live.replace(rec) {
        None => false,
        Some(old) => {
            // Keep the count of memwarden's own records exact, also when a
            // record replaces another (an address the registry missed a
            // free of).
            if old.is_some_and(|o| o.is_internal()) {
                s.internal -= 1;
            }
            if rec.is_internal() {
                s.internal += 1;
            }
            true
        }
    }
}

/// What the registry knew about an address being freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// A live block: its record, now removed.
    Live(Record),
    /// A block freed earlier and still in quarantine.
    Freed(Freed),
    /// Never seen (or freed long ago).
    Unknown,
}

/// Removes the live record of `addr`, or says what else is known of it.
#[inline]
pub(crate) fn remove(addr: usize) -> Lookup {
    let mut s = shard_of(addr).lock();
    match s.live.remove(addr) {
        Some(rec) => {
            if rec.is_internal() {
                s.internal -= 1;
            }
            Lookup::Live(rec)
        }
        None => match s.freed.get(addr) {
            Some(f) => Lookup::Freed(f),
            None => Lookup::Unknown,
        },
    }
}

/// Most blocks evicted from quarantine per free.
pub(crate) const MAX_EVICT: usize = 8;

/// Blocks leaving quarantine, to be checked and given back.
pub(crate) struct Evicted {
    /// The first `len` are initialised. (Uninitialised storage: this is
    /// made on every free, and zeroing it cost more than the rest.)
    blocks: [std::mem::MaybeUninit<Freed>; MAX_EVICT],
    len: usize,
}

impl Evicted {
    pub(crate) const fn new() -> Self {
        Evicted {
            blocks: [std::mem::MaybeUninit::uninit(); MAX_EVICT],
            len: 0,
        }
    }

    fn push(&mut self, f: Freed) {
        self.blocks[self.len].write(f);
        self.len += 1;
    }

    pub(crate) fn as_slice(&self) -> &[Freed] {
        // SAFETY: the first `len` blocks were written by `push`, and
        // `MaybeUninit<Freed>` has the layout of `Freed`.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<Freed>(), self.len) }
    }
}

/// What a quarantined block really holds: its bytes, its red zones and
/// the inner allocator's header (about 64 bytes in all), so that many
/// small blocks cannot hold many times the budget.
fn quarantine_cost(rec: &Record) -> usize {
    rec.size() + rec.align().max(16) + 48
}

/// Puts a freed block in its shard's quarantine and evicts the oldest
/// blocks while the shard holds more than `budget` bytes (at most
/// [`MAX_EVICT`] per call). `false` if the block could not be
/// quarantined (memory for the tables ran out): free it at once.
pub(crate) fn quarantine(f: Freed, budget: usize, out: &mut Evicted) -> bool {
    let mut s = shard_of(f.rec.addr).lock();
    if !s.freed.insert(f) {
        return false;
    }
    if !s.fifo.push(f.rec.addr) {
        s.freed.remove(f.rec.addr);
        return false;
    }
    s.fifo_bytes += quarantine_cost(&f.rec);
    while s.fifo_bytes > budget && out.len < MAX_EVICT {
        let Some(addr) = s.fifo.pop() else { break };
        if let Some(old) = s.freed.remove(addr) {
            s.fifo_bytes -= quarantine_cost(&old.rec);
            out.push(old);
        }
    }
    true
}

/// Every shard, locked. Nothing can enter or leave the registry until the
/// guards are dropped.
pub(crate) fn lock_all() -> [SpinGuard<'static, Shard>; SHARDS] {
    std::array::from_fn(|i| SHARD[i].lock())
}

/// Locks every shard without guards (before `fork`).
pub(crate) fn lock_all_raw() {
    for s in &SHARD {
        s.raw_lock();
    }
}

/// Unlocks what [`lock_all_raw`] locked (after `fork`, in both processes).
///
/// # Safety
/// Only after [`lock_all_raw`], from the thread that called it.
pub(crate) unsafe fn unlock_all_raw() {
    for s in SHARD.iter().rev() {
        // SAFETY: per the contract, this thread holds every shard lock.
        unsafe { s.raw_unlock() };
    }
}

/// Visits every shard under its lock, one at a time. `f` must not
/// allocate through the global allocator.
pub(crate) fn for_each_shard(mut f: impl FnMut(&Shard)) {
    for s in &SHARD {
        f(&s.lock());
    }
}

/// Number of live tracked blocks of the program.
pub(crate) fn live_blocks() -> usize {
    SHARD.iter().map(|s| s.lock().len()).sum()
}

/// Copies every program record of the locked shards into `out` (mmap
/// memory, so this is safe with other threads stopped). `false` if memory
/// ran out.
pub(crate) fn snapshot(
    shards: &[SpinGuard<'static, Shard>; SHARDS],
    out: &mut MapVec<Record>,
) -> bool {
    let total: usize = shards.iter().map(|s| s.len()).sum();
    if !out.reserve(total) {
        return false;
    }
    for s in shards {
        for r in s.records().filter(|r| !r.is_internal()) {
            out.push(*r);
        }
    }
    true
}

// === accounting ===

/// Tracked allocations so far; also the source of sequence numbers.
static SEQ: AtomicU64 = AtomicU64::new(0);
static TOTAL_BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
static PEAK_BYTES: AtomicU64 = AtomicU64::new(0);
static PEAK_SEQ: AtomicU64 = AtomicU64::new(0);

/// Counts a new tracked block and returns its sequence number.
#[inline]
pub(crate) fn count_alloc(size: usize) -> u64 {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) + 1;
    TOTAL_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    let live = LIVE_BYTES.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
    if live > PEAK_BYTES.load(Ordering::Relaxed)
        && PEAK_BYTES.fetch_max(live, Ordering::Relaxed) < live
    {
        PEAK_SEQ.store(seq, Ordering::Relaxed);
    }
    seq
}

/// Counts a tracked block going away.
#[inline]
pub(crate) fn count_free(size: usize) {
    LIVE_BYTES.fetch_sub(size as u64, Ordering::Relaxed);
}

/// Puts back a record removed by a `realloc` that failed.
pub(crate) fn restore(rec: Record) {
    if insert(rec) {
        LIVE_BYTES.fetch_add(rec.size() as u64, Ordering::Relaxed);
    }
}

/// The counters: (total allocations, total bytes, live bytes, peak bytes,
/// sequence number at the peak).
pub(crate) fn counters() -> (u64, u64, u64, u64, u64) {
    (
        SEQ.load(Ordering::Relaxed),
        TOTAL_BYTES.load(Ordering::Relaxed),
        LIVE_BYTES.load(Ordering::Relaxed),
        PEAK_BYTES.load(Ordering::Relaxed),
        PEAK_SEQ.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_packs_size_and_align() {
        let r = Record::new(0x1000, 12345, 4096, 9, 3, 4);
        assert_eq!(
            (r.size(), r.align(), r.seq, r.stack, r.thread),
            (12345, 4096, 9, 3, 4)
        );
        assert_eq!(size_of::<Record>(), 32);
    }

    #[test]
    fn fifo_keeps_order_across_growth() {
        let mut f = Fifo::new();
        for i in 1..=100 {
            assert!(f.push(i));
            if i % 3 == 0 {
                f.pop();
            }
        }
        let mut last = 0;
        while let Some(v) = f.pop() {
            assert!(v > last);
            last = v;
        }
        assert_eq!(last, 100);
    }
}
