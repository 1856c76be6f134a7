//! Child-process program for tests/leaks.rs: a leak scan that stops a
//! thread half-way through `realloc`, inside the inner allocator, after
//! it copied the block and wrote over the old one's first bytes (as
//! glibc's `free` of a chunk over 1 KiB does: four words of free-list
//! links) and before it returned the new block. Until then the block has
//! no record, and the scan reads the old bytes as a root: what the
//! overwritten words pointed to must not be reported lost.
//!
//! The inner allocator is `System`, but for one `realloc`, armed by its
//! new size, which it makes as glibc would (allocate, copy, free) and
//! holds at the point where the old block is already overwritten, until
//! the main thread's scan is over. Prints `definitely lost blocks: N`
//! (and `the realloc was not held` if it missed the window).
//!
//! With the argument `unmap`: the vector's buffer is a mapping of its own,
//! which the held `realloc` unmaps (as glibc's `mremap` does to a big
//! block that moves) before it holds for 20 ms, whatever the scan does:
//! the scan must stop the world again once the thread is out of the
//! window, rather than find every box lost.
//!
//! With the argument `wrong_layout`: an 8-byte block, placed by the inner
//! allocator right before a page that cannot be read, is reallocated with
//! a layout of 64 bytes. memwarden must report the mismatch and read no
//! more of the block than its record says (it faulted when it copied the
//! block's first words from the caller's layout). Prints `survived`.
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

/// `System`, with one `realloc` held in the window described above.
struct Window;

/// The inner size of the `realloc` to hold (0: none).
static ARMED: AtomicUsize = AtomicUsize::new(0);
/// Set by the held `realloc` once the old block is overwritten.
static IN_WINDOW: AtomicBool = AtomicBool::new(false);
/// Set by the main thread when its scan is over.
static RESUME: AtomicBool = AtomicBool::new(false);

/// The inner size of the `alloc` to place before an unreadable page (0:
/// none), and the mapping that holds it.
static GUARDED: AtomicUsize = AtomicUsize::new(0);
static GUARD_MAP: AtomicUsize = AtomicUsize::new(0);
const PAGE: usize = 4096;

/// The inner size of the `alloc` to map on its own (0: none), and that
/// mapping (start, length).
static UNMAP_ARMED: AtomicUsize = AtomicUsize::new(0);
static UNMAP_MAP: AtomicUsize = AtomicUsize::new(0);
static UNMAP_LEN: AtomicUsize = AtomicUsize::new(0);

/// True for the block mapped on its own.
fn unmappable(ptr: *mut u8) -> bool {
    let map = UNMAP_MAP.load(Ordering::Relaxed);
    map != 0 && map == ptr as usize
}

/// True for a block of the guarded mapping (never given back to `System`).
fn guarded(ptr: *mut u8) -> bool {
    let map = GUARD_MAP.load(Ordering::Relaxed);
    map != 0 && (map..map + 2 * PAGE).contains(&(ptr as usize))
}

/// How many bytes glibc's `free` writes at the start of a chunk over 1 KiB
/// (`fd`, `bk`, `fd_nextsize`, `bk_nextsize`).
const LINKS: usize = 4 * size_of::<usize>();

// SAFETY: every call is forwarded to `System` with its own arguments, but
// for the held `realloc`, which allocates the new block from `System`,
// copies the old one's bytes, and frees the old block: what `realloc`
// promises.
unsafe impl GlobalAlloc for Window {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        if GUARDED.load(Ordering::Relaxed) == size
            && GUARDED
                .compare_exchange(size, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // SAFETY: a fresh private mapping of two pages, the second
            // made unreadable; the block ends where that page starts.
            unsafe {
                let map = libc::mmap(
                    std::ptr::null_mut(),
                    2 * PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if map == libc::MAP_FAILED {
                    return std::ptr::null_mut();
                }
                let map = map.cast::<u8>();
                libc::mprotect(map.add(PAGE).cast(), PAGE, libc::PROT_NONE);
                GUARD_MAP.store(map as usize, Ordering::Relaxed);
                return map.add(PAGE - size);
            }
        }
        if UNMAP_ARMED.load(Ordering::Relaxed) == size
            && UNMAP_ARMED
                .compare_exchange(size, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let len = size.div_ceil(PAGE) * PAGE;
            // SAFETY: a fresh private mapping, page-aligned, so aligned
            // enough for any block of this program.
            let map = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if map == libc::MAP_FAILED {
                return std::ptr::null_mut();
            }
            UNMAP_LEN.store(len, Ordering::Relaxed);
            UNMAP_MAP.store(map as usize, Ordering::Relaxed);
            return map.cast();
        }
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if unmappable(ptr) {
            UNMAP_MAP.store(0, Ordering::Relaxed);
            // SAFETY: the block's own mapping, no longer used.
            unsafe { libc::munmap(ptr.cast(), UNMAP_LEN.load(Ordering::Relaxed)) };
            return;
        }
        if guarded(ptr) {
            return; // the mapping stays (a test program's few bytes)
        }
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if guarded(ptr) {
            // Not reached: memwarden refuses a `realloc` whose layout does
            // not match the block's.
            return std::ptr::null_mut();
        }
        if unmappable(ptr) {
            // SAFETY: as for the armed `realloc` below; the old block is its
            // own mapping, unmapped once copied.
            unsafe {
                let new = System.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
                if new.is_null() {
                    return new;
                }
                std::ptr::copy_nonoverlapping(ptr, new, layout.size());
                UNMAP_MAP.store(0, Ordering::Relaxed);
                libc::munmap(ptr.cast(), UNMAP_LEN.load(Ordering::Relaxed));
                IN_WINDOW.store(true, Ordering::Release);
                let held = std::time::Instant::now();
                while held.elapsed() < std::time::Duration::from_millis(20) {
                    std::hint::spin_loop();
                }
                return new;
            }
        }
        let armed = ARMED.load(Ordering::Relaxed);
        if armed == 0
            || armed != new_size
            || ARMED
                .compare_exchange(armed, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            // SAFETY: forwarded.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_size` is non-zero and, rounded to the alignment, no
        // more than `isize::MAX` (`realloc`'s contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a non-zero size.
        let new = unsafe { System.alloc(new_layout) };
        if new.is_null() {
            return new;
        }
        // SAFETY: both blocks hold `layout.size()` bytes (the new one is
        // bigger: the armed `realloc` grows), and they are distinct.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size());
            // What the free of the old block writes over its start.
            ptr.write_bytes(0xd5, LINKS.min(layout.size()));
        }
        IN_WINDOW.store(true, Ordering::Release);
        while !RESUME.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        // SAFETY: the old block, allocated with `layout`, freed once.
        unsafe { System.dealloc(ptr, layout) };
        new
    }
}

#[global_allocator]
static GLOBAL: memwarden::Warden<Window> = memwarden::Warden::wrap(Window);

/// Boxes in the vector before it grows (a 16 KiB buffer).
const BOXES: usize = 2048;

fn main() {
    if !memwarden::is_enabled() {
        println!("tracking is off");
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("wrong_layout") {
        wrong_layout();
        return;
    }
    let unmap = std::env::args().nth(1).as_deref() == Some("unmap");
    let mark = memwarden::checkpoint();
    let grower = thread::spawn(move || {
        let buffer = Layout::array::<Box<u64>>(BOXES).expect("layout");
        if unmap {
            UNMAP_ARMED.store(inner_size(buffer.size()), Ordering::Relaxed);
        }
        let mut v: Vec<Box<u64>> = Vec::with_capacity(BOXES);
        for i in 0..BOXES {
            v.push(Box::new(i as u64));
        }
        // The next push doubles the buffer: memwarden asks the inner
        // allocator for the new size plus its red zones, which the test
        // cannot know, so the size is armed from the vector's own.
        let grown = Layout::array::<Box<u64>>(2 * BOXES).expect("layout");
        if !unmap {
            ARMED.store(inner_size(grown.size()), Ordering::Relaxed);
        }
        v.push(Box::new(BOXES as u64));
        let missed = if unmap {
            UNMAP_ARMED.swap(0, Ordering::Relaxed) != 0
        } else {
            ARMED.swap(0, Ordering::Relaxed) != 0
        };
        if missed {
            // Never held (the inner size was not the one armed): the main
            // thread must not wait for it.
            println!("the realloc was not held");
            IN_WINDOW.store(true, Ordering::Release);
        }
        black_box(&v);
        v.len()
    });
    while !IN_WINDOW.load(Ordering::Acquire) {
        thread::yield_now();
    }
    let report = mark.leaks();
    RESUME.store(true, Ordering::Release);
    let len = grower.join().expect("the growing thread");
    if report.has_definite_leaks() {
        eprintln!("{report}");
    }
    println!("boxes: {len}");
    println!(
        "definitely lost blocks: {}",
        report.summary.definitely_lost.blocks
    );
}

fn wrong_layout() {
    let right = Layout::new::<u64>();
    GUARDED.store(inner_size(right.size()), Ordering::Relaxed);
    // SAFETY: a non-zero size.
    let p = unsafe { std::alloc::alloc(right) };
    assert!(guarded(p), "the block is not the guarded one");
    let wrong = Layout::from_size_align(64, 8).expect("layout");
    // SAFETY: not sound: the layout is not the block's. That is the bug
    // memwarden must report (and refuse) without reading past the block.
    let q = unsafe { std::alloc::realloc(black_box(p), wrong, 128) };
    println!("realloc gave null: {}", q.is_null());
    println!("survived");
}

/// The size memwarden asks of the inner allocator for `size` bytes aligned
/// to 8: the red zones (16 bytes before, 16 after), or without them
/// (`DEBUG_MEMORY_REDZONES=0`, or `DEBUG_MEMORY=leaks` unless
/// `DEBUG_MEMORY_REDZONES=1`) the 8 bytes it keeps after a block then (so
/// that glibc's pointer to the next chunk is not inside it).
fn inner_size(size: usize) -> usize {
    let var = |name: &str| std::env::var(name).map(|v| v.trim().to_ascii_lowercase());
    let redzones = match var("DEBUG_MEMORY_REDZONES").as_deref() {
        Ok("0" | "false" | "no" | "off") => false,
        Ok("1" | "true" | "yes" | "on") => true,
        _ => var("DEBUG_MEMORY").as_deref() != Ok("leaks"),
    };
    if redzones { size + 32 } else { size + 8 }
}
