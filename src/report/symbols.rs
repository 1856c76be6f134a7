//! Turning raw return addresses into the user's function, file and line.
//!
//! Runs only when a report is made. Each address may stand for several
//! frames (inlined calls), innermost first. The top of every stack is
//! memwarden, the global-allocator shims the compiler generates, and
//! `alloc`/`core`/`std` code; [`user_frames`] drops those so that frame 0
//! is the line of the program that allocated.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::Frame;

/// Symbolizes `ips` (return addresses, innermost first), keeping inlined
/// frames. `cache` avoids resolving an address twice.
pub(crate) fn symbolize(ips: &[usize], cache: &mut HashMap<usize, Vec<Frame>>) -> Vec<Frame> {
    if no_symbols() {
        // See `after_fork_in_child`: the addresses only.
        return ips
            .iter()
            .map(|ip| Frame {
                function: Some(format!("{ip:#x}")),
                file: None,
                line: None,
            })
            .collect();
    }
    let mut out = Vec::new();
    for &ip in ips {
        let frames = cache
            .entry(ip)
            .or_insert_with(|| under_backtrace_lock(|| resolve(ip)));
        out.extend(frames.iter().cloned());
    }
    out
}

/// Runs `f` holding the `backtrace` crate's global lock, which is
/// re-entrant per thread (it is taken again, at no cost, by
/// `backtrace::resolve` inside `f`).
///
/// The lock memwarden holds while it symbolizes (`check`'s REPORTING) is
/// taken *after* this one: a program thread inside `backtrace::trace`
/// holds it, and may allocate and free (and find a heap error there), so
/// taking it inside memwarden's locks would close a cycle with such a
/// thread. `backtrace` has no call that only takes the lock: `f` runs from
/// the first callback of a `backtrace::trace`, which holds it (or after
/// it, unlocked, if there was no frame to call back with, or if
/// `backtrace`'s lock is poisoned by a panic of the program's).
///
/// A panic in `f` is caught inside the callback (which libgcc calls from C,
/// where a Rust panic may not unwind) and resumed after it.
pub(crate) fn under_backtrace_lock<R>(f: impl FnOnce() -> R) -> R {
    if no_symbols() {
        return f();
    }
    // Counted from before the lock is taken to after it is released (see
    // `after_fork_in_child`).
    struct Holding;
    impl Drop for Holding {
        fn drop(&mut self) {
            let _ = HOLDING.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| h.checked_sub(1));
        }
    }
    HOLDING.fetch_add(1, Ordering::AcqRel);
    let _holding = Holding;
    let mut f = Some(f);
    let mut out = None;
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        backtrace::trace(|_| {
            if let Some(f) = f.take() {
                list_libraries_once();
                out = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
            }
            false
        })
    }));
    match (out, f) {
        (Some(Ok(r)), _) => r,
        (Some(Err(panic)), _) => std::panic::resume_unwind(panic),
        (None, Some(f)) => f(),
        // `f` is taken only where `out` is set.
        (None, None) => unreachable!("the closure ran without a result"),
    }
}

/// Threads in [`under_backtrace_lock`], which may hold `backtrace`'s lock.
static HOLDING: AtomicUsize = AtomicUsize::new(0);
/// This process cannot take `backtrace`'s lock (see
/// [`after_fork_in_child`]): reports name addresses, not lines.
static NO_SYMBOLS: AtomicBool = AtomicBool::new(false);

/// True where symbolizing could wait for ever (see [`after_fork_in_child`]).
fn no_symbols() -> bool {
    NO_SYMBOLS.load(Ordering::Acquire)
}

/// In a child made by `fork`, from memwarden's handler: if another thread
/// of the parent was in [`under_backtrace_lock`] (symbolizing a report),
/// it may have held `backtrace`'s lock, which then stays held for ever in
/// the child, where that thread does not exist. Symbolizing would wait for
/// it: the child's reports give addresses instead. (A thread of the
/// program's own inside `backtrace::trace` at the fork is not seen: the
/// child's first symbolizing then waits, as its own first backtrace
/// would.)
pub(crate) fn after_fork_in_child() {
    if HOLDING.swap(0, Ordering::AcqRel) > 0 {
        NO_SYMBOLS.store(true, Ordering::Release);
    }
}

/// `backtrace` has listed the loaded objects (see [`list_libraries_once`]).
static LISTED: AtomicBool = AtomicBool::new(false);

/// Has `backtrace` list the loaded objects, once, under memwarden's loader
/// lock (see `sync::loader`): the one time it calls `dl_iterate_phdr`
/// (when its cache is first made; `clear_symbol_cache` makes it and reads
/// no debug info), so that a `fork` never copies the process while
/// symbolizing is inside the loader. Later symbolizing takes no loader
/// lock at all.
///
/// Called with `backtrace`'s lock held (from [`under_backtrace_lock`]'s
/// callback; `clear_symbol_cache` takes it again, re-entrantly), so the
/// loader lock is only *tried*, for up to 200 ms (a `fork`, a scan or the
/// unwinder holds it for moments): waiting for it under `backtrace`'s lock
/// would close a cycle with a program thread that, inside a
/// `backtrace::trace` callback, runs a leak check or forks. If it stays
/// held, `backtrace` lists the objects at its first `resolve`, without
/// memwarden's lock.
///
/// `backtrace` builds its cache (0x940 bytes) on the stack and moves it
/// into a static, uninitialised bytes and all: whatever the stack held
/// there becomes a root of every later scan. So the dead stack is zeroed
/// first. (Before it was, a stale address copied so made a forgotten pool
/// object of a release build of `tests/scoped.rs` look still reachable,
/// every time, found with `MEMWARDEN_DEBUG_REACH`.)
///
/// (Once anything has been resolved, `backtrace` has its list: clearing
/// its cache then would only throw away the debug info it has read.)
fn list_libraries_once() {
    for _ in 0..200 {
        if LISTED.load(Ordering::Acquire) {
            return;
        }
        if let Some(listed) = crate::sync::loader::try_with(|| {
            // (From zeroed stack: see above.)
            crate::scope::scrub_dead_stack();
            std::panic::catch_unwind(make_cache).is_ok()
        }) {
            LISTED.store(listed, Ordering::Release);
            return;
        }
        // SAFETY: usleep has no preconditions.
        unsafe { libc::usleep(1000) };
    }
}

/// `backtrace::clear_symbol_cache` in a frame of its own, called right after
/// `scope::scrub_dead_stack`: so that the cache is made in the zeroed
/// stack below, even where the compiler would inline it.
#[inline(never)]
fn make_cache() {
    backtrace::clear_symbol_cache();
}

fn resolve(ip: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    // (Not under the loader lock: see `list_libraries_once`.)
    if !LISTED.load(Ordering::Acquire) {
        // `backtrace` makes its cache now: see `list_libraries_once`.
        crate::scope::scrub_dead_stack();
    }
    backtrace::resolve(ip as *mut std::ffi::c_void, |sym| {
        frames.push(Frame {
            function: sym.name().map(|n| format!("{n:#}")),
            file: sym.filename().map(|p| p.to_string_lossy().into_owned()),
            line: sym.lineno(),
        });
    });
    LISTED.store(true, Ordering::Release);
    if frames.is_empty() {
        frames.push(Frame {
            function: None,
            file: None,
            line: None,
        });
    }
    frames
}

/// Where memwarden's own source files are, as its debug info records them.
const OWN_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");

/// True for frames that belong to memwarden, the allocator shims, or the
/// standard library, never to the program.
pub(crate) fn is_internal(f: &Frame) -> bool {
    if let Some(file) = &f.file {
        let file = file.replace('\\', "/");
        // Standard library sources as rustc records them (`/rustc/<hash>/
        // library/...`), std's vendored dependencies such as hashbrown
        // (`/rust/deps/...`), a local rust-src, and the C runtime's start-up
        // code (glibc's `csu/` and `sysdeps/`).
        const STD: [&str; 5] = [
            "/rustc/",
            "/rust/deps/",
            "/lib/rustlib/src/rust/library/",
            "/csu/",
            "/sysdeps/",
        ];
        if STD.iter().any(|p| file.contains(p)) {
            return true;
        }
        // memwarden's own sources: inlined frames carry short names only
        // (`alloc<System>`), so the path is what tells them apart.
        if file.starts_with(OWN_SRC) {
            return true;
        }
        // Any other source file is the program's (or its dependencies'),
        // except for the allocator shims, which the compiler attributes to
        // the `#[global_allocator]` line. Release builds give inlined and
        // even outer frames bare names (`main`, `make_buffer`), so the
        // name alone must not decide.
        return f.function.as_deref().is_some_and(is_shim);
    }
    let Some(name) = f.function.as_deref() else {
        return true;
    };
    if is_shim(name) {
        return true;
    }
    // Process and thread entry points, with or without debug info.
    const ENTRY: [&str; 6] = [
        "main",
        "_start",
        "__libc_start_main",
        "__libc_start_call_main",
        "start_thread",
        "clone3",
    ];
    if ENTRY.contains(&name) {
        return true;
    }
    let bare = name
        .trim_start_matches(['<', '&', '*', ' '])
        .trim_start_matches("dyn ");
    const PREFIXES: [&str; 6] = [
        "memwarden::",
        "alloc::",
        "core::",
        "std::",
        "backtrace::",
        "__rustc::",
    ];
    PREFIXES.iter().any(|p| bare.starts_with(p))
}

/// True for memwarden's own frames and the allocator shims.
fn is_own(f: &Frame) -> bool {
    let own_file = f
        .file
        .as_deref()
        .is_some_and(|p| p.replace('\\', "/").starts_with(OWN_SRC));
    own_file
        || f.function.as_deref().is_some_and(|n| {
            n.trim_start_matches(['<', '&', '*', ' '])
                .starts_with("memwarden::")
                || is_shim(n)
        })
}

/// The global-allocator shims the compiler generates.
fn is_shim(name: &str) -> bool {
    const SHIMS: [&str; 4] = [
        "__rust_alloc",
        "__rust_realloc",
        "__rust_dealloc",
        "__rust_alloc_zeroed",
    ];
    SHIMS.iter().any(|s| name.ends_with(s))
        || name.contains("__rg_")
        || name.contains("__rdl_")
        || is_c_entry(name)
}

/// C's allocation functions, which `track_c_heap!` defines in the
/// program (debug info names them inside the macro's anonymous constant,
/// `app::_::malloc`) and through which glibc's own code allocates: the
/// first frame of the program is the one that called them.
fn is_c_entry(name: &str) -> bool {
    const C_ENTRIES: [&str; 11] = [
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "malloc_usable_size",
    ];
    let (path, last) = name.rsplit_once("::").unwrap_or(("", name));
    C_ENTRIES.contains(&last)
        && (path.is_empty() || path.ends_with("::_") || path.contains("{constant#"))
}

/// Frames of glibc's thread set-up, whose blocks glibc keeps for the
/// thread's life and after it, in its cache of thread stacks (a thread's
/// vector of thread-local storage blocks, `allocate_dtv`, and the blocks
/// themselves for libraries loaded later): where only glibc can reach them.
/// With C's heap tracked (`track_c_heap!`), a block allocated under one of
/// these is suppressed as the runtime's own, as Valgrind's default
/// suppressions do.
pub(crate) fn is_thread_setup(f: &Frame) -> bool {
    const SETUP: [&str; 9] = [
        "_dl_allocate_tls",
        "_dl_allocate_tls_init",
        "allocate_dtv",
        "_dl_resize_dtv",
        "_dl_update_slotinfo",
        "__tls_get_addr",
        "allocate_stack",
        "pthread_create",
        "__pthread_create_2_1",
    ];
    f.function.as_deref().is_some_and(|name| {
        let name = name.trim_start_matches("__GI_");
        let name = name.split('@').next().unwrap_or(name);
        SETUP.contains(&name)
    })
}

/// Drops the internal frames at the top of `frames`, then keeps at most
/// `max`. If every frame is internal (an allocation made by the runtime
/// itself), the stack is kept from its first std frame so that the report
/// still says where; [`is_runtime`] tells that case apart.
pub(crate) fn user_frames(frames: Vec<Frame>, max: usize) -> Vec<Frame> {
    user_frames_and_origin(frames, max).0
}

/// True for a thread's name as std stores it (`ThreadNameString`, made
/// when the thread is spawned).
pub(crate) fn is_thread_name(frames: &[Frame]) -> bool {
    frames.iter().any(|f| {
        f.function
            .as_deref()
            .is_some_and(|n| n.contains("ThreadNameString"))
    })
}

/// True if `frames` is, for sure, an allocation of the runtime itself: the
/// whole stack is visible (it reaches the process's or a thread's entry
/// point, and has debug info) and no frame of it is the program's. A stack
/// cut short (`DEBUG_MEMORY_FRAMES`) or without debug info is never
/// assumed to be the runtime's.
pub(crate) fn is_runtime(frames: &[Frame]) -> bool {
    const BOTTOM: [&str; 5] = [
        "_start",
        "start_thread",
        "clone3",
        "clone",
        "__libc_start_main",
    ];
    let complete = frames.last().is_some_and(|f| {
        f.function
            .as_deref()
            .is_some_and(|n| BOTTOM.iter().any(|b| n.starts_with(b)))
    });
    complete
        && has_line_tables(frames)
        && !frames.iter().any(|f| f.file.is_some() && !is_internal(f))
}

/// True if the Rust code of `frames` has line tables: some frame has a
/// Rust source file. Not merely "some frame has a file": with glibc's
/// debug information installed (`libc6-dbg`, which Valgrind's package
/// pulls in), glibc's start-up frames have files, while a release build
/// without debug information gives the program's frames names only.
pub(crate) fn has_line_tables(frames: &[Frame]) -> bool {
    frames
        .iter()
        .any(|f| f.file.as_deref().is_some_and(|p| p.ends_with(".rs")))
}

/// [`user_frames`], and whether the stack had no frame of the program.
pub(crate) fn user_frames_and_origin(mut frames: Vec<Frame>, max: usize) -> (Vec<Frame>, bool) {
    let runtime = is_runtime(&frames);
    // The program's first frame: not internal, and with a source file (the
    // compiler-generated C `main` and stripped libraries have none), or, in
    // a program without line tables, a name.
    let lines = has_line_tables(&frames);
    let first_user = frames
        .iter()
        .position(|f| (f.file.is_some() || !lines) && !is_internal(f));
    match first_user {
        Some(i) => {
            frames.drain(..i);
        }
        None => {
            // An allocation of the runtime itself, or a stack cut short
            // (`DEBUG_MEMORY_FRAMES`) before the program's first frame:
            // start at the first std frame (the std function that
            // allocated), past memwarden, the shims and the alloc/core
            // plumbing; without one, at the first frame that is none of
            // those (a collection's own, such as hashbrown's), or else the
            // first that is not memwarden's own or a shim.
            let named = |f: &Frame, prefixes: &[&str]| {
                f.function.as_deref().is_some_and(|n| {
                    let n = n.trim_start_matches('<');
                    prefixes.iter().any(|p| n.starts_with(p))
                })
            };
            let i = frames
                .iter()
                .position(|f| named(f, &["std::"]))
                .or_else(|| {
                    frames
                        .iter()
                        .position(|f| !is_own(f) && !named(f, &["alloc::", "core::"]))
                })
                .or_else(|| frames.iter().position(|f| !is_own(f)))
                .unwrap_or(0);
            frames.drain(..i);
        }
    }
    frames.truncate(max.max(1));
    (frames, runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(function: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: Some(function.to_owned()),
            file: Some(file.to_owned()),
            line: Some(line),
        }
    }

    #[test]
    fn trims_memwarden_shims_and_std_from_the_top() {
        let frames = vec![
            f(
                "<memwarden::Warden as core::alloc::global::GlobalAlloc>::alloc",
                &format!("{OWN_SRC}warden.rs"),
                10,
            ),
            f("__rustc::__rust_alloc", "src/main.rs", 3),
            f(
                "alloc::raw_vec::RawVecInner<A>::try_allocate_in",
                "/rustc/abc/library/alloc/src/raw_vec.rs",
                1,
            ),
            f(
                "<alloc::vec::Vec<T> as core::clone::Clone>::clone",
                "/rustc/abc/library/alloc/src/vec/mod.rs",
                2,
            ),
            f("leaky::make_buffer", "examples/leaky.rs", 12),
            f("leaky::main", "examples/leaky.rs", 30),
            f(
                "core::ops::function::FnOnce::call_once",
                "/rustc/abc/library/core/src/ops/function.rs",
                250,
            ),
        ];
        let out = user_frames(frames, 16);
        assert_eq!(out[0].function.as_deref(), Some("leaky::make_buffer"));
        assert_eq!(out[0].line, Some(12));
        assert_eq!(out.len(), 3, "frames below the first user frame are kept");
    }

    #[test]
    fn cs_allocation_functions_defined_by_the_macro_are_internal() {
        // As debug info names them inside the macro's anonymous constant,
        // and bare (release builds, no debug info).
        for name in [
            "app::_::malloc",
            "app::{constant#0}::free",
            "calloc",
            "realloc",
        ] {
            assert!(is_internal(&f(name, "src/main.rs", 3)), "{name}");
        }
        // The program's own functions of those names are its own.
        for name in ["app::malloc", "app::pool::free", "mallocate"] {
            assert!(!is_internal(&f(name, "src/main.rs", 3)), "{name}");
        }
    }

    #[test]
    fn glibcs_thread_set_up_is_recognised_by_name() {
        let named = |n: &str| Frame {
            function: Some(n.to_owned()),
            file: None,
            line: None,
        };
        for name in [
            "_dl_allocate_tls",
            "__GI__dl_allocate_tls",
            "allocate_dtv",
            "pthread_create@@GLIBC_2.34",
            "__pthread_create_2_1",
            "__tls_get_addr",
        ] {
            assert!(is_thread_setup(&named(name)), "{name}");
        }
        for name in ["app::pthread_create_wrapper", "main", "calloc"] {
            assert!(!is_thread_setup(&named(name)), "{name}");
        }
        assert!(!is_thread_setup(&Frame {
            function: None,
            file: None,
            line: None
        }));
    }

    #[test]
    fn generic_std_code_is_recognised_by_its_source_path() {
        let frame = f(
            "<[T] as alloc::slice::hack::ConvertVec>::to_vec",
            "/rustc/abc/library/alloc/src/slice.rs",
            5,
        );
        assert!(is_internal(&frame));
        assert!(!is_internal(&f(
            "<mycrate::Foo as core::clone::Clone>::clone",
            "src/lib.rs",
            9
        )));
    }

    #[test]
    fn frames_without_a_file_are_not_the_users_line() {
        let frames = vec![
            f(
                "std::rt::lang_start_internal",
                "/rustc/abc/library/std/src/rt.rs",
                2,
            ),
            Frame {
                function: Some("main".into()),
                file: None,
                line: None,
            },
        ];
        let out = user_frames(frames, 16);
        assert_eq!(
            out[0].function.as_deref(),
            Some("std::rt::lang_start_internal")
        );
    }

    #[test]
    fn std_vendored_crates_and_libc_start_up_are_internal() {
        assert!(is_internal(&f(
            "hashbrown::raw::alloc::inner::do_alloc",
            "/rust/deps/hashbrown-0.16.1/src/raw/alloc.rs",
            19
        )));
        assert!(is_internal(&f(
            "__libc_start_call_main",
            "./csu/../sysdeps/nptl/libc_start_call_main.h",
            58
        )));
        // A program's own use of the hashbrown crate is the program's.
        assert!(!is_internal(&f(
            "hashbrown::map::HashMap<K,V>::insert",
            "/home/u/.cargo/registry/src/index.crates.io-1/hashbrown-0.15.0/src/map.rs",
            1
        )));
    }

    #[test]
    fn release_builds_bare_names_in_program_files_are_the_programs() {
        assert!(!is_internal(&f("main", "/app/src/main.rs", 3)));
        assert!(!is_internal(&f("make_buffer", "/app/src/main.rs", 9)));
        assert!(is_internal(&f("__rust_alloc", "/app/src/main.rs", 2)));
        let bare_main = Frame {
            function: Some("main".into()),
            file: None,
            line: None,
        };
        assert!(is_internal(&bare_main));
    }

    #[test]
    fn runtime_needs_a_complete_symbolized_stack() {
        let start = Frame {
            function: Some("_start".into()),
            file: None,
            line: None,
        };
        let std_only = vec![
            f("std::rt::init", "/rustc/abc/library/std/src/rt.rs", 1),
            start.clone(),
        ];
        assert!(is_runtime(&std_only));
        // Cut short: cannot tell.
        assert!(!is_runtime(&std_only[..1]));
        // No debug info anywhere: cannot tell.
        let stripped = vec![
            Frame {
                function: Some("app::leak".into()),
                file: None,
                line: None,
            },
            start.clone(),
        ];
        assert!(!is_runtime(&stripped));
        // A program frame: not the runtime's.
        let mine = vec![f("app::leak", "/app/src/lib.rs", 4), start];
        assert!(!is_runtime(&mine));
    }

    #[test]
    fn without_debug_info_names_decide_the_first_frame() {
        let nf = |n: &str| Frame {
            function: Some(n.into()),
            file: None,
            line: None,
        };
        let out = user_frames(
            vec![nf("alloc::alloc::alloc"), nf("app::leak"), nf("main")],
            16,
        );
        assert_eq!(out[0].function.as_deref(), Some("app::leak"));
    }

    #[test]
    fn glibcs_debug_info_does_not_stand_for_the_programs() {
        // A release build without debug information, on a machine with
        // glibc's installed: only the C start-up frames have files.
        let nf = |n: &str| Frame {
            function: Some(n.into()),
            file: None,
            line: None,
        };
        let frames = vec![
            nf("__rustc::__rust_alloc"),
            nf("app::make_buffer"),
            nf("app::main"),
            nf("std::rt::lang_start_internal"),
            nf("main"),
            f(
                "__libc_start_call_main",
                "../sysdeps/nptl/libc_start_call_main.h",
                58,
            ),
            f("__libc_start_main_impl", "../csu/libc-start.c", 360),
            nf("_start"),
        ];
        assert!(!has_line_tables(&frames));
        assert!(
            !is_runtime(&frames),
            "the program's leak, not the runtime's"
        );
        let (out, runtime) = user_frames_and_origin(frames, 16);
        assert!(!runtime);
        assert_eq!(out[0].function.as_deref(), Some("app::make_buffer"));
    }

    #[test]
    fn a_stack_cut_short_inside_the_runtime_starts_past_memwarden() {
        // `DEBUG_MEMORY_FRAMES=1`: the capture ended in hashbrown's frames,
        // before any of the program's or std's.
        let frames = vec![
            f(
                "memwarden::warden::tracked::<impl GlobalAlloc for Warden<A>>::alloc",
                &format!("{OWN_SRC}warden.rs"),
                137,
            ),
            f("__rustc::__rust_alloc", "src/main.rs", 3),
            f(
                "alloc::alloc::alloc",
                "/rustc/abc/library/alloc/src/alloc.rs",
                94,
            ),
            f(
                "hashbrown::raw::RawTableInner::fallible_with_capacity",
                "/rust/deps/hashbrown-0.15.0/src/raw/mod.rs",
                1500,
            ),
        ];
        let (out, runtime) = user_frames_and_origin(frames, 1);
        assert!(!runtime, "cut short: cannot tell");
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].function.as_deref(),
            Some("hashbrown::raw::RawTableInner::fallible_with_capacity")
        );
    }

    #[test]
    fn caps_at_max_frames() {
        let frames: Vec<_> = (0..30).map(|i| f("app::f", "src/lib.rs", i)).collect();
        assert_eq!(user_frames(frames, 4).len(), 4);
    }

    #[test]
    fn all_internal_keeps_the_runtime_stack() {
        let frames = vec![
            f("memwarden::x", &format!("{OWN_SRC}warden.rs"), 1),
            f(
                "std::rt::lang_start_internal",
                "/rustc/abc/library/std/src/rt.rs",
                2,
            ),
        ];
        let out = user_frames(frames, 16);
        assert_eq!(
            out[0].function.as_deref(),
            Some("std::rt::lang_start_internal")
        );
    }
}
