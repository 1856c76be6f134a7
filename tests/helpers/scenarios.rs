//! Child-process scenarios for memwarden's end-to-end tests.
//!
//! One binary (built by Cargo as the example `scenarios`) that registers
//! `memwarden::Warden` exactly as a user would and then commits one leak
//! pattern, chosen by its first argument:
//!
//! ```text
//! scenarios box_leak
//! scenarios exit_status 7
//! scenarios --list       (every scenario name, one a line)
//! scenarios --features   (`tracking=on` or `tracking=off`: how memwarden was built)
//! ```
//!
//! Rules the tests rely on:
//! - every allocation a test looks for sits on a line that ends with a marker
//!   comment `// SITE: <tag>`; the tests read this file to learn the line
//!   number, so lines can move freely;
//! - every leaking allocation happens in its own `#[inline(never)]` function,
//!   and the scenario then calls [`scrub_stack`], so that no stale copy of the
//!   leaked pointer is left in a stack slot a conservative scanner (Valgrind's
//!   or memwarden's) would read;
//! - a leaked pointer goes through `black_box` before it is dropped, or an
//!   optimised build may elide the allocation altogether;
//! - a scenario prints nothing on success, so every line on stderr of a
//!   tracked run is memwarden's own.
//!
//! The verdicts Valgrind's memcheck gives for each scenario (run without
//! `DEBUG_MEMORY`, memwarden then being a pass-through) are recorded in
//! `tests/valgrind/README.md`; `tests/valgrind/compare.sh` reruns them.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hint::black_box;
use std::process::ExitCode;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, mpsc};
use std::thread;

#[global_allocator]
static GLOBAL: memwarden::Warden = memwarden::Warden::new();

/// Every scenario, in the order `--list` prints them.
const SCENARIOS: &[&str] = &[
    "clean",
    "clean_threads",
    "churn_threads",
    "box_leak",
    "forget_vec",
    "rc_cycle",
    "box_tree",
    "thread_leak",
    "loop_leak",
    "vec_fill",
    "stale_reuse",
    "map_grown",
    "vec_grow",
    "realloc_leak",
    "static_lazy",
    "exit_with_locals",
    "running_thread",
    "busy_threads",
    "scans_under_churn",
    "regs_held",
    "interior_pointer",
    "tls_held",
    "flag",
    "exit_status",
    "clean_exit",
    "arc_cycle_threads",
    "nested_string",
    "dyn_box",
    "static_hashmap",
    "scoped_caught",
    "late_enable",
    "fork_child",
    "fork_handlers",
    "fork_pools",
    "backtrace_lock",
    "fork_symbolizing",
    "own_sigpwr",
    "toggle",
    "pool_leak",
    "pool_alive",
    "sync_pool_leak",
    "pool_cycle",
    "pool_scans_under_churn",
    "tracked_cycle",
    "stats_counts",
];

/// What `main` was asked to do. Parsed first, so that the argument strings
/// are all freed before any scenario runs: the scenarios that end with
/// `process::exit` then leave nothing of main's own alive in its frame.
enum Action {
    Run(fn()),
    ExitStatus(i32),
    CleanExit(i32),
    List,
    Features,
    Usage(String),
}

fn parse(args: &[String]) -> Action {
    let run = |f: fn()| Action::Run(f);
    match args.first().map(String::as_str) {
        None => Action::Usage("usage: scenarios NAME [ARG] (scenarios --list)".into()),
        Some("--list") => Action::List,
        Some("--features") => Action::Features,
        Some(name @ ("exit_status" | "clean_exit")) => {
            match (name, args.get(1).map(|n| n.parse::<i32>())) {
                ("exit_status", Some(Ok(code))) => Action::ExitStatus(code),
                (_, Some(Ok(code))) => Action::CleanExit(code),
                _ => Action::Usage(format!("usage: scenarios {name} N (N an integer)")),
            }
        }
        Some("clean") => run(clean),
        Some("clean_threads") => run(clean_threads),
        Some("churn_threads") => run(churn_threads),
        Some("box_leak") => run(box_leak),
        Some("forget_vec") => run(forget_vec),
        Some("rc_cycle") => run(rc_cycle),
        Some("box_tree") => run(box_tree),
        Some("thread_leak") => run(thread_leak),
        Some("loop_leak") => run(loop_leak),
        Some("vec_fill") => run(vec_fill),
        Some("stale_reuse") => run(stale_reuse),
        Some("map_grown") => run(map_grown),
        Some("vec_grow") => run(vec_grow),
        Some("realloc_leak") => run(realloc_leak),
        Some("static_lazy") => run(static_lazy),
        Some("exit_with_locals") => run(exit_with_locals),
        Some("running_thread") => run(running_thread),
        Some("busy_threads") => run(busy_threads),
        Some("scans_under_churn") => run(scans_under_churn),
        Some("regs_held") => run(regs_held),
        Some("interior_pointer") => run(interior_pointer),
        Some("tls_held") => run(tls_held),
        Some("flag") => run(flag),
        Some("arc_cycle_threads") => run(arc_cycle_threads),
        Some("nested_string") => run(nested_string),
        Some("dyn_box") => run(dyn_box),
        Some("static_hashmap") => run(static_hashmap),
        Some("scoped_caught") => run(scoped_caught),
        Some("late_enable") => run(late_enable),
        Some("fork_child") => run(fork_child),
        Some("fork_handlers") => run(fork_handlers),
        Some("fork_pools") => run(fork_pools),
        Some("backtrace_lock") => run(backtrace_lock),
        Some("fork_symbolizing") => run(fork_symbolizing),
        Some("own_sigpwr") => run(own_sigpwr),
        Some("toggle") => run(toggle),
        Some("pool_leak") => run(pool_leak),
        Some("pool_alive") => run(pool_alive),
        Some("sync_pool_leak") => run(sync_pool_leak),
        Some("pool_cycle") => run(pool_cycle),
        Some("pool_scans_under_churn") => run(pool_scans_under_churn),
        Some("tracked_cycle") => run(tracked_cycle),
        Some("stats_counts") => run(stats_counts),
        Some(other) => Action::Usage(format!("unknown scenario `{other}` (scenarios --list)")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let action = parse(&args);
    drop(args);
    match action {
        Action::Run(scenario) => scenario(),
        Action::ExitStatus(code) => exit_status(code),
        Action::CleanExit(code) => clean_exit(code),
        Action::Features => {
            let tracking = if cfg!(feature = "tracking") {
                "on"
            } else {
                "off"
            };
            println!("tracking={tracking}");
        }
        Action::List => {
            for name in SCENARIOS {
                println!("{name}");
            }
        }
        Action::Usage(message) => {
            eprintln!("scenarios: {message}");
            return ExitCode::from(2);
        }
    }
    scrub_stack();
    ExitCode::SUCCESS
}

/// Overwrites a good stretch of the stack below the caller's frame with
/// zeros, so that stale copies of leaked pointers left there by functions
/// that have returned are gone before the leak check scans live stacks.
#[inline(never)]
fn scrub_stack() {
    let mut buf = [0usize; 4096];
    black_box(&mut buf);
}

// ---------------------------------------------------------------------------
// clean: allocates and frees plenty, leaks nothing.

fn clean() {
    let mut numbers: Vec<u64> = (0..1000).collect();
    numbers.retain(|n| n % 3 != 0);
    numbers.shrink_to_fit();
    let mut text = String::new();
    for i in 0..100 {
        text.push_str(&i.to_string());
    }
    let mut map = HashMap::new();
    for i in 0..200u32 {
        map.insert(i, format!("value {i}"));
    }
    map.retain(|k, _| k % 2 == 0);
    let boxed = Box::new([1u8; 256]);
    let shared = Rc::new(RefCell::new(vec![String::from("a"), String::from("b")]));
    let other = Rc::clone(&shared);
    other.borrow_mut().push(String::from("c"));
    let arc = Arc::new(Mutex::new(Vec::<u8>::with_capacity(64)));
    arc.lock().unwrap().extend_from_slice(&[1, 2, 3]);
    black_box((&numbers, &text, &map, &boxed, &shared, &other, &arc));
}

// clean_threads: spawns and joins threads, passes data over a channel,
// leaks nothing (shows what the Rust runtime's thread machinery leaves).
fn clean_threads() {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let handles: Vec<_> = (0..4u8)
        .map(|i| {
            let tx = tx.clone();
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    tx.send(vec![i; 100]).unwrap();
                    let boxed = black_box(Box::new([i; 32]));
                    boxed.len()
                })
                .unwrap()
        })
        .collect();
    drop(tx);
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let received: Vec<Vec<u8>> = rx.iter().collect();
    black_box((total, received));
    let scoped = thread::scope(|s| s.spawn(|| vec![0u8; 512].len()).join().unwrap());
    black_box(scoped);
}

// ---------------------------------------------------------------------------
// churn_threads: four threads allocate blocks of every kind the quarantine
// has (small ones, big ones for its queue of big blocks, and some too big
// for it), grow some by `realloc`, free half of them on the next thread
// and the rest on their own; everything is freed by the end, and
// `check_heap` then finds nothing.

fn churn_threads() {
    const THREADS: usize = 4;
    const STEPS: u64 = 6_000;
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..THREADS).map(|_| mpsc::channel::<Vec<u8>>()).unzip();
    thread::scope(|s| {
        for (t, rx) in receivers.into_iter().enumerate() {
            let next = senders[(t + 1) % THREADS].clone();
            s.spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (t as u64 + 1);
                let mut kept: Vec<Vec<u8>> = Vec::new();
                for i in 0..STEPS {
                    // xorshift64
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let size = match rng % 200 {
                        0 => 600 << 10,
                        1..=8 => (4 << 10) | ((rng >> 12) as usize % (200 << 10)),
                        _ => 1 + (rng >> 12) as usize % 2000,
                    };
                    let mut v = vec![t as u8; size];
                    if i % 3 == 0 {
                        v.extend_from_slice(&[1; 100]);
                    }
                    if i % 2 == 0 {
                        next.send(v).expect("the next thread drains its channel");
                    } else {
                        kept.push(v);
                    }
                    if kept.len() > 64 {
                        drop(kept.swap_remove((rng >> 20) as usize % kept.len()));
                    }
                    while let Ok(v) = rx.try_recv() {
                        drop(v);
                    }
                }
                drop(next);
                drop(kept);
                for v in rx {
                    drop(v);
                }
            });
        }
        drop(senders);
    });
    println!("check_heap found {}", memwarden::check_heap());
}

// ---------------------------------------------------------------------------
// stats_counts: `memwarden::stats()` around known allocations, printed as
// `stats NAME live=.. peak=.. allocs=.. bytes=.. peak_at=..` lines.

fn print_stats(name: &str, s: &memwarden::Stats) {
    println!(
        "stats {name} live={} peak={} allocs={} bytes={} peak_at={} blocks={}",
        s.live_bytes, s.peak_bytes, s.total_allocs, s.total_bytes, s.peak_at_alloc, s.live_blocks
    );
}

fn stats_counts() {
    // One thread: 100,000 + 50,000 bytes live at the peak.
    let s0 = memwarden::stats();
    let a = black_box(vec![1u8; 100_000]);
    let b = black_box(vec![2u8; 50_000]);
    drop(a);
    let c = black_box(vec![3u8; 10_000]);
    let s1 = memwarden::stats();
    drop(b);
    drop(c);
    let s2 = memwarden::stats();
    // Two threads: 300 blocks of 1,000 bytes allocated on a thread and
    // freed on this one, a few at a time (each thread's share of the live
    // bytes moves to the global figure only now and then).
    let boxes: Vec<Box<[u8; 1000]>> =
        thread::spawn(|| (0..300u16).map(|i| Box::new([i as u8; 1000])).collect())
            .join()
            .unwrap();
    let s3 = memwarden::stats();
    drop(boxes);
    let s4 = memwarden::stats();
    // A thread that only allocates and frees small blocks (its counts stay
    // in its own slot), then a new peak here: the peak's allocation count
    // includes the thread's allocations.
    thread::spawn(|| {
        for i in 0..20_000u32 {
            black_box(Box::new(i));
        }
    })
    .join()
    .unwrap();
    let big = black_box(vec![4u8; 1 << 20]);
    let s5 = memwarden::stats();
    drop(big);
    for (name, s) in [
        ("s0", s0),
        ("s1", s1),
        ("s2", s2),
        ("s3", s3),
        ("s4", s4),
        ("s5", s5),
    ] {
        print_stats(name, &s);
    }
}

// ---------------------------------------------------------------------------
// box_leak: 64 bytes in 1 block definitely lost.

fn box_leak() {
    leak_box();
    scrub_stack();
}

#[inline(never)]
fn leak_box() {
    black_box(Box::leak(Box::new([7u8; 64]))); // SITE: box_leak
}

// ---------------------------------------------------------------------------
// forget_vec: 100 bytes in 1 block definitely lost.

fn forget_vec() {
    leak_forgotten_vec();
    scrub_stack();
}

#[inline(never)]
fn leak_forgotten_vec() {
    std::mem::forget(black_box(vec![3u8; 100])); // SITE: forget_vec
}

// ---------------------------------------------------------------------------
// rc_cycle: two Rc<RefCell<Node>> pointing at each other, every handle
// dropped. Valgrind makes the block at the lower address (node `a`, allocated
// first) definitely lost and the other indirectly lost.

struct Node {
    payload: [u8; 16],
    next: Option<Rc<RefCell<Node>>>,
}

fn rc_cycle() {
    leak_rc_cycle();
    scrub_stack();
}

#[inline(never)]
fn leak_rc_cycle() {
    let node_a = Node {
        payload: [1; 16],
        next: None,
    };
    let a = Rc::new(RefCell::new(node_a)); // SITE: rc_cycle_a
    let node_b = Node {
        payload: [2; 16],
        next: Some(Rc::clone(&a)),
    };
    let b = Rc::new(RefCell::new(node_b)); // SITE: rc_cycle_b
    a.borrow_mut().next = Some(Rc::clone(&b));
    black_box((&a.borrow().payload, &b.borrow().payload));
}

// ---------------------------------------------------------------------------
// box_tree: a forgotten parent Box holding a child Box: the parent is
// definitely lost, the child indirectly lost.

struct Child {
    data: [u8; 24],
}

struct Parent {
    child: Box<Child>,
    data: [u8; 40],
}

fn box_tree() {
    leak_box_tree();
    scrub_stack();
}

#[inline(never)]
fn leak_box_tree() {
    let child = Box::new(Child { data: [4; 24] }); // SITE: box_tree_child
    let parent = Parent {
        child,
        data: [5; 40],
    };
    let parent = Box::new(parent); // SITE: box_tree_parent
    black_box((&parent.data, &parent.child.data));
    std::mem::forget(parent);
}

// ---------------------------------------------------------------------------
// thread_leak: a spawned and joined thread leaks 48 bytes.

fn thread_leak() {
    thread::spawn(thread_leak_body).join().unwrap();
    scrub_stack();
}

#[inline(never)]
fn thread_leak_body() {
    black_box(Box::leak(Box::new([9u8; 48]))); // SITE: thread_leak
    scrub_stack();
}

// ---------------------------------------------------------------------------
// loop_leak: 10 blocks of 32 bytes leaked from one line, one stack.

fn loop_leak() {
    times(10, leak_32);
}

/// Calls `f(0)`, `f(1)`, ... `f(n - 1)` from one call site, then scrubs
/// the stack. (`black_box`: an unrolled loop would make `n` call sites,
/// that is `n` stacks.)
fn times(n: u8, f: fn(u8)) {
    for i in 0..black_box(n) {
        f(i);
    }
    scrub_stack();
}

#[inline(never)]
fn leak_32(fill: u8) {
    black_box(Box::leak(Box::new([fill; 32]))); // SITE: loop_leak
}

// ---------------------------------------------------------------------------
// vec_fill: `vec![fill; 30]` of bytes forgotten five times from one line,
// with fill 0 the first time, which allocates zeroed memory (another path
// through the allocator, which the report leaves out): one entry of 150
// bytes in 5 blocks, definitely lost.

fn vec_fill() {
    times(5, forget_filled);
}

#[inline(never)]
fn forget_filled(fill: u8) {
    std::mem::forget(black_box(vec![fill; 30])); // SITE: vec_fill
}

// ---------------------------------------------------------------------------
// stale_reuse: a box is leaked after its address was written 12,000 bytes
// into a 16 KiB buffer, which is then freed; a new buffer of the same size,
// which glibc gives the same memory when no quarantine holds the old one,
// is kept in a static and never written. The stale word in it must not keep
// the box reachable: one entry of 32 bytes in 1 block, definitely lost,
// with the quarantine and without. Prints whether the memory was reused.

static KEPT: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn stale_reuse() {
    let old = write_stale_and_free();
    let new = keep_fresh_buffer();
    scrub_stack();
    println!("reused: {}", old == new);
}

/// The freed buffer's address.
#[inline(never)]
fn write_stale_and_free() -> usize {
    let leaked = Box::leak(Box::new([5u64; 4])); // SITE: stale_reuse
    let mut buf: Vec<usize> = vec![0; 2048];
    buf[1500] = leaked as *mut [u64; 4] as usize;
    let at = buf.as_ptr() as usize;
    drop(black_box(buf));
    at
}

/// The kept buffer's address.
#[inline(never)]
fn keep_fresh_buffer() -> usize {
    let v: Vec<usize> = Vec::with_capacity(2048);
    let at = v.as_ptr() as usize;
    *KEPT.lock().unwrap() = v;
    at
}

// ---------------------------------------------------------------------------
// map_grown: a HashMap<u64, u64> grown by its inserts, then forgotten: its
// table (allocated deep inside the standard library's hash map) is
// definitely lost.

fn map_grown() {
    forget_grown_map();
    scrub_stack();
}

#[inline(never)]
fn forget_grown_map() {
    let mut map = HashMap::new();
    for i in 0..black_box(20u64) {
        map.insert(i, i + 1); // SITE: map_grown
    }
    std::mem::forget(black_box(map));
}

// ---------------------------------------------------------------------------
// vec_grow: a Vec<u32> grown by push to 1024 elements, then forgotten. The
// block that leaks was last (re)allocated by the push line.

fn vec_grow() {
    leak_grown_vec();
    scrub_stack();
}

#[inline(never)]
fn leak_grown_vec() {
    let mut v: Vec<u32> = Vec::new();
    for i in 0..1024u32 {
        v.push(i); // SITE: vec_grow
    }
    std::mem::forget(v);
}

// ---------------------------------------------------------------------------
// realloc_leak: a 16-byte Vec grown to 1024 bytes by reserve_exact (a
// realloc), then forgotten: the site is the reserve line.

fn realloc_leak() {
    leak_reallocated();
    scrub_stack();
}

#[inline(never)]
fn leak_reallocated() {
    let mut v: Vec<u8> = Vec::with_capacity(16); // SITE: realloc_first
    v.extend_from_slice(&[1; 16]);
    v.reserve_exact(1024 - 16); // SITE: realloc_leak
    std::mem::forget(v);
}

// ---------------------------------------------------------------------------
// static_lazy: heap data reachable from a OnceLock and a LazyLock static.
// Everything is still reachable; nothing is lost.

static BUFFER: OnceLock<Vec<u8>> = OnceLock::new();
static NAMES: LazyLock<Mutex<Vec<String>>> = LazyLock::new(|| Mutex::new(Vec::new()));

fn static_lazy() {
    fill_statics();
    scrub_stack();
    black_box((BUFFER.get().map(Vec::len), NAMES.lock().unwrap().len()));
}

#[inline(never)]
fn fill_statics() {
    BUFFER.get_or_init(make_buffer);
    let mut names = NAMES.lock().unwrap();
    names.reserve_exact(4); // SITE: static_lazylock_vec
    for _ in 0..black_box(4) {
        names.push(make_name());
    }
}

#[inline(never)]
fn make_buffer() -> Vec<u8> {
    vec![1u8; 128] // SITE: static_oncelock
}

#[inline(never)]
fn make_name() -> String {
    let mut name = String::with_capacity(16); // SITE: static_lazylock_string
    name.push_str("warden");
    name
}

// ---------------------------------------------------------------------------
// exit_with_locals: main's callee holds a 200-byte Vec in a local and calls
// process::exit(0): the block is still reachable from a live stack.

fn exit_with_locals() {
    let held = black_box(vec![2u8; 200]); // SITE: exit_with_locals
    black_box(&held);
    std::process::exit(0);
}

// ---------------------------------------------------------------------------
// running_thread: a thread that is still running (parked forever) when main
// returns holds a 40-byte Box in a local: still reachable.

fn running_thread() {
    let (tx, rx) = mpsc::channel();
    // The JoinHandle is dropped: the thread is detached and never ends.
    drop(thread::spawn(move || hold_forever(tx)));
    rx.recv().unwrap();
}

#[inline(never)]
fn hold_forever(ready: mpsc::Sender<()>) -> ! {
    let held = Box::new([6u8; 40]); // SITE: running_thread
    black_box(&held);
    ready.send(()).unwrap();
    drop(ready);
    loop {
        black_box(&held);
        thread::park();
    }
}

// ---------------------------------------------------------------------------
// busy_threads: two threads still busy when main returns, each moving its
// 2,000 boxes from vector to new vector in a loop, while main keeps 100,000
// more in a static (so the exit report's heap check takes a while). No leak
// at all: every box is held by a running thread's vector at any time, and
// the vectors by its stack.

/// Boxed: each is a block of its own, for the heap check to go through.
#[allow(clippy::vec_box)]
static KEPT_BOXES: Mutex<Vec<Box<u64>>> = Mutex::new(Vec::new());

fn busy_threads() {
    KEPT_BOXES
        .lock()
        .unwrap()
        .extend((0..100_000).map(Box::new));
    for t in 0..2 {
        drop(thread::spawn(move || {
            let mut held: Vec<Box<[u64; 4]>> = (0..2000).map(|i| Box::new([i + t; 4])).collect();
            loop {
                let mut fresh = Vec::with_capacity(held.len());
                fresh.append(&mut held);
                held = black_box(fresh);
            }
        }));
    }
    thread::sleep(std::time::Duration::from_millis(100));
}

// ---------------------------------------------------------------------------
// scans_under_churn: checkpoints taken while other threads replace map
// values (frees), grow vectors of boxes (reallocs) and start short-lived
// threads with small stacks (`CHURN` names which of `map`, `vectors`,
// `spawns`; all by default). Nothing leaks: prints how many of the
// checkpoints' reports had a definitely lost block anyway. (With
// `spawns`, what the thread library holds for a thread that is just
// starting is not read, and can be reported lost now and then: see the
// guide's limitations.)

static CHURN_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn churn_map() {
    let mut map = HashMap::with_capacity(2048);
    let mut i = 0u64;
    while !CHURN_STOP.load(Ordering::Relaxed) {
        i += 1;
        map.insert(i % 1000, Box::new([i; 4]));
    }
}

fn churn_vectors() {
    let mut kept: Vec<Vec<Box<u64>>> = Vec::new();
    while !CHURN_STOP.load(Ordering::Relaxed) {
        let mut v = Vec::new();
        for i in 0..2000u64 {
            v.push(Box::new(i));
        }
        kept.push(v);
        if kept.len() > 4 {
            kept.remove(0);
        }
    }
}

fn churn_spawns() {
    let mut running = std::collections::VecDeque::new();
    let mut i = 0u64;
    while !CHURN_STOP.load(Ordering::Relaxed) {
        i += 1;
        let spawned = thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                let v: Vec<Box<u64>> = (0..64).map(|k| Box::new(k + i)).collect();
                thread::sleep(std::time::Duration::from_micros(200 + (i % 7) * 300));
                black_box(&v);
            })
            .unwrap();
        running.push_back(spawned);
        if running.len() > 60 {
            running.pop_front().unwrap().join().unwrap();
        }
    }
    for t in running {
        t.join().unwrap();
    }
}

/// Takes `rounds` checkpoints, each reported 5 ms after it was taken, and
/// returns how many reports had a definite leak (the first one is printed
/// on stderr).
fn checkpoints_losing(rounds: usize) -> usize {
    let mut lost = 0;
    for _ in 0..rounds {
        let mark = memwarden::checkpoint();
        thread::sleep(std::time::Duration::from_millis(5));
        let report = mark.leaks();
        if report.has_definite_leaks() {
            if lost == 0 {
                eprintln!("{report}");
            }
            lost += 1;
        }
    }
    lost
}

fn scans_under_churn() {
    let only = std::env::var("CHURN").unwrap_or_default();
    let workers: Vec<_> = [
        ("map", churn_map as fn()),
        ("vectors", churn_vectors),
        ("spawns", churn_spawns),
    ]
    .into_iter()
    .filter(|(name, _)| only.is_empty() || only.contains(name))
    .map(|(_, f)| thread::spawn(f))
    .collect();
    thread::sleep(std::time::Duration::from_millis(20));
    let lost = checkpoints_losing(40);
    CHURN_STOP.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    println!("reports with a definite leak: {lost}");
}

// ---------------------------------------------------------------------------
// regs_held: a thread keeps the only pointer to a block in its callee-saved
// registers (r12-r15) while it calls into memwarden (`check_heap`, or
// allocates and frees with `REGS_CALL=alloc`) again and again; checkpoints taken beside it must never find the block lost,
// whether they stop the thread in its own code or inside memwarden's (where
// memwarden's frames may save those registers below the point a scan of
// that thread starts from). x86_64 only: elsewhere it prints the same line
// without running.

static REGS_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// With `REGS_CALL=alloc`, the loop allocates and frees instead.
static REGS_ALLOC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const REGS_MASK: usize = 0x5a5a_5a5a_5a5a_5a5a;

/// Called from the loop in assembly: enters memwarden; 1 when it is time
/// to stop.
extern "C" fn regs_call() -> usize {
    if REGS_ALLOC.load(Ordering::Relaxed) {
        for i in 0..64u64 {
            drop(black_box(Box::new([i; 6])));
        }
    } else {
        black_box(memwarden::check_heap());
    }
    REGS_STOP.load(Ordering::Relaxed) as usize
}

/// Allocates the block; returns its address hidden (XOR-ed).
#[inline(never)]
fn regs_block() -> usize {
    let b = black_box(Box::new([3u64; 8])); // SITE: regs_held
    Box::into_raw(b) as usize ^ REGS_MASK
}

#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn regs_hold(hidden: usize) {
    // SAFETY: the loop keeps `hidden ^ REGS_MASK` in r12-r15 (declared
    // clobbered) and calls an `extern "C"` function, which preserves them,
    // until it returns non-zero; the stack is aligned for the call at the
    // start of an asm block without `nostack`.
    unsafe {
        std::arch::asm!(
            "mov r12, {h}",
            "xor r12, {m}",
            "mov r13, r12",
            "mov r14, r12",
            "mov r15, r12",
            "2:",
            "call {f}",
            "test rax, rax",
            "jz 2b",
            "xor r12, r12",
            "xor r13, r13",
            "xor r14, r14",
            "xor r15, r15",
            h = in(reg) hidden,
            m = in(reg) REGS_MASK,
            f = sym regs_call,
            out("r12") _,
            out("r13") _,
            out("r14") _,
            out("r15") _,
            clobber_abi("C"),
        )
    };
}

fn regs_held() {
    if !cfg!(target_arch = "x86_64") {
        println!("reports with a definite leak: 0");
        return;
    }
    REGS_ALLOC.store(
        std::env::var("REGS_CALL").is_ok_and(|v| v == "alloc"),
        Ordering::Relaxed,
    );
    let mark = memwarden::checkpoint();
    let (tx, rx) = mpsc::channel();
    let holder = thread::spawn(move || {
        let hidden = regs_block();
        scrub_stack();
        tx.send(hidden).unwrap();
        #[cfg(target_arch = "x86_64")]
        regs_hold(hidden);
    });
    let hidden = rx.recv().unwrap();
    thread::sleep(std::time::Duration::from_millis(5));
    let mut lost = 0;
    for _ in 0..60 {
        let report = mark.leaks();
        if report.has_definite_leaks() {
            if lost == 0 {
                eprintln!("{report}");
            }
            lost += 1;
        }
        thread::sleep(std::time::Duration::from_millis(1));
    }
    REGS_STOP.store(true, Ordering::Relaxed);
    holder.join().unwrap();
    // SAFETY: the block `regs_block` allocated and nothing freed.
    drop(unsafe { Box::from_raw((hidden ^ REGS_MASK) as *mut [u64; 8]) });
    println!("reports with a definite leak: {lost}");
}

// ---------------------------------------------------------------------------
// interior_pointer: the only pointer left to a 64-byte block points 16
// bytes into it, from a static: possibly lost.

static INTERIOR: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());

fn interior_pointer() {
    keep_interior_pointer();
    scrub_stack();
    // A static never read is optimised away, with the store into it.
    black_box(INTERIOR.load(Ordering::SeqCst));
}

#[inline(never)]
fn keep_interior_pointer() {
    let block = black_box(Box::leak(Box::new([0u8; 64]))); // SITE: interior_pointer
    INTERIOR.store(block.as_mut_ptr().wrapping_add(16), Ordering::SeqCst);
}

// ---------------------------------------------------------------------------
// tls_held: a still-running thread keeps a 56-byte block only through a
// const-initialised thread_local (no destructor): still reachable.

thread_local! {
    static TLS_PTR: Cell<*mut u8> = const { Cell::new(ptr::null_mut()) };
}

fn tls_held() {
    let (tx, rx) = mpsc::channel();
    drop(thread::spawn(move || tls_thread(tx)));
    rx.recv().unwrap();
}

#[inline(never)]
fn tls_thread(ready: mpsc::Sender<()>) -> ! {
    stash_in_tls();
    scrub_stack();
    ready.send(()).unwrap();
    drop(ready);
    loop {
        // A thread-local never read is optimised away, with the store into it.
        black_box(TLS_PTR.get());
        thread::park();
    }
}

#[inline(never)]
fn stash_in_tls() {
    let p = black_box(Box::into_raw(Box::new([8u8; 56]))); // SITE: tls_held
    TLS_PTR.with(|slot| slot.set(p.cast::<u8>()));
}

// ---------------------------------------------------------------------------
// flag: tracking switched on by the program itself when its arguments hold
// `--debug-memory`, then 24 bytes definitely lost.

fn flag() {
    memwarden::init_from_args(std::env::args());
    leak_flagged();
    scrub_stack();
}

#[inline(never)]
fn leak_flagged() {
    black_box(Box::leak(Box::new([1u8; 24]))); // SITE: flag
}

// ---------------------------------------------------------------------------
// exit_status N: leaks 16 bytes (definitely lost), then process::exit(N).

fn exit_status(code: i32) -> ! {
    leak_before_exit();
    scrub_stack();
    std::process::exit(code);
}

#[inline(never)]
fn leak_before_exit() {
    black_box(Box::leak(Box::new([5u8; 16]))); // SITE: exit_status
}

// clean_exit N: allocates and frees, leaks nothing, then process::exit(N).

fn clean_exit(code: i32) -> ! {
    clean();
    scrub_stack();
    std::process::exit(code);
}

// ---------------------------------------------------------------------------
// arc_cycle_threads: an Arc<Mutex<..>> cycle whose second node is made on
// another thread; every handle dropped. Like rc_cycle: the node allocated
// first (on the main thread) is definitely lost, the other indirectly.

struct SharedNode {
    payload: [u8; 8],
    next: Option<Arc<Mutex<SharedNode>>>,
}

fn arc_cycle_threads() {
    leak_arc_cycle();
    scrub_stack();
}

#[inline(never)]
fn leak_arc_cycle() {
    let node = SharedNode {
        payload: [1; 8],
        next: None,
    };
    let first = Arc::new(Mutex::new(node)); // SITE: arc_cycle_main
    let handle = {
        let first = Arc::clone(&first);
        thread::spawn(move || make_second_node(first))
    };
    let second = handle.join().unwrap();
    first.lock().unwrap().next = Some(second);
    black_box(&first.lock().unwrap().payload);
}

#[inline(never)]
fn make_second_node(first: Arc<Mutex<SharedNode>>) -> Arc<Mutex<SharedNode>> {
    let node = SharedNode {
        payload: [2; 8],
        next: Some(first),
    };
    let second = Arc::new(Mutex::new(node)); // SITE: arc_cycle_thread
    black_box(&second.lock().unwrap().payload);
    second
}

// ---------------------------------------------------------------------------
// nested_string: a forgotten Vec<String> of 3 strings: the Vec's buffer is
// definitely lost, the 3 strings (one stack) indirectly lost.

fn nested_string() {
    leak_nested();
    scrub_stack();
}

#[inline(never)]
fn leak_nested() {
    let mut outer: Vec<String> = Vec::with_capacity(3); // SITE: nested_outer
    for _ in 0..black_box(3) {
        outer.push(make_inner_string());
    }
    std::mem::forget(outer);
}

#[inline(never)]
fn make_inner_string() -> String {
    let mut s = String::with_capacity(32); // SITE: nested_inner
    s.push_str("leaked inside a leaked Vec");
    s
}

// ---------------------------------------------------------------------------
// dyn_box: a forgotten Box<dyn Trait> (a fat pointer whose data half points
// at the block's start): 40 bytes definitely lost.

trait Shape {
    fn area(&self) -> u64;
}

struct Rect {
    w: u64,
    h: u64,
    label: [u8; 24],
}

impl Shape for Rect {
    fn area(&self) -> u64 {
        self.w * self.h + u64::from(self.label[0])
    }
}

fn dyn_box() {
    leak_dyn();
    scrub_stack();
}

#[inline(never)]
fn leak_dyn() {
    let rect = Rect {
        w: 3,
        h: 4,
        label: [b'r'; 24],
    };
    let shape: Box<dyn Shape> = Box::new(rect); // SITE: dyn_box
    black_box(shape.area());
    std::mem::forget(black_box(shape));
}

// ---------------------------------------------------------------------------
// static_hashmap: a HashMap kept in a static. hashbrown points at the
// control bytes in the middle of its one allocation, not at its start, so
// Valgrind calls the table "possibly lost" although the program can reach it.

static TABLE: LazyLock<Mutex<HashMap<u64, u64>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn static_hashmap() {
    fill_table();
    scrub_stack();
    black_box(TABLE.lock().unwrap().len());
}

#[inline(never)]
fn fill_table() {
    let mut table = TABLE.lock().unwrap();
    table.reserve(8); // SITE: static_hashmap
    for i in 0..8 {
        table.insert(i, i * i);
    }
}

// ---------------------------------------------------------------------------
// scoped_caught: a leak that assert_no_leaks catches (the panic is caught,
// as a `#[should_panic]` test would) is not counted again at exit: it is
// suppressed there, and the run succeeds.

fn scoped_caught() {
    let caught = std::panic::catch_unwind(|| {
        memwarden::assert_no_leaks(leak_scoped);
    });
    assert!(caught.is_err(), "assert_no_leaks must catch the leak");
    scrub_stack();
}

#[inline(never)]
fn leak_scoped() {
    black_box(Box::leak(Box::new([5u8; 40]))); // SITE: scoped_caught
}

// ---------------------------------------------------------------------------
// late_enable: a static collection filled before `memwarden::enable()` and
// grown after it. Its new buffer is tracked from then on, so the boxes
// pushed after `enable()` are still reachable, not lost. Run without
// DEBUG_MEMORY.

// Each box is an allocation of its own: that is what the scenario counts.
#[allow(clippy::vec_box)]
static LATE: Mutex<Vec<Box<u64>>> = Mutex::new(Vec::new());

fn late_enable() {
    fill_late(0..4);
    memwarden::enable();
    fill_late(4..64);
    black_box(LATE.lock().unwrap().len());
    scrub_stack();
}

#[inline(never)]
fn fill_late(range: std::ops::Range<u64>) {
    let mut v = LATE.lock().unwrap();
    for i in black_box(range) {
        let boxed = Box::new(i); // SITE: late_enable
        v.push(boxed);
    }
}

// ---------------------------------------------------------------------------
// fork_child: a child made by fork (no exec) while another thread is busy
// allocating, that allocates and leaks itself, then exits. The child must
// not deadlock, and must not print a report of its own: only the parent
// reports (its own 24-byte leak), once.

fn fork_child() {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                black_box(vec![1u8; 64]);
            }
        })
    };
    for _ in 0..20 {
        // SAFETY: the child only allocates (memwarden's locks are released
        // for it by its fork handlers) and leaves with _exit-free `exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let v: Vec<String> = (0..100).map(|i| i.to_string()).collect();
            std::mem::forget(v);
            std::process::exit(0);
        }
        wait_for_clean_exit(pid);
    }
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    leak_after_fork();
    scrub_stack();
}

/// Waits for the forked child `pid` and checks that it exited with 0.
fn wait_for_clean_exit(pid: libc::pid_t) {
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status}"
    );
}

#[inline(never)]
fn leak_after_fork() {
    black_box(Box::leak(Box::new([9u8; 24]))); // SITE: fork_child
}

// ---------------------------------------------------------------------------
// fork_pools: a thread takes checkpoints (each scan holds the registry of
// pools) while the main thread forks, and each child makes, uses and drops
// a pool: no child may start with that registry locked by a thread it does
// not have, nor with the loader's lock held by memwarden's calls into the
// loader on that thread. Prints how many children hung (killed after 5 s).

fn fork_pools() {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scanner = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                black_box(memwarden::checkpoint().leaks());
            }
        })
    };
    let mut hung = 0;
    // The children's stack captures meet code the unwinder has not seen
    // in this process, so they call `dl_iterate_phdr`, whose lock glibc
    // does not reset in a child: a child forked while the scanning thread
    // was inside it (symbolizing) hung there, before memwarden's `fork`
    // handlers waited for its own calls into the loader to end.
    for _ in 0..30 {
        thread::sleep(std::time::Duration::from_millis(2));
        // (The child makes and drops a pool.)
        if fork_within_5s(|| if fork_pools_child() { 0 } else { 1 }).is_none() {
            hung += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    scanner.join().unwrap();
    println!("hung children: {hung}");
}

// ---------------------------------------------------------------------------
// backtrace_lock: a thread inside `backtrace::trace` (which holds the
// `backtrace` crate's global lock) allocates from code the unwinder has not
// seen, while the main thread symbolizes (`top_sites`: memwarden's loader
// lock, then `backtrace::resolve`, which takes backtrace's lock). The
// allocation must not wait on memwarden's loader lock: it hung every time
// when it did. With `BT_DOUBLE_FREE=1` the thread also frees a block twice
// there (run with `DEBUG_MEMORY_ON_ERROR=continue`): the report of it
// symbolizes too, which must not wait for the main thread while the main
// thread waits for backtrace's lock. Prints `backtrace_lock: done`.

static BT_HOLDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[inline(never)]
fn bt_fresh_site() -> Box<u64> {
    black_box(Box::new(42))
}

fn backtrace_lock() {
    let keep: Vec<Box<u64>> = (0..4).map(Box::new).collect();
    let holder = thread::spawn(|| {
        let mut first = true;
        backtrace::trace(|_| {
            if first {
                first = false;
                BT_HOLDS.store(true, Ordering::SeqCst);
                // Time for the main thread to take the loader lock and
                // wait for backtrace's.
                thread::sleep(std::time::Duration::from_millis(300));
                black_box(bt_fresh_site());
                if std::env::var_os("BT_DOUBLE_FREE").is_some() {
                    let layout = std::alloc::Layout::new::<[u64; 3]>();
                    // SAFETY: not sound: the second `dealloc` is the heap
                    // error memwarden must report (and refuse).
                    unsafe {
                        let p = std::alloc::alloc(layout);
                        std::alloc::dealloc(p, layout);
                        std::alloc::dealloc(black_box(p), layout);
                    }
                }
            }
            false
        });
    });
    while !BT_HOLDS.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    black_box(memwarden::top_sites(3));
    holder.join().unwrap();
    black_box(&keep);
    println!("backtrace_lock: done");
}

// ---------------------------------------------------------------------------
// fork_symbolizing: a thread symbolizes over and over (`top_sites`, which
// takes the `backtrace` crate's lock) while the main thread forks children
// that symbolize too. A child forked while that thread held the lock
// inherits it held by a thread it does not have: it must not wait for it.
// Prints how many children hung (killed after 5 s) and how many were
// refused their symbols.

fn fork_symbolizing() {
    let keep: Vec<Box<u64>> = (0..64).map(Box::new).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let symbolizer = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                black_box(memwarden::top_sites(8));
            }
        })
    };
    thread::sleep(std::time::Duration::from_millis(20));
    let (mut hung, mut addresses) = (0, 0);
    for _ in 0..20 {
        thread::sleep(std::time::Duration::from_millis(1));
        let status = fork_within_5s(|| {
            let sites = memwarden::top_sites(3);
            let named = sites
                .iter()
                .any(|s| s.frames.iter().any(|f| f.file.is_some()));
            if sites.is_empty() {
                1
            } else if named {
                0
            } else {
                2
            }
        });
        match status {
            None => hung += 1,
            Some(2) => addresses += 1,
            Some(_) => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    symbolizer.join().unwrap();
    black_box(&keep);
    println!("hung children: {hung}");
    println!("children with addresses only: {addresses}");
}

/// Forks a child that runs `child` and leaves with the status it returns;
/// that status (128 plus the signal's number for a child a signal ended),
/// or `None` if the child had not ended after 5 s (it is then killed).
fn fork_within_5s(child: impl FnOnce() -> i32) -> Option<i32> {
    // SAFETY: the child runs `child`, then leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = child();
        // SAFETY: `_exit` ends the child at once.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    for waited in 0..=5_000 {
        if waited > 0 {
            thread::sleep(std::time::Duration::from_millis(1));
        }
        // SAFETY: waiting for our own child, without blocking.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != 0 {
            return Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        }
    }
    // SAFETY: our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
    None
}

/// What each child of `fork_pools` does: makes a pool, takes from it,
/// drops both.
#[inline(never)]
fn fork_pools_child() -> bool {
    let pool = memwarden::pool::SyncPool::new();
    let object = pool.alloc(7u64).ok().unwrap();
    let ok = *object == 7;
    drop(object);
    drop(pool);
    ok
}

// ---------------------------------------------------------------------------
// fork_handlers: `fork` handlers registered before tracking is switched on
// (so before memwarden's own, which its `prepare` handler runs ahead of)
// that allocate, grow and free Rust blocks, some of them tracked blocks
// made before the `fork`. They run while memwarden holds its locks: they
// must not deadlock, and every block they free must be freed (in the
// parent as in the child), so that the report has only this scenario's
// one leak, made after the forks.

/// Tracked boxes made before each `fork`, dropped by the handlers (boxed:
/// each is a block of its own, freed in a handler).
#[allow(clippy::vec_box)]
static HANDED: Mutex<Vec<Box<[u64; 4]>>> = Mutex::new(Vec::new());
/// A tracked vector made before each `fork`, grown (reallocated) and
/// dropped by the first handler to run.
static GROWN: Mutex<Option<Vec<u64>>> = Mutex::new(None);

extern "C" fn rust_fork_handler() {
    drop(HANDED.lock().unwrap().pop());
    if let Some(mut v) = GROWN.lock().unwrap().take() {
        v.extend(0..1000);
        assert!(v[..8].iter().all(|&x| x == 7), "kept across the realloc");
    }
    let mut made: Vec<String> = Vec::new();
    for i in 0..50 {
        made.push(i.to_string());
    }
    assert_eq!(made.concat().len(), 90);
    // A pool made, used and dropped: memwarden holds the registry of pools
    // in this window too.
    let pool = memwarden::pool::SyncPool::new();
    let object = pool.alloc([5u64; 3]).ok().unwrap();
    assert_eq!(object[2], 5);
    drop(object);
    drop(pool);
}

fn fork_handlers() {
    // SAFETY: the handlers never unwind (an assertion failing in them
    // aborts, which the test sees).
    unsafe {
        libc::pthread_atfork(
            Some(rust_fork_handler),
            Some(rust_fork_handler),
            Some(rust_fork_handler),
        );
    }
    memwarden::enable();
    for _ in 0..3 {
        HANDED
            .lock()
            .unwrap()
            .extend((0..2).map(|i| Box::new([i; 4])));
        *GROWN.lock().unwrap() = Some(vec![7; 8]);
        // SAFETY: the child only allocates and frees, and leaves with
        // `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // `prepare` dropped one box before the `fork`, the child's
            // handler the other.
            let ok = HANDED.lock().unwrap().is_empty();
            drop(black_box((0..100).collect::<Vec<u64>>()));
            // SAFETY: `_exit` ends the child at once, as a forked child
            // of a threaded program should.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        wait_for_clean_exit(pid);
        assert!(
            HANDED.lock().unwrap().is_empty(),
            "both parent handlers ran"
        );
    }
    leak_after_fork_handlers();
    scrub_stack();
}

#[inline(never)]
fn leak_after_fork_handlers() {
    black_box(Box::leak(Box::new([5u8; 40]))); // SITE: fork_handlers
}

// ---------------------------------------------------------------------------
// own_sigpwr: the program has its own SIGPWR handler, so memwarden cannot
// stop the other threads for its scan. A thread parked in a system call
// still has its whole stack scanned: its box is still reachable.

extern "C" fn ignore_signal(_: libc::c_int) {}

fn own_sigpwr() {
    // SAFETY: installs a handler that does nothing.
    unsafe {
        libc::signal(
            libc::SIGPWR,
            ignore_signal as *const () as libc::sighandler_t,
        )
    };
    let (tx, rx) = mpsc::channel();
    drop(thread::spawn(move || hold_forever_sigpwr(tx)));
    rx.recv().unwrap();
    // Let the thread settle into its futex wait.
    thread::sleep(std::time::Duration::from_millis(50));
}

#[inline(never)]
fn hold_forever_sigpwr(ready: mpsc::Sender<()>) -> ! {
    let held = Box::new([8u8; 56]); // SITE: own_sigpwr
    black_box(&held);
    ready.send(()).unwrap();
    drop(ready);
    loop {
        black_box(&held);
        thread::park();
    }
}

// ---------------------------------------------------------------------------
// toggle: switch tracking on and off at run time (no DEBUG_MEMORY). A block
// leaked while tracking was on is reported; one leaked while it was paused
// is not; a tracked block freed while paused is freed properly.

fn toggle() {
    assert!(!memwarden::is_enabled());
    memwarden::enable();
    assert!(memwarden::is_enabled());
    let tracked = Box::new([1u64; 8]);
    leak_while_on();
    let before = memwarden::stats();
    assert!(before.live_blocks >= 2, "{before:?}");
    memwarden::disable();
    assert!(!memwarden::is_enabled());
    leak_while_paused();
    drop(tracked);
    let after = memwarden::stats();
    assert_eq!(
        after.total_allocs, before.total_allocs,
        "nothing new is tracked while paused"
    );
    assert_eq!(
        after.live_blocks + 1,
        before.live_blocks,
        "the tracked block was freed"
    );
    scrub_stack();
}

#[inline(never)]
fn leak_while_on() {
    black_box(Box::leak(Box::new([2u8; 72]))); // SITE: toggle_on
}

#[inline(never)]
fn leak_while_paused() {
    black_box(Box::leak(Box::new([3u8; 88]))); // SITE: toggle_paused
}

// ---------------------------------------------------------------------------
// pool_leak: one object taken from a pool and forgotten, another returned,
// then the pool dropped. The forgotten object is definitely lost at the
// line that took it; the pool's chunks are not reported as blocks.

fn pool_leak() {
    let pool = memwarden::pool::Pool::new();
    take_and_forget(&pool);
    let returned = pool.alloc([2u64; 4]).unwrap();
    black_box(&returned);
    drop(returned);
    drop(pool);
    scrub_stack();
}

#[inline(never)]
fn take_and_forget(pool: &memwarden::pool::Pool<[u64; 4]>) {
    let taken = pool.alloc([1u64; 4]).unwrap(); // SITE: pool_leak
    std::mem::forget(black_box(taken));
}

// ---------------------------------------------------------------------------
// pool_alive: a pool still alive at exit (on this frame, which calls
// `exit`), with one object forgotten, one held in a local, and others
// taken and returned. The forgotten one is definitely lost at its line;
// the held one still reachable; the returned ones (free slots) and the
// pool itself are not lost.

fn pool_alive() {
    let pool: memwarden::pool::Pool<[u64; 4]> = memwarden::pool::Pool::new();
    warm_up(&pool);
    take_and_return(&pool);
    forget_one(&pool);
    let held = hold_one(&pool);
    take_and_return(&pool);
    black_box((&pool, &held));
    scrub_stack();
    std::process::exit(0);
}

/// The first `alloc` allocates the pool's chunk and lists (still
/// reachable, at that line): not at a SITE line.
#[inline(never)]
fn warm_up(pool: &memwarden::pool::Pool<[u64; 4]>) {
    drop(black_box(pool.alloc([0; 4]).unwrap()));
}

#[inline(never)]
fn take_and_return(pool: &memwarden::pool::Pool<[u64; 4]>) {
    let boxes: Vec<_> = (0..10)
        .map(|i| pool.alloc([i; 4]).unwrap()) // SITE: pool_returned
        .collect();
    drop(black_box(boxes));
}

#[inline(never)]
fn forget_one(pool: &memwarden::pool::Pool<[u64; 4]>) {
    let taken = pool.alloc([5u64; 4]).unwrap(); // SITE: pool_alive_forgot
    std::mem::forget(black_box(taken));
}

#[inline(never)]
fn hold_one(pool: &memwarden::pool::Pool<[u64; 4]>) -> memwarden::pool::PoolBox<[u64; 4]> {
    pool.alloc([6u64; 4]).unwrap() // SITE: pool_held
}

// ---------------------------------------------------------------------------
// sync_pool_leak: a SyncPool in a static, alive at exit, with one object
// forgotten on another thread and objects returned across threads; and a
// SyncPool dropped after one of its objects was forgotten. Each forgotten
// object is definitely lost at its line; neither pool is lost.

static SYNC_POOL: LazyLock<memwarden::pool::SyncPool<[u64; 6]>> =
    LazyLock::new(memwarden::pool::SyncPool::new);

fn sync_pool_leak() {
    let taken: Vec<_> = (0..100).map(|i| SYNC_POOL.alloc([i; 6]).unwrap()).collect();
    thread::spawn(move || {
        drop(taken); // returned on another thread
        forget_sync(&SYNC_POOL);
    })
    .join()
    .unwrap();
    let dropped = memwarden::pool::SyncPool::new();
    forget_sync_dropped(&dropped);
    drop(dropped);
    scrub_stack();
}

#[inline(never)]
fn forget_sync(pool: &memwarden::pool::SyncPool<[u64; 6]>) {
    let taken = pool.alloc([7u64; 6]).unwrap(); // SITE: sync_static_forgot
    std::mem::forget(black_box(taken));
}

#[inline(never)]
fn forget_sync_dropped(pool: &memwarden::pool::SyncPool<[u64; 2]>) {
    let taken = pool.alloc([8u64; 2]).unwrap(); // SITE: sync_dropped_forgot
    std::mem::forget(black_box(taken));
}

// ---------------------------------------------------------------------------
// pool_cycle: two pool objects owning each other's box, their pool
// dropped: like an Rc cycle, the first is definitely lost and carries the
// second, indirectly lost. The pool's own memory is not reported.

struct PoolNode {
    next: Option<memwarden::pool::PoolBox<PoolNode>>,
    _payload: [u64; 3],
}

fn pool_cycle() {
    let pool = memwarden::pool::Pool::new();
    make_pool_cycle(&pool);
    drop(pool);
    scrub_stack();
}

#[inline(never)]
fn make_pool_cycle(pool: &memwarden::pool::Pool<PoolNode>) {
    let node = |x| PoolNode {
        next: None,
        _payload: [x; 3],
    };
    let mut a = pool.alloc(node(1)).unwrap(); // SITE: pool_cycle_a
    let b = pool.alloc(node(2)).unwrap(); // SITE: pool_cycle_b
    a.next = Some(b);
    let a_value: *mut PoolNode = &mut *a;
    // SAFETY: `a`'s slot stays taken (its box is moved, never dropped), so
    // `a_value` stays valid; `b` is reached through it and nothing else.
    unsafe { (*a_value).next.as_mut().unwrap().next = Some(a) };
}

// ---------------------------------------------------------------------------
// pool_scans_under_churn: checkpoints taken while two threads take objects
// from a SyncPool, each object owning a heap block, and each thread keeping
// its last 64 and giving back the oldest as it stores a new one, so that
// the slot given back is the next one taken (`POOL_CHURN_ROUNDS`
// checkpoints, 40 by default). Nothing leaks: prints how many of the
// checkpoints' reports had a definitely lost block anyway. Scans used to
// read which objects were taken before they stopped the threads: an
// object given back and taken again meanwhile, its take caught half-way
// by the stop, was reported lost at its line (`pool_churn_take`), and the
// heap block of an object taken meanwhile from a slot free before
// (`pool_churn_block`): 5 to 9 checkpoints of 40 in a debug build, 12 to
// 20 in a release build.

static POOL_CHURN_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct Churned {
    _n: u64,
    _block: Box<[u64; 4]>,
}

fn pool_churn(pool: memwarden::pool::SyncPool<Churned>) {
    let mut kept: Vec<Option<memwarden::pool::SyncPoolBox<Churned>>> =
        (0..64).map(|_| None).collect();
    let mut i = 0u64;
    while !POOL_CHURN_STOP.load(Ordering::Relaxed) {
        i += 1;
        let block = Box::new([i; 4]); // SITE: pool_churn_block
        let object = pool.alloc(Churned {
            _n: i,
            _block: block,
        }); // SITE: pool_churn_take
        kept[(i % 64) as usize] = Some(object.ok().unwrap());
    }
}

fn pool_scans_under_churn() {
    let rounds: usize = std::env::var("POOL_CHURN_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let pool = memwarden::pool::SyncPool::new();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            thread::spawn(move || pool_churn(pool))
        })
        .collect();
    drop(pool);
    thread::sleep(std::time::Duration::from_millis(20));
    let lost = checkpoints_losing(rounds);
    POOL_CHURN_STOP.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    println!("reports with a definite leak: {lost} of {rounds}");
}

// ---------------------------------------------------------------------------
// tracked_cycle: two TrackedRc nodes holding each other, dropped by their
// owner: one definitely and one indirectly lost, and the report lists both
// objects with the references that still hold them, as one cycle.

struct TrackedNode {
    next: RefCell<Option<memwarden::rc::TrackedRc<TrackedNode>>>,
    _payload: [u64; 2],
}

fn tracked_cycle() {
    make_tracked_cycle();
    scrub_stack();
}

#[inline(never)]
fn make_tracked_cycle() {
    let node = |x| TrackedNode {
        next: RefCell::new(None),
        _payload: [x, x],
    };
    let a = memwarden::rc::TrackedRc::new(node(1)); // SITE: tracked_a
    let b = memwarden::rc::TrackedRc::new(node(2)); // SITE: tracked_b
    *b.next.borrow_mut() = Some(a.clone()); // SITE: tracked_b_holds_a
    *a.next.borrow_mut() = Some(b.clone()); // SITE: tracked_a_holds_b
    black_box((&a, &b));
}
