//! The registry of live tracked allocations.
//!
//! A fixed array of [`SHARDS`] shards, each a spin-locked open-addressing
//! hash table keyed by block address (linear probing, backward-shift
//! deletion, no tombstones). A block's shard comes from a hash of the 64 KiB
//! region of address space it lies in, and a free on another thread than
//! the allocation finds the record the same way. Blocks allocated side by
//! side, and freed in the same order (a batch sent to another thread, the
//! quarantine emptying in the order it filled), so share a shard, whose
//! lock and state then stay in one core's cache for a run of operations
//! instead of crossing between cores at each; and the inner allocator
//! gives each thread regions of its own (glibc's arenas, mimalloc's pages),
//! so threads rarely meet on a lock. (Hashing each address instead spread
//! the same work over every shard: 1.3 to 1.5 times slower on two threads.)
//!
//! A record is 32 bytes: address, size and align (packed), sequence number,
//! stack id and thread number. Tables grow through `System`, never through
//! the global allocator (see `sys`).
//!
//! Each shard also keeps the blocks freed recently (the quarantine): a
//! freed block's record leaves the table and goes, with the stack that
//! freed it, into the shard's FIFO, bounded in bytes. So a block leaving
//! the quarantine costs no table operation: its record comes out of the
//! FIFO, in the order the FIFO filled, from memory the freeing thread
//! wrote last. (Marking the record freed in the table and removing it
//! there when the block left cost a lookup and a backward shift in table
//! lines the allocating thread writes too: 5-12% of each workload.) A free
//! or `realloc` of an address the table does not hold may look for it in
//! the FIFO of its shard; found there, it is a double free. That is a
//! linear search, of up to about one entry per KiB of
//! `DEBUG_MEMORY_QUARANTINE` (some 2,000 at the default 2 MiB, where a
//! shard may borrow up to 128 KiB), made only where the caller cannot rule
//! it out cheaply (see [`free`]): for a pointer with no record when every
//! block was tracked (an error, whatever it finds), or when the block
//! starts with the poison byte or follows a red zone (`warden`'s
//! `may_be_quarantined`). A block too big for its shard's share of the
//! quarantine waits in one queue shared by all shards instead ([`Budget`]);
//! its record stays in its shard's table, marked freed and carrying the
//! stack that freed it instead of its sequence number.
//!
//! memwarden's own allocations (made under the re-entrancy guard) are
//! recorded too, as *internal* records without a stack, so that freeing
//! them later is not mistaken for an invalid free; they never appear in a
//! report.
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use crate::stack::StackId;
use crate::sync::{SpinGuard, SpinLock};
use crate::sys::{MapVec, SysVec, prefetch, prefetch_write};

mod table;

use table::{Slot, Table, home_slot, mix};

const SHARD_BITS: u32 = 7;
/// Number of shards.
pub(crate) const SHARDS: usize = 1 << SHARD_BITS;
const ALIGN_SHIFT: u32 = 58;
/// Set in the record of a freed block kept in the table: one in the queue
/// for big blocks (see the module docs).
const FREED_BIT: u64 = 1 << 57;
/// Set in the record of a block allocated through C's `malloc` family
/// (`track_c_heap!`), whose alignment is what `malloc` gives, not what a
/// layout asked.
const C_BIT: u64 = 1 << 56;
const SIZE_MASK: u64 = C_BIT - 1;

/// One live tracked block. (32 bytes, and tables start on a cache line:
/// a slot never straddles two lines, so a lookup misses at most once.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Record {
    /// Address handed to the program; 0 marks an empty table slot.
    pub(crate) addr: usize,
    size_align: u64,
    /// Allocation sequence number (see [`count_alloc`]): greater for a
    /// later allocation than any [`mark`] before it.
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Freed {
    pub(crate) rec: Record,
    pub(crate) free_stack: StackId,
    pub(crate) free_thread: u32,
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

    /// This record, marked as a block of C's `malloc` family (or not).
    pub(crate) fn marked_c(self, c: bool) -> Self {
        Record {
            size_align: if c {
                self.size_align | C_BIT
            } else {
                self.size_align & !C_BIT
            },
            ..self
        }
    }

    /// True for a block allocated through C's `malloc` family.
    pub(crate) fn is_c(&self) -> bool {
        self.size_align & C_BIT != 0
    }

    /// True for memwarden's own blocks.
    pub(crate) fn is_internal(&self) -> bool {
        self.stack == INTERNAL
    }

    /// True for a block freed and kept in the queue for big blocks.
    fn is_freed(&self) -> bool {
        self.size_align & FREED_BIT != 0
    }

    /// The quarantined block this record describes (see [`Freed`]).
    fn as_freed(&self) -> Freed {
        Freed {
            rec: Record {
                size_align: self.size_align & !FREED_BIT,
                seq: 0,
                ..*self
            },
            free_stack: (self.seq >> 32) as StackId,
            free_thread: self.seq as u32,
        }
    }
}

/// A FIFO in `System` memory (a ring buffer whose capacity is 0 or a
/// power of two, so positions wrap with a mask, not a division).
struct Fifo<T: Copy + Default = usize> {
    buf: SysVec<T>,
    head: usize,
    len: usize,
}

impl<T: Copy + Default> Fifo<T> {
    const fn new() -> Self {
        Fifo {
            buf: SysVec::new(),
            head: 0,
            len: 0,
        }
    }

    #[inline]
    fn push(&mut self, v: T) -> bool {
        if self.len == self.buf.len() && !self.grow() {
            return false;
        }
        let mask = self.buf.len() - 1;
        self.buf.as_mut_slice()[(self.head + self.len) & mask] = v;
        self.len += 1;
        true
    }

    /// Unrolls the ring into a buffer twice as big.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) -> bool {
        let cap = self.buf.len();
        let mut next = SysVec::new();
        if !next.fill(T::default(), (cap * 2).max(64)) {
            return false;
        }
        for i in 0..self.len {
            next.as_mut_slice()[i] = self.buf.as_slice()[(self.head + i) & (cap - 1)];
        }
        self.buf = next;
        self.head = 0;
        true
    }

    /// The `n`th oldest address (0: the next to leave).
    #[inline]
    fn peek_at(&self, n: usize) -> Option<T> {
        (n < self.len).then(|| self.buf.as_slice()[(self.head + n) & (self.buf.len() - 1)])
    }

    /// Every entry, oldest first.
    fn iter(&self) -> impl Iterator<Item = T> + '_ {
        (0..self.len).filter_map(|n| self.peek_at(n))
    }

    #[inline]
    fn pop(&mut self) -> Option<T> {
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
    /// Live records, and those of the big blocks in quarantine (see the
    /// module docs).
    table: Table<Record>,
    /// Records of memwarden's own blocks.
    internal: usize,
    /// Records of big blocks in quarantine, in the table.
    freed_big: usize,
    /// This shard's quarantine, oldest first: the freed blocks' records.
    fifo: Fifo<Freed>,
    /// What the blocks in `fifo` cost ([`quarantine_cost`]).
    fifo_bytes: usize,
    /// What this shard last added to [`SMALL_BYTES`] (its `fifo_bytes`
    /// then).
    reported: usize,
}

impl Shard {
    const fn new() -> Self {
        Shard {
            table: Table::new(),
            internal: 0,
            freed_big: 0,
            fifo: Fifo::new(),
            fifo_bytes: 0,
            reported: 0,
        }
    }

    /// Live blocks of the program (memwarden's own not counted).
    pub(crate) fn len(&self) -> usize {
        self.table.len() - self.internal - self.freed_big
    }

    /// Blocks of this shard in quarantine, in either queue.
    #[cfg(test)]
    fn quarantined(&self) -> usize {
        self.freed_big + self.fifo.len
    }

    /// Live records, memwarden's own included.
    pub(crate) fn records(&self) -> impl Iterator<Item = &Record> {
        self.table.iter().filter(|r| !r.is_freed())
    }

    /// Quarantined blocks of this shard, in either queue.
    pub(crate) fn freed(&self) -> impl Iterator<Item = Freed> + '_ {
        let big = self
            .table
            .iter()
            .filter(|r| r.is_freed())
            .map(Record::as_freed);
        self.fifo.iter().chain(big)
    }

    /// The block at `addr` in this shard's FIFO, if it is there: a linear
    /// search (see the module docs), for an address with no record in the
    /// table.
    #[cold]
    #[inline(never)]
    fn search_fifo(&self, addr: usize) -> Option<Freed> {
        self.fifo.iter().find(|f| f.rec.addr == addr)
    }

    /// Where this shard knows `addr`: `Ok` with the table slot of its live
    /// record, or what else it is (a quarantined block, found in the table
    /// or, if `search()` says to look, in the FIFO; or unknown).
    fn lookup(&self, addr: usize, search: impl FnOnce() -> bool) -> Result<usize, Lookup> {
        match self.table.find(addr) {
            Some(i) if self.table.at(i).is_freed() => {
                Err(Lookup::Freed(self.table.at(i).as_freed()))
            }
            Some(i) => Ok(i),
            None if search() => Err(self
                .search_fifo(addr)
                .map_or(Lookup::Unknown, Lookup::Freed)),
            None => Err(Lookup::Unknown),
        }
    }

    /// The oldest block of this shard's FIFO, out of the quarantine.
    #[inline]
    fn pop_small(&mut self) -> Option<Freed> {
        let f = self.fifo.pop()?;
        self.fifo_bytes -= quarantine_cost(&f.rec);
        Some(f)
    }

    /// Takes the record of the big block `addr` out of the quarantine (the
    /// queue for big blocks has just given it up), keeping the counts.
    /// `None` if it is not there: the queue cannot know of a block whose
    /// record went another way (see `requeue_stranded_big`).
    fn release_big(&mut self, addr: usize) -> Option<Freed> {
        let i = self.table.find(addr)?;
        let r = self.table.at(i);
        if !r.is_freed() {
            return None;
        }
        self.remove_at(i, addr);
        self.freed_big -= 1;
        Some(r.as_freed())
    }

    /// Removes the record in the table's slot `i` (from `find(addr)`), and
    /// halves the table if that left it sparse.
    #[inline]
    fn remove_at(&mut self, i: usize, addr: usize) -> Record {
        let rec = self.table.remove_at(i);
        if self.table.shrink_if_sparse() {
            publish_placement(shard_index(addr), &self.table);
        }
        rec
    }

    /// Drops the record in the table's slot `i` (from `find(addr)`),
    /// keeping the counts.
    #[inline]
    fn take_at(&mut self, i: usize, addr: usize) -> Record {
        let rec = self.remove_at(i, addr);
        if rec.is_freed() {
            self.freed_big -= 1;
        } else if rec.is_internal() {
            self.internal -= 1;
        }
        rec
    }
}

/// A shard's lock and state, on cache lines of their own (`CachePadded`:
/// 128 bytes, the unit that adjacent-line prefetchers fetch in), so that
/// two threads working in two shards do not contend for one line.
type ShardCell = CachePadded<SpinLock<Shard>>;

/// Where a shard's table slots are: see [`prefetch_slot`].
struct Placement {
    first: AtomicUsize,
    mask: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const SHARD_INIT: ShardCell = CachePadded::new(SpinLock::new(Shard::new()));
static SHARD: [ShardCell; SHARDS] = [SHARD_INIT; SHARDS];
#[allow(clippy::declare_interior_mutable_const)]
const PLACEMENT_INIT: Placement = Placement {
    first: AtomicUsize::new(0),
    mask: AtomicUsize::new(0),
};
/// Each shard's [`Table::placement`], kept apart from the shards: written
/// only when a table moves (it doubles), so these lines stay shared in
/// every core's cache and reading them costs no transfer.
static PLACEMENT: [Placement; SHARDS] = [PLACEMENT_INIT; SHARDS];

/// Blocks in one region of `1 << SHARD_REGION_BITS` bytes share a shard.
const SHARD_REGION_BITS: u32 = 16;

#[inline]
fn shard_index(addr: usize) -> usize {
    (mix(addr >> SHARD_REGION_BITS) >> (64 - SHARD_BITS)) as usize
}

#[inline]
fn shard_of(addr: usize) -> &'static SpinLock<Shard> {
    &SHARD[shard_index(addr)]
}

/// Starts fetching, for writing, what an insert or a free of `addr` will
/// touch: its shard's lock and state, and the table slot where the lookup
/// of `addr` starts. Taken without the lock, from [`PLACEMENT`]: a stale
/// placement only makes the hint useless (a prefetch never faults). On two
/// threads the lines are often in the other core's cache; fetching them
/// while the stack is captured hides most of the transfer.
#[inline(always)]
pub(crate) fn prefetch_slot(addr: usize) {
    let i = shard_index(addr);
    prefetch_write(&SHARD[i] as *const ShardCell as usize);
    let p = &PLACEMENT[i];
    let first = p.first.load(Ordering::Relaxed);
    if first != 0 {
        let mask = p.mask.load(Ordering::Relaxed);
        prefetch_write(home_slot::<Record>(first, mask, addr));
    }
}

/// Keeps [`PLACEMENT`]`[i]` up to date with shard `i`'s table, under its
/// lock, after the table may have moved (grown or shrunk).
#[inline]
fn publish_placement(i: usize, table: &Table<Record>) {
    let (first, mask) = table.placement();
    let p = &PLACEMENT[i];
    if p.first.load(Ordering::Relaxed) != first {
        p.first.store(first, Ordering::Relaxed);
        p.mask.store(mask, Ordering::Relaxed);
    }
}

/// Records a block; `false` if the table could not grow (the block then
/// stays untracked).
#[inline]
pub(crate) fn insert(rec: Record) -> bool {
    let i = shard_index(rec.addr);
    let mut s = SHARD[i].lock();
    let replaced = s.table.replace(rec);
    publish_placement(i, &s.table);
    match replaced {
        None => false,
        Some(old) => {
            // Keep the counts exact, also when a record replaces another
            // (an address the registry missed a free of).
            match old {
                Some(o) if o.is_freed() => {
                    // A big block's: its entry in the queue for big blocks
                    // stays, and is skipped when it comes up
                    // (`release_big`). (A small block in a FIFO cannot be
                    // given out again while it is there: the inner
                    // allocator has not had it back. Only a free that
                    // bypasses `Warden`, of a block it still holds, could
                    // do that, and then the FIFO would free it twice.)
                    s.freed_big -= 1;
                }
                Some(o) if o.is_internal() => s.internal -= 1,
                _ => {}
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
/// If the table has no record of it, `search()` says whether to look for
/// it in its shard's FIFO (see [`free`]).
#[inline]
pub(crate) fn remove(addr: usize, search: impl FnOnce() -> bool) -> Lookup {
    let mut s = shard_of(addr).lock();
    match s.lookup(addr, search) {
        Ok(i) => Lookup::Live(s.take_at(i, addr)),
        Err(other) => other,
    }
}

/// What the registry knows of `addr`, leaving it as it is: [`remove`]
/// without the removal (`Lookup::Live` then holds the record still in
/// the table). For C's `free` and `realloc`, which do not pass the
/// block's size: they look it up first (see `c_heap`).
#[cfg(target_env = "gnu")]
pub(crate) fn peek(addr: usize, search: impl FnOnce() -> bool) -> Lookup {
    let guard;
    let s = if crate::guard::forking() {
        // In the `fork` window this thread holds every shard's lock
        // (`lock_all_raw`): read the shard as it is.
        // SAFETY: the lock is held by this thread, which changes nothing.
        unsafe { shard_of(addr).raw_get() }
    } else {
        guard = shard_of(addr).lock();
        &*guard
    };
    s.lookup(addr, search)
        .map_or_else(|other| other, |i| Lookup::Live(s.table.at(i)))
}

/// True if `addr` is a live tracked block's address.
#[cfg(target_env = "gnu")]
pub(crate) fn is_live(addr: usize) -> bool {
    matches!(peek(addr, || false), Lookup::Live(_))
}

/// What [`free`] did with a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freeing {
    /// A live block of the program: its record as it was. `kept`: it went
    /// into quarantine; otherwise its record is gone and the block is to be
    /// given back now.
    Live { rec: Record, kept: bool },
    /// memwarden's own block: its record, now removed.
    Internal(Record),
    /// A block freed earlier and still in quarantine.
    Freed(Freed),
    /// Never seen (or freed long ago).
    Unknown,
}

/// How many bytes of freed blocks the quarantine holds, and where.
///
/// Half of the total is for small blocks, in the shards' FIFOs; the other
/// half is one queue for the bigger blocks, each up to half of that queue.
/// A block is small if its cost ([`quarantine_cost`]) is no more than half
/// of a shard's fair share, 1/128 of the small blocks' half, or than
/// [`SMALL_FLOOR`] when that is more (see [`Budget::place`]).
///
/// A shard's FIFO may hold more than its fair share, up to [`BORROW`]
/// shares, while the FIFOs together hold less than that half
/// ([`SMALL_BYTES`]); once they hold more, a shard over its fair share
/// gives blocks back at its next free. So a loop that frees in one region
/// of memory (which cycles through one shard, see the module docs) keeps
/// more freed blocks than one share, and a shared counter is written only
/// every [`SYNC_BYTES`] of change in a shard, not at each free. The price:
/// a shard that borrowed and then sees no more frees keeps what it holds,
/// while the others fill their shares; the FIFOs then hold up to twice
/// their half (and the reports lag by up to [`SYNC_BYTES`] a shard).
///
/// (Without the big blocks' queue, a small budget would leave every block
/// above a few KiB unchecked for use after free; with it, the budget can
/// be small, which keeps the quarantined blocks of a program that frees
/// all over its heap in cache. One lock for the big blocks costs little:
/// each of them also costs a poison fill of up to 64 KiB.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    /// A shard's fair share of `small`.
    shard: usize,
    /// Bytes of all the shards' FIFOs together.
    small: usize,
    /// Bytes of the queue for big blocks.
    big: usize,
}

impl Budget {
    /// The shares of `total` bytes (`DEBUG_MEMORY_QUARANTINE`).
    pub(crate) const fn new(total: usize) -> Self {
        Budget {
            shard: total / 2 / SHARDS,
            small: total / 2,
            big: total / 2,
        }
    }

    /// True if a freed block may be kept at all (the budget is not 0).
    #[inline]
    pub(crate) fn keeps_any(self) -> bool {
        self.small != 0 || self.big != 0
    }

    /// True if shard `s`'s FIFO is to give blocks back: it is over its
    /// share, and over what it may borrow or the FIFOs together (the
    /// others as last reported, this one as it is) are over their half.
    #[inline]
    fn over(self, s: &Shard) -> bool {
        s.fifo_bytes > self.shard
            && (s.fifo_bytes > self.shard * BORROW
                || SMALL_BYTES
                    .load(Ordering::Relaxed)
                    .saturating_sub(s.reported)
                    + s.fifo_bytes
                    > self.small)
    }

    /// Where a freed block that costs `cost` bytes is kept, if anywhere.
    /// (With a small budget, blocks costing up to [`SMALL_FLOOR`] are small
    /// all the same, and shards keep them by borrowing: otherwise nearly
    /// every block would go through the big blocks' one lock. Not more
    /// than half of what a shard may borrow, or a block would push itself
    /// out at once.)
    #[inline]
    fn place(self, cost: usize) -> Option<Queue> {
        let floor = SMALL_FLOOR.min(self.shard * BORROW / 2);
        if self.small > 0 && cost <= (self.shard / 2).max(floor) {
            Some(Queue::Shard)
        } else if cost <= self.big / 2 {
            Some(Queue::Big)
        } else {
            None
        }
    }
}

/// See [`Budget::place`].
const SMALL_FLOOR: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Queue {
    Shard,
    Big,
}

/// Frees `addr` in the registry: a live block of the program goes into
/// quarantine if `budget` allows, freed by `free_stack` on `free_thread`,
/// and the oldest blocks leave to make room (at most [`MAX_EVICT`], into
/// `out`, their records removed); else its record is removed. Under its
/// shard's lock, `inspect(rec, kept)` runs on the block first (to check
/// its red zones, and to poison it when kept, before anyone can see it in
/// quarantine); it must not allocate. A small block's quarantine is its
/// shard's FIFO, and all of this happens under that one lock; a big
/// block's is the queue for big blocks, locked after the shard's lock is
/// released (never both at once).
///
/// An address with no record in the table may be a small block in its
/// shard's FIFO (a double free), found only by a linear search there:
/// `search()`, called under the lock, says whether to make it. (The caller
/// says no where it can tell cheaply that the address is not a quarantined
/// block: when blocks were allocated untracked, most addresses with no
/// record are theirs, and a search at each of their frees made a free of
/// an untracked block 3 to 40 times slower.)
#[inline]
pub(crate) fn free(
    addr: usize,
    free_stack: StackId,
    free_thread: u32,
    budget: Budget,
    search: impl FnOnce() -> bool,
    inspect: impl FnOnce(&Record, bool),
    out: &mut Evicted,
) -> Freeing {
    let mut guard = shard_of(addr).lock();
    let s = &mut *guard;
    let Some(i) = s.table.find(addr) else {
        if !search() {
            return Freeing::Unknown;
        }
        return s.search_fifo(addr).map_or(Freeing::Unknown, Freeing::Freed);
    };
    let rec = s.table.at(i);
    if rec.is_freed() {
        return Freeing::Freed(rec.as_freed());
    }
    if rec.is_internal() {
        s.take_at(i, addr);
        return Freeing::Internal(rec);
    }
    let cost = quarantine_cost(&rec);
    let queue = budget.place(cost);
    let kept = match queue {
        Some(Queue::Shard) => s.fifo.push(Freed {
            rec: Record { seq: 0, ..rec },
            free_stack,
            free_thread,
        }),
        Some(Queue::Big) => true,
        None => false,
    };
    inspect(&rec, kept);
    if queue == Some(Queue::Big) {
        // Its record stays in the table, marked freed.
        let slot = s.table.at_mut(i);
        slot.size_align |= FREED_BIT;
        slot.seq = (u64::from(free_stack) << 32) | u64::from(free_thread);
        s.freed_big += 1;
        // Between its shard and the queue (see `requeue_stranded_big`).
        BIG_MOVING.fetch_add(1, Ordering::Relaxed);
        drop(guard);
        quarantine_big(addr, cost, budget.big, out);
        return Freeing::Live { rec, kept };
    }
    // Not kept, or kept in the FIFO: the record leaves the table.
    s.remove_at(i, addr);
    if !kept {
        return Freeing::Live { rec, kept };
    }
    s.fifo_bytes += cost;
    while budget.over(s) && out.len < MAX_EVICT {
        let Some(f) = s.pop_small() else { break };
        out.push(f);
    }
    if s.fifo_bytes.abs_diff(s.reported) >= SYNC_BYTES {
        sync_small_bytes(s);
    }
    // The block about to leave has been out of cache for long: fetch the
    // bytes its poison check will read (the first `PREFETCH_BYTES`) and
    // the inner allocator's header before it, one free of this shard ahead.
    // (Its record is in the FIFO, which is read in order.)
    if let Some(next) = s.fifo.peek_at(0) {
        let at = next.rec.addr;
        prefetch(at.wrapping_sub(32));
        for line in 0..next.rec.size().min(PREFETCH_BYTES).div_ceil(64) {
            prefetch(at.wrapping_add(line * 64));
        }
    }
    Freeing::Live { rec, kept }
}

/// How many times its fair share a shard's FIFO may hold while the others
/// leave room: 128 KiB by default. (The whole small blocks' half, 1 MiB,
/// made a loop of small pairs, which cycles through one shard, 10% slower:
/// a megabyte of freed blocks no longer fits in this machine's L2 cache
/// beside everything else.)
const BORROW: usize = 16;

/// Bytes in all the shards' FIFOs, within [`SYNC_BYTES`] per shard: the sum
/// of their `reported`. On a line of its own.
static SMALL_BYTES: CachePadded<AtomicUsize> = CachePadded::new(AtomicUsize::new(0));

/// How far a shard's FIFO may grow or shrink before [`SMALL_BYTES`] hears
/// of it.
const SYNC_BYTES: usize = 4096;

#[cold]
#[inline(never)]
fn sync_small_bytes(s: &mut Shard) {
    if s.fifo_bytes > s.reported {
        SMALL_BYTES.fetch_add(s.fifo_bytes - s.reported, Ordering::Relaxed);
    } else {
        SMALL_BYTES.fetch_sub(s.reported - s.fifo_bytes, Ordering::Relaxed);
    }
    s.reported = s.fifo_bytes;
}

/// The quarantine of the blocks too big for their shard's share (see
/// [`Budget`]): (address, cost) in the order they were freed.
struct BigQueue {
    fifo: Fifo<(usize, usize)>,
    bytes: usize,
}

/// On a cache line of its own, away from the shards.
static BIG: CachePadded<SpinLock<BigQueue>> = CachePadded::new(SpinLock::new(BigQueue {
    fifo: Fifo::new(),
    bytes: 0,
}));

/// Queues the big block at `addr` (whose record [`free`] has just marked
/// freed) and makes the oldest big blocks leave while the queue
/// holds more than `budget` bytes (at most [`MAX_EVICT`], into `out`, their
/// records removed). Called with no shard locked: the queue's lock is
/// released before a leaving block's shard is locked. (`out` comes empty
/// from [`free`]; fewer blocks leave if it is not.)
#[cold]
#[inline(never)]
fn quarantine_big(addr: usize, cost: usize, budget: usize, out: &mut Evicted) {
    let room = MAX_EVICT - out.len;
    let mut leaving = [0usize; MAX_EVICT];
    let mut n = 0;
    {
        let mut q = BIG.lock();
        if q.fifo.push((addr, cost)) {
            q.bytes += cost;
            BIG_MOVING.fetch_sub(1, Ordering::Relaxed);
        } else if room > 0 {
            // No memory for the queue's ring: the block leaves at once.
            leaving[0] = addr;
            n = 1;
        }
        let popped = n;
        while q.bytes > budget && n < room {
            let Some((a, c)) = q.fifo.pop() else { break };
            q.bytes -= c;
            leaving[n] = a;
            n += 1;
        }
        BIG_MOVING.fetch_add(n - popped, Ordering::Relaxed);
    }
    for &a in &leaving[..n] {
        let mut s = shard_of(a).lock();
        if let Some(f) = s.release_big(a) {
            out.push(f);
        }
        // Still under the shard's lock (see `BIG_MOVING`).
        BIG_MOVING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Big blocks between their shard and the queue: marked quarantined in
/// their shard but not yet in [`BIG`], or taken out of it and not yet out
/// of their shard (or stale queue entries on their way out: an upper
/// bound, 0 only when nothing is under way). Changed under the lock that
/// the block's move is under at that moment (its shard's when it is
/// marked and when its record goes, the queue's when it enters or leaves
/// the queue), so that `fork`, which takes every lock, sees a count that
/// covers the tables and the queue. On a line of its own: every big free
/// writes it, and the counters' line next to it is read by every
/// allocation.
static BIG_MOVING: CachePadded<AtomicUsize> = CachePadded::new(AtomicUsize::new(0));

/// In the child of a `fork` (which has only the thread that called it):
/// the blocks other threads were moving to or from the queue of big
/// blocks, found marked freed in their shard's table but missing
/// from the queue, are queued again; otherwise nothing would ever give
/// them back. Free unless such a move was under way. Allocates nothing
/// through the global allocator (a sorted copy of the queue's addresses
/// goes to `System` memory). It scans every table: O(live blocks) in the
/// child of each `fork` that came while a big block was under way. (If
/// memory for the queue or the copy runs out, the block stays stranded.)
pub(crate) fn requeue_stranded_big() {
    if BIG_MOVING.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut q = BIG.lock();
    let mut queued: SysVec<usize> = SysVec::new();
    if !queued.fill(0, q.fifo.len) {
        return;
    }
    for (slot, (a, _)) in queued.as_mut_slice().iter_mut().zip(q.fifo.iter()) {
        *slot = a;
    }
    queued.as_mut_slice().sort_unstable();
    for shard in &SHARD {
        let s = shard.lock();
        for r in s.table.iter() {
            if r.is_freed() && queued.as_slice().binary_search(&r.addr).is_err() {
                let cost = quarantine_cost(r);
                if q.fifo.push((r.addr, cost)) {
                    q.bytes += cost;
                }
            }
        }
    }
    BIG_MOVING.store(0, Ordering::Relaxed);
}

/// Bytes of the next block to leave the quarantine fetched ahead of its
/// poison check (a cache line at a time).
const PREFETCH_BYTES: usize = 512;

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
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Evicted {
            // SAFETY: an array of `MaybeUninit` needs no initialisation.
            // (Written this way, not as `[MaybeUninit::uninit(); N]`, which
            // was compiled into a `memset` of the whole array.)
            blocks: unsafe {
                std::mem::MaybeUninit::<[std::mem::MaybeUninit<Freed>; MAX_EVICT]>::uninit()
                    .assume_init()
            },
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
#[inline]
fn quarantine_cost(rec: &Record) -> usize {
    rec.size() + rec.align().max(16) + 48
}

/// Every shard, locked. Nothing can enter or leave the registry until the
/// guards are dropped.
pub(crate) fn lock_all() -> [SpinGuard<'static, Shard>; SHARDS] {
    std::array::from_fn(|i| SHARD[i].lock())
}

/// Locks every shard without guards (before `fork`).
pub(crate) fn lock_all_raw() {
    // No code holds the big blocks' queue and a shard at once, so any
    // order would do.
    BIG.raw_lock();
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
    // SAFETY: per the contract, this thread holds the queue's lock too.
    unsafe { BIG.raw_unlock() };
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
//
// No write to a shared cache line for an ordinary allocation: on two
// threads one shared counter costs more than the rest of the tracking.
// Each thread counts in a slot of its own ([`TALLY`], by thread number),
// and moves its share of the live bytes to the global [`LIVE`] only when
// that share has grown or shrunk by [`FLUSH`] bytes (so at once for a block
// of 16 KiB or more), or when the heap may be at a new peak (the global
// figure plus its own share above [`PEAK_BYTES`]): so the peak is exact on
// one thread and within `FLUSH` bytes per thread otherwise.
//
// Sequence numbers are `epoch << SEQ_BITS | n`, with `n` the slot's count
// of allocations. A new epoch starts at every [`mark`] (a checkpoint, a
// scoped check), so everything allocated after a mark has a greater number
// than the mark on every thread, without a global counter per allocation.
// Epochs also start when a thread starts (its blocks are younger than
// anything allocated before it was started) and when a slot's count passes
// a multiple of `1 << SEQ_BITS` (so a thread's numbers only grow). Between
// two epochs, numbers of different threads are not in allocation order.

/// Per-thread counters (shared by threads whose numbers are equal modulo
/// [`TALLY_SLOTS`], which the atomic operations keep correct), each slot on
/// cache lines of its own.
struct Tally {
    allocs: AtomicU64,
    bytes: AtomicU64,
    /// Live bytes counted here and not yet moved to [`LIVE`].
    live: AtomicI64,
}

const TALLY_SLOTS: usize = 64;
#[allow(clippy::declare_interior_mutable_const)]
const TALLY_INIT: CachePadded<Tally> = CachePadded::new(Tally {
    allocs: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
    live: AtomicI64::new(0),
});
static TALLY: [CachePadded<Tally>; TALLY_SLOTS] = [TALLY_INIT; TALLY_SLOTS];
/// Bit `i` set: slot `i` of [`TALLY`] has counted an allocation.
static SLOTS_USED: AtomicU64 = AtomicU64::new(0);

/// A thread moves its live bytes to [`LIVE`] when they reach this much
/// either way.
const FLUSH: i64 = 16 << 10;
/// The current epoch of sequence numbers (see above); starts at 1, so no
/// program block has sequence number 0.
static EPOCH: AtomicU64 = AtomicU64::new(1);
/// Bits of a sequence number below its epoch.
const SEQ_BITS: u32 = 24;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
/// Live bytes moved here by the threads.
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK_BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocations made when the peak was reached.
static PEAK_SEQ: AtomicU64 = AtomicU64::new(0);

#[inline(always)]
fn tally(thread: u32) -> &'static Tally {
    &TALLY[thread as usize % TALLY_SLOTS]
}

/// Counts a new tracked block allocated by `thread` and returns its
/// sequence number.
#[inline]
pub(crate) fn count_alloc(size: usize, thread: u32) -> u64 {
    let t = tally(thread);
    let n = t.allocs.fetch_add(1, Ordering::Relaxed) + 1;
    t.bytes.fetch_add(size as u64, Ordering::Relaxed);
    let mine = t.live.fetch_add(size as i64, Ordering::Relaxed) + size as i64;
    // Reads of lines that are rarely written: shared in every core's cache.
    if mine >= FLUSH
        || LIVE.load(Ordering::Relaxed).saturating_add(mine)
            > PEAK_BYTES.load(Ordering::Relaxed) as i64
    {
        flush(t);
    }
    if n & SEQ_MASK <= 1 {
        first_or_wrap(thread, n);
    }
    (EPOCH.load(Ordering::Relaxed) << SEQ_BITS) | (n & SEQ_MASK)
}

/// A slot's first allocation (it joins [`SLOTS_USED`]), or its count
/// passing a multiple of `1 << SEQ_BITS` (a new epoch, so that the numbers
/// after it are greater than those before).
#[cold]
#[inline(never)]
fn first_or_wrap(thread: u32, n: u64) {
    if n == 1 {
        SLOTS_USED.fetch_or(1 << (thread as usize % TALLY_SLOTS), Ordering::Relaxed);
    } else if n & SEQ_MASK == 0 {
        new_epoch();
    }
}

/// A sequence number for something `thread` takes now that is not an
/// allocation (a pool object): greater than every [`mark`] before this
/// call, not greater than any after it, and in the current epoch that of
/// the block `thread` allocated last (nothing is counted). Two loads: the
/// epoch's line, rarely written, and the thread's own counters.
#[inline]
pub(crate) fn seq_now(thread: u32) -> u64 {
    let n = tally(thread).allocs.load(Ordering::Relaxed);
    (EPOCH.load(Ordering::Relaxed) << SEQ_BITS) | (n & SEQ_MASK)
}

/// Counts a tracked block going away, on `thread`.
#[inline]
pub(crate) fn count_free(size: usize, thread: u32) {
    let t = tally(thread);
    if t.live.fetch_sub(size as i64, Ordering::Relaxed) - (size as i64) <= -FLUSH {
        flush(t);
    }
}

/// Moves a slot's share of the live bytes to [`LIVE`], and records a new
/// peak if there is one.
#[cold]
#[inline(never)]
fn flush(t: &Tally) {
    let mine = t.live.swap(0, Ordering::Relaxed);
    let live = (LIVE.fetch_add(mine, Ordering::Relaxed) + mine).max(0) as u64;
    if live > PEAK_BYTES.load(Ordering::Relaxed)
        && PEAK_BYTES.fetch_max(live, Ordering::Relaxed) < live
    {
        PEAK_SEQ.store(total_allocs(), Ordering::Relaxed);
    }
}

/// Allocations counted so far, in the slots that ever counted one (one
/// load on a program with one thread).
fn total_allocs() -> u64 {
    let mut used = SLOTS_USED.load(Ordering::Relaxed);
    let mut allocs = 0;
    while used != 0 {
        allocs += TALLY[used.trailing_zeros() as usize]
            .allocs
            .load(Ordering::Relaxed);
        used &= used - 1;
    }
    allocs
}

/// Starts a new epoch of sequence numbers (see above); when a thread
/// starts, too.
pub(crate) fn new_epoch() -> u64 {
    EPOCH.fetch_add(1, Ordering::Relaxed) + 1
}

/// A mark in the allocation history: every block allocated after this
/// call, on any thread, has a greater sequence number; every block
/// allocated before, a smaller or equal one.
pub(crate) fn mark() -> u64 {
    (new_epoch() << SEQ_BITS).wrapping_sub(1)
}

/// Puts back a record removed by a `realloc` that failed. (Its shard had
/// room for it a moment ago; if other threads filled that room meanwhile
/// and the table cannot grow, the block stays without a record, and its
/// free is then reported as an invalid one while every block is tracked,
/// rather than passed to the inner allocator.)
pub(crate) fn restore(rec: Record, thread: u32) {
    if insert(rec) {
        tally(thread)
            .live
            .fetch_add(rec.size() as i64, Ordering::Relaxed);
    }
}

/// The counters: (total allocations, total bytes, live bytes, peak bytes,
/// allocations made by the peak).
pub(crate) fn counters() -> (u64, u64, u64, u64, u64) {
    let (mut allocs, mut bytes, mut live) = (0u64, 0u64, LIVE.load(Ordering::Relaxed));
    // Every slot, used or not: a thread that only freed has a share too.
    for t in &TALLY {
        allocs += t.allocs.load(Ordering::Relaxed);
        bytes += t.bytes.load(Ordering::Relaxed);
        live += t.live.load(Ordering::Relaxed);
    }
    let live = live.max(0) as u64;
    // Every thread's share counted, the live figure may be above the peak
    // the threads saw: it is the peak from now on (so that the peak never
    // goes down from one call to the next).
    if live > PEAK_BYTES.load(Ordering::Relaxed)
        && PEAK_BYTES.fetch_max(live, Ordering::Relaxed) < live
    {
        PEAK_SEQ.store(allocs, Ordering::Relaxed);
    }
    (
        allocs,
        bytes,
        live,
        PEAK_BYTES.load(Ordering::Relaxed),
        // Another thread may have made a new peak since `allocs` was read.
        PEAK_SEQ.load(Ordering::Relaxed).min(allocs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_c_block_is_marked_apart_from_its_size_and_align() {
        let r = Record::new(0x1000, 1 << 40, 64, 1, 2, 3);
        let c = r.marked_c(true);
        assert!(c.is_c() && !r.is_c());
        assert_eq!((c.size(), c.align()), (1 << 40, 64));
        assert_eq!(c.marked_c(false), r);
        // A freed big block keeps the mark.
        let mut freed = c;
        freed.size_align |= FREED_BIT;
        assert!(freed.as_freed().rec.is_c());
        assert_eq!(freed.as_freed().rec.size(), 1 << 40);
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
    #[cfg_attr(miri, ignore = "16 million allocations")]
    fn a_threads_sequence_numbers_only_grow_across_the_count_wrapping() {
        // A thread number of its own slot: no other test allocates there
        // (thread numbers of the test threads are small).
        let t = 63 + 64 * 1_000;
        let mut last = count_alloc(1, t);
        for _ in 0..(1u64 << SEQ_BITS) + 2 {
            let s = count_alloc(1, t);
            assert!(s > last, "{s:#x} after {last:#x}");
            last = s;
            count_free(1, t);
        }
        count_free(1, t);
    }

    #[test]
    fn a_mark_separates_what_came_before_from_what_comes_after() {
        // Thread numbers of their own (they may share a slot with another
        // test's: the order holds anyway). Numbers of different threads
        // may be equal; a block is named by (address, number, thread).
        let (a, b) = (1_000_001, 1_000_002);
        let before = [count_alloc(8, a), count_alloc(8, b)];
        let m = mark();
        let after = [count_alloc(8, b), count_alloc(8, a)];
        assert!(before.iter().all(|&s| s <= m) && after.iter().all(|&s| s > m));
        assert!(mark() > m);
        for t in [a, b, a, b] {
            count_free(8, t);
        }
    }

    /// `n` leaked 64-byte buffers whose addresses all fall in one shard:
    /// real memory, since a scan or heap check may read any record.
    fn addresses_in_one_shard(n: usize) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        while out.len() < n {
            let a = Box::leak(Box::new([0u8; 64])).as_ptr() as usize;
            if out.is_empty() || std::ptr::eq(shard_of(a), shard_of(out[0])) {
                out.push(a);
            }
        }
        out
    }

    /// Held by the tests that free into the quarantine: one at a time,
    /// since their blocks may share a shard (a thread that starts after
    /// another ended gets its glibc arena, and the same regions).
    static QUARANTINE_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// [`super::free`], searching the FIFO for every address with no record.
    fn free(
        addr: usize,
        free_stack: StackId,
        free_thread: u32,
        budget: Budget,
        inspect: impl FnOnce(&Record, bool),
        out: &mut Evicted,
    ) -> Freeing {
        super::free(addr, free_stack, free_thread, budget, || true, inspect, out)
    }

    /// [`super::remove`], searching the FIFO for every address with no
    /// record.
    fn remove(addr: usize) -> Lookup {
        super::remove(addr, || true)
    }

    /// A quarantine of `share` bytes, all of which one shard's FIFO may
    /// hold, and no queue for big blocks.
    fn one_shard_of(share: usize) -> Budget {
        Budget {
            shard: share,
            small: share,
            big: 0,
        }
    }

    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        QUARANTINE_TESTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Empties the FIFO of the shard of `addr` and reports that, so that
    /// the next test starts afresh.
    fn drain_shard(addr: usize) {
        let mut s = shard_of(addr).lock();
        while s.pop_small().is_some() {}
        sync_small_bytes(&mut s);
    }

    /// Empties the queue of big blocks (the records of its blocks removed).
    fn drain_big() {
        let leaving: Vec<usize> = {
            let mut q = BIG.lock();
            q.bytes = 0;
            std::iter::from_fn(|| q.fifo.pop().map(|(a, _)| a)).collect()
        };
        for a in leaving {
            shard_of(a).lock().release_big(a);
        }
    }

    fn shard_counts(addr: usize) -> (usize, usize, usize) {
        let s = shard_of(addr).lock();
        (s.len(), s.quarantined(), s.freed().count())
    }

    #[test]
    fn a_free_quarantines_then_evicts() {
        let _one = one_at_a_time();
        let a = addresses_in_one_shard(5);
        let (live0, freed0, quarantined0) = shard_counts(a[0]);
        let rec = |addr| Record::new(addr, 32, 8, 5, 11, 2);
        // Room for two blocks.
        let budget = one_shard_of(2 * quarantine_cost(&rec(a[0])));
        let mut out = Evicted::new();
        assert!(insert(rec(a[0])));
        assert_eq!(shard_counts(a[0]).0, live0 + 1);

        // Kept in quarantine, with who freed it; `inspect` saw the block.
        let mut seen = None;
        let freeing = free(
            a[0],
            77,
            3,
            budget,
            |r, kept| seen = Some((*r, kept)),
            &mut out,
        );
        assert_eq!(
            freeing,
            Freeing::Live {
                rec: rec(a[0]),
                kept: true
            }
        );
        assert_eq!(seen, Some((rec(a[0]), true)));
        assert!(out.as_slice().is_empty());
        assert_eq!(shard_counts(a[0]), (live0, freed0 + 1, quarantined0 + 1));
        let Lookup::Freed(f) = remove(a[0]) else {
            panic!("a quarantined block must be found freed");
        };
        assert_eq!((f.free_stack, f.free_thread, f.rec.stack), (77, 3, 11));
        assert_eq!((f.rec.addr, f.rec.size(), f.rec.align()), (a[0], 32, 8));
        assert!(shard_of(a[0]).lock().freed().any(|q| q == f));
        assert!(!shard_of(a[0]).lock().records().any(|r| r.addr == a[0]));

        // A second free is a double free, and changes nothing.
        let again = free(a[0], 78, 3, budget, |_, _| panic!("not live"), &mut out);
        assert_eq!(again, Freeing::Freed(f));

        // A second block fits; a third, over the budget, pushes the first
        // one out.
        for (addr, stack) in [(a[1], 79), (a[4], 80)] {
            assert!(insert(rec(addr)));
            let freeing = free(addr, stack, 3, budget, |_, _| {}, &mut out);
            assert_eq!(
                freeing,
                Freeing::Live {
                    rec: rec(addr),
                    kept: true
                }
            );
        }
        assert_eq!(out.as_slice(), [f]);
        assert_eq!(remove(a[0]), Lookup::Unknown);

        // Without a budget, or too big for it, a block is not kept.
        assert!(insert(rec(a[2])));
        let freeing = free(
            a[2],
            80,
            3,
            Budget::new(0),
            |_, kept| assert!(!kept),
            &mut Evicted::new(),
        );
        assert_eq!(
            freeing,
            Freeing::Live {
                rec: rec(a[2]),
                kept: false
            }
        );
        assert_eq!(remove(a[2]), Lookup::Unknown);
        let big = Record::new(a[3], 4096, 8, 5, 11, 2);
        assert!(insert(big));
        let freeing = free(
            a[3],
            81,
            3,
            budget,
            |_, kept| assert!(!kept),
            &mut Evicted::new(),
        );
        assert_eq!(
            freeing,
            Freeing::Live {
                rec: big,
                kept: false
            }
        );
        assert_eq!(
            free(a[3], 81, 3, budget, |_, _| {}, &mut Evicted::new()),
            Freeing::Unknown
        );

        // memwarden's own blocks are only removed.
        let own = Record::new(a[2], 32, 8, 0, INTERNAL, 0);
        assert!(insert(own));
        let freeing = free(a[2], 82, 3, budget, |_, _| panic!("internal"), &mut out);
        assert_eq!(freeing, Freeing::Internal(own));
        assert_eq!(remove(a[2]), Lookup::Unknown);
        drain_shard(a[0]);
    }

    /// A double free is found in a FIFO whose ring has wrapped, on both
    /// sides of the wrap; not once the block has left; and not searched for
    /// when the caller says not to.
    #[test]
    fn a_double_free_is_found_across_the_fifos_wrap() {
        let _one = one_at_a_time();
        let a = addresses_in_one_shard(300);
        drain_shard(a[0]);
        let rec = |addr| Record::new(addr, 32, 8, 5, 11, 2);
        let budget = one_shard_of(3 * quarantine_cost(&rec(a[0])));
        let wrapped = || {
            let s = shard_of(a[0]).lock();
            s.fifo.len == 3 && s.fifo.head > s.fifo.buf.len() - 3
        };
        let mut n = 0;
        while n < 3 || !wrapped() {
            assert!(n < a.len(), "the ring never wrapped");
            assert!(insert(rec(a[n])));
            let stack = 1000 + n as StackId;
            free(a[n], stack, 3, budget, |_, _| {}, &mut Evicted::new());
            n += 1;
        }
        // The last three are quarantined, on both sides of the ring's end.
        for (k, &addr) in a[n - 3..n].iter().enumerate() {
            let stack = 1000 + (n - 3 + k) as StackId;
            let again = free(
                addr,
                1,
                3,
                budget,
                |_, _| panic!("not live"),
                &mut Evicted::new(),
            );
            assert!(
                matches!(again, Freeing::Freed(f) if f.rec.addr == addr && f.free_stack == stack),
                "{again:?}"
            );
            assert!(matches!(remove(addr), Lookup::Freed(f) if f.free_stack == stack));
            let unsearched =
                super::free(addr, 1, 3, budget, || false, |_, _| {}, &mut Evicted::new());
            assert_eq!(unsearched, Freeing::Unknown);
            assert_eq!(super::remove(addr, || false), Lookup::Unknown);
        }
        // One that left the quarantine is unknown.
        assert_eq!(remove(a[n - 4]), Lookup::Unknown);
        drain_shard(a[0]);
    }

    #[test]
    fn budget_shares() {
        let b = Budget::new(2 << 20);
        assert_eq!((b.shard, b.small, b.big), (8 << 10, 1 << 20, 1 << 20));
        // By cost: a block with a huge alignment is not small.
        let cost = |size, align| quarantine_cost(&Record::new(1, size, align, 0, 0, 0));
        assert!(b.place(cost(4000, 8)) == Some(Queue::Shard));
        assert!(b.place(cost(64, 1 << 20)).is_none());
        assert!(b.place(cost(64, 1 << 18)) == Some(Queue::Big));
        assert!(b.place(4 << 10) == Some(Queue::Shard));
        assert!(b.place((4 << 10) + 1) == Some(Queue::Big));
        assert!(b.place(512 << 10) == Some(Queue::Big));
        assert!(b.place((512 << 10) + 1).is_none());
        assert!(Budget::new(0).place(1).is_none());
        // A small budget: the shares are tiny, small blocks still small.
        let b = Budget::new(64 << 10);
        assert_eq!(b.shard, 256);
        assert!(b.place(SMALL_FLOOR) == Some(Queue::Shard));
        assert!(b.place(SMALL_FLOOR + 1) == Some(Queue::Big));
        // A tiny one: the floor is at most half of what a shard may borrow.
        let b = Budget::new(4 << 10);
        assert_eq!(b.shard * BORROW / 2, 128);
        assert!(b.place(128) == Some(Queue::Shard));
        assert!(b.place(129) == Some(Queue::Big));
        assert!(b.place(1024) == Some(Queue::Big));
        assert!(b.place(1025).is_none());
    }

    /// Big blocks wait in the queue for big blocks, whatever their shard,
    /// and leave it oldest first when it is over its budget.
    #[test]
    fn big_blocks_share_one_queue() {
        let _one = one_at_a_time();
        // Sizes no other test uses: the queue is shared by every test in
        // this process, so only blocks of these sizes are followed here.
        let sizes = [3001, 3002, 3003, 3004];
        let addrs: Vec<usize> = sizes
            .iter()
            .map(|&n| Box::leak(vec![0u8; n].into_boxed_slice()).as_ptr() as usize)
            .collect();
        let rec = |i: usize| Record::new(addrs[i], sizes[i], 8, 5, 11, 2);
        // Room in the big queue for two of them; none fits a shard's share.
        let budget = Budget {
            shard: 64,
            small: 64,
            big: 2 * quarantine_cost(&rec(3)) + 100,
        };
        for i in 0..3 {
            assert!(insert(rec(i)));
        }
        let mut out = Evicted::new();
        for (i, &addr) in addrs.iter().enumerate().take(2) {
            let mut kept = None;
            let freeing = free(addr, 90, 4, budget, |_, k| kept = Some(k), &mut out);
            assert_eq!(
                freeing,
                Freeing::Live {
                    rec: rec(i),
                    kept: true
                }
            );
            assert_eq!(kept, Some(true));
        }
        assert!(out.as_slice().is_empty());
        // Still in quarantine: a second free is a double free.
        assert!(matches!(
            free(addrs[0], 91, 4, budget, |_, _| {}, &mut Evicted::new()),
            Freeing::Freed(f) if f.rec == Record { seq: 0, ..rec(0) } && f.free_stack == 90
        ));
        let held = |a: usize| shard_of(a).lock().freed().any(|f| f.rec.addr == a);
        assert!(held(addrs[0]) && held(addrs[1]));

        // The third one pushes the oldest out, record and all.
        let mut out = Evicted::new();
        free(addrs[2], 92, 4, budget, |_, _| {}, &mut out);
        let left: Vec<usize> = out.as_slice().iter().map(|f| f.rec.addr).collect();
        assert_eq!(left, [addrs[0]]);
        assert_eq!(out.as_slice()[0].free_stack, 90);
        assert!(!held(addrs[0]) && held(addrs[1]) && held(addrs[2]));
        assert_eq!(remove(addrs[0]), Lookup::Unknown);

        // A live record that replaced a quarantined one (a free the
        // registry missed) stays when the old entry comes up.
        assert!(insert(rec(1)));
        assert!(insert(rec(3)));
        let mut out = Evicted::new();
        free(addrs[3], 93, 4, budget, |_, _| {}, &mut out);
        assert!(out.as_slice().is_empty());
        assert!(
            shard_of(addrs[1])
                .lock()
                .records()
                .any(|r| r.addr == addrs[1])
        );
        assert!(held(addrs[2]) && held(addrs[3]));
        // Every free and every leaving block is done with its move.
        assert_eq!(BIG_MOVING.load(Ordering::Relaxed), 0);
        drain_big();
    }

    /// A shard's FIFO grows past its fair share (up to [`BORROW`] times)
    /// while all of them hold less than the small blocks' budget, and
    /// gives blocks back once they hold more. (The tests that quarantine
    /// run one at a time and leave [`SMALL_BYTES`] as they found it.)
    #[test]
    fn a_shard_borrows_room_the_others_leave() {
        let _one = one_at_a_time();
        let n = 60;
        let a = addresses_in_one_shard(n);
        let rec = |addr| Record::new(addr, 32, 8, 5, 11, 2);
        let cost = quarantine_cost(&rec(a[0]));
        let roomy = Budget {
            shard: 4 * cost,
            small: 1000 * cost,
            big: 0,
        };
        let quarantined = || shard_of(a[0]).lock().freed().count();
        let before = quarantined();
        let total0 = SMALL_BYTES.load(Ordering::Relaxed);
        for &addr in &a[..50] {
            assert!(insert(rec(addr)));
            let mut out = Evicted::new();
            free(addr, 1, 1, roomy, |_, _| {}, &mut out);
            assert!(
                out.as_slice().is_empty(),
                "nothing leaves while there is room"
            );
        }
        assert_eq!(quarantined(), before + 50);
        // Its growth was reported (in steps of SYNC_BYTES).
        let total = SMALL_BYTES.load(Ordering::Relaxed);
        assert!(total >= total0 + SYNC_BYTES && total <= total0 + 50 * cost);

        // All the FIFOs now hold more than the small blocks' budget: this
        // one, over its fair share, gives back its oldest blocks, at most
        // MAX_EVICT a free, until they are within it (ten frees are enough).
        let tight = Budget {
            shard: 4 * cost,
            small: 10 * cost,
            big: 0,
        };
        let mut left = Vec::new();
        for &addr in &a[50..] {
            assert!(insert(rec(addr)));
            let mut out = Evicted::new();
            free(addr, 1, 1, tight, |_, _| {}, &mut out);
            assert!(out.as_slice().len() <= MAX_EVICT);
            left.extend(out.as_slice().iter().map(|f| f.rec.addr));
        }
        // (A test running beside this one may have blocks in this shard.)
        left.retain(|addr| a.contains(addr));
        assert_eq!(left, a[..left.len()], "oldest first");
        assert!(left.len() >= n - 10, "{} left", left.len());
        assert!(shard_of(a[0]).lock().fifo_bytes <= tight.small);

        // However much room the others leave, a shard borrows at most
        // BORROW times its share.
        let b = addresses_in_one_shard(2 * BORROW + 14);
        let endless = Budget {
            shard: 2 * cost,
            small: usize::MAX / 2,
            big: 0,
        };
        let mut left = Vec::new();
        for &addr in &b {
            assert!(insert(rec(addr)));
            let mut out = Evicted::new();
            free(addr, 1, 1, endless, |_, _| {}, &mut out);
            left.extend(out.as_slice().iter().map(|f| f.rec.addr));
        }
        left.retain(|addr| b.contains(addr));
        assert_eq!(left, b[..left.len()], "oldest first");
        assert!(left.len() >= 14, "{} left", left.len());
        assert!(shard_of(b[0]).lock().fifo_bytes <= BORROW * 2 * cost);
        drain_shard(a[0]);
        drain_shard(b[0]);
        assert_eq!(SMALL_BYTES.load(Ordering::Relaxed), total0);
    }

    /// A `fork` while another thread moved a big block leaves its record
    /// marked but out of the queue: the child queues it again.
    #[test]
    fn a_stranded_big_block_is_queued_again() {
        let _one = one_at_a_time();
        let addr = Box::leak(vec![0u8; 5000].into_boxed_slice()).as_ptr() as usize;
        let rec = Record::new(addr, 5000, 8, 5, 11, 2);
        assert!(insert(rec));
        let in_queue = || {
            let q = BIG.lock();
            q.fifo.iter().any(|(a, _)| a == addr)
        };
        // What `free` does before it unlocks the shard, and no more.
        {
            let mut s = shard_of(addr).lock();
            let i = s.table.find(addr).expect("recorded");
            s.table.at_mut(i).size_align |= FREED_BIT;
            s.freed_big += 1;
            BIG_MOVING.fetch_add(1, Ordering::Relaxed);
        }
        assert!(!in_queue());
        requeue_stranded_big();
        assert!(in_queue());
        assert_eq!(BIG_MOVING.load(Ordering::Relaxed), 0);
        // Queued blocks are not queued again: not when nothing is under
        // way, nor when something is (another block, say).
        requeue_stranded_big();
        BIG_MOVING.fetch_add(1, Ordering::Relaxed);
        requeue_stranded_big();
        assert_eq!(BIG_MOVING.load(Ordering::Relaxed), 0);
        let times = {
            let q = BIG.lock();
            q.fifo.iter().filter(|&(a, _)| a == addr).count()
        };
        assert_eq!(times, 1);
        drain_big();
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
