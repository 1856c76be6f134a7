//! Leak classification by reachability, the way Valgrind's memcheck does it.
//!
//! Input: the live blocks sorted by address, the root ranges (globals,
//! thread stacks, thread-local storage) and the process's mappings. Output:
//! a [`Kind`] per block, plus for each definitely lost block the bytes it
//! keeps alive indirectly.
//!
//! 1. **Mark.** Every aligned word of every root is a candidate pointer. A
//!    word equal to a block's start, found in a root or in a block that is
//!    itself definitely reachable, makes the block `Reachable`; any other
//!    hit (an interior pointer, or a start pointer from a `Possible` block)
//!    makes it at least `Possible`. Interior pointers that match one of
//!    memcheck's default heuristics (stdstring, length64, newarray,
//!    multipleinheritance) count as start pointers. Blocks whose state
//!    rises are (re)scanned.
//! 2. **Cliques.** Every block still `Unreached`, oldest first, becomes
//!    the leader of a clique: the not-yet-claimed `Unreached` blocks it
//!    reaches (through any pointer, start or interior) become
//!    `IndirectLeak`, and their bytes are added to the leader's. A leader
//!    absorbed by a later clique passes its indirect bytes on. The leaders
//!    left are definitely lost; so in a cycle nothing else points to, one
//!    block is definitely lost and the others indirectly lost.
//!
//! **Memory pools** ([`Pools`]) add three rules, so that a pool object
//! forgotten by its owner is lost at the line that took it: a pointer to a
//! pool object's slot header counts as a pointer to its start; the words
//! of a pool's own bookkeeping blocks (its core, chunk list, free lists)
//! never reach a pool object; and a pool object reaches its pool's core
//! (its box holds it, and the pool's memory lives on for it). Bookkeeping
//! blocks go last in the clique order, and those a lost pool object's
//! clique takes in are *folded*: not reported, nor counted (as the chunks
//! are not), since they are the pool's, lost only because the object is.
//!
//! Everything here works in `mmap` memory ([`MapVec`]) and never calls the
//! allocator: it runs while the other threads are stopped, and one of them
//! may hold the `malloc` lock. Callers guarantee that every block and every
//! root range is readable for the whole scan.
use crate::registry::Record;
use crate::sys::MapVec;

/// How a block ended up, in memcheck's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Kind {
    /// A pointer to its start is held by a root or a reachable block.
    Reachable = 0,
    /// Only interior pointers (or pointers from possibly lost blocks).
    Possible = 1,
    /// Reachable only from definitely lost blocks.
    IndirectLeak = 2,
    /// Nothing points to it.
    Unreached = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Kind {
        match v {
            0 => Kind::Reachable,
            1 => Kind::Possible,
            2 => Kind::IndirectLeak,
            _ => Kind::Unreached,
        }
    }
}

/// A readable address range `[start, end)` of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// What the multipleinheritance heuristic needs to know about mappings.
pub(crate) trait Mappings {
    /// True if `addr` lies in a readable file-backed mapping; returns its end.
    fn file_readable(&self, addr: usize) -> Option<usize>;
    /// True if `addr` lies in an executable file-backed mapping.
    fn file_exec(&self, addr: usize) -> bool;
}

const W: usize = size_of::<usize>();

/// In [`Pools::owner`]: the block is no pool object.
pub(crate) const NOT_POOLED: u32 = u32::MAX;
/// In [`Pools::owner`]: a pool object whose pool core is not a block.
pub(crate) const NO_CORE: u32 = u32::MAX - 1;

/// What the scan knows of memory pools, per block (same order as the
/// blocks). A pool's chunks are not blocks; each object taken from one is.
pub(crate) struct Pools<'a> {
    /// For a pool object, the index of its pool's core (or [`NO_CORE`]);
    /// [`NOT_POOLED`] for every other block.
    pub(crate) owner: &'a [u32],
    /// True for a pool's own bookkeeping: its words never reach a pool
    /// object (the chunk list points at each chunk's first slot, a stale
    /// free-list entry at a slot taken since).
    pub(crate) internal: &'a [bool],
    /// `(slot header address, block index)` of every pool object, sorted:
    /// a box points at the header, and that counts as a start pointer.
    pub(crate) headers: &'a [(usize, u32)],
}

/// Result of a scan: one [`Kind`] per block (same order as the input) and
/// the indirect bytes of each clique leader.
pub(crate) struct Classified {
    state: MapVec<u8>,
    indirect: MapVec<u64>,
    referrer: MapVec<usize>,
    folded: MapVec<bool>,
}

impl Classified {
    pub(crate) fn kind(&self, i: usize) -> Kind {
        Kind::from_u8(self.state.as_slice()[i])
    }

    /// Bytes of the blocks that block `i` keeps alive indirectly (for a
    /// definitely lost block).
    pub(crate) fn indirect_bytes(&self, i: usize) -> u64 {
        self.indirect.as_slice()[i]
    }

    /// Address of the word that last raised block `i`'s state (0: none).
    pub(crate) fn referrer(&self, i: usize) -> usize {
        self.referrer.as_slice()[i]
    }

    /// True for a pool's bookkeeping block lost only with a lost pool
    /// object: part of the pool, not a leak of its own (see [`Pools`]).
    pub(crate) fn folded(&self, i: usize) -> bool {
        self.folded.as_slice().get(i).copied().unwrap_or(false)
    }
}

struct Scan<'a, M> {
    blocks: &'a [Record],
    state: MapVec<u8>,
    indirect: MapVec<u64>,
    referrer: MapVec<usize>,
    stack: MapVec<u32>,
    lo: usize,
    hi: usize,
    maps: &'a M,
    safe: bool,
    pools: Option<&'a Pools<'a>>,
    /// The block being scanned ([`NOT_POOLED`]: a root).
    cur: u32,
    /// See [`Classified::folded`] (empty without pools).
    folded: MapVec<bool>,
}

/// Reads `buf.len()` words at `addr` with `process_vm_readv` on this very
/// process: a page that has gone away gives an error instead of a crash.
/// Returns how many words were read.
fn read_words_safely(addr: usize, buf: &mut [usize]) -> usize {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len() * W,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len() * W,
    };
    // SAFETY: the kernel writes at most `iov_len` bytes into `buf`, which
    // has them, and reads the remote range checking every page.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n < 0 { 0 } else { n as usize / W }
}

/// One word at `addr` (aligned): read directly, or with
/// [`read_words_safely`] when memory may be going away under the scan.
pub(crate) fn read_word(addr: usize, safe: bool) -> Option<usize> {
    if safe {
        let mut w = [0usize; 1];
        return (read_words_safely(addr, &mut w) == 1).then_some(w[0]);
    }
    // SAFETY: the caller of `classify` guarantees the memory scanned is
    // readable for the whole scan when `safe` is false. A volatile read,
    // because other code may own this memory.
    Some(unsafe { (addr as *const usize).read_volatile() })
}

/// Classifies `blocks` (sorted by address, non-overlapping) against `roots`.
/// `None` if scan memory could not be mapped.
///
/// With `safe` false, every block and root must stay readable for the whole
/// scan (the other threads are stopped). With `safe` true (some thread
/// could not be stopped and may free or unmap memory meanwhile), memory is
/// read through `process_vm_readv`, slower but unable to fault.
///
/// `pools`, if given, has one entry per block (see [`Pools`]).
pub(crate) fn classify<M: Mappings>(
    blocks: &[Record],
    roots: &[Region],
    maps: &M,
    safe: bool,
    pools: Option<&Pools<'_>>,
) -> Option<Classified> {
    let n = blocks.len();
    let mut s = Scan {
        blocks,
        state: MapVec::new(),
        indirect: MapVec::new(),
        referrer: MapVec::new(),
        stack: MapVec::new(),
        lo: blocks.first().map_or(0, |b| b.addr),
        hi: blocks.last().map_or(0, |b| b.addr + b.size().max(1)),
        maps,
        safe,
        pools: pools.filter(|p| p.owner.len() == n && p.internal.len() == n),
        cur: NOT_POOLED,
        folded: MapVec::new(),
    };
    if !s.state.fill(Kind::Unreached as u8, n)
        || !s.indirect.fill(0, n)
        || !s.referrer.fill(0, n)
        || !s.stack.reserve(1024)
        || (s.pools.is_some() && !s.folded.fill(false, n))
    {
        return None;
    }
    // 1. Mark from the roots, read in the way that cannot fault: they were
    //    found in `/proc/self/maps` before the other threads stopped, and a
    //    thread starting meanwhile (not stopped: it was not there to be
    //    listed) may change the mappings next to them. A new thread's
    //    signal stack mapped right above another thread's stack merges
    //    with it until its guard page is made, so that stack's mapping
    //    read before the stop can end past its guard page now. (Blocks
    //    stay readable while their owners are stopped.)
    let blocks_safe = s.safe;
    s.safe = true;
    for r in roots {
        s.scan(r.start, r.end, true, None, false);
    }
    s.safe = blocks_safe;
    s.drain(None);
    // 2. Cliques of unreached blocks, oldest allocation first. memcheck
    //    goes by address, and its allocator hands out rising addresses, so
    //    in practice it starts from the oldest block too; going by age
    //    makes the choice of a cycle's definitely lost block independent of
    //    where the inner allocator put the blocks.
    let mut order: MapVec<u32> = MapVec::new();
    if !order.reserve(n) {
        return None;
    }
    for i in 0..n {
        order.push(i as u32);
    }
    // Equal sequence numbers (pool objects a thread took between two of
    // its allocations share one): then by address.
    // Pool bookkeeping last, so that a lost pool object's clique takes its
    // pool's core in before the core could lead a clique of its own.
    let internal = |i: usize| s.pools.is_some_and(|p| p.internal[i]);
    order.as_mut_slice().sort_unstable_by_key(|&i| {
        let i = i as usize;
        (internal(i), blocks[i].seq, blocks[i].addr)
    });
    for &i in order.as_slice() {
        let i = i as usize;
        if s.state.as_slice()[i] == Kind::Unreached as u8 {
            s.stack.push(i as u32);
            s.drain(Some(i));
        }
    }
    Some(Classified {
        state: s.state,
        indirect: s.indirect,
        referrer: s.referrer,
        folded: s.folded,
    })
}

impl<M: Mappings> Scan<'_, M> {
    /// The block containing `p`, if any.
    #[inline]
    fn find(&self, p: usize) -> Option<usize> {
        if p < self.lo || p >= self.hi {
            return None;
        }
        let i = self
            .blocks
            .partition_point(|b| b.addr <= p)
            .checked_sub(1)?;
        let b = &self.blocks[i];
        // A zero-sized block still owns its start address (as in memcheck).
        (p < b.addr + b.size().max(1)).then_some(i)
    }

    /// The block `p` points into, and whether it points at its start (or
    /// at a pool object's slot header).
    #[inline]
    fn find_ptr(&self, p: usize) -> Option<(usize, bool)> {
        if let Some(k) = self.find(p) {
            return Some((k, p == self.blocks[k].addr));
        }
        let h = self.pools?.headers;
        let first = h.first()?.0;
        if p < first || p > h[h.len() - 1].0 {
            return None;
        }
        let i = h.partition_point(|&(a, _)| a < p);
        h.get(i)
            .filter(|&&(a, _)| a == p)
            .map(|&(_, k)| (k as usize, true))
    }

    fn drain(&mut self, clique: Option<usize>) {
        while let Some(i) = self.stack.pop() {
            let i = i as usize;
            let b = self.blocks[i];
            let definite = self.state.as_slice()[i] != Kind::Possible as u8;
            let (internal, owner) = match self.pools {
                Some(p) => (p.internal[i], p.owner[i]),
                None => (false, NOT_POOLED),
            };
            self.cur = i as u32;
            self.scan(b.addr, b.addr + b.size(), definite, clique, internal);
            if (owner as usize) < self.blocks.len() {
                // A pool object keeps its pool's core alive.
                let core = self.blocks[owner as usize].addr;
                self.hit(core, b.addr, definite, clique, false);
            }
        }
    }

    fn scan(
        &mut self,
        start: usize,
        end: usize,
        prior_definite: bool,
        clique: Option<usize>,
        internal: bool,
    ) {
        let mut p = start.next_multiple_of(W);
        if self.safe {
            let mut buf = [0usize; 512];
            while p + W <= end {
                let want = ((end - p) / W).min(buf.len());
                let got = read_words_safely(p, &mut buf[..want]);
                for (i, &word) in buf[..got].iter().enumerate() {
                    self.hit(word, p + i * W, prior_definite, clique, internal);
                }
                // An unreadable page: skip to the next one.
                p = if got == want {
                    p + got * W
                } else {
                    (p + got * W + 1).next_multiple_of(4096)
                };
            }
            return;
        }
        while p + W <= end {
            // SAFETY: the caller of `classify` guarantees [start, end) is
            // readable for the whole scan, and `p` is aligned. A volatile
            // read, because other code may own this memory.
            let word = unsafe { (p as *const usize).read_volatile() };
            self.hit(word, p, prior_definite, clique, internal);
            p += W;
        }
    }

    /// `word`, read at `at`, may point into a block. `internal`: `at` is
    /// in a pool's bookkeeping, which does not reach pool objects.
    #[inline]
    fn hit(
        &mut self,
        word: usize,
        at: usize,
        prior_definite: bool,
        clique: Option<usize>,
        internal: bool,
    ) {
        if let Some((k, start)) = self.find_ptr(word) {
            if internal && self.pools.is_some_and(|p| p.owner[k] != NOT_POOLED) {
                return;
            }
            match clique {
                None => self.mark(k, word, start, prior_definite, at),
                Some(leader) => self.claim(k, leader, at),
            }
        }
    }

    fn mark(&mut self, k: usize, ptr: usize, start: bool, prior_definite: bool, at: usize) {
        let state = self.state.as_slice()[k];
        if state == Kind::Reachable as u8 {
            return;
        }
        let b = self.blocks[k];
        let via_start = start || heuristic(&b, ptr, self.maps, self.safe);
        if via_start && prior_definite {
            self.state.as_mut_slice()[k] = Kind::Reachable as u8;
            self.referrer.as_mut_slice()[k] = at;
            self.push(k);
        } else if state == Kind::Unreached as u8 {
            self.state.as_mut_slice()[k] = Kind::Possible as u8;
            self.referrer.as_mut_slice()[k] = at;
            self.push(k);
        }
    }

    fn claim(&mut self, k: usize, leader: usize, at: usize) {
        if k == leader || self.state.as_slice()[k] != Kind::Unreached as u8 {
            return;
        }
        self.referrer.as_mut_slice()[k] = at;
        if self.folds(k) {
            self.folded.as_mut_slice()[k] = true;
        } else {
            let add = self.blocks[k].size() as u64 + self.indirect.as_slice()[k];
            self.indirect.as_mut_slice()[leader] += add;
        }
        self.indirect.as_mut_slice()[k] = 0;
        self.state.as_mut_slice()[k] = Kind::IndirectLeak as u8;
        self.push(k);
    }

    /// True if block `k`, reached from the block being scanned, is pool
    /// bookkeeping reached from a pool object (or from bookkeeping so
    /// reached).
    fn folds(&self, k: usize) -> bool {
        let Some(p) = self.pools else { return false };
        let cur = self.cur as usize;
        p.internal[k]
            && cur < self.blocks.len()
            && (p.owner[cur] != NOT_POOLED || self.folded.as_slice()[cur])
    }

    fn push(&mut self, k: usize) {
        // If mmap fails here the block is simply not rescanned: the result
        // errs towards "lost", never towards a crash.
        let _ = self.stack.push(k as u32);
    }
}

/// Reads the word at `addr` if `[addr, addr + 8)` lies inside block `b`.
fn word_in(b: &Record, addr: usize, safe: bool) -> Option<usize> {
    if addr % W != 0 || addr < b.addr || addr + W > b.addr + b.size() {
        return None;
    }
    read_word(addr, safe)
}

/// memcheck's default leak-check heuristics: an interior pointer that
/// matches one of these patterns counts as a pointer to the start.
fn heuristic<M: Mappings>(b: &Record, ptr: usize, maps: &M, safe: bool) -> bool {
    let size = b.size();
    // stdstring: | length | capacity | refcount | chars... \0 |
    if ptr == b.addr + 3 * W {
        if let (Some(len), Some(cap)) = (word_in(b, b.addr, safe), word_in(b, b.addr + W, safe)) {
            if cap.checked_add(3 * W + 1) == Some(size) && len <= cap {
                return true;
            }
        }
    }
    // length64 and newarray: | n | n-divisible payload... |
    if ptr == b.addr + W {
        if let Some(n) = word_in(b, b.addr, safe) {
            if n > 0 && (size - W == n || (size - W) % n == 0) {
                return true;
            }
        }
    }
    // multipleinheritance: both the first word and the pointed-to word are
    // vtable pointers.
    if let (Some(inner), Some(first)) = (word_in(b, ptr, safe), word_in(b, b.addr, safe)) {
        let page = 4096;
        if inner % W == 0
            && inner >= page
            && first % W == 0
            && first >= page
            && is_vtable(inner, maps, safe)
            && is_vtable(first, maps, safe)
        {
            return true;
        }
    }
    false
}

/// memcheck's vtable test: `ptr` is in a readable file mapping, and among
/// the first 20 words there are two non-null pointers into executable file
/// mappings (and no other non-null word before them).
fn is_vtable<M: Mappings>(ptr: usize, maps: &M, safe: bool) -> bool {
    let Some(end) = maps.file_readable(ptr) else {
        return false;
    };
    let mut found = 0;
    let mut p = ptr;
    let last = (ptr + 20 * W).min(end.saturating_sub(W));
    while p <= last {
        let Some(f) = read_word(p, safe) else {
            return false;
        };
        p += W;
        if f == 0 {
            continue;
        }
        if !maps.file_exec(f) {
            return false;
        }
        found += 1;
        if found == 2 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoMaps;
    impl Mappings for NoMaps {
        fn file_readable(&self, _: usize) -> Option<usize> {
            None
        }
        fn file_exec(&self, _: usize) -> bool {
            false
        }
    }

    /// Synthetic heap: word buffers standing in for blocks.
    struct Heap {
        bufs: Vec<Box<[usize]>>,
    }

    impl Heap {
        fn new(n: usize, words: usize) -> Heap {
            Heap {
                bufs: (0..n)
                    .map(|_| vec![0usize; words].into_boxed_slice())
                    .collect(),
            }
        }
        fn addr(&self, i: usize) -> usize {
            self.bufs[i].as_ptr() as usize
        }
        fn set(&mut self, i: usize, word: usize, v: usize) {
            self.bufs[i][word] = v;
        }
        fn classify(&self, roots: &[usize]) -> Vec<(Kind, u64)> {
            let mut recs: Vec<(usize, Record)> = self
                .bufs
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    (
                        i,
                        Record::new(b.as_ptr() as usize, b.len() * W, W, i as u64, 0, 0),
                    )
                })
                .collect();
            recs.sort_by_key(|(_, r)| r.addr);
            let sorted: Vec<Record> = recs.iter().map(|(_, r)| *r).collect();
            let root = [Region {
                start: roots.as_ptr() as usize,
                end: roots.as_ptr() as usize + roots.len() * W,
            }];
            let c = classify(&sorted, &root, &NoMaps, false, None).unwrap();
            let safe = classify(&sorted, &root, &NoMaps, true, None).unwrap();
            for i in 0..sorted.len() {
                assert_eq!(c.kind(i), safe.kind(i), "safe reads classify the same");
                assert_eq!(c.indirect_bytes(i), safe.indirect_bytes(i));
            }
            let mut out = vec![(Kind::Reachable, 0); self.bufs.len()];
            for (pos, (orig, _)) in recs.iter().enumerate() {
                out[*orig] = (c.kind(pos), c.indirect_bytes(pos));
            }
            out
        }
    }

    /// Classifies `h` with pools: `internal` blocks, `(object, core)`
    /// pairs and `(header address, object)` pairs, by original index.
    /// Returns (kind, indirect bytes, folded) per original index.
    fn classify_pooled(
        h: &Heap,
        roots: &[usize],
        internal: &[usize],
        owners: &[(usize, usize)],
        headers: &[(usize, usize)],
    ) -> Vec<(Kind, u64, bool)> {
        let mut recs: Vec<(usize, Record)> = h
            .bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let r = Record::new(b.as_ptr() as usize, b.len() * W, W, i as u64, 0, 0);
                (i, r)
            })
            .collect();
        recs.sort_by_key(|(_, r)| r.addr);
        let pos = |orig: usize| recs.iter().position(|(i, _)| *i == orig).unwrap();
        let sorted: Vec<Record> = recs.iter().map(|(_, r)| *r).collect();
        let mut owner = vec![NOT_POOLED; recs.len()];
        let mut inside = vec![false; recs.len()];
        for &i in internal {
            inside[pos(i)] = true;
        }
        for &(o, c) in owners {
            owner[pos(o)] = pos(c) as u32;
        }
        let mut hdrs: Vec<(usize, u32)> =
            headers.iter().map(|&(a, o)| (a, pos(o) as u32)).collect();
        hdrs.sort();
        let pools = Pools {
            owner: &owner,
            internal: &inside,
            headers: &hdrs,
        };
        let root = [Region {
            start: roots.as_ptr() as usize,
            end: roots.as_ptr() as usize + roots.len() * W,
        }];
        let c = classify(&sorted, &root, &NoMaps, false, Some(&pools)).unwrap();
        (0..recs.len())
            .map(|orig| {
                let p = pos(orig);
                (c.kind(p), c.indirect_bytes(p), c.folded(p))
            })
            .collect()
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "reads memory with process_vm_readv and volatile word reads"
    )]
    fn pool_bookkeeping_does_not_keep_objects_alive() {
        // 0: core, 1: its chunk list, 2 and 3: objects taken from it.
        let mut h = Heap::new(4, 4);
        let (list, obj0) = (h.addr(1), h.addr(2));
        h.set(0, 0, list);
        h.set(1, 0, obj0); // the chunk list points at the first object
        let header = [0usize; 2]; // a slot header, outside every block
        let owners = [(2, 0), (3, 0)];
        let headers = [(header.as_ptr() as usize, 3)];
        // A box of object 3 (its header) on the stack: 3 is reachable, and
        // so is its pool; object 2 is lost all the same.
        let k = classify_pooled(&h, &[header.as_ptr() as usize], &[0, 1], &owners, &headers);
        assert_eq!(
            k[3].0,
            Kind::Reachable,
            "a header pointer is a start pointer"
        );
        assert_eq!(k[0].0, Kind::Reachable, "an object keeps its pool's core");
        assert_eq!(k[1].0, Kind::Reachable);
        assert_eq!(k[2], (Kind::Unreached, 0, false));
        // Without pools, the chunk list would have kept object 2.
        let plain = h.classify(&[h.addr(0), h.addr(3)]);
        assert_eq!(plain[2].0, Kind::Reachable);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "reads memory with process_vm_readv and volatile word reads"
    )]
    fn a_lost_pool_object_folds_its_dropped_pool_in() {
        // 0: core, 1: chunk list, 2: a forgotten object; nothing else.
        let mut h = Heap::new(3, 4);
        let (list, obj) = (h.addr(1), h.addr(2));
        h.set(0, 0, list);
        h.set(1, 0, obj);
        let k = classify_pooled(&h, &[], &[0, 1], &[(2, 0)], &[]);
        assert_eq!(k[2], (Kind::Unreached, 0, false), "the object leads");
        assert_eq!(k[0], (Kind::IndirectLeak, 0, true));
        assert_eq!(k[1], (Kind::IndirectLeak, 0, true));
        // A pool forgotten with no object out is a leak of its own.
        let mut h = Heap::new(2, 4);
        let list = h.addr(1);
        h.set(0, 0, list);
        let k = classify_pooled(&h, &[], &[0, 1], &[], &[]);
        assert_eq!(k[0], (Kind::Unreached, 32, false));
        assert_eq!(k[1], (Kind::IndirectLeak, 0, false));
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "reads memory with process_vm_readv and volatile word reads"
    )]
    fn a_cycle_of_pool_objects_has_one_leader() {
        // 0: core; 1 and 2: objects holding each other's header.
        let mut h = Heap::new(3, 4);
        let hdr = [0usize; 4];
        let (h1, h2) = (hdr.as_ptr() as usize, hdr.as_ptr() as usize + 2 * W);
        let core = h.addr(0);
        h.set(1, 0, h2);
        h.set(1, 1, core);
        h.set(2, 0, h1);
        h.set(2, 1, core);
        let k = classify_pooled(&h, &[], &[0], &[(1, 0), (2, 0)], &[(h1, 1), (h2, 2)]);
        assert_eq!(k[1], (Kind::Unreached, 32, false));
        assert_eq!(k[2], (Kind::IndirectLeak, 0, false));
        assert_eq!(k[0], (Kind::IndirectLeak, 0, true));
    }

    #[test]
    fn root_start_pointer_is_reachable_and_unpointed_is_lost() {
        let h = Heap::new(2, 4);
        let roots = [h.addr(0)];
        let k = h.classify(&roots);
        assert_eq!(k[0].0, Kind::Reachable);
        assert_eq!(k[1].0, Kind::Unreached);
    }

    #[test]
    fn interior_pointer_is_possible_and_propagates_possible() {
        let mut h = Heap::new(2, 4);
        let b1 = h.addr(1);
        h.set(0, 1, b1); // block 0 points to block 1's start
        let roots = [h.addr(0) + 2 * W]; // but block 0 only by interior
        let k = h.classify(&roots);
        assert_eq!(k[0].0, Kind::Possible);
        assert_eq!(k[1].0, Kind::Possible);
    }

    #[test]
    fn chain_from_a_lost_block_is_indirect_with_sizes_summed() {
        let mut h = Heap::new(3, 4);
        let (b1, b2) = (h.addr(1), h.addr(2));
        h.set(0, 0, b1);
        h.set(1, 3, b2 + W); // interior pointers count inside a clique
        let k = h.classify(&[]);
        assert_eq!(k[0], (Kind::Unreached, 64));
        assert_eq!(k[1], (Kind::IndirectLeak, 0));
        assert_eq!(k[2], (Kind::IndirectLeak, 0));
    }

    #[test]
    fn cycle_has_exactly_one_definitely_lost_member() {
        let mut h = Heap::new(3, 2);
        let a: Vec<usize> = (0..3).map(|i| h.addr(i)).collect();
        h.set(0, 0, a[1]);
        h.set(1, 0, a[2]);
        h.set(2, 0, a[0]);
        let k = h.classify(&[]);
        let lost = k.iter().filter(|x| x.0 == Kind::Unreached).count();
        let ind = k.iter().filter(|x| x.0 == Kind::IndirectLeak).count();
        assert_eq!((lost, ind), (1, 2));
        let leader = k.iter().find(|x| x.0 == Kind::Unreached).unwrap();
        assert_eq!(leader.1, 32, "the leader keeps the two others' bytes");
    }

    #[test]
    fn later_leader_absorbs_an_earlier_clique() {
        // Whatever the address order, a root-less chain X -> Y -> Z ends
        // with X definitely lost carrying Y and Z.
        let mut h = Heap::new(3, 2);
        let a: Vec<usize> = (0..3).map(|i| h.addr(i)).collect();
        h.set(0, 0, a[1]);
        h.set(1, 0, a[2]);
        let k = h.classify(&[]);
        assert_eq!(k[0], (Kind::Unreached, 32));
        assert_eq!(k[1].0, Kind::IndirectLeak);
        assert_eq!(k[2].0, Kind::IndirectLeak);
    }

    #[test]
    fn reachable_via_start_upgrades_possible() {
        let mut h = Heap::new(2, 4);
        let b1 = h.addr(1);
        h.set(0, 0, b1 + W * 2); // interior from a reachable block
        let roots = [h.addr(0), b1]; // and a start pointer from a root
        let k = h.classify(&roots);
        assert_eq!(k[1].0, Kind::Reachable);
    }

    #[test]
    fn length64_heuristic_counts_as_start() {
        let mut h = Heap::new(1, 4);
        h.set(0, 0, 3 * W); // length of the rest of the block
        let roots = [h.addr(0) + W];
        assert_eq!(h.classify(&roots)[0].0, Kind::Reachable);
    }

    #[test]
    fn pointers_past_the_end_do_not_count() {
        let h = Heap::new(1, 4);
        let roots = [h.addr(0) + 4 * W];
        // A pointer one past the end may hit a neighbour, never this block.
        let k = h.classify(&roots);
        assert_ne!(k[0].0, Kind::Reachable);
    }
}
