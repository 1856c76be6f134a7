//! Unwind rules and the process-wide cache that maps a code address to one.
//!
//! A [`Rule`] says how to get from one frame to its caller on x86_64, in the
//! only shapes the fast walk handles: the canonical frame address (CFA) is
//! `rsp + k` or `rbp + k`, the return address is saved at `CFA - 8`, and
//! `rbp` is either unchanged or saved at `CFA - j`. Everything else
//! (expressions, other base registers, signal frames) is cached as
//! [`Rule::GIVE_UP`] so that the next capture through that address falls back
//! at once instead of parsing the CFI again.
//!
//! The cache is a static array of `AtomicU64` slots, each holding the high
//! bits of an address (the tag) and its rule, so a slot is read and written
//! in one atomic access and a reader can never pair the tag of one writer
//! with the rule of another. An address lives in its home slot (its low
//! bits) or in the home slot's neighbour, which shares its cache line; a
//! bit of the rule says which, so tag, slot and that bit together give back
//! the whole address and a match is an exact address match. Rules depend
//! only on the code, which does not change while it is mapped, so threads
//! filling slots at once write correct values whatever the interleaving.
//! When a library is unloaded its addresses may be reused by another one:
//! [`flush`] empties the cache then, and moves [`epoch`] so that captures
//! that overlap it give up.
use std::sync::atomic::{AtomicU64, Ordering};

/// log2 of the number of slots: 32768 slots, 256 KiB of zeroed memory that
/// is only touched where return addresses land.
const INDEX_BITS: u32 = 15;
const SLOTS: usize = 1 << INDEX_BITS;
/// Addresses the cache can hold: the 47-bit user half of x86_64, above the
/// first slot-table's worth (so that no tag is 0 and a zero slot is empty).
const ADDR_BITS: u32 = 47;

/// One frame's unwind rule, packed into 32 bits:
///
/// ```text
///  31            19 18             3   2    1 0
/// +----------------+----------------+-----+-----+
/// | rbp slot / 8   | CFA offset / 8 | way | kind|
/// +----------------+----------------+-----+-----+
/// kind 1: CFA = rsp + offset     kind 2: CFA = rbp + offset
/// kind 3: stop; offset 0 end of stack (return address undefined), 8 give up
/// rbp slot 0: rbp unchanged; j > 0: the caller's rbp is at CFA - 8j
/// way: only in the cache, 1 when the rule sits in its neighbour slot
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Rule(u32);

const KIND_RSP: u32 = 1;
const KIND_RBP: u32 = 2;
const KIND_STOP: u32 = 3;
const WAY: u32 = 4;
const OFFSET_SHIFT: u32 = 3;
const OFFSET_BITS: u32 = 16;
const OFFSET_MASK: u32 = ((1 << OFFSET_BITS) - 1) << OFFSET_SHIFT;
const SLOT_SHIFT: u32 = OFFSET_SHIFT + OFFSET_BITS;
const SLOT_BITS: u32 = 32 - SLOT_SHIFT;

impl Rule {
    /// The outermost frame: its return address is undefined.
    pub(super) const END: Rule = Rule(KIND_STOP);
    /// A frame the fast walk does not handle.
    pub(super) const GIVE_UP: Rule = Rule(KIND_STOP | 1 << OFFSET_SHIFT);

    /// The rule `CFA = (rbp if cfa_in_rbp else rsp) + cfa_offset`, with the
    /// caller's rbp at `CFA + rbp_at` (or unchanged for `None`), and the
    /// return address at `CFA - 8`. [`Rule::GIVE_UP`] if it does not fit.
    pub(super) fn new(cfa_in_rbp: bool, cfa_offset: i64, rbp_at: Option<i64>) -> Rule {
        // The return address sits at CFA - 8, inside the frame: a CFA
        // less than 8 above its base register cannot be right.
        if cfa_offset < 8 || cfa_offset % 8 != 0 || cfa_offset / 8 >= 1 << OFFSET_BITS {
            return Rule::GIVE_UP;
        }
        let slot = match rbp_at {
            None => 0,
            // Saved registers live below the CFA, in the frame itself.
            Some(at) if at < 0 && at % 8 == 0 && at > -(8 << SLOT_BITS) => -at / 8,
            Some(_) => return Rule::GIVE_UP,
        };
        let kind = if cfa_in_rbp { KIND_RBP } else { KIND_RSP };
        Rule(kind | (cfa_offset as u32) | ((slot as u32) << SLOT_SHIFT))
    }

    /// The CFA from this frame's `rsp` and `rbp`; `None` for a stop rule.
    #[inline(always)]
    pub(super) fn cfa(self, rsp: usize, rbp: usize) -> Option<usize> {
        let base = match self.0 & 3 {
            KIND_RSP => rsp,
            KIND_RBP => rbp,
            _ => return None,
        };
        base.checked_add((self.0 & OFFSET_MASK) as usize)
    }

    /// True if the CFA is computed from rbp.
    #[inline(always)]
    pub(super) fn uses_rbp(self) -> bool {
        self.0 & 3 == KIND_RBP
    }

    /// How far below the CFA the caller's rbp is saved (0: not saved).
    #[inline(always)]
    pub(super) fn rbp_below_cfa(self) -> usize {
        (self.0 >> SLOT_SHIFT) as usize * 8
    }
}

static CACHE: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// The cached rule for code address `addr`, if any.
///
/// The home slot is on the walk's critical path: its index is the plain
/// low bits, one `and` after the return address is loaded.
#[inline(always)]
pub(super) fn get(addr: usize) -> Option<Rule> {
    // An address of 2^47 or more has a tag of 33 bits or more, which never
    // matches the 32 stored: such addresses are simply never cached.
    let tag = (addr >> INDEX_BITS) as u64;
    let home = addr & (SLOTS - 1);
    let entry = CACHE[home].load(Ordering::Relaxed);
    if entry >> 32 == tag && entry as u32 & WAY == 0 && entry != 0 {
        return Some(Rule(entry as u32));
    }
    get_neighbour(home ^ 1, tag)
}

#[inline(never)]
fn get_neighbour(slot: usize, tag: u64) -> Option<Rule> {
    let entry = CACHE[slot].load(Ordering::Relaxed);
    if entry >> 32 == tag && entry as u32 & WAY != 0 {
        return Some(Rule(entry as u32 & !WAY));
    }
    None
}

/// Caches `rule` for `addr` (addresses outside the cached range are not).
pub(super) fn put(addr: usize, rule: Rule) {
    if addr >> ADDR_BITS != 0 || addr >> INDEX_BITS == 0 {
        return;
    }
    let tag = (addr >> INDEX_BITS) as u64;
    let home = addr & (SLOTS - 1);
    // The home slot if it is free, else the neighbour if that is free,
    // else evict one of the two, picked by another address bit.
    let way = if CACHE[home].load(Ordering::Relaxed) == 0 {
        0
    } else if CACHE[home ^ 1].load(Ordering::Relaxed) == 0 {
        1
    } else {
        (addr >> 4) & 1
    };
    let rule = rule.0 | if way == 1 { WAY } else { 0 };
    CACHE[home ^ way].store(tag << 32 | rule as u64, Ordering::Relaxed);
}

/// Flushes started (low 32 bits) and flushes under way (high 32 bits).
const FLUSH_UNDER_WAY: u64 = 1 << 32;

/// The flush count, or `None` while a flush is under way. A capture that
/// starts with `Some(e)` and still reads `Some(e)` at its end used no rule
/// that a flush meant to remove; otherwise it may have.
#[inline(always)]
pub(super) fn epoch() -> Option<u64> {
    let e = EPOCH.load(Ordering::SeqCst);
    (e < FLUSH_UNDER_WAY).then_some(e)
}

/// Forgets every cached rule (a library was unloaded).
pub(super) fn flush() {
    EPOCH.fetch_add(FLUSH_UNDER_WAY + 1, Ordering::SeqCst);
    for slot in &CACHE {
        slot.store(0, Ordering::Relaxed);
    }
    EPOCH.fetch_sub(FLUSH_UNDER_WAY, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_and_reject_what_does_not_fit() {
        let r = Rule::new(false, 48, None);
        assert_eq!(r.cfa(1000, 7), Some(1048));
        assert_eq!(r.rbp_below_cfa(), 0);
        let r = Rule::new(true, 16, Some(-16));
        assert_eq!(r.cfa(1000, 2000), Some(2016));
        assert_eq!(r.rbp_below_cfa(), 16);
        assert_eq!(Rule::END.cfa(1, 2), None);
        assert_eq!(Rule::GIVE_UP.cfa(1, 2), None);
        assert_ne!(Rule::END, Rule::GIVE_UP);
        assert_eq!(Rule::new(false, 12, None), Rule::GIVE_UP);
        assert_eq!(Rule::new(false, 0, None), Rule::GIVE_UP);
        assert_eq!(Rule::new(false, 1 << 20, None), Rule::GIVE_UP);
        assert_eq!(Rule::new(false, 16, Some(8)), Rule::GIVE_UP);
        assert_eq!(Rule::new(false, 16, Some(-12)), Rule::GIVE_UP);
        assert_eq!(Rule::new(false, 16, Some(i64::MIN)), Rule::GIVE_UP);
        assert_eq!(Rule::new(true, i64::MIN, None), Rule::GIVE_UP);
        assert_eq!(Rule::new(true, i64::MAX - 7, None), Rule::GIVE_UP);
        let far = Rule::new(false, 16, Some(-8 * ((1 << SLOT_BITS) - 1)));
        assert_eq!(far.rbp_below_cfa(), 8 * ((1 << SLOT_BITS) - 1));
    }

    #[test]
    fn cache_matches_exact_addresses_only() {
        let a = 0x5555_1234_5678usize;
        assert_eq!(get(a ^ 1), None);
        let b = a + (1 << INDEX_BITS); // same slot, different tag
        let c = a + 2 * (1 << INDEX_BITS);
        let r = Rule::new(false, 24, None);
        let q = Rule::new(true, 16, None);
        put(a, r);
        assert_eq!(get(a), Some(r));
        assert_eq!(get(b), None);
        // Two colliding addresses both stay; a third evicts one of them.
        put(b, q);
        assert_eq!((get(a), get(b)), (Some(r), Some(q)));
        put(c, r);
        assert_eq!(get(c), Some(r));
        assert!(get(a).is_none() ^ get(b).is_none());
        // The neighbour of a's home slot is a^1's home: a^1 must not see
        // the rule of a, nor a that of a^1.
        put(a ^ 1, Rule::END);
        assert_eq!(get(a ^ 1), Some(Rule::END));
        assert_ne!(get(a), Some(Rule::END));
        assert_ne!(get(c), Some(Rule::END));
        put(1 << 50, r);
        assert_eq!(get(1 << 50), None);
    }
}
