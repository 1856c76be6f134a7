//! The fast capture against the slow one (`stack::capture`, libgcc's
//! unwinder), frame for frame.
use super::*;
use crate::stack::{self, MAX_CAPTURE};
use std::hint::black_box;

/// An address in the caller's frame, as `Warden` takes it.
macro_rules! here {
    () => {{
        let marker = 0u8;
        black_box(&marker) as *const u8 as usize
    }};
}

/// Both captures, from the same frame and with the same `entry_sp`.
///
/// The fast one is tried again while it gives up, for two seconds at
/// most: captures that overlap with a cache flush (another test unloading
/// a library) give up, and a flush takes as long as the flushing thread
/// is kept off the CPU.
#[inline(never)]
fn both(max: usize, entry_sp: usize) -> (Option<Vec<usize>>, Vec<usize>) {
    let mut fast = [0usize; MAX_CAPTURE];
    let mut slow = [0usize; MAX_CAPTURE];
    let start = std::time::Instant::now();
    let n = loop {
        let n = capture_fast(&mut fast, max, entry_sp);
        if n.is_some() || start.elapsed() > std::time::Duration::from_secs(2) {
            break n;
        }
        std::thread::yield_now();
    };
    let m = stack::capture(&mut slow, max, entry_sp);
    (n.map(|n| fast[..n].to_vec()), slow[..m].to_vec())
}

/// Asserts that both captures agree, with `entry_sp` taken as `Warden`
/// takes it (this function's stack pointer: its own frame is kept, those
/// below are skipped) and as a local's address (this frame is skipped
/// too); returns the first stack.
#[inline(never)]
fn check(max: usize) -> Vec<usize> {
    let mut first = None;
    for entry_sp in [crate::roots::stack_pointer(), here!()] {
        // Twice: the second walk runs from the cache.
        for _ in 0..2 {
            let (fast, slow) = both(max, entry_sp);
            let fast = fast.expect("the fast capture gave up");
            assert_eq!(fast, slow, "fast and slow captures differ");
            assert!(!fast.is_empty());
            first.get_or_insert(fast);
        }
    }
    black_box(first.unwrap_or_default())
}

#[inline(never)]
fn level3() -> usize {
    black_box(check(MAX_CAPTURE)).len() + 1
}

#[inline(never)]
fn level2() -> usize {
    black_box(level3()) + 1
}

#[inline(never)]
fn level1() -> usize {
    black_box(level2()) + 1
}

#[inline(never)]
fn recurse(depth: usize, max: usize) -> usize {
    if depth == 0 {
        return black_box(check(max)).len();
    }
    black_box(recurse(black_box(depth - 1), max)) + 1
}

#[inline(never)]
fn call_dyn(f: &dyn Fn() -> usize) -> usize {
    black_box(f()) + 1
}

#[inline(never)]
fn call_generic<F: Fn() -> usize>(f: F) -> usize {
    black_box(f()) + 1
}

#[test]
fn nested_functions_match_the_slow_path() {
    assert!(level1() > 3);
}

#[test]
fn deep_recursion_matches_the_slow_path() {
    recurse(50, 64);
    recurse(50, MAX_CAPTURE);
    recurse(50, 7);
}

#[test]
fn dyn_fn_and_closures_match_the_slow_path() {
    let f: &dyn Fn() -> usize = &|| black_box(level2());
    assert!(call_dyn(f) > 0);
    let captured = black_box(3usize);
    assert!(call_generic(move || recurse(captured, MAX_CAPTURE)) > 0);
}

#[test]
fn walks_to_the_end_of_the_stack_and_stops_there() {
    // The test thread's stack is shallow: the walk reaches `clone` (or
    // `_start`), whose return address is undefined.
    let frames = check(MAX_CAPTURE);
    assert!(frames.len() < MAX_CAPTURE, "{} frames", frames.len());
}

#[test]
fn small_budgets_match_the_slow_path() {
    for max in 1..6 {
        assert_eq!(check(max).len(), max);
    }
}

#[test]
fn spawned_threads_match_the_slow_path() {
    let big = std::thread::spawn(level1);
    // An explicit small stack: its bounds come from the thread library too.
    // (Above the room the CFI parser is given in a debug build: see
    // `unwind::COLD_ROOM`.)
    let small = std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(|| recurse(20, MAX_CAPTURE))
        .unwrap();
    assert!(big.join().unwrap() > 3);
    assert!(small.join().unwrap() > 20);
}

#[test]
fn threads_racing_on_the_cache_agree() {
    let threads: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || (0..200).map(|_| recurse(i * 3, 24)).sum::<usize>()))
        .collect();
    for t in threads {
        assert!(t.join().unwrap() > 0);
    }
}

#[test]
fn bogus_entry_sp_gives_none_not_garbage() {
    let mut out = [0usize; MAX_CAPTURE];
    let heap = Box::new(0u64);
    let heap_addr = &*heap as *const u64 as usize;
    static SOMEWHERE: u64 = 0;
    let bogus = [
        0,
        1,
        usize::MAX,
        heap_addr,
        &SOMEWHERE as *const u64 as usize,
        // Below this frame, where capture_fast's own frame will be.
        here!() - 64 * 1024,
    ];
    for entry_sp in bogus {
        assert_eq!(
            capture_fast(&mut out, MAX_CAPTURE, entry_sp),
            None,
            "{entry_sp:#x}"
        );
    }
    // A zero budget needs no stack at all.
    assert_eq!(capture_fast(&mut out, 0, 0), Some(0));
    assert_eq!(capture_fast(&mut [], 10, here!()), Some(0));
}

#[test]
fn an_unknown_code_address_gives_none() {
    assert_eq!(miss(0x10), None);
    let on_stack = 0u8;
    assert_eq!(miss(&on_stack as *const u8 as usize), None);
}

/// Runs `check` from a `Drop` during a panic's unwinding.
struct CheckOnDrop;

impl Drop for CheckOnDrop {
    fn drop(&mut self) {
        black_box(check(MAX_CAPTURE));
    }
}

#[test]
fn captures_while_unwinding_a_panic_match_the_slow_path() {
    let caught = std::panic::catch_unwind(|| {
        let _guard = CheckOnDrop;
        // Unlike `panic!`, this runs no panic hook: nothing is printed.
        std::panic::resume_unwind(Box::new(black_box(7u8)));
    });
    assert!(caught.is_err());
}

/// What the capture in [`on_signal`] returned: `usize::MAX` until it ran,
/// 0 for `None`, `n + 1` for `Some(n)`.
static IN_HANDLER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

extern "C" fn on_signal(_signal: libc::c_int) {
    let mut out = [0usize; 16];
    let got = capture_fast(&mut out, 16, crate::roots::stack_pointer());
    IN_HANDLER.store(
        got.map_or(0, |n| n + 1),
        std::sync::atomic::Ordering::SeqCst,
    );
}

#[test]
fn a_signal_frame_gives_none() {
    // Learn this thread's stack bounds outside the handler.
    let mut out = [0usize; 4];
    assert!(capture_fast(&mut out, 4, here!()).is_some());
    // SAFETY: SIGURG is ignored by default and used by nothing else here;
    // the handler only captures and stores an atomic. `raise` runs it on
    // this thread's own stack before returning.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGURG, &action, std::ptr::null_mut()),
            0
        );
        assert_eq!(libc::raise(libc::SIGURG), 0);
    }
    // The walk reaches the kernel's signal frame (`__restore_rt`, a CFI
    // signal trampoline) and hands the whole stack to the slow path.
    assert_eq!(IN_HANDLER.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[inline(never)]
fn after_unload() -> usize {
    black_box(check(MAX_CAPTURE)).len()
}

#[test]
fn unloading_a_library_is_noticed_and_walks_go_on() {
    // A module table exists before the unload.
    assert!(level1() > 3);
    let before = rules::epoch().unwrap_or(0);
    // A glibc stub library that nothing here links: loading and unloading
    // it moves the loader's counters. Skipped where it does not exist.
    // SAFETY: a plain dlopen/dlclose pair of a library with no
    // constructors that anything depends on.
    unsafe {
        let handle = libc::dlopen(c"libBrokenLocale.so.1".as_ptr(), libc::RTLD_NOW);
        if handle.is_null() {
            return;
        }
        libc::dlclose(handle);
    }
    // This function's return address is new to the cache: its miss asks
    // the loader, sees the unload, rebuilds the module table and flushes
    // the cache (if another test's miss did not get there first).
    assert!(after_unload() > 3);
    assert!(
        rules::epoch().is_none_or(|after| after > before),
        "no flush after an unload"
    );
    assert!(level1() > 3);
}

// === the trace cache of `here_fast` ===

/// The stack `here_fast` gives, or libgcc's, captured from one call
/// site of the caller: frames below `entry_sp` (this one) are left out.
#[inline(never)]
fn grab(fast: bool, entry_sp: usize) -> Vec<usize> {
    if fast {
        let start = std::time::Instant::now();
        loop {
            // Retried like `both`: a capture overlapping a cache flush
            // gives up.
            if let Some(id) = here_fast(MAX_CAPTURE, entry_sp, stack::intern) {
                return stack::frames(id);
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(2));
            std::thread::yield_now();
        }
    }
    let mut slow = [0usize; MAX_CAPTURE];
    let m = stack::capture(&mut slow, MAX_CAPTURE, entry_sp);
    slow[..m].to_vec()
}

/// The stack `here_fast` gives here, the one libgcc gives from the same
/// place, and the `entry_sp` used (this frame's stack pointer).
#[inline(never)]
fn cached_and_slow() -> (Vec<usize>, Vec<usize>, usize) {
    let entry_sp = crate::roots::stack_pointer();
    let cached = grab(black_box(true), entry_sp);
    let slow = grab(black_box(false), entry_sp);
    (cached, slow, entry_sp)
}

/// Asserts two stacks of [`cached_and_slow`] are the same but for the
/// first frame, its own, where the two calls of `grab` differ: that one
/// must be a nearby address.
fn same_stack(cached: &[usize], slow: &[usize], what: &str) {
    assert_eq!(cached.len(), slow.len(), "{what}: {cached:x?} vs {slow:x?}");
    assert!(!cached.is_empty());
    assert_eq!(cached[1..], slow[1..], "{what}: the cached trace is stale");
    assert!(
        cached[0].abs_diff(slow[0]) < 256,
        "{what}: {cached:x?} vs {slow:x?}"
    );
}

/// Two callers of the same shape (two instances of one generic function,
/// kept apart by their constant): `cached_and_slow` runs at the same
/// stack pointer from both, and only a return address deeper in the stack
/// tells them apart.
#[inline(never)]
fn caller<const K: u8>() -> (Vec<usize>, Vec<usize>, usize) {
    black_box(K);
    let r = black_box(cached_and_slow());
    black_box(K);
    r
}

#[test]
fn cached_traces_follow_a_changed_caller() {
    let mut seen = Vec::new();
    for round in 0..6 {
        let (cached, slow, sp) = if round % 2 == 0 {
            caller::<1>()
        } else {
            caller::<2>()
        };
        same_stack(&cached, &slow, &format!("round {round}"));
        seen.push((cached, sp));
    }
    // The case the cache must get right: the same starting registers.
    assert_eq!(
        seen[0].1, seen[1].1,
        "the two callers' frames differ in size"
    );
    // Both callers were seen, with different stacks each time.
    assert_ne!(seen[0].0[1..], seen[1].0[1..]);
    assert_eq!(seen[0].0, seen[2].0);
    assert_eq!(seen[1].0, seen[3].0);
}

#[test]
fn cached_traces_follow_recursion_depth_and_threads() {
    fn at_depth(d: usize) -> (Vec<usize>, Vec<usize>, usize) {
        if d == 0 {
            cached_and_slow()
        } else {
            black_box(at_depth(black_box(d - 1)))
        }
    }
    let run = || {
        for d in [3, 5, 3, 0, 5, 5, 1] {
            let (cached, slow, _) = at_depth(d);
            same_stack(&cached, &slow, &format!("depth {d}"));
        }
    };
    run();
    let handles: Vec<_> = (0..3).map(|_| std::thread::spawn(run)).collect();
    for h in handles {
        h.join().expect("thread failed");
    }
}

#[test]
fn the_trace_cache_keeps_no_word_that_looks_like_an_address() {
    // Fill this thread's cache with a few walks.
    for d in [0, 2, 4] {
        fn at_depth(d: usize) -> Option<u32> {
            if d == 0 {
                here_fast(MAX_CAPTURE, crate::roots::stack_pointer(), stack::intern)
            } else {
                black_box(at_depth(black_box(d - 1)))
            }
        }
        assert!(at_depth(d).is_some());
    }
    let user_space = |w: usize| w >> 48 == 0;
    TRACES.with(|c| {
        // SAFETY: this thread's cache, and no capture runs meanwhile.
        let cache = unsafe { &*c.get() };
        let mut words = 0;
        for t in cache.way.iter().filter(|t| t.id != 0) {
            assert!(!user_space(t.rbp), "the starting rbp is kept as it was");
            for r in &t.steps.read[..t.steps.len] {
                // The leak scan reads thread-local storage: a kept return
                // address or saved rbp must not look like a pointer.
                assert!(!user_space(r.word), "word {:#x} kept as it was", r.word);
                words += 1;
            }
        }
        assert!(words > 0, "the walks were cached");
    });
}
