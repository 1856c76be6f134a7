//! Child-process programs for tests/c_heap.rs: C's heap tracked through
//! `memwarden::track_c_heap!`, one program per first argument. C's
//! functions are called through the `libc` crate, as C code calls them
//! (the same symbols), and through glibc functions that allocate
//! (`strdup`). Lines marked `// LEAK: <tag>`, `// ALLOC: <tag>`,
//! `// FREE: <tag>` and `// BUG: <tag>` are looked up by the tests.
use std::ffi::c_void;
use std::hint::black_box;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

#[global_allocator]
static GLOBAL: memwarden::Warden = memwarden::Warden::new();
memwarden::track_c_heap!();

/// A C block held by a static: still reachable at exit.
static HELD_C: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
/// A C structure that holds the only pointer to a Rust `Box`.
static C_NODE: AtomicPtr<CNode> = AtomicPtr::new(ptr::null_mut());

unsafe extern "C" {
    // Not in the `libc` crate.
    fn valloc(size: usize) -> *mut c_void;
}

#[repr(C)]
struct CNode {
    tag: u64,
    rust: *mut [u64; 8],
}

fn main() {
    let program = std::env::args().nth(1).unwrap_or_default();
    // SAFETY: each program below uses C's heap as C allows, except for
    // the one bug it is named after.
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe {
        match program.as_str() {
            "leaks" => leaks(),
            "round_trips" => round_trips(),
            "threads" => threads(),
            "double_free" => double_free(),
            "fastbin_double_free" => fastbin_double_free(),
            "freed_then_untracked" => freed_then_untracked(),
            "free_after_realloc" => free_after_realloc(),
            "overrun" => overrun(),
            "use_after_free" => use_after_free(),
            "invalid_free" => invalid_free(),
            "across" => across(),
            "fork" => fork(),
            "dlerror" => dlerror(),
            "toggle" => toggle(),
            "glibc_keeps" => glibc_keeps(),
            "small_stacks" => small_stacks(),
            other => panic!("unknown program {other:?}"),
        }
    }
    // Read, so that the stores to the statics stay in a release build.
    black_box((HELD_C.load(Ordering::SeqCst), C_NODE.load(Ordering::SeqCst)));
    println!("done");
}

/// Leaks of C's heap, and blocks that are reachable only through it.
unsafe fn leaks() {
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe {
        black_box(lose_malloc());
        black_box(lose_strdup());
        black_box(lose_calloc());
        let held = libc::malloc(48); // LEAK: held
        HELD_C.store(held, Ordering::SeqCst);
        // A Rust block whose only pointer is in a C structure.
        let node = libc::malloc(std::mem::size_of::<CNode>()).cast::<CNode>(); // LEAK: node
        let rust = Box::into_raw(Box::new([7u64; 8])); // LEAK: rust_in_c
        node.write(CNode { tag: 1, rust });
        C_NODE.store(node, Ordering::SeqCst);
    }
}

#[inline(never)]
unsafe fn lose_malloc() -> usize {
    // The pointer is kept hidden (XOR-ed): nothing points to the block.
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe { libc::malloc(100) as usize ^ usize::MAX } // LEAK: malloc
}

#[inline(never)]
unsafe fn lose_strdup() -> usize {
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe { libc::strdup(c"a string from C".as_ptr()) as usize ^ usize::MAX } // LEAK: strdup
}

#[inline(never)]
unsafe fn lose_calloc() -> usize {
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe { libc::calloc(3, 40) as usize ^ usize::MAX } // LEAK: calloc
}

/// Every C function, used correctly: contents kept, alignments met,
/// errors as C has them. Prints what it checked.
unsafe fn round_trips() {
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe {
        // malloc, realloc growing and shrinking, contents kept.
        let p = libc::malloc(16).cast::<u8>();
        for i in 0..16 {
            p.add(i).write(i as u8);
        }
        let p = libc::realloc(p.cast(), 100_000).cast::<u8>();
        assert!(!p.is_null());
        assert!((0..16).all(|i| p.add(i).read() == i as u8), "grown");
        let p = libc::realloc(p.cast(), 8).cast::<u8>();
        assert!((0..8).all(|i| p.add(i).read() == i as u8), "shrunk");
        // realloc(p, 0) frees, realloc(NULL, n) allocates.
        assert!(libc::realloc(p.cast(), 0).is_null());
        let q = libc::realloc(ptr::null_mut(), 24);
        assert!(!q.is_null());
        libc::free(q);
        // calloc zeroes, and refuses an overflowing product.
        let z = libc::calloc(10, 100).cast::<u8>();
        assert!((0..1000).all(|i| z.add(i).read() == 0), "zeroed");
        libc::free(z.cast());
        *libc::__errno_location() = 0;
        assert!(libc::calloc(usize::MAX / 2, 3).is_null());
        assert_eq!(*libc::__errno_location(), libc::ENOMEM);
        assert!(libc::reallocarray(ptr::null_mut(), usize::MAX / 2, 3).is_null());
        // Aligned blocks, with realloc keeping the contents.
        let mut out = ptr::null_mut();
        assert_eq!(libc::posix_memalign(&mut out, 256, 1000), 0);
        assert_eq!(out as usize % 256, 0);
        out.cast::<u8>().write_bytes(0x5a, 1000);
        let out = libc::realloc(out, 5000).cast::<u8>();
        assert!(
            (0..1000).all(|i| out.add(i).read() == 0x5a),
            "aligned, grown"
        );
        // Tracked, a block keeps its alignment through realloc (glibc's
        // own realloc gives only malloc's 16 bytes, as C allows).
        if memwarden::is_enabled() {
            assert_eq!(out as usize % 256, 0, "still aligned");
        }
        libc::free(out.cast());
        assert_eq!(
            libc::posix_memalign(&mut ptr::null_mut(), 24, 8),
            libc::EINVAL
        );
        // posix_memalign leaves errno alone; malloc(0) gives a block.
        *libc::__errno_location() = libc::EAGAIN;
        let mut q = ptr::null_mut();
        assert_eq!(libc::posix_memalign(&mut q, 64, 64), 0);
        assert_eq!(*libc::__errno_location(), libc::EAGAIN);
        libc::free(q);
        let zero = libc::malloc(0);
        assert!(!zero.is_null());
        libc::free(zero);
        let a = libc::aligned_alloc(64, 128);
        assert_eq!(a as usize % 64, 0);
        libc::free(a);
        let m = libc::memalign(4096, 10);
        assert_eq!(m as usize % 4096, 0);
        libc::free(m);
        let v = valloc(10);
        assert_eq!(v as usize % 4096, 0);
        libc::free(v);
        // The usable size: exactly what was asked while tracked (the
        // bytes after it are the red zone), at least that otherwise.
        let u = libc::malloc(10);
        let usable = libc::malloc_usable_size(u);
        println!("usable {usable}");
        assert!(usable >= 10);
        libc::free(u);
        // glibc's own allocating functions go through the same malloc.
        let s = libc::strdup(c"hello".as_ptr());
        assert_eq!(std::ffi::CStr::from_ptr(s).to_bytes(), b"hello");
        libc::free(s.cast());
        libc::free(ptr::null_mut());
        println!("all round trips");
    }
}

/// Threads that allocate and free C blocks (and start and end, which has
/// glibc allocate and keep their thread-local storage vectors).
unsafe fn threads() {
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                // SAFETY: blocks used within their sizes and freed once.
                unsafe {
                    let mut blocks = Vec::new();
                    for i in 0..1000usize {
                        let p = libc::malloc(8 + (i * 7 + t) % 300).cast::<u8>();
                        p.write(t as u8);
                        blocks.push(p);
                        if i % 3 == 0 {
                            libc::free(blocks.swap_remove(i % blocks.len()).cast());
                        }
                    }
                    for p in blocks {
                        libc::free(p.cast());
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Blocks freed on another thread than the one that allocated them.
    let blocks: Vec<usize> = (0..100)
        // SAFETY: plain allocations.
        .map(|i| unsafe { libc::malloc(16 + i) } as usize)
        .collect();
    std::thread::spawn(move || {
        for p in blocks {
            // SAFETY: each block freed once.
            unsafe { libc::free(p as *mut c_void) };
        }
    })
    .join()
    .unwrap();
}

unsafe fn double_free() {
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe {
        let p = libc::malloc(32); // ALLOC: double_free
        libc::free(p); // FREE: double_free
        libc::free(p); // BUG: double_free
        still_sound();
    }
}

/// A second `free` of a block that is no longer at the head of glibc's
/// fastbin, which glibc's own checks miss (its tcache full of blocks of
/// the same size, the block goes to a fastbin; another block freed after
/// it then heads that bin).
unsafe fn fastbin_double_free() {
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe {
        let fill: Vec<*mut libc::c_void> = (0..7).map(|_| libc::malloc(32)).collect();
        let a = libc::malloc(32);
        let b = libc::malloc(32);
        for p in fill {
            libc::free(p);
        }
        libc::free(a);
        libc::free(b);
        libc::free(a); // BUG: fastbin_double_free
        still_sound();
    }
}

/// A `free` of the old pointer after `realloc` moved the block.
unsafe fn free_after_realloc() {
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe {
        let p = libc::malloc(32);
        let next = libc::malloc(32); // so that `p` cannot grow where it is
        let q = libc::realloc(p, 4096);
        assert_ne!(p, q, "the block moved");
        libc::free(p); // BUG: free_after_realloc
        libc::free(q);
        libc::free(next);
        still_sound();
    }
}

/// A block of C's freed while tracked, then handed out again untracked
/// (tracking paused; glibc's tcache gives the same block back when the
/// tracked block was glibc's own size, as without red zones), and freed
/// with tracking on: a free of glibc's own block, no double free.
unsafe fn freed_then_untracked() {
    // SAFETY: C's heap used as C allows.
    unsafe {
        // Most of the time at the first try; memwarden's own allocations
        // in between sometimes take the block first.
        let mut same = false;
        for _ in 0..16 {
            let p = libc::malloc(32);
            libc::free(p);
            memwarden::disable();
            let q = libc::malloc(32);
            memwarden::enable();
            same = p == q;
            libc::free(q);
            if same {
                break;
            }
        }
        println!("same block again: {same}");
        still_sound();
    }
}

unsafe fn overrun() {
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe {
        let p = libc::malloc(10).cast::<u8>(); // ALLOC: overrun
        p.add(10).write(b'!');
        libc::free(p.cast()); // BUG: overrun
        still_sound();
    }
}

unsafe fn use_after_free() {
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe {
        let p = libc::malloc(64).cast::<u8>(); // ALLOC: use_after_free
        libc::free(p.cast()); // FREE: use_after_free
        p.add(8).write(1);
        memwarden::check_heap(); // BUG: use_after_free
        still_sound();
    }
}

unsafe fn invalid_free() {
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe {
        let p = libc::malloc(64).cast::<u8>();
        libc::free(p.add(16).cast()); // BUG: invalid_free
        libc::free(p.cast());
        still_sound();
    }
}

/// Blocks freed by the other language: a `Box` by C's `free`, and a C
/// string taken over by `CString` with its own length.
unsafe fn across() {
    // SAFETY: C's heap used as C allows, but for the bug a program is named after.
    unsafe {
        let b = Box::into_raw(Box::new([1u8; 40]));
        libc::free(b.cast());
        let s = libc::strdup(c"from C".as_ptr());
        drop(std::ffi::CString::from_raw(s));
        still_sound();
    }
}

/// C blocks allocated before `fork`: one freed, one reallocated by a
/// `fork` handler.
static BEFORE_FORK: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static GROWN_IN_FORK: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

extern "C" fn fork_handler() {
    // SAFETY: plain C allocations, each freed once; the reallocated block
    // keeps its first 32 bytes.
    unsafe {
        let p = libc::malloc(64);
        p.cast::<u8>().write_bytes(1, 64);
        libc::free(p);
        libc::free(BEFORE_FORK.swap(ptr::null_mut(), Ordering::SeqCst));
        let old = GROWN_IN_FORK.swap(ptr::null_mut(), Ordering::SeqCst);
        if !old.is_null() {
            assert_eq!(libc::malloc_usable_size(old), 32, "the tracked size");
            let new = libc::realloc(old, 4000).cast::<u8>();
            assert!((0..32).all(|i| new.add(i).read() == 7), "kept");
            libc::free(new.cast());
        }
    }
}

/// `fork` with a handler, registered before tracking is switched on (so
/// before memwarden's own), that allocates and frees C blocks: it runs
/// while memwarden's handler holds its locks.
unsafe fn fork() {
    // SAFETY: plain C allocations and a child that only allocates and
    // leaves with `_exit`.
    unsafe {
        libc::pthread_atfork(Some(fork_handler), Some(fork_handler), Some(fork_handler));
        memwarden::enable();
        for _ in 0..3 {
            BEFORE_FORK.store(libc::malloc(32), Ordering::SeqCst);
            let grown = libc::malloc(32);
            grown.cast::<u8>().write_bytes(7, 32);
            GROWN_IN_FORK.store(grown, Ordering::SeqCst);
            match libc::fork() {
                0 => {
                    let v: Vec<u64> = (0..100).collect();
                    let p = libc::malloc(100);
                    libc::free(p);
                    libc::_exit(if v.len() == 100 { 0 } else { 1 });
                }
                -1 => panic!("fork failed"),
                child => {
                    let mut status = 0;
                    assert_eq!(libc::waitpid(child, &mut status, 0), child);
                    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
                }
            }
        }
        still_sound();
    }
}

/// A failed `dlopen` leaves a tracked `dlerror` message, which glibc frees
/// at the next `dl*` call, made by `malloc_usable_size` of a block glibc
/// allocated untracked (while tracking was paused).
unsafe fn dlerror() {
    // SAFETY: plain C allocations, each freed once; a failing dlopen.
    unsafe {
        memwarden::disable();
        let untracked = libc::malloc(10);
        memwarden::enable();
        assert!(libc::dlopen(c"/nonexistent/libnothing.so".as_ptr(), libc::RTLD_NOW).is_null());
        assert!(libc::malloc_usable_size(untracked) >= 10);
        libc::free(untracked);
        still_sound();
    }
}

/// Rust allocations on two threads while tracking is switched off and on:
/// some reach `malloc` after the switch, and must not be taken for C
/// blocks freed with a wrong layout.
unsafe fn toggle() {
    use std::sync::atomic::AtomicBool;
    static STOP: AtomicBool = AtomicBool::new(false);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let mut kept = Vec::new();
                while !STOP.load(Ordering::Relaxed) {
                    kept.push(Box::new(1u64));
                    if kept.len() == 64 {
                        kept.clear();
                    }
                }
            })
        })
        .collect();
    // Until both threads have run a while (each toggle is a few stores).
    for _ in 0..200_000 {
        memwarden::disable();
        memwarden::enable();
    }
    STOP.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    still_sound();
}

/// What glibc keeps for the program in memory the loader allocated: the
/// main thread's `strerror` buffer and `pthread_setspecific` values (in
/// its thread descriptor), and the loader's lists for a library opened
/// with `RTLD_GLOBAL` (in its `link_map`s). All still reachable.
unsafe fn glibc_keeps() {
    // SAFETY: glibc calls with valid arguments; the values stay set.
    unsafe {
        black_box(libc::strerror(9999));
        for i in 0..40 {
            let mut key = 0;
            assert_eq!(libc::pthread_key_create(&mut key, None), 0);
            assert_eq!(libc::pthread_setspecific(key, libc::malloc(40 + i)), 0);
        }
        let m = libc::dlopen(c"libm.so.6".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        assert!(!m.is_null());
        still_sound();
    }
}

extern "C" fn small_stack_thread(_: *mut c_void) -> *mut c_void {
    // SAFETY: plain C allocations, each freed once.
    unsafe {
        for i in 0..100 {
            let p = libc::malloc(16 + i);
            libc::free(p);
        }
    }
    ptr::null_mut()
}

/// Threads with glibc's smallest stacks (16 KiB, as its `SIGEV_THREAD`
/// timer thread has) that allocate.
unsafe fn small_stacks() {
    // SAFETY: a thread attribute set up, used and destroyed; each thread
    // joined.
    unsafe {
        for size in [16usize << 10, 32 << 10, 48 << 10] {
            let mut attr = std::mem::zeroed::<libc::pthread_attr_t>();
            assert_eq!(libc::pthread_attr_init(&mut attr), 0);
            assert_eq!(libc::pthread_attr_setstacksize(&mut attr, size), 0);
            let mut t = std::mem::zeroed::<libc::pthread_t>();
            assert_eq!(
                libc::pthread_create(&mut t, &attr, small_stack_thread, ptr::null_mut()),
                0
            );
            assert_eq!(libc::pthread_join(t, ptr::null_mut()), 0);
            libc::pthread_attr_destroy(&mut attr);
        }
        still_sound();
    }
}

/// After an error under `DEBUG_MEMORY_ON_ERROR=continue`: the heap still
/// works, from both languages.
fn still_sound() {
    let v: Vec<u64> = (0..1000).collect();
    // SAFETY: plain allocations, freed once.
    unsafe {
        let p = libc::malloc(100).cast::<u8>();
        p.write_bytes(1, 100);
        libc::free(p.cast());
    }
    assert_eq!(v.iter().sum::<u64>(), 499_500);
    println!("heap still sound");
}
