//! Scoped leak checks inside a `cargo test` binary that registers Warden:
//! `assert_no_leaks`, `check_leaks` and checkpoints, with libtest running
//! these tests in parallel threads beside each other.
#![cfg(all(feature = "tracking", target_os = "linux"))]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use memwarden::LeakKind;

#[global_allocator]
static GLOBAL: memwarden::Warden = memwarden::Warden::new();

/// Blocks one test leaked on purpose, kept as obfuscated addresses (not
/// pointers, so the leak scan cannot see them) and freed after the check,
/// so that a run with DEBUG_MEMORY=1 does not end with real leaks. Each
/// test has its own, so no test frees another's leak before its check.
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
    let planted = Planted::default();
    let err = catch_unwind(AssertUnwindSafe(|| {
        memwarden::assert_no_leaks(|| plant(&planted, 8));
    }))
    .expect_err("a leaking closure must panic");
    planted.reclaim();
    let text = panic_text(err);
    assert!(
        text.starts_with("memwarden: leak found by assert_no_leaks"),
        "{text}"
    );
    assert!(
        text.contains("64 bytes in 1 block definitely lost"),
        "{text}"
    );
    let site = format!("scoped.rs:{}", line_of("plant"));
    assert!(text.contains(&site), "the report names {site}:\n{text}");
}

#[test]
fn check_leaks_reports_without_panicking() {
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
    assert_eq!(lost.len(), 1, "{report}");
    assert_eq!((lost[0].bytes, lost[0].blocks), (64, 2));
    assert_eq!(lost[0].frames[0].line, Some(line_of("plant")));
    assert!(
        lost[0].frames[0]
            .file
            .as_deref()
            .unwrap()
            .ends_with("tests/scoped.rs")
    );
}

#[test]
fn a_leak_in_a_joined_child_thread_counts() {
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
        // `join` returns once the thread's closure is done; the thread may
        // still be on its way out, with its dead frames (the planted
        // pointer among them) on a stack the scan still sees. Wait until it
        // is gone, as a thread that ended well before a check would be.
        let task = std::path::Path::new("/proc/self/task").join(tid.file_name().unwrap());
        for _ in 0..2000 {
            if !task.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
    planted.reclaim();
    assert_eq!(report.summary.definitely_lost.bytes, 16, "{report}");
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
    let planted = Planted::default();
    let mark = memwarden::checkpoint();
    let kept = Box::new([3u64; 6]);
    plant(&planted, 3);
    let report = mark.leaks();
    planted.reclaim();
    // A checkpoint sees every thread: keep the entries planted by this test
    // (other tests plant from the same line, beside it).
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
    assert_eq!(mine.len(), 1, "{report}");
    assert_eq!(
        (mine[0].kind, mine[0].bytes),
        (LeakKind::DefinitelyLost, 24)
    );
    assert!(
        report
            .leaks
            .iter()
            .all(|l| l.kind != LeakKind::StillReachable)
    );
    assert_eq!(kept[5], 3);
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
    assert!(found >= 3, "{report}");
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
