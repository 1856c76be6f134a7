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
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stack::StackId;
use crate::sync::{SpinGuard, SpinLock};
use crate::sys::{MapVec, SysVec};

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

const EMPTY: Record = Record {
    addr: 0,
    size_align: 0,
    seq: 0,
    stack: 0,
    thread: 0,
};

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

    #[cfg(test)]
    fn align(&self) -> usize {
        1 << (self.size_align >> ALIGN_SHIFT)
    }
}

#[inline]
fn mix(addr: usize) -> u64 {
    let mut h = addr as u64;
    h ^= h >> 31;
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// One shard's table.
pub(crate) struct Table {
    slots: SysVec<Record>,
    len: usize,
}

impl Table {
    const fn new() -> Self {
        Table {
            slots: SysVec::new(),
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn grow(&mut self) -> bool {
        let new_len = (self.slots.len() * 2).max(256);
        let mut slots = SysVec::new();
        if !slots.fill(EMPTY, new_len) {
            return false;
        }
        let mask = new_len - 1;
        for r in self.slots.as_slice() {
            if r.addr != 0 {
                let mut i = (mix(r.addr) as usize) & mask;
                while slots.as_slice()[i].addr != 0 {
                    i = (i + 1) & mask;
                }
                slots.as_mut_slice()[i] = *r;
            }
        }
        self.slots = slots;
        true
    }

    fn insert(&mut self, rec: Record) -> bool {
        if (self.len + 1) * 2 > self.slots.len() && !self.grow() {
            return false;
        }
        let mask = self.mask();
        let slots = self.slots.as_mut_slice();
        let mut i = (mix(rec.addr) as usize) & mask;
        loop {
            if slots[i].addr == 0 {
                slots[i] = rec;
                self.len += 1;
                return true;
            }
            if slots[i].addr == rec.addr {
                slots[i] = rec;
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    fn find(&self, addr: usize) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let slots = self.slots.as_slice();
        let mut i = (mix(addr) as usize) & mask;
        loop {
            match slots[i].addr {
                0 => return None,
                a if a == addr => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    #[cfg(test)]
    fn get(&self, addr: usize) -> Option<Record> {
        self.find(addr).map(|i| self.slots.as_slice()[i])
    }

    fn remove(&mut self, addr: usize) -> Option<Record> {
        let mut hole = self.find(addr)?;
        let mask = self.mask();
        let slots = self.slots.as_mut_slice();
        let removed = slots[hole];
        // Backward-shift deletion: pull later members of the probe run into
        // the hole so that lookups never need tombstones.
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let r = slots[j];
            if r.addr == 0 {
                break;
            }
            let home = (mix(r.addr) as usize) & mask;
            // Move r into the hole if its home is not cyclically in (hole, j].
            let dist_home = j.wrapping_sub(home) & mask;
            let dist_hole = j.wrapping_sub(hole) & mask;
            if dist_home >= dist_hole {
                slots[hole] = r;
                hole = j;
            }
        }
        slots[hole] = EMPTY;
        self.len -= 1;
        Some(removed)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn records(&self) -> impl Iterator<Item = &Record> {
        self.slots.as_slice().iter().filter(|r| r.addr != 0)
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const SHARD_INIT: SpinLock<Table> = SpinLock::new(Table::new());
static SHARD: [SpinLock<Table>; SHARDS] = [SHARD_INIT; SHARDS];

#[inline]
fn shard_of(addr: usize) -> &'static SpinLock<Table> {
    &SHARD[(mix(addr) >> (64 - SHARD_BITS)) as usize]
}

/// Records a block; `false` if the table could not grow (the block then
/// stays untracked).
#[inline]
pub(crate) fn insert(rec: Record) -> bool {
    shard_of(rec.addr).lock().insert(rec)
}

/// Removes and returns the record of `addr`, if it is tracked.
#[inline]
pub(crate) fn remove(addr: usize) -> Option<Record> {
    shard_of(addr).lock().remove(addr)
}

/// Every shard, locked. Nothing can enter or leave the registry until the
/// guards are dropped.
pub(crate) fn lock_all() -> [SpinGuard<'static, Table>; SHARDS] {
    std::array::from_fn(|i| SHARD[i].lock())
}

/// Number of live tracked blocks.
pub(crate) fn live_blocks() -> usize {
    SHARD.iter().map(|s| s.lock().len()).sum()
}

/// Copies every record of the locked shards into `out` (mmap memory, so
/// this is safe with other threads stopped). `false` if memory ran out.
pub(crate) fn snapshot(
    shards: &[SpinGuard<'static, Table>; SHARDS],
    out: &mut MapVec<Record>,
) -> bool {
    let total: usize = shards.iter().map(|s| s.len()).sum();
    if !out.reserve(total) {
        return false;
    }
    for s in shards {
        for r in s.records() {
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

    fn rec(addr: usize) -> Record {
        Record::new(addr, addr % 1000 + 1, 16, addr as u64, 1, 1)
    }

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
    fn table_insert_get_remove_against_a_model() {
        let mut t = Table::new();
        let mut model = std::collections::HashMap::new();
        // A deterministic pseudo-random walk of inserts and removes that
        // exercises growth, probe runs and backward-shift deletion.
        let mut x: u64 = 0x1234_5678;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let addr = ((x % 4096) as usize + 1) * 16;
            if x & 1 == 0 {
                assert!(t.insert(rec(addr)));
                model.insert(addr, rec(addr));
            } else {
                assert_eq!(t.remove(addr), model.remove(&addr));
            }
            assert_eq!(t.len(), model.len());
        }
        for (&a, r) in &model {
            assert_eq!(t.get(a), Some(*r));
        }
        assert_eq!(t.records().count(), model.len());
    }
}
