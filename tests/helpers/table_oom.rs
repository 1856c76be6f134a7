//! A child-process program for tests/heap_errors.rs: memwarden's own tables
//! run out of memory while the program's allocator still has plenty.
//!
//! The inner allocator hands out blocks from a static arena and checks each
//! free: a pointer it never gave out, or a layout other than the one it
//! gave, aborts the process with a message. Then the address space is
//! limited (`RLIMIT_AS`) to what the process has mapped and 4 MiB more
//! (the tables want some 16 MiB more for these blocks), so that the
//! registry's tables, which grow through glibc's `malloc`, cannot grow,
//! while the arena, mapped already, still serves the program. Blocks the
//! registry cannot record must then come out untracked, and their frees
//! reach the inner allocator as it gave them out.
//!
//! Prints how many of the boxes and of the vectors' `realloc`s went
//! untracked, whether the vectors kept their values, and `freed all` at
//! the end.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The arena: 128 MiB of `.bss`, mapped at start, touched only as used.
const ARENA_SIZE: usize = 128 << 20;
#[repr(C, align(4096))]
struct Arena([u8; ARENA_SIZE]);
static mut ARENA: Arena = Arena([0; ARENA_SIZE]);
/// The next free offset in the arena.
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Marks a block's header while the block is live.
const LIVE: usize = 0x11ee_b10c_0000_0000;
const FREED: usize = 0x0dea_d000_0000_0000;
const HEADER: usize = 16;

/// A bump allocator over the arena. Each block has a 16-byte header right
/// before it: the mark and the block's size, checked at its free. Frees are
/// not reused.
struct CheckedArena;

/// Says what went wrong on stderr, without allocating, and aborts.
fn die(what: &str) -> ! {
    for part in ["table_oom: the inner allocator was ", what, "\n"] {
        // SAFETY: writes a buffer of that length to stderr.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    std::process::abort();
}

// SAFETY: blocks are disjoint ranges of the arena, aligned as asked, never
// handed out twice; `null` when the arena is used up.
unsafe impl GlobalAlloc for CheckedArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let align = layout.align().max(HEADER);
        let base = &raw mut ARENA as usize;
        let mut at = NEXT.load(Ordering::Relaxed);
        loop {
            let user = (base + at + HEADER).next_multiple_of(align);
            let end = user + layout.size().max(1) - base;
            if end > ARENA_SIZE {
                return std::ptr::null_mut();
            }
            match NEXT.compare_exchange_weak(at, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    let header = (user - HEADER) as *mut usize;
                    // SAFETY: the header lies in this block's range, ours now.
                    unsafe {
                        header.write(LIVE);
                        header.add(1).write(layout.size());
                    }
                    return user as *mut u8;
                }
                Err(now) => at = now,
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let base = &raw mut ARENA as usize;
        let p = ptr as usize;
        if p < base + HEADER || p >= base + ARENA_SIZE || p % HEADER != 0 {
            die("handed a pointer outside its arena");
        }
        let header = (p - HEADER) as *mut usize;
        // SAFETY: 16 bytes before a 16-aligned pointer inside the arena.
        let (mark, size) = unsafe { (header.read(), header.add(1).read()) };
        if mark != LIVE {
            die("handed a pointer it did not give out, or gave out and took back");
        }
        if size != layout.size() {
            die("handed a block with a size other than the one it gave it");
        }
        // SAFETY: as above.
        unsafe { header.write(FREED) };
    }
}

#[global_allocator]
static GLOBAL: memwarden::Warden<CheckedArena> = memwarden::Warden::wrap(CheckedArena);

/// The process's address space now, from /proc/self/status (VmSize).
fn address_space() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize in /proc/self/status");
    kib << 10
}

/// The soft limit of the address space, which `set` then replaces (the
/// hard limit stays).
fn address_space_limit(set: Option<libc::rlim_t>) -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: fills `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0 {
        panic!("getrlimit: {}", std::io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    if let Some(soft) = set {
        lim.rlim_cur = soft.min(lim.rlim_max);
        // SAFETY: a valid rlimit for this process, within its hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
            panic!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    old
}

const BOXES: usize = 200_000;

/// Vectors allocated before the limit and grown after it: `realloc`s of
/// tracked blocks whose new record finds no room.
const GROWN: usize = 20_000;

fn main() {
    let mut boxes: Vec<Box<[u64; 3]>> = Vec::with_capacity(BOXES);
    let mut grown: Vec<Vec<u64>> = (0..GROWN).map(|_| Vec::with_capacity(1)).collect();
    let live = || memwarden::stats().live_blocks;
    let before = live();
    // A little room over what is mapped now: glibc's heap and memwarden's
    // tables soon cannot grow any more.
    let soft = address_space_limit(Some((address_space() + (4 << 20)) as libc::rlim_t));
    for i in 0..BOXES {
        boxes.push(Box::new([i as u64; 3]));
    }
    let after_boxes = live();
    for (i, v) in grown.iter_mut().enumerate() {
        v.extend(0..40 + i as u64 % 7);
    }
    let after_growth = live();
    address_space_limit(Some(soft));
    let tracked = after_boxes.saturating_sub(before) as usize;
    println!("untracked boxes: {}", BOXES.saturating_sub(tracked));
    // A `realloc` whose new record found no room takes one off the count.
    println!(
        "untracked reallocs: {}",
        after_boxes.saturating_sub(after_growth)
    );
    let sum: u64 = grown.iter().map(|v| v.iter().sum::<u64>()).sum();
    let want: u64 = (0..GROWN as u64)
        .map(|i| (0..40 + i % 7).sum::<u64>())
        .sum();
    println!("grown vectors intact: {}", sum == want);
    drop(grown);
    for b in boxes.drain(..) {
        black_box(b[2]);
    }
    drop(boxes);
    println!("freed all");
}
