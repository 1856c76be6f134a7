//! Call stacks: capture on the allocation path, a table that stores each
//! distinct stack once, and lookup at report time.
//!
//! Capture keeps raw return addresses only; symbolization (function, file,
//! line, inlined frames) happens when a report is made, in `report::symbols`.
//! Memwarden's own frames are dropped right away by comparing each frame's
//! stack pointer with the one `Warden`'s entry point had. [`here`] tries `unwind::here_fast` (a caching
//! `.eh_frame` unwinder behind a per-thread cache of recent walks, which
//! also remembers each walk's stack id) first and falls back to libgcc's
//! `_Unwind_Backtrace` (through the `backtrace` crate) whenever that gives
//! up.
use crate::sync::SpinLock;
use crate::sys::SysVec;

/// Identifies a distinct call stack. 0 means "no stack".
pub(crate) type StackId = u32;

/// Frames captured beyond the user's budget, to make room for the
/// allocator-internal frames (`__rust_alloc`, `RawVec`, ...) that the
/// report trims off the top.
pub(crate) const INTERNAL_FRAMES: usize = 8;
/// Largest capture buffer.
pub(crate) const MAX_CAPTURE: usize = crate::env::MAX_FRAMES as usize + INTERNAL_FRAMES;

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
const INDEX_BITS: u32 = 32 - SHARD_BITS;

/// Captures up to `max` return addresses of the calling thread's stack,
/// skipping every frame whose stack pointer is below `entry_sp` (the
/// stack pointer of memwarden's entry point, so those are memwarden's own
/// frames). The entry frame itself is kept: when the allocator is inlined
/// into the program's function, that frame is the program's.
///
/// Never allocates: the unwinder (`_Unwind_Backtrace`) walks the stack in
/// place. The allocation path goes through [`here`] instead (the same walk
/// behind a per-thread cache); this is what the tests compare with.
#[cfg(test)]
#[inline(never)]
pub(crate) fn capture(out: &mut [usize; MAX_CAPTURE], max: usize, entry_sp: usize) -> usize {
    let max = max.min(MAX_CAPTURE);
    if max == 0 {
        return 0;
    }
    // The caching CFI unwinder: the same addresses as libgcc's, ~25 times
    // faster once warm. It gives up (None) on anything unusual, and then
    // libgcc's unwinder below walks the stack instead.
    if let Some(n) = crate::unwind::capture_fast(out, max, entry_sp) {
        return n;
    }
    capture_slow(out, max, entry_sp)
}

/// libgcc's `_Unwind_Backtrace` (through the `backtrace` crate), with the
/// same skipping rule as [`here`]: the fallback of the fast unwinder.
#[inline(never)]
pub(crate) fn capture_slow(out: &mut [usize], max: usize, entry_sp: usize) -> usize {
    let max = max.min(out.len());
    if max == 0 {
        return 0;
    }
    let mut n = 0;
    // SAFETY: trace_unsynchronized is only unsafe because it does not take
    // backtrace's global lock; the libunwind backend on Linux is thread
    // safe, and the callback neither allocates nor panics.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            // For the libunwind backend, `sp()` is the frame's own stack
            // pointer (the canonical frame address of its callee).
            let sp = frame.sp() as usize;
            if sp != 0 && sp < entry_sp {
                return true; // a memwarden frame
            }
            let ip = frame.ip() as usize;
            if ip == 0 {
                return false;
            }
            out[n] = ip;
            n += 1;
            n < max
        });
    }
    n
}

/// Captures and stores the calling thread's stack; frames below
/// `entry_sp` (memwarden's own) are left out.
#[inline(always)]
pub(crate) fn here(entry_sp: usize) -> StackId {
    let max = (crate::state::frames() + INTERNAL_FRAMES).min(MAX_CAPTURE);
    if max == 0 {
        return 0;
    }
    // Unoptimised, the fast unwinder's frame alone is 7 KiB: a thread with
    // one of glibc's smallest stacks (16 KiB) records its blocks without
    // a stack rather than overflow it. (Optimised, it fits.)
    if cfg!(debug_assertions) && !crate::unwind::room_for(DEBUG_CAPTURE_ROOM) {
        return 0;
    }
    // The fast unwinder through its per-thread cache of recent walks: a
    // repeated stack costs a read per frame and no hashing.
    if let Some(id) = crate::unwind::here_fast(max, entry_sp, intern) {
        return id;
    }
    here_slow(max, entry_sp)
}

/// Stack a capture needs in a debug build (see [`here`]).
const DEBUG_CAPTURE_ROOM: usize = 16 << 10;

/// libgcc's unwinder, where the fast one gave up.
#[cold]
#[inline(never)]
fn here_slow(max: usize, entry_sp: usize) -> StackId {
    if !crate::unwind::room_for_cold_path() {
        return 0;
    }
    let mut frames = [0usize; MAX_CAPTURE];
    let n = capture_slow(&mut frames, max, entry_sp);
    intern(&frames[..n])
}

struct Entry {
    hash: u64,
    start: u32,
    len: u32,
}

// Entry is plain data.
impl Clone for Entry {
    fn clone(&self) -> Self {
        *self
    }
}
impl Copy for Entry {}

struct Shard {
    /// Open-addressing index into `entries` (value = entry index + 1).
    index: SysVec<u32>,
    entries: SysVec<Entry>,
    frames: SysVec<usize>,
}

impl Shard {
    const fn new() -> Self {
        Shard {
            index: SysVec::new(),
            entries: SysVec::new(),
            frames: SysVec::new(),
        }
    }

    fn frames_of(&self, e: Entry) -> &[usize] {
        &self.frames.as_slice()[e.start as usize..(e.start + e.len) as usize]
    }

    fn find(&self, hash: u64, frames: &[usize]) -> Result<u32, usize> {
        let slots = self.index.as_slice();
        let mask = slots.len() - 1;
        let mut i = (hash as usize) & mask;
        loop {
            let v = slots[i];
            if v == 0 {
                return Err(i);
            }
            let e = self.entries.as_slice()[(v - 1) as usize];
            if e.hash == hash && self.frames_of(e) == frames {
                return Ok(v);
            }
            i = (i + 1) & mask;
        }
    }

    fn grow_index(&mut self) -> bool {
        let new_len = (self.index.len() * 2).max(64);
        let mut index = SysVec::new();
        if !index.fill(0u32, new_len) {
            return false;
        }
        let mask = new_len - 1;
        for (k, e) in self.entries.as_slice().iter().enumerate() {
            let mut i = (e.hash as usize) & mask;
            while index.as_slice()[i] != 0 {
                i = (i + 1) & mask;
            }
            index.as_mut_slice()[i] = k as u32 + 1;
        }
        self.index = index;
        true
    }

    fn intern(&mut self, hash: u64, frames: &[usize]) -> Option<u32> {
        if (self.entries.len() + 1) * 2 > self.index.len() && !self.grow_index() {
            return None;
        }
        match self.find(hash, frames) {
            Ok(v) => Some(v),
            Err(slot) => {
                let v = self.entries.len() as u32 + 1;
                if v >= 1 << INDEX_BITS || self.frames.len() + frames.len() > u32::MAX as usize {
                    return None;
                }
                if !self.frames.reserve(frames.len()) || !self.entries.reserve(1) {
                    return None;
                }
                let start = self.frames.len() as u32;
                for &f in frames {
                    self.frames.push(f);
                }
                self.entries.push(Entry {
                    hash,
                    start,
                    len: frames.len() as u32,
                });
                self.index.as_mut_slice()[slot] = v;
                Some(v)
            }
        }
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const SHARD_INIT: SpinLock<Shard> = SpinLock::new(Shard::new());
static TABLE: [SpinLock<Shard>; SHARDS] = [SHARD_INIT; SHARDS];

fn hash(frames: &[usize]) -> u64 {
    // FxHash-style mixing of each address; good enough to spread return
    // addresses and cheap on the hot path.
    let mut h: u64 = 0x243f_6a88_85a3_08d3 ^ frames.len() as u64;
    for &f in frames {
        h = (h.rotate_left(5) ^ f as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    h ^ (h >> 29)
}

/// Stores `frames` once and returns its id (0 if memory ran out or the
/// stack is empty).
pub(crate) fn intern(frames: &[usize]) -> StackId {
    if frames.is_empty() {
        return 0;
    }
    let h = hash(frames);
    let shard = (h >> (64 - SHARD_BITS)) as usize;
    let local = TABLE[shard].lock().intern(h, frames);
    match local {
        Some(v) => ((shard as u32) << INDEX_BITS) | v,
        None => 0,
    }
}

/// Locks every shard of the stack table without guards (before `fork`).
pub(crate) fn lock_all_raw() {
    for s in &TABLE {
        s.raw_lock();
    }
}

/// Unlocks what [`lock_all_raw`] locked.
///
/// # Safety
/// Only after [`lock_all_raw`], from the thread that called it.
pub(crate) unsafe fn unlock_all_raw() {
    for s in TABLE.iter().rev() {
        // SAFETY: per the contract, this thread holds every shard lock.
        unsafe { s.raw_unlock() };
    }
}

/// The frames of stack `id` (empty for 0 or an unknown id).
pub(crate) fn frames(id: StackId) -> Vec<usize> {
    if id == 0 {
        return Vec::new();
    }
    let shard = (id >> INDEX_BITS) as usize;
    let v = (id & ((1 << INDEX_BITS) - 1)) as usize;
    let guard = TABLE[shard].lock();
    let Some(&e) = guard.entries.as_slice().get(v.wrapping_sub(1)) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(e.len as usize);
    // The copy must not allocate under the lock: `out` has room already.
    out.extend_from_slice(guard.frames_of(e));
    out
}

/// Number of distinct stacks stored.
#[cfg(test)]
fn distinct() -> usize {
    TABLE.iter().map(|s| s.lock().entries.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_frames_same_id_and_round_trip() {
        let a = [0x1000usize, 0x2000, 0x3000];
        let b = [0x1000usize, 0x2000, 0x3001];
        let ia = intern(&a);
        let ib = intern(&b);
        assert_ne!(ia, 0);
        assert_ne!(ia, ib);
        assert_eq!(intern(&a), ia);
        assert_eq!(frames(ia), a);
        assert_eq!(frames(ib), b);
        assert_eq!(intern(&[]), 0);
        assert!(frames(0).is_empty());
    }

    #[test]
    fn many_distinct_stacks_survive_growth() {
        let ids: Vec<_> = (0..5000usize)
            .map(|i| intern(&[i * 16 + 8, 77, i]))
            .collect();
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(frames(id), [i * 16 + 8, 77, i]);
        }
        assert!(distinct() >= 5000);
    }

    #[test]
    fn capture_sees_this_function_and_skips_deeper_frames() {
        let mut buf = [0usize; MAX_CAPTURE];
        let n = capture(&mut buf, MAX_CAPTURE, 0);
        assert!(n > 2, "expected a real stack, got {n} frames");
        let sp = crate::roots::stack_pointer();
        let m = capture(&mut buf, MAX_CAPTURE, sp);
        assert!(m < n, "frames below {sp:#x} must be skipped");
    }
}
