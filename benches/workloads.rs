//! The workloads of issue 6, each run under one allocator chosen per
//! process, so that memwarden can be compared side by side with `System`,
//! mimalloc and dhat-rs. Results and how to read them: docs/performance.md.
//!
//! ```sh
//! scripts/bench.sh                                         # every variant, one table
//! MEMWARDEN_BENCH_ALLOC=warden cargo bench --bench workloads
//! MEMWARDEN_BENCH_ALLOC=warden DEBUG_MEMORY=1 DEBUG_MEMORY_EXITCODE=0 \
//!     cargo bench --bench workloads -- small_pairs          # one workload
//! ```
//!
//! # The allocator under test
//!
//! This binary registers [`Dispatch`] as its `#[global_allocator]`. On the
//! first allocation it reads `MEMWARDEN_BENCH_ALLOC` (`system`, `mimalloc`,
//! `dhat` or `warden`; unset means `system`) with `libc::getenv`, which does
//! not allocate, and keeps the choice in an atomic. Every call then does
//! the same two relaxed loads and a perfectly predicted branch before it
//! forwards to the chosen allocator, whichever that is, so the ratios
//! between allocators are not skewed by the dispatch. For `dhat`, the heap
//! profiler (`dhat::Profiler`) is started at the top of `main` and kept
//! alive to the end; its JSON goes to the target directory's tmp folder.
//!
//! Benchmark ids are `WORKLOAD/ALLOCATOR`: `system`, `mimalloc`, `dhat`,
//! `system-nofeature` (System, in the binary built without the `tracking`
//! feature), `warden-nofeature` (the `tracking` feature compiled out),
//! `warden-off` (compiled in, `DEBUG_MEMORY` unset) and `warden-on`
//! (`DEBUG_MEMORY=1`), followed by `-TAG` when `MEMWARDEN_BENCH_TAG=TAG`
//! is set (`scripts/bench.sh` runs `warden-on-leaks` with
//! `DEBUG_MEMORY=leaks`).
//!
//! # The workloads
//!
//! Throughput is in allocations (`alloc`, `alloc_zeroed` and `realloc`
//! calls of the program; frees are not counted but are done too), so
//! criterion's "elem/s" reads as allocations per second.
//!
//! - `small_pairs`: `Box<[u64; 4]>` allocated and dropped at once, one thread.
//! - `producer_consumer`: one thread allocates `Box<[u64; 4]>`, sends them in
//!   batches of 1,024 over a bounded channel (recycled `Vec`s, so the
//!   channel allocates nothing; batches this big keep thread wake-ups out of
//!   the figures), and a second thread drops them. The two threads are
//!   pinned to two cores (see [`Pinned`]), as are larson's.
//! - `larson`: two threads, each over 5,000 slots (10,000 live blocks in
//!   all) of random sizes 8..=1024; each step frees a random slot and
//!   allocates a new block there. The two slot sets change threads between
//!   samples, so most frees are of blocks another thread allocated.
//! - `realloc_growth`: a `Vec<u64>` and a `String`, each grown by pushing to
//!   64 KiB (doubling `realloc`s).
//! - `maps`: build and drop a `BTreeMap<u64, u64>` and a `HashMap<u64, u64>`
//!   of 10,000 random keys each.
//! - `string_maps`: the same with owned keys and values, as a program's
//!   maps of names often are: a `BTreeMap<String, String>` and a
//!   `HashMap<String, String>` of 10,000 entries each (a random key in hex
//!   and its index in decimal, made with `format!` and `to_string`), built
//!   and dropped. Here allocation weighs in each insert, as it does in the
//!   map building whose dhat-rs figure issue 6 quotes (1/15 of System).
#![allow(missing_docs)] // criterion's macros make undocumented items

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};

// === the dispatching allocator ===

const UNSET: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;
const DHAT: u8 = 3;
const WARDEN: u8 = 4;

/// The allocator under test, read from the environment on first use.
static CHOICE: AtomicU8 = AtomicU8::new(UNSET);

/// memwarden around the system allocator, as `Warden::new()` registers it.
static WARDEN_ALLOC: memwarden::Warden<System> = memwarden::Warden::new();

/// Forwards every call to the allocator chosen by `MEMWARDEN_BENCH_ALLOC`.
struct Dispatch;

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

#[inline(always)]
fn choice() -> u8 {
    match CHOICE.load(Ordering::Relaxed) {
        UNSET => read_choice(),
        c => c,
    }
}

/// Reads `MEMWARDEN_BENCH_ALLOC` without allocating (this runs inside the
/// first allocation of the process).
#[cold]
#[inline(never)]
fn read_choice() -> u8 {
    // SAFETY: the name is NUL-terminated; nothing in this program changes
    // the environment, so the returned string stays valid while we read it.
    let value = unsafe { libc::getenv(c"MEMWARDEN_BENCH_ALLOC".as_ptr()) };
    let c = if value.is_null() {
        SYSTEM
    } else {
        // SAFETY: getenv returned a NUL-terminated string (see above).
        match unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes() {
            b"" | b"system" => SYSTEM,
            b"mimalloc" => MIMALLOC,
            b"dhat" => DHAT,
            b"warden" => WARDEN,
            _ => {
                let msg =
                    b"workloads: MEMWARDEN_BENCH_ALLOC must be system, mimalloc, dhat or warden\n";
                // SAFETY: writes a static buffer to stderr; no allocation.
                unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
                std::process::abort();
            }
        }
    };
    // Two threads racing here store the same value.
    CHOICE.store(c, Ordering::Relaxed);
    c
}

/// While set, allocations of the program are counted in [`COUNTED`] (to
/// find a workload's allocations per iteration before measuring it).
static COUNTING: AtomicBool = AtomicBool::new(false);
static COUNTED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Inside a counted call: allocations the allocator under test makes
    /// for itself (dhat's tables, memwarden's reports) are not counted.
    static IN_COUNTED: Cell<bool> = const { Cell::new(false) };
}

#[cold]
#[inline(never)]
fn counted<R>(f: impl FnOnce() -> R) -> R {
    let outer = IN_COUNTED.try_with(|c| !c.replace(true)).unwrap_or(false);
    if outer {
        COUNTED.fetch_add(1, Ordering::Relaxed);
    }
    let r = f();
    if outer {
        let _ = IN_COUNTED.try_with(|c| c.set(false));
    }
    r
}

impl Dispatch {
    #[inline(always)]
    unsafe fn alloc_any(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which
        // each allocator below (every arm) requires.
        unsafe {
            match choice() {
                MIMALLOC => mimalloc::MiMalloc.alloc(layout),
                DHAT => dhat::Alloc.alloc(layout),
                WARDEN => WARDEN_ALLOC.alloc(layout),
                _ => System.alloc(layout),
            }
        }
    }

    #[inline(always)]
    unsafe fn alloc_zeroed_any(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc_any`, for `alloc_zeroed`.
        unsafe {
            match choice() {
                MIMALLOC => mimalloc::MiMalloc.alloc_zeroed(layout),
                DHAT => dhat::Alloc.alloc_zeroed(layout),
                WARDEN => WARDEN_ALLOC.alloc_zeroed(layout),
                _ => System.alloc_zeroed(layout),
            }
        }
    }

    #[inline(always)]
    unsafe fn realloc_any(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `alloc_any`, for `realloc`; `ptr` came from the
        // same allocator, since the choice never changes.
        unsafe {
            match choice() {
                MIMALLOC => mimalloc::MiMalloc.realloc(ptr, layout, new_size),
                DHAT => dhat::Alloc.realloc(ptr, layout, new_size),
                WARDEN => WARDEN_ALLOC.realloc(ptr, layout, new_size),
                _ => System.realloc(ptr, layout, new_size),
            }
        }
    }
}

// SAFETY: every method forwards to one allocator, the same one for the
// whole process (the choice is made once, before the first block is handed
// out), so each block is freed by the allocator that made it.
unsafe impl GlobalAlloc for Dispatch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            // SAFETY: forwarded contract.
            return counted(|| unsafe { self.alloc_any(layout) });
        }
        // SAFETY: forwarded contract.
        unsafe { self.alloc_any(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            // SAFETY: forwarded contract.
            return counted(|| unsafe { self.alloc_zeroed_any(layout) });
        }
        // SAFETY: forwarded contract.
        unsafe { self.alloc_zeroed_any(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract, and
        // `ptr` came from the same allocator (see the impl's comment).
        unsafe {
            match choice() {
                MIMALLOC => mimalloc::MiMalloc.dealloc(ptr, layout),
                DHAT => dhat::Alloc.dealloc(ptr, layout),
                WARDEN => WARDEN_ALLOC.dealloc(ptr, layout),
                _ => System.dealloc(ptr, layout),
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            // SAFETY: forwarded contract.
            return counted(|| unsafe { self.realloc_any(ptr, layout, new_size) });
        }
        // SAFETY: forwarded contract.
        unsafe { self.realloc_any(ptr, layout, new_size) }
    }
}

/// The allocator's name in benchmark ids, with `-TAG` appended when
/// `MEMWARDEN_BENCH_TAG` is set (to tell apart runs of one allocator with
/// different settings, such as `DEBUG_MEMORY=leaks`).
fn allocator_name() -> String {
    let name = match choice() {
        MIMALLOC => "mimalloc",
        DHAT => "dhat",
        WARDEN if !cfg!(feature = "tracking") => "warden-nofeature",
        WARDEN if memwarden::is_enabled() => "warden-on",
        WARDEN => "warden-off",
        // System from the binary built without the feature: a name of its
        // own, so that scripts/bench.sh can compare "feature off" with it
        // (the two binaries' code lies at different places).
        _ if !cfg!(feature = "tracking") => "system-nofeature",
        _ => "system",
    };
    match std::env::var("MEMWARDEN_BENCH_TAG") {
        Ok(tag) if !tag.is_empty() => format!("{name}-{tag}"),
        _ => name.to_owned(),
    }
}

/// Allocations `f` makes (calls of `alloc`, `alloc_zeroed`, `realloc`).
fn count_allocs(f: impl FnOnce()) -> u64 {
    COUNTED.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    COUNTED.load(Ordering::Relaxed)
}

// === workloads ===

/// splitmix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

type Obj = [u64; 4];

/// Pins the calling thread to the `n`-th CPU it may run on (wrapping), and
/// restores its old CPU mask when dropped.
///
/// The two threads of `producer_consumer` and `larson` are pinned to two
/// different cores, so that they always run in parallel. Left to the
/// scheduler, they sometimes share one core and take turns, and glibc's
/// malloc and mimalloc then run up to 4-10x faster (no lock or cache-line
/// contention between the threads): on this 2-core machine the same
/// binary gave 6 or 55 M allocations/s from one run to the next.
struct Pinned {
    #[cfg(target_os = "linux")]
    old: libc::cpu_set_t,
}

impl Pinned {
    #[cfg(target_os = "linux")]
    fn to(n: usize) -> Option<Pinned> {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `cpu_set_t` is plain data; all zeroes is the empty set.
        let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the kernel writes at most `size` bytes into `old`.
        if unsafe { libc::sched_getaffinity(0, size, &mut old) } != 0 {
            return None;
        }
        let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `c` is below CPU_SETSIZE, the size of the set.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &old) })
            .collect();
        let cpu = *allowed.get(n % allowed.len().max(1))?;
        // SAFETY: as for `old`.
        let mut new: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is below CPU_SETSIZE; `new` is a valid set of
        // `size` bytes.
        let rc = unsafe {
            libc::CPU_SET(cpu, &mut new);
            libc::sched_setaffinity(0, size, &new)
        };
        (rc == 0).then_some(Pinned { old })
    }

    #[cfg(not(target_os = "linux"))]
    fn to(_n: usize) -> Option<Pinned> {
        None
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: `old` is the mask read in `to`, of the size passed.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.old);
        }
    }
}

/// (a) Small alloc/free pairs on one thread.
fn small_pairs(c: &mut Criterion, name: &str) {
    let mut g = c.benchmark_group("small_pairs");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let x: Box<Obj> = Box::new([i; 4]);
            drop(black_box(x));
        })
    });
    g.finish();
}

/// Objects per message of `producer_consumer`.
const CROSS: usize = 1024;

/// `iters` batches of [`CROSS`] boxes made here and dropped on a consumer
/// thread; the time until the consumer has dropped the last one.
fn producer_consumer_run(iters: u64) -> Duration {
    let (tx, rx) = mpsc::sync_channel::<Vec<Box<Obj>>>(4);
    let (back_tx, back_rx) = mpsc::sync_channel::<Vec<Box<Obj>>>(8);
    // Batch buffers are recycled: only the boxes are allocated while timed.
    let mut spare: Vec<Vec<Box<Obj>>> = (0..8).map(|_| Vec::with_capacity(CROSS)).collect();
    let _pinned = Pinned::to(0);
    let start = Instant::now();
    let consumer = thread::spawn(move || {
        let _pinned = Pinned::to(1);
        for mut v in rx {
            v.clear(); // the boxes are freed on this thread
            if back_tx.send(v).is_err() {
                break;
            }
        }
    });
    for round in 0..iters {
        let mut v = match spare.pop() {
            Some(v) => v,
            None => back_rx.recv().expect("consumer alive"),
        };
        for i in 0..CROSS as u64 {
            v.push(Box::new([round, i, 0, 0]));
        }
        tx.send(v).expect("consumer alive");
        while let Ok(v) = back_rx.try_recv() {
            spare.push(v);
        }
    }
    drop(tx);
    consumer.join().expect("consumer");
    start.elapsed()
}

/// (b) One thread allocates, another frees.
fn producer_consumer(c: &mut Criterion, name: &str) {
    let mut g = c.benchmark_group("producer_consumer");
    g.throughput(Throughput::Elements(CROSS as u64));
    g.bench_function(name, |b| b.iter_custom(producer_consumer_run));
    g.finish();
}

/// Slots per thread of `larson` (two threads: 10,000 live blocks).
const LARSON_SLOTS: usize = 5_000;
const LARSON_THREADS: usize = 2;

fn larson_block(rng: &mut Rng) -> Vec<u8> {
    let size = 8 + rng.below(1024 - 8 + 1) as usize;
    let mut v = Vec::with_capacity(size);
    v.push(size as u8); // touch the block, as a program would
    v
}

/// `steps` times: free a random slot of `slots` and allocate a new block
/// of random size into it.
fn larson_steps(slots: &mut [Vec<u8>], rng: &mut Rng, steps: u64) {
    let n = slots.len() as u64;
    for _ in 0..steps {
        let i = rng.below(n) as usize;
        slots[i] = larson_block(rng);
    }
    black_box(slots);
}

/// (c) Larson-like churn over a live set on two threads.
fn larson(c: &mut Criterion, name: &str) {
    let mut g = c.benchmark_group("larson");
    // One iteration is one step on each thread.
    g.throughput(Throughput::Elements(LARSON_THREADS as u64));
    let mut rngs: Vec<Rng> = (0..LARSON_THREADS as u64)
        .map(|t| Rng(0x5eed_0000 + t))
        .collect();
    let mut sets: Vec<Vec<Vec<u8>>> = rngs
        .iter_mut()
        .map(|rng| (0..LARSON_SLOTS).map(|_| larson_block(rng)).collect())
        .collect();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start_line = Barrier::new(LARSON_THREADS + 1);
            let start = thread::scope(|s| {
                for (t, (slots, rng)) in sets.iter_mut().zip(rngs.iter_mut()).enumerate() {
                    let start_line = &start_line;
                    s.spawn(move || {
                        let _pinned = Pinned::to(t);
                        start_line.wait();
                        larson_steps(slots, rng, iters);
                    });
                }
                start_line.wait();
                Instant::now()
            });
            let elapsed = start.elapsed();
            // Next time each thread frees the other one's blocks.
            sets.rotate_left(1);
            elapsed
        })
    });
    g.finish();
    drop(sets);
}

/// Grows a `Vec<u64>` and a `String` to 64 KiB each by pushing.
fn grow() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..(64 * 1024 / 8) as u64 {
        v.push(i);
    }
    black_box(&v);
    let mut s = String::new();
    for _ in 0..(64 * 1024 / 16) {
        s.push_str("0123456789abcdef");
    }
    black_box(&s);
}

/// (d) Realloc growth.
fn realloc_growth(c: &mut Criterion, name: &str) {
    let mut g = c.benchmark_group("realloc_growth");
    g.throughput(Throughput::Elements(count_allocs(grow)));
    g.bench_function(name, |b| b.iter(grow));
    g.finish();
}

/// Builds and drops a `BTreeMap` and a `HashMap` of 10,000 entries each,
/// for random keys from `seed`: `entry(key, index)` makes an entry, once
/// for each map.
fn build_two_maps<K: Ord + std::hash::Hash, V>(seed: u64, entry: impl Fn(u64, u64) -> (K, V)) {
    let mut rng = Rng(seed);
    let mut btree = BTreeMap::new();
    let mut hash = HashMap::new();
    for i in 0..10_000u64 {
        let k = rng.next();
        let (key, value) = entry(k, i);
        btree.insert(key, value);
        let (key, value) = entry(k, i);
        hash.insert(key, value);
    }
    black_box((&btree, &hash));
}

/// `BTreeMap<u64, u64>` and `HashMap<u64, u64>`.
fn build_maps() {
    build_two_maps(0x3a95, |k, i| (k, i));
}

/// `BTreeMap<String, String>` and `HashMap<String, String>` (see the
/// module docs).
fn build_string_maps() {
    build_two_maps(0x5eed, |k, i| (format!("{k:016x}"), i.to_string()));
}

/// The criterion group `group` for `build`, one of the map builders.
fn map_group(c: &mut Criterion, name: &str, group: &str, build: fn()) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(count_allocs(build)));
    g.bench_function(name, |b| b.iter(build));
    g.finish();
}

/// (e) Map building.
fn maps(c: &mut Criterion, name: &str) {
    map_group(c, name, "maps", build_maps);
}

/// (e') Map building with owned keys and values.
fn string_maps(c: &mut Criterion, name: &str) {
    map_group(c, name, "string_maps", build_string_maps);
}

// === main ===

/// Short runs by default, so that every variant fits in a few minutes;
/// criterion's own flags (`-- --measurement-time 10 --sample-size 50`)
/// override these.
fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .nresamples(10_000)
        .without_plots()
        .configure_from_args()
}

fn main() {
    // Keep dhat's profiler alive for the whole run when it is the choice.
    let profiler = (choice() == DHAT).then(|| {
        dhat::Profiler::builder()
            .file_name(concat!(env!("CARGO_TARGET_TMPDIR"), "/dhat-workloads.json"))
            .build()
    });
    let name = &allocator_name();
    let mut c = criterion();
    small_pairs(&mut c, name);
    producer_consumer(&mut c, name);
    larson(&mut c, name);
    realloc_growth(&mut c, name);
    maps(&mut c, name);
    string_maps(&mut c, name);
    c.final_summary();
    drop(profiler);
}
