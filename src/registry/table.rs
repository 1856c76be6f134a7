//! An open-addressing hash table keyed by address: linear probing,
//! backward-shift deletion (no tombstones), at most three quarters full
//! (half full cost a third more memory and measured no faster), and, over
//! [`SHRINK_ABOVE`] slots, halved when it falls under an eighth full
//! ([`Table::shrink_if_sparse`]), so that a program whose live blocks once
//! peaked does not keep the tables of that peak. Its memory comes from
//! `System` through [`SysVec`], never from the global allocator.
use crate::sys::SysVec;

/// A value stored in a [`Table`]: plain data with a non-zero key.
pub(crate) trait Slot: Copy {
    /// The empty slot.
    const EMPTY: Self;
    /// The address this value is keyed by; 0 only for [`Slot::EMPTY`].
    fn key(&self) -> usize;
}

#[inline]
pub(crate) fn mix(addr: usize) -> u64 {
    let mut h = addr as u64;
    h ^= h >> 31;
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// The address of the slot where the lookup of `addr` starts, in a table
/// whose [`Table::placement`] is `(first, mask)` (`first` non-zero). Only
/// an address: a stale placement gives a wrong one, fine for a prefetch.
#[inline(always)]
pub(crate) fn home_slot<R>(first: usize, mask: usize, addr: usize) -> usize {
    first.wrapping_add(((mix(addr) as usize) & mask).wrapping_mul(size_of::<R>()))
}

/// The fewest slots of a table that has any: it grows to this at its
/// first insertion.
const MIN_SLOTS: usize = 256;

/// Tables are halved only above this many slots (512 KiB of 32-byte
/// records): a shard whose blocks are all freed and then allocated again,
/// over and over (a batch handed to another thread, a structure rebuilt
/// in a loop), would otherwise halve and double its table at each round,
/// which made a two-thread producer and consumer 15-20% slower. So at
/// most 64 MiB of tables (128 shards) stay after a peak of live blocks.
const SHRINK_ABOVE: usize = 1 << 14;

/// See the module docs.
pub(crate) struct Table<R: Slot> {
    slots: SysVec<R>,
    len: usize,
}

impl<R: Slot> Table<R> {
    pub(crate) const fn new() -> Self {
        Table {
            slots: SysVec::new(),
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self) -> bool {
        self.rebuild((self.slots.len() * 2).max(MIN_SLOTS))
    }

    /// Halves the table if it is less than an eighth full and bigger than
    /// [`SHRINK_ABOVE`]: it is then a quarter full, so that it takes as many
    /// removals again before the next halving, and as many insertions
    /// before it doubles, as the rebuild costs. `true` if the slots moved
    /// (see [`Table::placement`]). A table that cannot get the memory for
    /// the smaller buffer stays as it is.
    #[inline]
    pub(crate) fn shrink_if_sparse(&mut self) -> bool {
        let n = self.slots.len();
        n > SHRINK_ABOVE && self.len * 8 < n && self.rebuild(n / 2)
    }

    /// Moves every value into a new buffer of `new_len` slots (a power of
    /// two, more than twice `len`); `false`, leaving the table as it was,
    /// if it could not be had.
    #[cold]
    #[inline(never)]
    fn rebuild(&mut self, new_len: usize) -> bool {
        let mut slots = SysVec::new();
        if !slots.fill(R::EMPTY, new_len) {
            return false;
        }
        let mask = new_len - 1;
        for r in self.slots.as_slice() {
            if r.key() != 0 {
                let mut i = (mix(r.key()) as usize) & mask;
                while slots.as_slice()[i].key() != 0 {
                    i = (i + 1) & mask;
                }
                slots.as_mut_slice()[i] = *r;
            }
        }
        self.slots = slots;
        true
    }

    /// Inserts or replaces; `false` if the table could not grow.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, rec: R) -> bool {
        self.replace(rec).is_some()
    }

    /// Inserts or replaces: `None` if the table could not grow, else the
    /// value replaced (`Some(None)` for a new key).
    #[inline]
    pub(crate) fn replace(&mut self, rec: R) -> Option<Option<R>> {
        if (self.len + 1) * 4 > self.slots.len() * 3 && !self.grow() {
            return None;
        }
        let mask = self.mask();
        let slots = self.slots.as_mut_slice();
        let mut i = (mix(rec.key()) as usize) & mask;
        loop {
            let k = slots[i].key();
            if k == 0 {
                slots[i] = rec;
                self.len += 1;
                return Some(None);
            }
            if k == rec.key() {
                return Some(Some(std::mem::replace(&mut slots[i], rec)));
            }
            i = (i + 1) & mask;
        }
    }

    /// The slot index holding `addr`.
    pub(crate) fn find(&self, addr: usize) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let slots = self.slots.as_slice();
        let mut i = (mix(addr) as usize) & mask;
        loop {
            match slots[i].key() {
                0 => return None,
                k if k == addr => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn get(&self, addr: usize) -> Option<R> {
        self.find(addr).map(|i| self.slots.as_slice()[i])
    }

    /// Where the slots are (0 while there are none), and the mask of slot
    /// indices: for [`super::prefetch_slot`], which finds a key's slot
    /// without the shard's lock.
    pub(crate) fn placement(&self) -> (usize, usize) {
        match self.slots.len() {
            0 => (0, 0),
            _ => (self.slots.as_slice().as_ptr() as usize, self.mask()),
        }
    }

    /// The value in slot `i` (from [`Table::find`]).
    pub(crate) fn at(&self, i: usize) -> R {
        self.slots.as_slice()[i]
    }

    /// The value in slot `i` (from [`Table::find`]), to change in place
    /// (not its key).
    pub(crate) fn at_mut(&mut self, i: usize) -> &mut R {
        &mut self.slots.as_mut_slice()[i]
    }

    #[cfg(test)]
    pub(crate) fn remove(&mut self, addr: usize) -> Option<R> {
        let i = self.find(addr)?;
        Some(self.remove_at(i))
    }

    /// Removes the value in slot `i` (from [`Table::find`]).
    pub(crate) fn remove_at(&mut self, i: usize) -> R {
        let mut hole = i;
        let mask = self.mask();
        let slots = self.slots.as_mut_slice();
        let removed = slots[hole];
        // Backward-shift deletion: pull later members of the probe run into
        // the hole so that lookups never need tombstones.
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let r = slots[j];
            if r.key() == 0 {
                break;
            }
            let home = (mix(r.key()) as usize) & mask;
            // Move r into the hole unless its home lies cyclically in (hole, j].
            let dist_home = j.wrapping_sub(home) & mask;
            let dist_hole = j.wrapping_sub(hole) & mask;
            if dist_home >= dist_hole {
                slots[hole] = r;
                hole = j;
            }
        }
        slots[hole] = R::EMPTY;
        self.len -= 1;
        removed
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &R> {
        self.slots.as_slice().iter().filter(|r| r.key() != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct V(usize, u32);
    impl Slot for V {
        const EMPTY: V = V(0, 0);
        fn key(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn insert_get_remove_against_a_model() {
        let mut t = Table::<V>::new();
        let mut model = std::collections::HashMap::new();
        // A deterministic pseudo-random walk of inserts and removes that
        // exercises growth, probe runs and backward-shift deletion.
        let mut x: u64 = 0x1234_5678;
        for step in 0..50_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let addr = ((x % 4096) as usize + 1) * 16;
            if x & 1 == 0 {
                assert!(t.insert(V(addr, step)));
                model.insert(addr, V(addr, step));
            } else {
                assert_eq!(t.remove(addr), model.remove(&addr));
                t.shrink_if_sparse();
            }
            assert_eq!(t.len(), model.len());
        }
        for (&a, r) in &model {
            assert_eq!(t.get(a), Some(*r));
        }
        assert_eq!(t.iter().count(), model.len());
    }

    #[test]
    fn a_table_shrinks_when_sparse_and_keeps_every_value() {
        let mut t = Table::<V>::new();
        let addr = |i: usize| (i + 1) * 16;
        for i in 0..100_000 {
            assert!(t.insert(V(addr(i), i as u32)));
        }
        let peak = t.slots.len();
        assert!(peak >= 200_000);
        let mut moves = 0;
        for i in 0..99_990 {
            assert_eq!(t.remove(addr(i)), Some(V(addr(i), i as u32)));
            if t.shrink_if_sparse() {
                moves += 1;
                // A quarter full after a halving: under half full.
                assert!(
                    t.len() * 2 <= t.slots.len(),
                    "{} in {}",
                    t.len(),
                    t.slots.len()
                );
            }
        }
        assert!(moves > 0);
        assert_eq!(
            t.slots.len(),
            SHRINK_ABOVE,
            "ten values left in {peak} slots"
        );
        for i in 99_990..100_000 {
            assert_eq!(t.get(addr(i)), Some(V(addr(i), i as u32)));
        }
        assert_eq!(t.len(), 10);
        assert!(!t.shrink_if_sparse(), "not below the smallest size");
    }
}
