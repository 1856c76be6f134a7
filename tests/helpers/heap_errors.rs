//! Programs that commit one heap bug each, chosen by the first argument,
//! for tests/heap_errors.rs. Each buggy line ends with `// BUG: <tag>`
//! and each allocation of the victim block with `// ALLOC: <tag>` (and its
//! first free with `// FREE: <tag>`), so the tests find those lines by
//! reading this file. After the bug, each program keeps allocating and
//! checks what it gets, to show that the heap is still sound.
use std::alloc::{Layout, alloc, dealloc, realloc};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: memwarden::Warden = memwarden::Warden::new();

#[inline(never)]
fn double_free() {
    let layout = Layout::from_size_align(48, 8).unwrap();
    // SAFETY: a valid non-zero layout.
    let p = unsafe { alloc(layout) }; // ALLOC: double_free
    // SAFETY: `p` was allocated with `layout`.
    unsafe { dealloc(p, layout) }; // FREE: double_free
    // SAFETY: none: this is the bug under test.
    unsafe { dealloc(black_box(p), layout) }; // BUG: double_free
}

/// The same with the freed block's record deep in its shard's FIFO of the
/// quarantine: its neighbours in memory (which share its shard) are freed
/// before it, and the second free has to search past them.
#[inline(never)]
fn double_free_after_frees() {
    let layout = Layout::from_size_align(40, 8).unwrap();
    let mut blocks: Vec<*mut u8> = (0..600)
        // SAFETY: a valid non-zero layout.
        .map(|_| unsafe { alloc(layout) }) // ALLOC: double_free_after_frees
        .collect();
    let p = blocks.remove(300);
    for b in blocks {
        // SAFETY: each was allocated with `layout` and is freed once.
        unsafe { dealloc(b, layout) };
    }
    // SAFETY: `p` was allocated with `layout`.
    unsafe { dealloc(p, layout) }; // FREE: double_free_after_frees
    // SAFETY: none: this is the bug under test.
    unsafe { dealloc(black_box(p), layout) }; // BUG: double_free_after_frees
}

/// The same with a block too big for a shard's share of the quarantine,
/// which waits in the queue for big blocks.
#[inline(never)]
fn double_free_big() {
    let layout = Layout::from_size_align(100 << 10, 8).unwrap();
    // SAFETY: a valid non-zero layout.
    let p = unsafe { alloc(layout) }; // ALLOC: double_free_big
    // SAFETY: `p` was allocated with `layout`.
    unsafe { dealloc(p, layout) }; // FREE: double_free_big
    // SAFETY: none: this is the bug under test.
    unsafe { dealloc(black_box(p), layout) }; // BUG: double_free_big
}

/// The same while tracking is paused: blocks allocated then are untracked,
/// and their frees (some of them starting with the poison byte) must not
/// be taken for double frees, while the real one is still found.
#[inline(never)]
fn double_free_paused() {
    let layout = Layout::from_size_align(48, 8).unwrap();
    // SAFETY: a valid non-zero layout.
    let p = unsafe { alloc(layout) }; // ALLOC: double_free_paused
    // SAFETY: `p` was allocated with `layout`.
    unsafe { dealloc(p, layout) }; // FREE: double_free_paused
    memwarden::disable();
    for i in 0..1000usize {
        let fill = if i % 2 == 0 { 0xdd } else { i as u8 };
        drop(std::hint::black_box(vec![fill; 48]));
    }
    // SAFETY: none: this is the bug under test.
    unsafe { dealloc(black_box(p), layout) }; // BUG: double_free_paused
    println!("untracked frees while paused: ok");
}

/// `realloc` of a freed block: refused (null), reported as a double free.
#[inline(never)]
fn realloc_after_free() {
    let layout = Layout::from_size_align(48, 8).unwrap();
    // SAFETY: a valid non-zero layout.
    let p = unsafe { alloc(layout) }; // ALLOC: realloc_after_free
    // SAFETY: `p` was allocated with `layout`.
    unsafe { dealloc(p, layout) }; // FREE: realloc_after_free
    // SAFETY: none: this is the bug under test.
    let q = unsafe { std::alloc::realloc(black_box(p), layout, 96) }; // BUG: realloc_after_free
    println!("realloc after free gave null: {}", q.is_null());
}

#[inline(never)]
fn invalid_free() {
    let mut local = [0u8; 64];
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: none: a stack address was never allocated (the bug under test).
    unsafe { dealloc(black_box(local.as_mut_ptr()), layout) }; // BUG: invalid_free
    black_box(&local);
}

#[inline(never)]
fn interior_free() {
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: a valid non-zero layout.
    let p = unsafe { alloc(layout) }; // ALLOC: interior_free
    // SAFETY: none: freeing an interior pointer is the bug under test.
    unsafe { dealloc(black_box(p.add(16)), layout) }; // BUG: interior_free
    // SAFETY: `p` is still live with `layout`.
    unsafe { dealloc(p, layout) };
}

#[inline(never)]
fn layout_mismatch() {
    let layout = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: a valid non-zero layout.
    let p = unsafe { alloc(layout) }; // ALLOC: layout_mismatch
    let wrong = Layout::from_size_align(50, 8).unwrap();
    // SAFETY: none: the wrong layout is the bug under test.
    unsafe { dealloc(black_box(p), wrong) }; // BUG: layout_mismatch
}

#[inline(never)]
fn realloc_mismatch() {
    let layout = Layout::from_size_align(32, 16).unwrap();
    // SAFETY: a valid non-zero layout.
    let p = unsafe { alloc(layout) }; // ALLOC: realloc_mismatch
    let wrong = Layout::from_size_align(32, 8).unwrap();
    // SAFETY: none: the wrong alignment is the bug under test.
    let q = unsafe { realloc(black_box(p), wrong, 64) }; // BUG: realloc_mismatch
    assert!(!q.is_null());
    assert_eq!(q as usize % 16, 0, "the block keeps its real alignment");
    // SAFETY: `q` is live with size 64, align 16.
    unsafe { dealloc(q, Layout::from_size_align(64, 16).unwrap()) };
}

#[inline(never)]
fn overrun() {
    let mut v: Vec<u8> = Vec::with_capacity(32); // ALLOC: overrun
    let p = v.as_mut_ptr();
    // SAFETY: none: writing 3 bytes past the end is the bug under test.
    unsafe { p.add(34).write(0x41) }; // BUG: overrun
    drop(v);
}

#[inline(never)]
fn underrun() {
    let b = Box::new([0u64; 4]); // ALLOC: underrun
    let p = Box::into_raw(b) as *mut u8;
    // SAFETY: none: writing before the start is the bug under test.
    unsafe { p.sub(1).write(0x41) }; // BUG: underrun
    // SAFETY: `p` came from Box::into_raw of a [u64; 4].
    drop(unsafe { Box::from_raw(p as *mut [u64; 4]) });
}

#[inline(never)]
fn overrun_check_heap() {
    let v: Vec<u64> = vec![1, 2, 3]; // ALLOC: overrun_check_heap
    let p = v.as_ptr() as *mut u8;
    // SAFETY: none: writing past the end is the bug under test.
    unsafe { p.add(24).write(0) };
    let found = memwarden::check_heap(); // BUG: overrun_check_heap
    println!("check_heap found {found}");
    drop(v);
}

#[inline(never)]
fn use_after_free() {
    let b = Box::new([0u8; 40]); // ALLOC: use_after_free
    let p = Box::into_raw(b) as *mut u8;
    // SAFETY: `p` came from Box::into_raw of a [u8; 40].
    drop(unsafe { Box::from_raw(p as *mut [u8; 40]) }); // FREE: use_after_free
    // SAFETY: none: writing to freed memory is the bug under test.
    unsafe { p.add(5).write(0x41) };
    let found = memwarden::check_heap(); // BUG: use_after_free
    println!("check_heap found {found}");
}

/// The same after a loop of allocations and frees of the same size, which
/// cycles through the freed block's shard of the quarantine: it must hold
/// more than that shard's fair share.
#[inline(never)]
fn use_after_free_loop() {
    let b = Box::new([0u8; 40]); // ALLOC: use_after_free_loop
    let p = Box::into_raw(b) as *mut u8;
    // SAFETY: `p` came from Box::into_raw of a [u8; 40].
    drop(unsafe { Box::from_raw(p as *mut [u8; 40]) }); // FREE: use_after_free_loop
    for i in 0..500u64 {
        drop(std::hint::black_box(Box::new([i; 5])));
    }
    // SAFETY: none: writing to freed memory is the bug under test.
    unsafe { p.add(5).write(0x41) };
    let found = memwarden::check_heap(); // BUG: use_after_free_loop
    println!("check_heap found {found}");
}

/// The same with a block too big for a shard's share of the quarantine,
/// which waits in the queue for big blocks; then more big blocks than that
/// queue holds go through it.
#[inline(never)]
fn use_after_free_big() {
    let v = vec![7u8; 200 << 10]; // ALLOC: use_after_free_big
    let p = v.as_ptr() as *mut u8;
    drop(v); // FREE: use_after_free_big
    // SAFETY: none: writing to freed memory is the bug under test.
    unsafe { p.add(1000).write(0x41) };
    let found = memwarden::check_heap(); // BUG: use_after_free_big
    println!("check_heap found {found}");
    for i in 0..64u8 {
        drop(std::hint::black_box(vec![i; 100 << 10]));
    }
}

/// The same double free 50 times over (one line, 50 blocks), then one
/// other: reported in full once each, all counted.
#[inline(never)]
fn repeated_double_frees() {
    let layout = Layout::from_size_align(48, 8).unwrap();
    for _ in 0..50 {
        // SAFETY: a valid non-zero layout.
        let p = unsafe { alloc(layout) }; // ALLOC: repeated
        // SAFETY: `p` was allocated with `layout`.
        unsafe { dealloc(p, layout) };
        // SAFETY: none: this is the bug under test.
        unsafe { dealloc(black_box(p), layout) }; // BUG: repeated
    }
    // SAFETY: none: this is the bug under test.
    unsafe { dealloc(black_box(0x1000 as *mut u8), layout) }; // BUG: repeated_other
}

/// Four threads free their own block twice, from the same lines, all at
/// once: one context, found on four threads at the same moment.
#[inline(never)]
fn racing_double_frees() {
    let layout = Layout::from_size_align(48, 8).unwrap();
    let go = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                // SAFETY: a valid non-zero layout.
                let p = unsafe { alloc(layout) } as usize; // ALLOC: racing
                // SAFETY: `p` was allocated with `layout`.
                unsafe { dealloc(p as *mut u8, layout) };
                go.wait();
                // SAFETY: none: this is the bug under test.
                unsafe { dealloc(black_box(p as *mut u8), layout) }; // BUG: racing
            });
        }
    });
}

#[inline(never)]
fn large_align() {
    for align in [4096usize, 1 << 16] {
        let layout = Layout::from_size_align(100, align).unwrap();
        // SAFETY: a valid non-zero layout.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0, "alignment {align} kept");
        // SAFETY: `p` is live with `layout`; writing inside it is fine.
        unsafe {
            p.write_bytes(1, 100);
            dealloc(p, layout);
        }
    }
    println!("large alignments ok");
}

/// Allocates and checks a lot after the bug: the heap must still work.
fn keep_going() {
    let mut all = Vec::new();
    for i in 0..2000usize {
        let v: Vec<usize> = (0..(i % 50)).collect();
        all.push(v);
    }
    for (i, v) in all.iter().enumerate() {
        assert_eq!(v.len(), i % 50);
        assert!(v.iter().copied().eq(0..(i % 50)));
    }
    let s: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert_eq!(s.len(), 1000);
    println!("heap still sound");
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    match name.as_str() {
        "double_free" => double_free(),
        "double_free_after_frees" => double_free_after_frees(),
        "double_free_big" => double_free_big(),
        "double_free_paused" => double_free_paused(),
        "realloc_after_free" => realloc_after_free(),
        "invalid_free" => invalid_free(),
        "interior_free" => interior_free(),
        "layout_mismatch" => layout_mismatch(),
        "realloc_mismatch" => realloc_mismatch(),
        "overrun" => overrun(),
        "underrun" => underrun(),
        "overrun_check_heap" => overrun_check_heap(),
        "use_after_free" => use_after_free(),
        "use_after_free_big" => use_after_free_big(),
        "use_after_free_loop" => use_after_free_loop(),
        "large_align" => large_align(),
        "repeated_double_frees" => repeated_double_frees(),
        "racing_double_frees" => racing_double_frees(),
        "clean" => {}
        other => {
            eprintln!("heap_errors: unknown program `{other}`");
            std::process::exit(2);
        }
    }
    keep_going();
}
