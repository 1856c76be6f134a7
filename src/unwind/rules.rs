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
//! The cache is direct-mapped: one `AtomicU64` per slot holding the high bits
//! of the address (the tag) and the rule, so a slot is read and written in
//! one atomic access and a reader can never see a tag from one writer with
//! the rule of another. The slot index mixes the low and high address bits;
//! the tag and the index together give back the whole address, so a tag
//! match is an exact address match. Rules depend only on the code, which
//! does not change while it is mapped, so two threads filling the same slot
//! write the same value and races are harmless. When a library is unloaded
//! its addresses may be reused by another one: [`flush`] empties the cache
//! then, and bumps [`epoch`] so that captures in flight give up.
use std::sync::atomic::{AtomicU64, Ordering};

/// log2 of the number of slots: 32768 slots, 256 KiB of zeroed memory that
/// is only touched where return addresses land.
const INDEX_BITS: u32 = 15;
const SLOTS: usize = 1 << INDEX_BITS;
/// Addresses the cache can hold: the 47-bit user half of x86_64.
const ADDR_BITS: u32 = 47;

/// One frame's unwind rule, packed into 32 bits:
///
/// ```text
///  31            19 18             3  2   1 0
/// +----------------+----------------+---+-----+
/// | rbp slot / 8   | CFA offset / 8 | s | kind|
/// +----------------+----------------+---+-----+
/// kind 1: CFA = rsp + offset     kind 2: CFA = rbp + offset
/// kind 3: stop; s = 0 end of stack (return address undefined), s = 1 give up
/// rbp slot 0: rbp unchanged; j > 0: the caller's rbp is at CFA - 8j
/// ```
///
/// Kind 0 never occurs in a rule, so an all-zero cache slot reads as empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Rule(u32);

const KIND_RSP: u32 = 1;
const KIND_RBP: u32 = 2;
const KIND_STOP: u32 = 3;
const OFFSET_SHIFT: u32 = 3;
const OFFSET_BITS: u32 = 16;
const SLOT_SHIFT: u32 = OFFSET_SHIFT + OFFSET_BITS;
const SLOT_BITS: u32 = 32 - SLOT_SHIFT;

impl Rule {
    /// The outermost frame: its return address is undefined.
    pub(super) const END: Rule = Rule(KIND_STOP);
    /// A frame the fast walk does not handle.
    pub(super) const GIVE_UP: Rule = Rule(KIND_STOP | 4);

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
            Some(at) if at < 0 && at % 8 == 0 && -at / 8 < 1 << SLOT_BITS => -at / 8,
            Some(_) => return Rule::GIVE_UP,
        };
        let kind = if cfa_in_rbp { KIND_RBP } else { KIND_RSP };
        Rule(kind | ((cfa_offset as u32 / 8) << OFFSET_SHIFT) | ((slot as u32) << SLOT_SHIFT))
    }

    /// The CFA from this frame's `rsp` and `rbp`; `None` for a stop rule.
    #[inline(always)]
    pub(super) fn cfa(self, rsp: usize, rbp: usize) -> Option<usize> {
        let base = match self.0 & 3 {
            KIND_RSP => rsp,
            KIND_RBP => rbp,
            _ => return None,
        };
        let offset = ((self.0 >> OFFSET_SHIFT) & ((1 << OFFSET_BITS) - 1)) as usize * 8;
        base.checked_add(offset)
    }

    /// How far below the CFA the caller's rbp is saved (0: not saved).
    #[inline(always)]
    pub(super) fn rbp_below_cfa(self) -> usize {
        (self.0 >> SLOT_SHIFT) as usize * 8
    }
}

static CACHE: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static EPOCH: AtomicU64 = AtomicU64::new(0);

#[inline(always)]
fn slot_of(addr: usize) -> usize {
    (addr ^ (addr >> INDEX_BITS)) & (SLOTS - 1)
}

/// The cached rule for the code address `addr`, if any.
#[inline(always)]
pub(super) fn get(addr: usize) -> Option<Rule> {
    let tag = (addr >> INDEX_BITS) as u64;
    let entry = CACHE[slot_of(addr)].load(Ordering::Relaxed);
    let rule = entry as u32;
    // `addr >> ADDR_BITS != 0` gives a tag of 33 bits or more, which never
    // matches the 32 stored: such addresses are simply never cached.
    if entry >> 32 == tag && rule != 0 {
        Some(Rule(rule))
    } else {
        None
    }
}

/// Caches `rule` for `addr` (addresses outside the user half are skipped).
pub(super) fn put(addr: usize, rule: Rule) {
    if addr >> ADDR_BITS != 0 {
        return;
    }
    let tag = (addr >> INDEX_BITS) as u64;
    CACHE[slot_of(addr)].store(tag << 32 | rule.0 as u64, Ordering::Relaxed);
}

/// A counter bumped by every [`flush`]: a capture that saw it change may
/// have used a rule of an unloaded library.
#[inline(always)]
pub(super) fn epoch() -> u64 {
    EPOCH.load(Ordering::SeqCst)
}

/// Forgets every cached rule (a library was unloaded).
pub(super) fn flush() {
    EPOCH.fetch_add(1, Ordering::SeqCst);
    for slot in &CACHE {
        slot.store(0, Ordering::Relaxed);
    }
    EPOCH.fetch_add(1, Ordering::SeqCst);
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
    }

    #[test]
    fn cache_matches_exact_addresses_only() {
        let a = 0x5555_1234_5678usize;
        let b = a + (1 << INDEX_BITS) + 1; // different tag, maybe same slot
        let r = Rule::new(false, 24, None);
        put(a, r);
        assert_eq!(get(a), Some(r));
        assert_eq!(get(a ^ 1), None);
        assert_eq!(get(b), None);
        put(1 << 50, r);
        assert_eq!(get(1 << 50), None);
    }
}
