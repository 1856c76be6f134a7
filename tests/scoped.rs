//! Scoped leak checks inside a `cargo test` binary that registers Warden:
//! `assert_no_leaks`, `check_leaks` and checkpoints, with libtest running
//! these tests in parallel threads beside each other.
//!
//! Tests that expect a planted block to be definitely lost try up to
//! [`ATTEMPTS`] times (see [`attempts`]).
#![cfg(all(feature = "tracking", target_os = "linux"))]

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use memwarden::LeakKind;
use memwarden::pool::{Pool, PoolBox, SyncPool, SyncPoolBox};

#[global_allocator]
static GLOBAL: memwarden::Warden = memwarden::Warden::new();

/// How many times a test that expects a planted block to be definitely
/// lost tries before it fails (see [`attempts`]).
const ATTEMPTS: usize = 3;

/// Starts the line [`attempts`] writes to stderr when it retries.
const RETRY: &str = "scoped: retrying:";

/// Runs `attempt` (plant, check, reclaim, compare) until it returns `Ok`,
/// at most [`ATTEMPTS`] times; after that many failures, panics with the
/// failure of every attempt (their reports).
///
/// Why retrying is right here: the leak scan is conservative. Any aligned
/// word of live memory that equals a block's address is taken for a
/// pointer to it, as in Valgrind's memcheck, and some live memory holds
/// stale words: std's backtrace cache (filled when a test panics with
/// `RUST_BACKTRACE` set) keeps bytes copied from the stack, the address of
/// a buffer since freed among them, and a reused thread's stack keeps old
/// frames. When a block planted here is allocated where such a freed
/// buffer was, the scan finds it *still reachable* or *possibly lost*
/// instead of *definitely lost*, and is right to: about once in 100 to 150
/// runs of this binary, one of its tests saw it. No test can rule such a
/// word out, but it is chance: each attempt plants fresh blocks, at other
/// addresses (those of the attempt before wait in memwarden's quarantine
/// of freed memory), so if one attempt fails this way with probability p,
/// three in a row fail with about p³: below one in a million for p under
/// 1%, while each of these tests saw it in fewer than 1% of runs. A real
/// bug (a leak not found, a wrong count, kind or line) fails every
/// attempt, and the test with it, showing every attempt's report.
///
/// An attempt returns `Err` (see [`ensure!`] and [`ensure_eq!`]) instead of
/// panicking: a panic with `RUST_BACKTRACE` set symbolizes a backtrace,
/// filling the very caches that keep stale words, so that retrying a
/// caught panic would make the next attempt likelier to fail. Each attempt
/// frees the blocks it planted before it returns, so that nothing it
/// planted is left for the next one or for the exit report.
fn attempts(name: &str, mut attempt: impl FnMut() -> Result<(), String>) {
    let mut failures = Vec::new();
    for n in 1..=ATTEMPTS {
        let Err(failure) = attempt() else {
            return;
        };
        if n < ATTEMPTS {
            // Past libtest's capture of `eprintln!`, so that a run's log
            // shows every retry, passing tests' too.
            let first = failure.lines().next().unwrap_or("");
            let _ = writeln!(
                std::io::stderr(),
                "{RETRY} {name}: attempt {n} of {ATTEMPTS} failed: {first}"
            );
        }
        failures.push(format!("--- attempt {n} of {ATTEMPTS}:\n{failure}"));
    }
    panic!(
        "{name}: all {ATTEMPTS} attempts failed\n{}",
        failures.join("\n")
    );
}

/// `assert!` for an attempt (see [`attempts`]): if `cond` is false, returns
/// `Err` with the line, the condition and the message.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!(
                "scoped.rs:{}: {} is false\n{}",
                line!(),
                stringify!($cond),
                format_args!($($msg)+)
            ));
        }
    };
}

/// `assert_eq!` for an attempt (see [`attempts`]): if `left != right`,
/// returns `Err` with the line, both values and the message.
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if *left != *right {
            return Err(format!(
                "scoped.rs:{}: {} != {}\n  left: {:?}\n right: {:?}\n{}",
                line!(),
                stringify!($left),
                stringify!($right),
                left,
                right,
                format_args!($($msg)+)
            ));
        }
    }};
}

/// Blocks one test leaked on purpose, kept as obfuscated addresses (not
/// pointers, so the leak scan cannot see them) and freed after the check,
/// so that a run with DEBUG_MEMORY=1 does not end with real leaks (and
/// freed when dropped, if not before). Each test (each attempt) has its
/// own, so no test frees another's leak before its check.
#[derive(Default)]
struct Planted(Mutex<Vec<(usize, usize)>>);

const MASK: usize = 0x5a5a_5a5a_5a5a_5a5a;

/// Leaks a `[u64; N]`-sized block; returns nothing that points to it.
#[inline(never)]
fn plant(planted: &Planted, words: usize) {
    let v: Vec<u64> = vec![7; words]; // LEAK: plant
    let mut v = std::mem::ManuallyDrop::new(v);
    let addr = v.as_mut_ptr() as usize;
    planted.0.lock().unwrap().push((addr ^ MASK, words));
}

impl Planted {
    fn reclaim(&self) {
        for (masked, words) in self.0.lock().unwrap().drain(..) {
            let ptr = (masked ^ MASK) as *mut u64;
            // SAFETY: `ptr` came from a Vec<u64> of capacity `words`,
            // leaked by `plant` and never freed.
            drop(unsafe { Vec::from_raw_parts(ptr, words, words) });
        }
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        self.reclaim();
    }
}

/// The line carrying `// LEAK: tag` in this file.
fn line_of(tag: &str) -> u32 {
    let marker = format!("// LEAK: {tag}");
    include_str!("scoped.rs")
        .lines()
        .position(|l| l.trim_end().ends_with(&marker))
        .map(|i| i as u32 + 1)
        .unwrap_or_else(|| panic!("no line marked {marker}"))
}

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    match e.downcast::<String>() {
        Ok(s) => *s,
        Err(e) => e
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}

#[test]
fn a_clean_closure_passes_and_returns_its_value() {
    let sum = memwarden::assert_no_leaks(|| {
        let v: Vec<u64> = (1..=100).collect();
        let s: String = v.iter().map(|n| n.to_string()).collect();
        let m: std::collections::HashMap<u64, String> =
            v.iter().map(|&n| (n, n.to_string())).collect();
        assert_eq!(m.len(), 100);
        s.len() as u64 + v.iter().sum::<u64>()
    });
    assert_eq!(sum, 192 + 5050);
}

#[test]
fn a_leak_panics_and_names_its_line() {
    attempts("a_leak_panics_and_names_its_line", || {
        let planted = Planted::default();
        // The panic of the check is what is tested: caught here, it is not
        // what makes an attempt fail (see `attempts`).
        let caught = catch_unwind(AssertUnwindSafe(|| {
            memwarden::assert_no_leaks(|| plant(&planted, 8));
        }));
        planted.reclaim();
        let Err(err) = caught else {
            return Err("a leaking closure must panic: assert_no_leaks returned".to_owned());
        };
        let text = panic_text(err);
        ensure!(
            text.starts_with("memwarden: leak found by assert_no_leaks"),
            "{text}"
        );
        ensure!(
            text.contains("64 bytes in 1 block definitely lost"),
            "{text}"
        );
        let site = format!("scoped.rs:{}", line_of("plant"));
        ensure!(text.contains(&site), "the report names {site}:\n{text}");
        Ok(())
    });
}

#[test]
fn check_leaks_reports_without_panicking() {
    attempts("check_leaks_reports_without_panicking", || {
        let planted = Planted::default();
        let ((), report) = memwarden::check_leaks(|| {
            // One call site: a loop of a constant 2 is unrolled in release
            // builds into two calls, with two stacks (two entries).
            for _ in 0..std::hint::black_box(2) {
                plant(&planted, 4);
            }
        });
        planted.reclaim();
        let lost: Vec<_> = report.leaks_of(LeakKind::DefinitelyLost).collect();
        ensure_eq!(lost.len(), 1, "{report}");
        ensure_eq!((lost[0].bytes, lost[0].blocks), (64, 2), "{report}");
        let top = lost[0].frames.first();
        ensure_eq!(top.and_then(|f| f.line), Some(line_of("plant")), "{report}");
        ensure!(
            top.and_then(|f| f.file.as_deref())
                .is_some_and(|f| f.ends_with("tests/scoped.rs")),
            "{report}"
        );
        Ok(())
    });
}

#[test]
fn a_leak_in_a_joined_child_thread_counts() {
    attempts("a_leak_in_a_joined_child_thread_counts", || {
        let planted = Planted::default();
        let ((), report) = memwarden::check_leaks(|| {
            let tid = std::thread::scope(|s| {
                s.spawn(|| {
                    plant(&planted, 2);
                    // The kernel's id of this thread, to wait for it below.
                    std::fs::read_link("/proc/thread-self").unwrap()
                })
                .join()
                .unwrap()
            });
            // `join` returns once the thread's closure is done; the thread
            // may still be on its way out, with its dead frames (the
            // planted pointer among them) on a stack the scan still sees.
            // Wait until it is gone, as a thread that ended well before a
            // check would be.
            wait_until_gone(tid);
        });
        planted.reclaim();
        ensure_eq!(report.summary.definitely_lost.bytes, 16, "{report}");
        Ok(())
    });
}

/// Waits until the thread `/proc/thread-self` named is gone (see
/// `a_leak_in_a_joined_child_thread_counts`).
fn wait_until_gone(thread_self: std::path::PathBuf) {
    let task = std::path::Path::new("/proc/self/task").join(thread_self.file_name().unwrap());
    for _ in 0..2000 {
        if !task.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

static KEPT: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[test]
fn memory_kept_reachable_is_not_a_leak() {
    let v = memwarden::assert_no_leaks(|| {
        KEPT.lock().unwrap().push("kept in a static".to_owned());
        vec![1u8; 100]
    });
    assert_eq!(v.len(), 100);
    let ((), report) = memwarden::check_leaks(|| {
        KEPT.lock().unwrap().push("again".to_owned());
    });
    assert_eq!(report.summary.definitely_lost.blocks, 0, "{report}");
    assert!(report.summary.still_reachable.blocks >= 1, "{report}");
}

/// Leaks on other threads while checks run must not fail those checks.
#[test]
fn leaks_beside_a_check_are_not_blamed_on_it() {
    static STOP: AtomicUsize = AtomicUsize::new(0);
    let planted = std::sync::Arc::new(Planted::default());
    let noisy = std::thread::spawn({
        let planted = std::sync::Arc::clone(&planted);
        move || {
            let mut n = 0;
            while STOP.load(Ordering::Relaxed) == 0 && n < 2000 {
                plant(&planted, 1);
                n += 1;
                std::thread::yield_now();
            }
        }
    });
    for _ in 0..5 {
        memwarden::assert_no_leaks(|| {
            let s: Vec<String> = (0..50).map(|i| format!("item {i}")).collect();
            assert_eq!(s.len(), 50);
        });
    }
    STOP.store(1, Ordering::Relaxed);
    noisy.join().unwrap();
    planted.reclaim();
}

#[test]
fn a_checkpoint_reports_what_came_after_it() {
    attempts("a_checkpoint_reports_what_came_after_it", || {
        let planted = Planted::default();
        let mark = memwarden::checkpoint();
        let kept = Box::new([3u64; 6]);
        plant(&planted, 3);
        let report = mark.leaks();
        planted.reclaim();
        // A checkpoint sees every thread: keep the entries planted by this
        // test (other tests plant from the same line, beside it).
        let mine: Vec<_> = report
            .leaks
            .iter()
            .filter(|l| l.frames.first().and_then(|f| f.line) == Some(line_of("plant")))
            .filter(|l| {
                l.frames.iter().any(|f| {
                    f.function
                        .as_deref()
                        .is_some_and(|n| n.contains("a_checkpoint_reports_what_came_after_it"))
                })
            })
            .collect();
        ensure_eq!(mine.len(), 1, "{report}");
        ensure_eq!(
            (mine[0].kind, mine[0].bytes),
            (LeakKind::DefinitelyLost, 24),
            "{report}"
        );
        ensure!(
            report
                .leaks
                .iter()
                .all(|l| l.kind != LeakKind::StillReachable),
            "{report}"
        );
        ensure_eq!(kept[5], 3, "{report}");
        Ok(())
    });
}

#[test]
fn stats_and_top_sites_see_live_memory() {
    // Switch tracking on quietly (memwarden::enable() would arm the exit
    // report of this test binary).
    let _ = memwarden::checkpoint();
    let before = memwarden::stats();
    let big = std::hint::black_box(vec![0u8; 3 << 20]); // LEAK: big
    let after = memwarden::stats();
    assert!(after.live_bytes >= before.live_bytes.saturating_sub(1 << 20) + (3 << 20) - (1 << 20));
    assert!(after.total_allocs > before.total_allocs);
    assert!(after.peak_bytes >= 3 << 20);
    assert!(after.peak_at_alloc <= after.total_allocs);
    // Other tests run beside this one (and a panic's backtrace cache can be
    // big), so look among more than the very top sites.
    let top = memwarden::top_sites(32);
    let site = top
        .iter()
        .find(|s| s.frames.first().and_then(|f| f.line) == Some(line_of("big")))
        .unwrap_or_else(|| panic!("the 3 MiB vector is a top site: {top:#?}"));
    assert_eq!((site.bytes, site.blocks), (3 << 20, 1));
    drop(big);
}

/// A checkpoint counts every thread's allocations, so tests that assert on
/// one are kept apart with `serial_test` (tests marked `#[serial]` never run
/// at the same time as each other). The other tests here still run beside
/// them, so these look only at allocations made from this file's lines.
#[test]
#[serial_test::serial(whole_process)]
fn checkpoint_in_a_serial_test_counts_exactly() {
    attempts("checkpoint_in_a_serial_test_counts_exactly", || {
        let planted = Planted::default();
        let mark = memwarden::checkpoint();
        for _ in 0..3 {
            plant(&planted, 5);
        }
        let report = mark.leaks();
        planted.reclaim();
        let found: u64 = report
            .leaks_of(LeakKind::DefinitelyLost)
            .filter(|l| l.frames.first().and_then(|f| f.line) == Some(line_of("plant")))
            .map(|l| l.blocks)
            .sum();
        ensure!(found >= 3, "{report}");
        Ok(())
    });
}

#[test]
#[serial_test::serial(whole_process)]
fn checkpoint_reports_nothing_of_what_was_freed() {
    let mark = memwarden::checkpoint();
    let v: Vec<u32> = (0..1000).collect(); // LEAK: freed
    assert_eq!(v.len(), 1000);
    drop(v);
    let report = mark.report();
    let mine = report
        .leaks
        .iter()
        .filter(|l| l.frames.first().and_then(|f| f.line) == Some(line_of("freed")))
        .count();
    assert_eq!(mine, 0, "{report}");
}

// === pool objects ===
//
// A pool object is a block of its own for the leak scan, dated by its
// `alloc`, not by the chunk it was carved from: a check reports an object
// taken (and forgotten) in it even when the chunk was allocated before the
// check started, and leaves out objects taken before it started or on
// threads it did not start.
//
// Each of these tests runs each attempt in a process of its own (see
// `alone`).

/// Runs test `name`'s `attempt` in a process of its own, with [`attempts`]:
/// in the test process, each attempt starts a child (this binary, `--exact
/// name`) and passes if the test passed there; in that child, this runs
/// `attempt` once, and panics if it fails.
///
/// Why: a pool chunk is one allocation, and the tests below need the
/// objects in it definitely lost. When other tests' checks run beside them,
/// the symbolization of those reports leaves stale words in memory the scan
/// takes for roots (backtrace's static cache keeps the addresses of buffers
/// it has freed; reused thread stacks keep old frames), and the chunk may
/// be allocated where such a freed buffer was: an object in it then reads
/// as reachable (or possibly lost), by chance. In a process of its own, the
/// chunk is allocated before anything is symbolized, which makes that
/// rarer, not impossible (about once in 1,000 runs, a stale word was still
/// found); a new process per attempt makes every attempt as clean as the
/// first.
fn alone(name: &str, attempt: impl FnOnce() -> Result<(), String>) {
    const VAR: &str = "MEMWARDEN_TEST_ALONE";
    if std::env::var(VAR).is_ok_and(|v| v == name) {
        if let Err(failure) = attempt() {
            panic!("{failure}");
        }
        return;
    }
    attempts(name, || {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1", "--nocapture"])
            .env(VAR, name)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            // The first line of the child's failure, for `attempts`' retry
            // line.
            let failed = text.lines().find(|l| l.starts_with("scoped.rs:"));
            return Err(format!(
                "{name}, in a process of its own ({}): {}\n{text}",
                out.status,
                failed.unwrap_or("failed")
            ));
        }
        ensure!(text.contains("1 passed"), "{name} did not run:\n{text}");
        Ok(())
    });
}

/// Pool boxes one test forgot on purpose, kept as masked words (a box is
/// two pointers; masked, the leak scan cannot see them) and given back to
/// their pool after the check, so that a run with DEBUG_MEMORY=1 does not
/// end with real leaks.
#[derive(Default)]
struct PlantedBoxes(Mutex<Vec<[usize; 2]>>);

impl PlantedBoxes {
    /// Forgets `b`, keeping its words masked.
    fn forget<B>(&self, b: B) {
        assert_eq!(size_of::<B>(), size_of::<[usize; 2]>());
        let b = std::mem::ManuallyDrop::new(b);
        // SAFETY: a pool box is two pointers, no padding (sizes checked).
        let words: [usize; 2] = unsafe { std::mem::transmute_copy(&*b) };
        self.0.lock().unwrap().push(words.map(|w| w ^ MASK));
    }

    /// Drops every box kept, as a `B`.
    fn reclaim<B>(&self) {
        for masked in self.0.lock().unwrap().drain(..) {
            let words = masked.map(|w| w ^ MASK);
            // SAFETY: the words of a `B` forgotten by `forget` and not
            // used since: this gives the box back, once.
            drop(unsafe { std::mem::transmute_copy::<[usize; 2], B>(&words) });
        }
    }
}

type Obj5 = [u64; 5];
type Obj3 = [u64; 3];

#[inline(never)]
fn forget_pool_before(pool: &Pool<Obj5>, planted: &PlantedBoxes) {
    planted.forget(pool.alloc([1; 5]).unwrap()); // LEAK: pool_before
}

#[inline(never)]
fn forget_pool_in_check(pool: &Pool<Obj5>, planted: &PlantedBoxes) {
    planted.forget(pool.alloc([2; 5]).unwrap()); // LEAK: pool_in_check
}

#[inline(never)]
fn forget_pool_in_assert(pool: &Pool<Obj5>, planted: &PlantedBoxes) {
    planted.forget(pool.alloc([3; 5]).unwrap()); // LEAK: pool_in_assert
}

/// Leak entries whose first frame is the line marked `tag`: (kind, bytes,
/// blocks).
fn entries_at(report: &memwarden::Report, tag: &str) -> Vec<(LeakKind, u64, u64)> {
    report
        .leaks
        .iter()
        .filter(|l| l.frames.first().and_then(|f| f.line) == Some(line_of(tag)))
        .map(|l| (l.kind, l.bytes, l.blocks))
        .collect()
}

#[test]
fn a_pool_object_forgotten_in_a_check_is_reported_whatever_the_age_of_its_chunk() {
    alone(
        "a_pool_object_forgotten_in_a_check_is_reported_whatever_the_age_of_its_chunk",
        || {
            let _ = memwarden::checkpoint(); // tracking on: the pool is registered
            let planted = PlantedBoxes::default();
            let pool: Pool<Obj5> = Pool::new();
            let warm = pool.alloc([0; 5]).unwrap(); // the one chunk, allocated now
            let mark = memwarden::checkpoint();
            forget_pool_before(&pool, &planted);
            let ((), report) = memwarden::check_leaks(|| forget_pool_in_check(&pool, &planted));
            let since_mark = mark.leaks();
            planted.reclaim::<PoolBox<Obj5>>();
            drop(warm);
            ensure_eq!(pool.stats().chunks, 1, "{report}");
            ensure_eq!(pool.stats().live, 0, "{report}");
            // The object taken in the check, from the older chunk:
            // definitely lost, its value's size, at the line that took it.
            let lost: Vec<_> = report.leaks_of(LeakKind::DefinitelyLost).collect();
            ensure_eq!(lost.len(), 1, "{report}");
            ensure_eq!((lost[0].bytes, lost[0].blocks), (40, 1), "{report}");
            let top = lost[0].frames.first();
            ensure_eq!(
                top.and_then(|f| f.line),
                Some(line_of("pool_in_check")),
                "{report}"
            );
            ensure!(
                top.and_then(|f| f.file.as_deref())
                    .is_some_and(|f| f.ends_with("tests/scoped.rs")),
                "{report}"
            );
            // The one forgotten before the check started is not the
            // check's...
            ensure_eq!(entries_at(&report, "pool_before"), [], "{report}");
            // ...though it is lost too, as a checkpoint taken before it
            // shows (a checkpoint counts every thread: these lines are this
            // test's alone).
            ensure_eq!(
                entries_at(&since_mark, "pool_before"),
                [(LeakKind::DefinitelyLost, 40, 1)],
                "{since_mark}"
            );
            ensure_eq!(
                entries_at(&since_mark, "pool_in_check"),
                [(LeakKind::DefinitelyLost, 40, 1)],
                "{since_mark}"
            );
            Ok(())
        },
    );
}

#[test]
fn assert_no_leaks_fails_on_a_pool_object_from_an_older_chunk() {
    alone(
        "assert_no_leaks_fails_on_a_pool_object_from_an_older_chunk",
        || {
            let _ = memwarden::checkpoint();
            let planted = PlantedBoxes::default();
            let pool: Pool<Obj5> = Pool::new();
            let warm = pool.alloc([0; 5]).unwrap();
            // The panic of the check is what is tested (see
            // `a_leak_panics_and_names_its_line`).
            let caught = catch_unwind(AssertUnwindSafe(|| {
                memwarden::assert_no_leaks(|| forget_pool_in_assert(&pool, &planted));
            }));
            planted.reclaim::<PoolBox<Obj5>>();
            drop(warm);
            ensure_eq!(pool.stats().chunks, 1, "");
            let Err(err) = caught else {
                return Err(
                    "a forgotten pool object must fail the check: assert_no_leaks returned"
                        .to_owned(),
                );
            };
            let text = panic_text(err);
            ensure!(
                text.contains("40 bytes in 1 block definitely lost"),
                "{text}"
            );
            let site = format!("scoped.rs:{}", line_of("pool_in_assert"));
            ensure!(text.contains(&site), "the report names {site}:\n{text}");
            Ok(())
        },
    );
}

#[inline(never)]
fn forget_sync_before(pool: &SyncPool<Obj3>, planted: &PlantedBoxes) {
    planted.forget(pool.alloc([1; 3]).unwrap()); // LEAK: sync_before
}

#[inline(never)]
fn forget_sync_in_check(pool: &SyncPool<Obj3>, planted: &PlantedBoxes) {
    planted.forget(pool.alloc([2; 3]).unwrap()); // LEAK: sync_in_check
}

#[inline(never)]
fn forget_sync_in_child(pool: &SyncPool<Obj3>, planted: &PlantedBoxes) {
    planted.forget(pool.alloc([3; 3]).unwrap()); // LEAK: sync_in_child
}

#[inline(never)]
fn forget_sync_beside(pool: &SyncPool<Obj3>, planted: &PlantedBoxes) {
    planted.forget(pool.alloc([4; 3]).unwrap()); // LEAK: sync_beside
}

#[test]
fn sync_pool_objects_forgotten_in_a_check_count_on_its_threads_only() {
    alone(
        "sync_pool_objects_forgotten_in_a_check_count_on_its_threads_only",
        || {
            let _ = memwarden::checkpoint();
            let planted = PlantedBoxes::default();
            let pool: SyncPool<Obj3> = SyncPool::new();
            drop(pool.alloc([0; 3]).unwrap()); // the one chunk, allocated now
            forget_sync_before(&pool, &planted);
            let (go, wait_go) = std::sync::mpsc::channel::<()>();
            let (done, wait_done) = std::sync::mpsc::channel::<()>();
            let report = std::thread::scope(|s| {
                let (pool, planted) = (&pool, &planted);
                // A thread started before the check: what it takes during
                // the check is not the check's.
                s.spawn(move || {
                    wait_go.recv().unwrap();
                    forget_sync_beside(pool, planted);
                    done.send(()).unwrap();
                });
                let ((), report) = memwarden::check_leaks(|| {
                    forget_sync_in_check(pool, planted);
                    let child = std::thread::scope(|s| {
                        s.spawn(|| {
                            forget_sync_in_child(pool, planted);
                            std::fs::read_link("/proc/thread-self").unwrap()
                        })
                        .join()
                        .unwrap()
                    });
                    wait_until_gone(child);
                    go.send(()).unwrap();
                    wait_done.recv().unwrap();
                });
                report
            });
            planted.reclaim::<SyncPoolBox<Obj3>>();
            ensure_eq!(pool.stats().chunks, 1, "{report}");
            ensure_eq!(pool.stats().live, 0, "{report}");
            // Taken in the check, on its thread and on a thread it started,
            // from the older chunk: definitely lost, each at its line.
            for tag in ["sync_in_check", "sync_in_child"] {
                ensure_eq!(
                    entries_at(&report, tag),
                    [(LeakKind::DefinitelyLost, 24, 1)],
                    "{tag}: {report}"
                );
            }
            ensure_eq!(report.summary.definitely_lost.blocks, 2, "{report}");
            // Taken before the check, or beside it on another thread: not
            // at all.
            for tag in ["sync_before", "sync_beside"] {
                ensure_eq!(entries_at(&report, tag), [], "{tag}: {report}");
            }
            Ok(())
        },
    );
}
