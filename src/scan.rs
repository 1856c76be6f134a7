//! One whole leak scan: gather roots, stop the world, snapshot the
//! registry, classify, let the world go, build the report.
//!
//! Between [`stw::stop`] and the drop of the stopped `World`, this code
//! must not allocate or take a lock another thread could hold: everything
//! it needs is gathered before (heap `Vec`s are fine then) and everything it
//! produces while the world is stopped goes to `mmap` memory.
use crate::guard::Reentry;
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
    pub(crate) no_stop: bool,
    pub(crate) out_of_memory: bool,
    /// Lost blocks left out because a scoped check reported them already.
    pub(crate) already_reported: usize,
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
                && reported.binary_search(&(b.rec.addr, b.rec.seq)).is_ok()
        });
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

pub(crate) fn classify_all(entry_sp: usize, caveats: &mut Caveats) -> Vec<Classified> {
    // --- before the stop: anything goes ---
    let maps = Maps::read();
    let images = roots::images();
    let tids = roots::thread_ids();
    let mut fixed: Vec<Region> = Vec::new();
    for r in &images.data {
        maps.readable_parts(r.start, r.end, |r| fixed.push(r));
    }
    if let Some(m) = maps.find(entry_sp) {
        maps.readable_parts(entry_sp, m.end, |r| fixed.push(r));
    }
    let tp = roots::thread_pointer();
    if tp != 0 {
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
    // Memory pools, as Valgrind treats them: a pool's chunks are not
    // blocks of their own; each object still taken from a pool is a block,
    // with the stack of its `alloc`. A forgotten pool object is then lost
    // at the line that took it, and free slots hold nothing.
    let chunks: Vec<usize> = {
        let mut c: Vec<usize> = crate::pool::pool_chunks().iter().map(|&(a, _)| a).collect();
        c.sort_unstable();
        c
    };
    let pool_objects: Vec<(usize, usize, u32)> = if chunks.is_empty() {
        Vec::new()
    } else {
        crate::pool::pool_outstanding()
            .iter()
            .filter(|o| o.block.0 != 0)
            .map(|o| (o.block.0, o.block.1, o.stack))
            .collect()
    };
    if std::env::var_os("MEMWARDEN_DEBUG_POOLS").is_some() {
        eprintln!("memwarden: debug: pool chunks {chunks:x?}, objects {pool_objects:x?}");
    }
    let mut rootv: MapVec<Region> = MapVec::new();
    let mut snap: MapVec<Record> = MapVec::new();
    let expect = registry::live_blocks() + pool_objects.len();
    if !snap.reserve(expect + expect / 4 + 1024)
        || !rootv.reserve(fixed.len() + tids.len() * (4 + images.tls.len()))
    {
        caveats.out_of_memory = true;
        return Vec::new();
    }
    for r in &fixed {
        rootv.push(*r);
    }

    // One scan at a time, from its stop to the end of its resume: a second
    // scan starting while the first one's threads are still leaving the
    // stop handler would find them deaf to its own signal.
    static SCANS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_scan = SCANS.lock().unwrap_or_else(|e| e.into_inner());

    // --- the world stops: no allocation, no foreign locks ---
    let shards = registry::lock_all();
    let world = stw::stop(&tids);
    let ok = registry::snapshot(&shards, &mut snap);
    drop(shards);
    for t in world.threads() {
        if let Some(m) = maps.find(t.sp) {
            maps.readable_parts(t.sp, m.end, |r| {
                rootv.push(r);
            });
        }
        if t.tp != 0 {
            for b in &images.tls {
                let start = t.tp.wrapping_add_signed(b.offset);
                maps.readable_parts(start, start + b.len, |r| {
                    rootv.push(r);
                });
            }
        }
    }
    // Threads that did not stop: their whole stack mapping, as it is. Erring
    // towards "reachable" is better than blaming memory they hold.
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    for &(tid, start, end) in &fallback {
        // SAFETY: signal 0 only checks that the thread still exists.
        let gone = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) } != 0;
        if !gone && !world.threads().any(|t| t.tid == tid) {
            maps.readable_parts(start, end, |r| {
                rootv.push(r);
            });
        }
    }
    if !chunks.is_empty() {
        swap_chunks_for_objects(&mut snap, &chunks, &pool_objects);
    }
    snap.as_mut_slice().sort_unstable_by_key(|r| r.addr);
    // Memory may be freed under the scan only by a thread that did not
    // stop: then read it in the way that cannot fault.
    let safe = world.missed > 0 || (world.unsupported && tids.len() > 1);
    let classified = if ok {
        reach::classify(snap.as_slice(), rootv.as_slice(), &maps, safe)
    } else {
        None
    };
    caveats.missed_threads = world.missed;
    caveats.no_stop = world.unsupported && tids.len() > 1;
    drop(world);
    // --- the world runs again ---

    let Some(c) = classified else {
        caveats.out_of_memory = true;
        return Vec::new();
    };
    snap.as_slice()
        .iter()
        .enumerate()
        .map(|(i, rec)| Classified {
            rec: *rec,
            kind: LeakKind::from_reach(c.kind(i)),
            indirect: c.indirect_bytes(i),
            referrer: c.referrer(i),
        })
        .collect()
}

/// Replaces the records of pool chunks (`chunks`: their start addresses,
/// sorted) by one record
/// per object taken from them, which inherits its chunk's sequence number
/// and thread. Allocation-free: runs while the world is stopped.
fn swap_chunks_for_objects(
    snap: &mut MapVec<Record>,
    chunks: &[usize],
    objects: &[(usize, usize, u32)],
) {
    let mut chunk_recs: MapVec<Record> = MapVec::new();
    let records = snap.as_mut_slice();
    let mut kept = 0;
    for i in 0..records.len() {
        let r = records[i];
        // A record holding a chunk's start is that chunk's allocation (the
        // chunk may start a little past the block, after a header).
        let next = chunks.partition_point(|&c| c < r.addr);
        if chunks
            .get(next)
            .is_some_and(|&c| c < r.addr + r.size().max(1))
        {
            let _ = chunk_recs.push(r);
        } else {
            records[kept] = r;
            kept += 1;
        }
    }
    snap.truncate(kept);
    chunk_recs.as_mut_slice().sort_unstable_by_key(|r| r.addr);
    let chunk_recs = chunk_recs.as_slice();
    for &(addr, len, stack) in objects {
        // The chunk holding the object: the last one starting at or before it.
        let Some(c) = chunk_recs
            .partition_point(|c| c.addr <= addr)
            .checked_sub(1)
            .map(|i| chunk_recs[i])
            .filter(|c| addr + len <= c.addr + c.size())
        else {
            continue;
        };
        let _ = snap.push(Record::new(addr, len, 8, c.seq, stack, c.thread));
    }
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
