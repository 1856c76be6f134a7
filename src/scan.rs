//! One whole leak scan: gather roots, stop the world, snapshot the
//! registry, classify, let the world go, build the report.
//!
//! Between [`stw::stop`] and the drop of the stopped `World`, this code
//! must not allocate or take a lock another thread could hold: everything
//! it needs is gathered before (heap `Vec`s are fine then) and everything it
//! produces while the world is stopped goes to `mmap` memory.
use crate::guard::{self, Reentry};
use crate::reach::{self, Region};
use crate::registry::{self, Record};
use crate::report::{self, Classified, Counters, LeakKind, Report};
use crate::roots::{self, Maps};
use crate::state;
use crate::stw;
use crate::suppress::Suppressions;
use crate::sys::MapVec;

/// Why a scan could not be complete, for the report's warnings.
#[derive(Debug, Default)]
pub(crate) struct Caveats {
    pub(crate) missed_threads: usize,
    /// Threads stopped past the ones a stop records (`stw::MAX_THREADS`).
    pub(crate) unscanned_threads: usize,
    pub(crate) no_stop: bool,
    pub(crate) out_of_memory: bool,
    /// Lost blocks left out because a scoped check reported them already.
    pub(crate) already_reported: usize,
}

/// With `MEMWARDEN_DEBUG_REACH` set, prints each block of a scan from
/// `entry_sp`: its kind, and the address of the word that reached it (a
/// root's or a block's; 0 for none). With `nm`, that names the static
/// that keeps a block alive. (The `already` reported blocks of the exit
/// scan are not listed.)
pub(crate) fn debug_reach(entry_sp: usize, blocks: &[Classified]) {
    if std::env::var_os("MEMWARDEN_DEBUG_REACH").is_none() {
        return;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    // Each mapping's range and line, by address (the file lists them so).
    let lines: Vec<(usize, usize, &str)> = maps
        .lines()
        .filter_map(|l| crate::sys::parse_maps_line(l).map(|m| (m.start, m.end, l)))
        .collect();
    // The line of the mapping that holds `addr`.
    let mapping = |addr: usize| {
        let i = lines.partition_point(|&(lo, _, _)| lo <= addr);
        match i.checked_sub(1).map(|i| lines[i]) {
            Some((_, hi, line)) if addr < hi => line,
            _ => "in no mapping",
        }
    };
    eprintln!("memwarden: debug: scan from {entry_sp:#x}");
    for b in blocks {
        eprintln!(
            "memwarden: debug: {:#x} ({} bytes, seq {}) {:?} via the word at {:#x} ({})",
            b.rec.addr,
            b.rec.size(),
            b.rec.seq,
            b.kind,
            b.referrer,
            if b.referrer == 0 {
                "none"
            } else {
                mapping(b.referrer)
            },
        );
    }
}

/// Scans the whole process and returns the report. `entry_sp` bounds the
/// caller's stack: frames below it (the scanner's own) are not roots.
///
/// Must run under a [`Reentry`] guard.
pub(crate) fn scan(entry_sp: usize, caveats: &mut Caveats) -> Report {
    debug_assert!(crate::guard::busy());
    let reported = crate::scope::reported();
    let (already, blocks): (Vec<Classified>, Vec<Classified>) =
        classify_all(entry_sp, caveats).into_iter().partition(|b| {
            b.kind != LeakKind::StillReachable
                && reported
                    .binary_search(&(b.rec.addr, b.rec.seq, b.rec.thread))
                    .is_ok()
        });
    debug_reach(entry_sp, &blocks);
    let mut report = build_report(&blocks);
    // Leaks a scoped check (`assert_no_leaks`, `check_leaks`, a checkpoint)
    // already reported are not counted again, nor do they fail the run a
    // second time: a test that plants a leak and expects the check to
    // catch it passes, and so does the process.
    let bytes: u64 = already.iter().map(|b| b.rec.size() as u64).sum();
    report.summary.suppressed.bytes += bytes;
    report.summary.suppressed.blocks += already.len() as u64;
    caveats.already_reported = already.len();
    report
}

/// The report of `blocks`, with the heap counters, the configured frame
/// budget and the suppressions from the environment.
pub(crate) fn build_report(blocks: &[Classified]) -> Report {
    let (total_allocs, total_bytes, _live, peak_bytes, _) = registry::counters();
    report::build(
        blocks,
        state::frames(),
        Counters {
            total_allocs,
            total_bytes,
            peak_bytes,
        },
        &Suppressions::from_env(),
    )
}

/// A scan that stops a thread inside the inner `realloc` of a block of more
/// than this many bytes stops the world again (see `classify_all`).
/// (glibc's per-thread cache takes chunks of up to 1,032 usable bytes: a
/// block of 1,000 bytes with its 32 bytes of red zones.)
const REALLOC_RETRY_ABOVE: usize = 1000;

pub(crate) fn classify_all(entry_sp: usize, caveats: &mut Caveats) -> Vec<Classified> {
    // --- before the stop: anything goes ---
    let maps = Maps::read();
    let images = roots::images();
    let tids = roots::thread_ids();
    let mut fixed: Vec<Region> = Vec::new();
    for r in &images.data {
        maps.readable_parts(r.start, r.end, |r| fixed.push(r));
    }
    // What glibc's loader keeps in memory of its own: roots only when C's
    // heap is tracked, for only then are the blocks it points to tracked
    // (glibc's own, not the program's). A `link_map` allocated with
    // `malloc` (a library opened later) is a tracked block itself, and
    // reached through the loader's lists like any other: not a root, whose
    // window would run on into the heap blocks after it.
    #[cfg(target_env = "gnu")]
    let loader_roots = crate::c_heap::in_use();
    #[cfg(not(target_env = "gnu"))]
    let loader_roots = false;
    #[cfg(target_env = "gnu")]
    if loader_roots {
        for r in &images.loader {
            if !registry::is_live(r.start) {
                fixed.extend(maps.within_mapping(r.start, r.end - r.start));
            }
        }
    }
    if let Some(m) = maps.find(entry_sp) {
        maps.readable_parts(entry_sp, m.end, |r| fixed.push(r));
    }
    let tp = roots::thread_pointer();
    if tp != 0 {
        if loader_roots {
            fixed.extend(maps.within_mapping(tp, roots::THREAD_DESCRIPTOR_BYTES));
        }
        for b in &images.tls {
            let start = tp.wrapping_add_signed(b.offset);
            maps.readable_parts(start, start + b.len, |r| fixed.push(r));
        }
    }
    // Where each thread's stack is, as far as /proc can tell while it runs
    // (a thread blocked in a system call shows its stack pointer): the
    // fallback for a thread that will not stop.
    let me = roots::gettid();
    let fallback: Vec<(i32, usize, usize)> = tids
        .iter()
        .filter(|&&t| t != me)
        .filter_map(|&t| {
            let sp = roots::blocked_sp(t)?;
            let m = maps.find(sp)?;
            Some((t, m.start, m.end))
        })
        .collect();
    let mut rootv: MapVec<Region> = MapVec::new();
    let mut snap: MapVec<Record> = MapVec::new();
    // The callee-saved registers of the threads stopped inside memwarden
    // code (and this one's), where they entered it: values their callers
    // keep there, which memwarden's frames below the entry may have saved
    // (see `guard::entry_regs_hidden`). Read as a root region of their own.
    let mut regv: MapVec<usize> = MapVec::new();
    let expect = registry::live_blocks();
    if !snap.reserve(expect + expect / 4 + 1024)
        || !rootv.reserve(fixed.len() + 1 + tids.len() * (7 + images.tls.len()))
        || !regv.reserve((tids.len() + 1) * roots::CALLEE_SAVED)
    {
        caveats.out_of_memory = true;
        return Vec::new();
    }
    for r in &fixed {
        rootv.push(*r);
    }
    for r in guard::entry_regs_hidden().map(guard::mask) {
        regv.push(r);
    }

    // One scan at a time, from its stop to the end of its resume: a second
    // scan starting while the first one's threads are still leaving the
    // stop handler would find them deaf to its own signal.
    static SCANS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_scan = SCANS.lock().unwrap_or_else(|e| e.into_inner());

    // Memory pools, as Valgrind treats them: a pool's chunks are not
    // blocks of their own; each object still taken from a pool is a block
    // (its value), with the stack of its `alloc`. See `PoolScan`. The
    // registry of pools stays locked from here to the end of the
    // classification, so that the chunks gathered stay allocated. (Taken
    // after `SCANS`: a scan waiting for another does not hold it.)
    let mut pools = PoolScan::gather();
    if std::env::var_os("MEMWARDEN_DEBUG_POOLS").is_some() {
        eprintln!("memwarden: debug: pools {:x?}", pools.views);
    }

    // --- the world stops: no allocation, no foreign locks ---
    // A thread stopped inside the inner allocator's `realloc` of a block
    // over 1,000 bytes has a block whose bytes may be changing or gone
    // (`guard::InFlightBytes::moving`; what they point to would look
    // lost): then the world goes again for a moment and stops anew, 1 to
    // 64 ms apart, for 150 ms at most from the first stop, and not when a
    // thread did not stop (each stop then waits 2 s for it). After that,
    // what was kept of the block's first words has to do. (A smaller
    // block's old chunk goes to glibc's per-thread cache, where nobody
    // else gets it, unless that cache's bin is full, and the kept words
    // cover what glibc writes into it.)
    let started = std::time::Instant::now();
    let mut pause_us: u32 = 1000;
    let (shards, world) = loop {
        let shards = registry::lock_all();
        let world = stw::stop(&tids);
        let moving = world
            .threads()
            .any(|t| t.moving && t.in_flight.1 > REALLOC_RETRY_ABOVE);
        if !moving
            || world.missed > 0
            || started.elapsed() + std::time::Duration::from_micros(u64::from(pause_us))
                > std::time::Duration::from_millis(150)
        {
            break (shards, world);
        }
        drop(world);
        drop(shards);
        // SAFETY: usleep has no preconditions.
        unsafe { libc::usleep(pause_us) };
        pause_us *= 2;
    };
    let ok = registry::snapshot(&shards, &mut snap);
    drop(shards);
    // The threads that stopped, sorted (mmap memory: no allocation here).
    let mut stopped_tids: MapVec<i32> = MapVec::new();
    for t in world.threads() {
        let _ = stopped_tids.push(t.tid);
        if let Some(m) = maps.find(t.sp) {
            maps.readable_parts(t.sp, m.end, |r| {
                rootv.push(r);
            });
        } else if let Some(now) = crate::sys::mapping_of(t.sp) {
            // A thread started after the maps were read (`stw::stop`
            // stops those too): its stack as the kernel has it now, read
            // without allocating. (Roots are read so that they cannot
            // fault, so a page of it that is not readable does no harm.)
            rootv.push(Region {
                start: t.sp,
                end: now.hi,
            });
            if t.tp != 0 && now.hi > t.tp {
                // Its static thread-local storage lies below its descriptor,
                // at the top of that mapping, which the maps read before
                // did not have either.
                for b in &images.tls {
                    let start = t.tp.wrapping_add_signed(b.offset);
                    if start >= now.lo & !1 && start + b.len <= now.hi {
                        rootv.push(Region {
                            start,
                            end: start + b.len,
                        });
                    }
                }
            }
        }
        for r in t.regs.into_iter().filter(|&r| r != 0) {
            regv.push(r);
        }
        // A block the thread is reallocating, which has no record now.
        let (start, len) = t.in_flight;
        if len > 0 {
            rootv.push(Region {
                start,
                end: start.saturating_add(len),
            });
        }
        if t.tp != 0 {
            if let Some(r) = maps
                .within_mapping(t.tp, roots::THREAD_DESCRIPTOR_BYTES)
                .filter(|_| loader_roots)
            {
                rootv.push(r);
            }
            for b in &images.tls {
                let start = t.tp.wrapping_add_signed(b.offset);
                maps.readable_parts(start, start + b.len, |r| {
                    rootv.push(r);
                });
            }
        }
    }
    let regs = regv.as_slice();
    if !regs.is_empty() {
        let start = regs.as_ptr() as usize;
        rootv.push(Region {
            start,
            end: start + std::mem::size_of_val(regs),
        });
    }
    // Threads that did not stop: their whole stack mapping, as it is. Erring
    // towards "reachable" is better than blaming memory they hold.
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    // (A sorted list, not a pass over the stopped threads for each of
    // these: with thousands of idle threads, all blocked in a system call,
    // that took seconds.)
    stopped_tids.as_mut_slice().sort_unstable();
    for &(tid, start, end) in &fallback {
        if stopped_tids.as_slice().binary_search(&tid).is_ok() {
            continue;
        }
        // SAFETY: signal 0 only checks that the thread still exists.
        let gone = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) } != 0;
        if !gone {
            maps.readable_parts(start, end, |r| {
                rootv.push(r);
            });
        }
    }
    // Each object taken from a pool now is a block: the chunks' slots are
    // read here, with the threads that take and give back objects stopped
    // (an object given back or taken since the gathering is seen as it is
    // now, and one being taken has its value read as a root).
    let pooled = pools.chunks.is_empty()
        || swap_chunks_for_objects(&mut snap, &pools.chunks, &mut pools.objects, &mut rootv);
    snap.as_mut_slice().sort_unstable_by_key(|r| r.addr);
    // Memory may be freed under the scan only by a thread that did not
    // stop: then read it in the way that cannot fault.
    let safe = world.missed > 0 || (world.unsupported && tids.len() > 1);
    let classified = if !ok || !pooled {
        None
    } else if pools.views.views.is_empty() {
        reach::classify(snap.as_slice(), rootv.as_slice(), &maps, safe, None)
    } else {
        pools.links(snap.as_slice()).and_then(|links| {
            let p = links.as_pools();
            reach::classify(snap.as_slice(), rootv.as_slice(), &maps, safe, Some(&p))
        })
    };
    caveats.missed_threads = world.missed;
    caveats.unscanned_threads = world.unscanned;
    caveats.no_stop = world.unsupported && tids.len() > 1;
    drop(world);
    // --- the world runs again ---
    // (And pools may free chunks again.)
    drop(pools);

    let Some(c) = classified else {
        caveats.out_of_memory = true;
        return Vec::new();
    };
    snap.as_slice()
        .iter()
        .enumerate()
        .filter(|&(i, _)| !c.folded(i))
        .map(|(i, rec)| Classified {
            rec: *rec,
            kind: LeakKind::from_reach(c.kind(i)),
            indirect: c.indirect_bytes(i),
            referrer: c.referrer(i),
        })
        .collect()
}

/// The registered pools, gathered before the world stops (this allocates),
/// in the forms the scan needs while it is stopped; the registry of pools
/// stays locked while this lives, so that no registered pool frees a chunk
/// (see [`crate::pool::pool_views`]).
///
/// The rules (Valgrind's for memory pools, plus what makes a forgotten
/// pool object lost at the line that took it):
/// * a chunk is not a block; each object taken from it is one: its value,
///   with the stack, sequence number and thread of its `alloc` (so that a
///   scoped check keeps an object taken after it started, on its threads,
///   whenever its chunk was allocated);
/// * a pointer to an object's slot header (what its box holds) is a
///   pointer to its start;
/// * the pool's own bookkeeping (its core, chunk list and free lists) does
///   not keep a taken object alive: only references from outside the pool
///   do (the chunk list points at the first slot of each chunk);
/// * a taken object keeps its pool's core alive (its box points there), so
///   the core of a dropped pool whose object was forgotten is lost with
///   the object, indirectly, not on its own.
///
/// Which objects are taken is read from the chunks' slots with the world
/// stopped ([`swap_chunks_for_objects`]), not when the views are gathered:
/// by the stop, any object may have been given back, or given back and
/// taken again, and objects taken meanwhile from slots free before are as
/// much the program's as the others.
struct PoolScan {
    views: crate::pool::PoolViews,
    /// Every chunk, with its pool's core address, by address.
    chunks: Vec<(crate::pool::ChunkView, usize)>,
    /// Every object taken (filled in with the world stopped), with its
    /// pool's core address, by address.
    objects: MapVec<(crate::pool::PoolObject, usize)>,
    /// Start addresses of the pools' bookkeeping blocks, sorted.
    internal: Vec<usize>,
}

/// [`reach::Pools`]' arrays, in `mmap` memory.
struct PoolLinks {
    owner: MapVec<u32>,
    internal: MapVec<bool>,
    headers: MapVec<(usize, u32)>,
}

impl PoolLinks {
    fn as_pools(&self) -> reach::Pools<'_> {
        reach::Pools {
            owner: self.owner.as_slice(),
            internal: self.internal.as_slice(),
            headers: self.headers.as_slice(),
        }
    }
}

impl PoolScan {
    fn gather() -> PoolScan {
        let views = crate::pool::pool_views();
        let mut p = PoolScan {
            chunks: Vec::new(),
            objects: MapVec::new(),
            internal: Vec::new(),
            views,
        };
        for v in &p.views.views {
            p.chunks.extend(v.chunks.iter().map(|&c| (c, v.core)));
            p.internal.extend_from_slice(&v.internal);
        }
        p.chunks.sort_unstable_by_key(|(c, _)| c.start);
        p.internal.sort_unstable();
        p
    }

    /// The pool links of `blocks` (sorted by address). Allocation-free:
    /// runs while the world is stopped. `None` if memory could not be
    /// mapped.
    fn links(&self, blocks: &[Record]) -> Option<PoolLinks> {
        let n = blocks.len();
        let mut l = PoolLinks {
            owner: MapVec::new(),
            internal: MapVec::new(),
            headers: MapVec::new(),
        };
        let objects = self.objects.as_slice();
        if !l.owner.fill(reach::NOT_POOLED, n)
            || !l.internal.fill(false, n)
            || !l.headers.reserve(objects.len())
        {
            return None;
        }
        let index = |addr: usize| {
            let i = blocks.partition_point(|b| b.addr < addr);
            (i < n && blocks[i].addr == addr).then_some(i)
        };
        for &a in &self.internal {
            if let Some(i) = index(a) {
                l.internal.as_mut_slice()[i] = true;
            }
        }
        for &(o, core) in objects {
            let Some(i) = index(o.value) else { continue };
            // Only the object's own record (a swapped-in one), not another
            // block that happens to start there.
            if blocks[i].size() != o.bytes || l.owner.as_slice()[i] != reach::NOT_POOLED {
                continue;
            }
            l.owner.as_mut_slice()[i] = index(core).map_or(reach::NO_CORE, |c| c as u32);
            let _ = l.headers.push((o.slot, i as u32));
        }
        // Sorted by value address, so by header address too: slots do not
        // overlap, and a header comes before its value.
        Some(l)
    }
}

/// Replaces the records of pool chunks (`chunks`: by address) by one
/// record per object taken from them now, read from their slots
/// ([`ChunkView::walk`](crate::pool::ChunkView::walk)): its value, with
/// the stack, sequence number and thread its slot recorded when it was
/// taken (its chunk's if none was recorded). Each object also goes into
/// `objects` (by address), and the value of an object being taken (by a
/// thread stopped half-way through `alloc`) into `roots`. False if memory
/// ran out.
///
/// Runs while the world is stopped, allocation-free, with the registry of
/// pools locked since the chunks were gathered: every chunk gathered is
/// still allocated (no registered pool frees one meanwhile), so its slots
/// are read directly. (A chunk allocated while tracking was paused has no
/// record, and its objects are not blocks.)
///
/// An object being taken is no block: the thread taking it has stored the
/// value but not finished recording the take, and may hold the slot's
/// address only in a register that memwarden's frames saved below the
/// point its stack is read from (it was stopped in the stack capture).
/// Such an object, which its slot's record (an earlier take's) dated, was
/// reported lost at its line now and then beside threads taking and
/// giving back objects. Its value is read as a root instead: what the
/// object was given stays reachable.
fn swap_chunks_for_objects(
    snap: &mut MapVec<Record>,
    chunks: &[(crate::pool::ChunkView, usize)],
    objects: &mut MapVec<(crate::pool::PoolObject, usize)>,
    roots: &mut MapVec<Region>,
) -> bool {
    use crate::pool::{ObjectNow, PoolObject};
    let mut ok = true;
    let mut chunk_recs: MapVec<Record> = MapVec::new();
    let records = snap.as_mut_slice();
    let mut kept = 0;
    for i in 0..records.len() {
        let r = records[i];
        // A record holding a chunk's start is that chunk's allocation (the
        // chunk may start a little past the block, after a header).
        let next = chunks.partition_point(|(c, _)| c.start < r.addr);
        if chunks
            .get(next)
            .is_some_and(|(c, _)| c.start < r.addr + r.size().max(1))
        {
            ok &= chunk_recs.push(r);
        } else {
            records[kept] = r;
            kept += 1;
        }
    }
    snap.truncate(kept);
    chunk_recs.as_mut_slice().sort_unstable_by_key(|r| r.addr);
    let chunk_recs = chunk_recs.as_slice();
    for &(c, core) in chunks {
        // The chunk's allocation: the last record starting at or before it.
        let Some(rec) = chunk_recs
            .partition_point(|r| r.addr <= c.start)
            .checked_sub(1)
            .map(|i| chunk_recs[i])
            .filter(|r| c.start + c.bytes() <= r.addr + r.size())
        else {
            continue;
        };
        let bytes = c.value_bytes;
        // The chunk stays allocated (see above): read it directly.
        let read = |a: usize| reach::read_word(a, false).unwrap_or(0);
        c.walk(read, |slot, value, now| match now {
            ObjectNow::BeingTaken => {
                ok &= roots.push(Region {
                    start: value,
                    end: value + bytes,
                });
            }
            ObjectNow::Taken { taken, stack } => {
                let (seq, thread) = taken.unwrap_or((rec.seq, rec.thread));
                ok &= snap.push(Record::new(value, bytes, 8, seq, stack, thread));
                let o = PoolObject {
                    slot,
                    value,
                    bytes,
                    stack,
                    taken,
                };
                ok &= objects.push((o, core));
            }
        });
    }
    ok
}

/// Warnings about an incomplete scan, as report lines.
pub(crate) fn caveat_lines(c: &Caveats) -> Vec<String> {
    let mut out = Vec::new();
    if c.missed_threads > 0 {
        out.push(format!(
            "memwarden: warning: {} thread(s) did not stop for the leak scan (they block SIGPWR); the stacks of those blocked in a system call were scanned whole, and memory held only by the others may be reported as lost",
            c.missed_threads
        ));
    }
    if c.unscanned_threads > 0 {
        out.push(format!(
            "memwarden: warning: {} thread(s) past the first {} were stopped for the leak scan but not scanned; the stacks of those known before the scan were scanned whole, and memory held only by the others may be reported as lost",
            c.unscanned_threads,
            crate::stw::MAX_THREADS
        ));
    }
    if c.no_stop {
        out.push("memwarden: warning: the program handles SIGPWR itself, so other threads were not stopped for the leak scan; the stacks of those blocked in a system call were scanned whole, and memory held only by the others may be reported as lost".to_owned());
    }
    if c.already_reported > 0 {
        out.push(format!(
            "memwarden: {} lost block(s) already reported by assert_no_leaks, check_leaks or a checkpoint are counted as suppressed",
            c.already_reported
        ));
    }
    if c.out_of_memory {
        out.push(
            "memwarden: warning: out of memory during the leak scan; no leak report".to_owned(),
        );
    }
    out
}

/// Runs `f` under a re-entrancy guard (or not at all if this thread is
/// already inside memwarden).
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> Option<R> {
    let _g = Reentry::enter()?;
    Some(f())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_incomplete_scan_has_its_warning() {
        assert!(caveat_lines(&Caveats::default()).is_empty());
        let lines = caveat_lines(&Caveats {
            missed_threads: 2,
            unscanned_threads: 3,
            ..Caveats::default()
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("2 thread(s) did not stop"));
        assert!(lines[1].contains(&format!(
            "3 thread(s) past the first {} were stopped for the leak scan but not scanned",
            crate::stw::MAX_THREADS
        )));
        assert!(lines.iter().all(|l| l.starts_with("memwarden: warning: ")));
    }
}
