//! C's heap through memwarden, for programs that mix Rust and C: the
//! functions behind [`track_c_heap!`](crate::track_c_heap).
//!
//! The macro defines `malloc`, `free` and the rest of C's allocation
//! functions in the program's own binary, where they replace glibc's for
//! every library the process loads (glibc supports replacing its
//! allocator this way). Each calls its namesake here. While tracking is
//! on, a block of C's is allocated and freed by a second [`Warden`],
//! `HEAP`, around glibc's allocator as reached by its own names
//! (`__libc_malloc`, ...), which the program's `malloc` does not replace.
//! Its records go into the same registry as the Rust allocator's, so a
//! report shows C's leaks with their stacks, a block of Rust's held only
//! by a C structure is reachable through that structure, and C's double
//! frees, overruns and uses after free are caught as Rust's are.
//!
//! Rust's `System` allocator calls `malloc` too, so the Rust allocator's
//! own calls to its inner allocator come here as well: they are told
//! apart by memwarden's re-entrancy guard, which is set while `Warden`
//! works on a block, and go straight to glibc. So does every call while
//! tracking is off, after one relaxed load.
//!
//! Written by hand rather than taken from a crate: the replacement must
//! share memwarden's registry, guard and reports, which no allocator
//! crate can reach.
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::Warden;
use crate::guard;
use crate::registry::{self, Lookup, Record};
use crate::state::{self, MODE, OFF, ON, UNINIT};

unsafe extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_free(ptr: *mut c_void);
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
}

use crate::sys::MALLOC_ALIGN;

/// glibc's allocator by its own names: the inner allocator of C's
/// tracked blocks. Unlike `GlobalAlloc`'s contract requires, it also
/// takes zero sizes (C's `malloc(0)`), as glibc does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LibcHeap;

// SAFETY: every method returns null or a block of glibc's of at least the
// layout's size and alignment (`__libc_malloc` aligns to MALLOC_ALIGN,
// `__libc_memalign` to any power of two), and frees only such blocks.
unsafe impl GlobalAlloc for LibcHeap {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: glibc's allocator takes any size.
        unsafe {
            fresh(if l.align() <= MALLOC_ALIGN {
                __libc_malloc(l.size())
            } else {
                __libc_memalign(l.align(), l.size())
            })
            .cast()
        }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.align() <= MALLOC_ALIGN {
            // SAFETY: as above.
            return unsafe { fresh(__libc_calloc(1, l.size())).cast() };
        }
        // SAFETY: as above.
        let p = unsafe { self.alloc(l) };
        if !p.is_null() {
            // SAFETY: `p` is a new block of `l.size()` bytes.
            unsafe { p.write_bytes(0, l.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from glibc's, and
        // is a tracked block, freed once, here.
        unsafe {
            mark_freed(ptr);
            __libc_free(ptr.cast())
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        if l.align() <= MALLOC_ALIGN {
            // SAFETY: `ptr` is glibc's; a moved block keeps MALLOC_ALIGN.
            // Marked first, as a freed block, in case it moves: a block
            // that stays (or does not move, glibc out of memory) has the
            // mark in its slack, which `fresh` or the next free handles.
            return unsafe {
                mark_freed(ptr);
                fresh(__libc_realloc(ptr.cast(), new_size)).cast()
            };
        }
        // glibc's `realloc` may move a block to a place aligned only to
        // MALLOC_ALIGN: move it by hand.
        // SAFETY: `new_size` with `l.align()` is a valid layout (the
        // caller's contract).
        let new = unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, l.align())) };
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct, of `l.size()` and
            // `new_size` bytes; the old one is freed once.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, l.size().min(new_size));
                mark_freed(ptr);
                __libc_free(ptr.cast());
            }
        }
        new
    }
}

/// The `Warden` that allocates C's blocks. They are freed (and
/// reallocated) through the program's global allocator when that is a
/// `Warden` (see [`note_rust_warden`]): the quarantine is shared, and a
/// free that pushes blocks out of it must hand each to the allocator that
/// made it, which only the global `Warden` knows for Rust's blocks (it
/// frees C's with glibc's, `Record::is_c`).
static HEAP: Warden<LibcHeap> = Warden::wrap(LibcHeap);

/// True once one of C's functions defined by `track_c_heap!` was called:
/// memwarden's `malloc` may then be reached from inside glibc, with
/// glibc's locks held (see `unwind::query_stack_bounds`).
static IN_USE: AtomicBool = AtomicBool::new(false);

/// Whether `track_c_heap!`'s functions are in use in this process.
pub(crate) fn in_use() -> bool {
    IN_USE.load(Ordering::Relaxed)
}

/// Sets `flag`, which only ever goes from false to true, writing its
/// cache line once rather than at each call.
#[inline(always)]
fn raise(flag: &AtomicBool) {
    if !flag.load(Ordering::Relaxed) {
        flag.store(true, Ordering::Relaxed);
    }
}

/// True once a `Warden` tracked a Rust allocation: the global allocator is
/// a `Warden`, through which C's frees then go.
static RUST_WARDEN: AtomicBool = AtomicBool::new(false);

/// Called by a `Warden` as it tracks a Rust allocation (before the block
/// is recorded, so before any Rust block can be in the quarantine).
#[inline(always)]
pub(crate) fn note_rust_warden() {
    raise(&RUST_WARDEN);
}

/// Frees the tracked block `p` with `layout` (a live record's own, or any
/// for a block to be reported), through the global `Warden` if there is
/// one, else through [`HEAP`], where no Rust block can be.
///
/// # Safety
/// `p` is a block handed to `free`.
unsafe fn dealloc_tracked(p: *mut u8, layout: Layout) {
    // SAFETY: the global allocator is a `Warden`, which looks the block
    // up as `HEAP` would (the contract's, not `GlobalAlloc`'s).
    unsafe {
        if RUST_WARDEN.load(Ordering::Relaxed) {
            std::alloc::dealloc(p, layout)
        } else {
            HEAP.dealloc(p, layout)
        }
    }
}

/// [`dealloc_tracked`]'s `realloc`.
///
/// # Safety
/// As for [`dealloc_tracked`]; `size` makes a valid layout with
/// `layout`'s alignment, and is not zero.
unsafe fn realloc_tracked(p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
    // SAFETY: as in `dealloc_tracked`.
    unsafe {
        if RUST_WARDEN.load(Ordering::Relaxed) {
            std::alloc::realloc(p, layout, size)
        } else {
            HEAP.realloc(p, layout, size)
        }
    }
}

/// True if a new block is to be tracked: tracking is on, and this is not
/// memwarden's own work (the Rust allocator's inner calls among it).
#[inline(always)]
fn tracking() -> bool {
    raise(&IN_USE);
    if state::mode() != ON {
        return false;
    }
    if guard::busy() {
        if guard::forking() {
            // A `fork` handler's block, made untracked (the registry's
            // locks are held): a Rust free of it must not be taken for an
            // invalid one.
            state::note_untracked();
        }
        return false;
    }
    true
}

/// True if the block at `p`, handed back to `free` or `realloc`, may be a
/// tracked one, so that the registry is asked: not while tracking has
/// never been on, and not inside memwarden. There nearly every call is the
/// Rust allocator giving back the inner block of one of its own, or one of
/// memwarden's buffers, which are glibc's, untracked; and memwarden may
/// hold a registry lock then, which a lookup would wait on for ever.
/// (memwarden's own work calls no C function that frees a block the
/// program allocated: what C allocates inside it, it frees inside it.)
#[inline(always)]
fn may_be_tracked() -> bool {
    raise(&IN_USE);
    let m = MODE.load(Ordering::Relaxed);
    m != OFF && m != UNINIT && !guard::busy()
}

/// The registry's knowledge of `p`, searching the quarantine when the
/// Rust allocator would.
///
/// # Safety
/// `p` must be a block the caller may free: readable for one byte.
unsafe fn lookup(p: *const u8) -> Lookup {
    // SAFETY: `p` is readable for one byte (the contract).
    registry::peek(p as usize, || unsafe {
        crate::warden::may_be_quarantined(p)
    })
}

/// The layout a tracked block was allocated with.
fn layout_of(rec: &Record) -> Layout {
    // SAFETY: the record's size and alignment came from a valid layout
    // (or from C's `malloc`, whose sizes `malloc` checked the same way).
    unsafe { Layout::from_size_align_unchecked(rec.size(), rec.align()) }
}

/// A layout for a block the registry knows as freed: any will do, the
/// free is reported and nothing freed.
const ANY: Layout = Layout::new::<u8>();

/// True if `p`, which the registry does not know, cannot be a block of
/// glibc's while every block has been tracked: it is not aligned as
/// glibc's blocks are, or the size word glibc keeps right before a block
/// is not one it would write (a pointer into the middle of a tracked block
/// has the block's own bytes there). Such a free is reported as an
/// invalid one; any other unknown pointer goes to glibc, whose own checks
/// then apply (a block glibc allocated for itself while memwarden was at
/// work is untracked, and legitimately freed later).
///
/// # Safety
/// As for [`lookup`]; glibc's `free` reads the same word.
unsafe fn not_glibcs(p: *const u8) -> bool {
    // SAFETY: per the contract.
    state::all_tracked() && unsafe { size_field(p) }.is_none()
}

/// The size word glibc keeps right before its block `p` (the chunk's size
/// and flags), or `None` if `p` is not aligned as glibc's blocks are or
/// that word holds a size glibc would not write.
///
/// # Safety
/// `p` must be readable for the word before it (as glibc's `free` reads
/// it) if it is aligned.
#[inline]
unsafe fn size_field(p: *const u8) -> Option<usize> {
    if p as usize % MALLOC_ALIGN != 0 {
        return None;
    }
    // SAFETY: per the contract.
    let field = unsafe { p.sub(WORD).cast::<usize>().read() };
    let size = field & !7;
    (size >= 4 * WORD && size % MALLOC_ALIGN == 0 && size <= 1 << 47).then_some(field)
}

/// A machine word's bytes.
const WORD: usize = std::mem::size_of::<usize>();

/// Set once a freed block was marked ([`mark_freed`]): until then no block
/// has a mark to clear, and an allocation looks for none.
static MARKED: AtomicBool = AtomicBool::new(false);

/// Called when tracking is set up without red zones, before any block is
/// tracked: from then on freed blocks are marked ([`mark_freed`]) and
/// every block glibc hands out through this module is checked for a mark
/// ([`fresh`]). (Set only at the first mark instead, a thread that read
/// it unset just before could be handed a block marked meanwhile, and keep
/// the mark.) Not armed unless `__libc_malloc` is glibc's: a block of 24
/// bytes from it must have glibc's size word before it (a 32-byte chunk,
/// not `mmap`ed). An allocator put in its place (some override glibc's
/// own names too) keeps other data there, and a mark written from it
/// would land in another block.
pub(crate) fn arm_marks() {
    if MARKED.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: a block of `__libc_malloc`'s, freed once. The word before
    // it is read with `process_vm_readv`: another allocator's block may
    // start a mapping.
    let glibcs = unsafe {
        let p = __libc_malloc(24).cast::<usize>();
        if p.is_null() {
            return;
        }
        let field = crate::reach::read_word(p as usize - WORD, true);
        __libc_free(p.cast());
        field.is_some_and(|f| f & !7 == 32 && f & 2 == 0)
    };
    if glibcs {
        MARKED.store(true, Ordering::Relaxed);
    }
}

/// What [`mark_freed`] writes, XOR the block's address.
const FREED_MARK: usize = 0x6d77_6672_6565_642e;

/// The biggest chunk glibc keeps in a thread's cache (1,032 usable bytes;
/// a tracked block of up to 1,024, with the 8 bytes memwarden adds without
/// red zones): bigger ones go to bins, where glibc writes the next chunk's
/// `prev_size` at once, so a mark there would not last.
const MARK_MAX_CHUNK: usize = 1040;

/// The last word of glibc's block `p` (the size field right before it
/// says where: the next chunk's `prev_size`, which a block in use may
/// use), or `None` for a block `mmap`ed on its own (unmapped when freed),
/// one too big to be marked ([`MARK_MAX_CHUNK`]) or a size field glibc
/// would not write. At most 1,024 bytes after `p`.
///
/// # Safety
/// `p` must be readable for the word before it. The word returned is only
/// an address: it lies in the block if `p` is a block of glibc's.
#[inline]
unsafe fn last_word(p: *mut u8) -> Option<*mut usize> {
    // SAFETY: per the contract.
    let field = unsafe { size_field(p) }?;
    let size = field & !7;
    if field & 2 != 0 || size > MARK_MAX_CHUNK {
        return None;
    }
    // The chunk starts 2 words before `p` and is `size` long; its last word
    // is the one before the next chunk's size field.
    Some(p.wrapping_add(size - 2 * WORD).cast())
}

/// Marks tracked block `p` of C's, about to go back to glibc, as freed,
/// when a second `free` of it could not be told from a free of a block
/// glibc made itself: without red zones (`DEBUG_MEMORY=leaks`), whose
/// pattern otherwise shows it ([`not_glibcs`]). The mark is its last word
/// (past the block's own bytes), which glibc leaves alone while the block
/// waits in a tcache or a fastbin, as it does the block's first words
/// only; glibc's `free` detects a second free in its tcache, but not one
/// in a fastbin that is not at its head, which then corrupts its heap.
///
/// (memwarden's own table buffers, which [`LibcHeap`] frees too, are
/// marked as well: harmless, their last word is past what they hold.)
///
/// # Safety
/// `p` is a live block of glibc's, about to be freed or reallocated.
#[inline]
unsafe fn mark_freed(p: *mut u8) {
    // Armed (glibc's allocator, no red zones) or not at all.
    if !MARKED.load(Ordering::Relaxed) || state::redzones() {
        return;
    }
    // SAFETY: per the contract.
    if let Some(w) = unsafe { last_word(p) } {
        // SAFETY: the block's last word, ours until it is freed.
        unsafe { w.write(FREED_MARK ^ p as usize) };
    }
}

/// True if `p`, which the registry does not know, holds the mark of a
/// block of C's already freed ([`mark_freed`]).
///
/// # Safety
/// As for [`last_word`]: `p` is a block handed to `free` or `realloc`.
#[inline]
unsafe fn is_marked(p: *mut u8) -> bool {
    if !MARKED.load(Ordering::Relaxed) {
        return false;
    }
    // SAFETY: per the contract.
    let Some(w) = (unsafe { last_word(p) }) else {
        return false;
    };
    let page = crate::sys::page_size();
    let word = if (w as usize) / page == (p as usize - WORD) / page {
        // SAFETY: on the page of the word before `p`, which is readable.
        unsafe { w.read() }
    } else {
        // On the next page, which glibc's `free` of a cached block does
        // not read: read so that an unmapped page (`p` no block at all)
        // is no crash.
        match crate::reach::read_word(w as usize, true) {
            Some(word) => word,
            None => return false,
        }
    };
    word == FREED_MARK ^ p as usize
}

/// `p`, a block glibc has just handed out (or null), with the mark of an
/// earlier owner cleared: a block given out untracked must not look freed.
///
/// # Safety
/// `p` is null or a new block of glibc's.
#[inline(always)]
unsafe fn fresh(p: *mut c_void) -> *mut c_void {
    if MARKED.load(Ordering::Relaxed) && !p.is_null() {
        // SAFETY: per the contract.
        unsafe { clear_mark(p.cast()) };
    }
    p
}

/// `alloc()`, a call of glibc's for a block given out untracked, as
/// [`fresh`] has it: written so that, while no block was ever marked, the
/// call stays a tail call (the path of every C allocation while tracking
/// is off).
///
/// # Safety
/// `alloc` returns null or a new block of glibc's.
#[inline(always)]
unsafe fn untracked(alloc: impl FnOnce() -> *mut c_void) -> *mut c_void {
    if MARKED.load(Ordering::Relaxed) {
        // SAFETY: per the contract.
        return unsafe { untracked_marked(alloc) };
    }
    alloc()
}

/// [`untracked`] once blocks were marked: out of line, so that the other
/// path's call to glibc stays a tail call.
///
/// # Safety
/// As for [`untracked`].
#[inline(never)]
unsafe fn untracked_marked(alloc: impl FnOnce() -> *mut c_void) -> *mut c_void {
    // SAFETY: per the contract.
    unsafe { fresh(alloc()) }
}

/// See [`fresh`].
///
/// # Safety
/// As for [`fresh`], `p` not null.
#[inline(never)]
unsafe fn clear_mark(p: *mut u8) {
    // SAFETY: per the contract.
    if let Some(w) = unsafe { last_word(p) } {
        // SAFETY: the block's last word, readable; written only if it
        // holds the mark, which its new owner cannot have put there yet.
        unsafe {
            if w.read() == FREED_MARK ^ p as usize {
                w.write(0);
            }
        }
    }
}

fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

fn enomem() -> *mut c_void {
    set_errno(libc::ENOMEM);
    std::ptr::null_mut()
}

/// Allocates `l` tracked, or sets `ENOMEM`.
///
/// # Safety
/// `l`'s size may be zero; nothing else is required.
#[inline(always)]
unsafe fn alloc_tracked(l: Layout, zeroed: bool) -> *mut c_void {
    // SAFETY: `Warden` and `LibcHeap` take zero sizes too (a tracked
    // block always has red zones around it, or glibc takes the zero).
    let p = unsafe { HEAP.alloc_c(l, zeroed) };
    if p.is_null() { enomem() } else { p.cast() }
}

/// C's `malloc`.
///
/// # Safety
/// None beyond C's: the block must be freed once, with `free`.
#[doc(hidden)]
#[inline]
pub unsafe fn malloc(size: usize) -> *mut c_void {
    if !tracking() {
        // SAFETY: glibc's allocator takes any size.
        return unsafe { untracked(|| __libc_malloc(size)) };
    }
    match Layout::from_size_align(size, 1) {
        // SAFETY: a valid layout.
        Ok(l) => unsafe { alloc_tracked(l, false) },
        Err(_) => enomem(),
    }
}

/// C's `calloc`.
///
/// # Safety
/// As for [`malloc`].
#[doc(hidden)]
#[inline]
pub unsafe fn calloc(n: usize, size: usize) -> *mut c_void {
    if !tracking() {
        // SAFETY: glibc's allocator checks the product itself.
        return unsafe { untracked(|| __libc_calloc(n, size)) };
    }
    match n
        .checked_mul(size)
        .and_then(|t| Layout::from_size_align(t, 1).ok())
    {
        // SAFETY: a valid layout.
        Some(l) => unsafe { alloc_tracked(l, true) },
        None => enomem(),
    }
}

/// C's `memalign`, as glibc has it: an alignment that is not a power of
/// two is rounded up to one.
///
/// # Safety
/// As for [`malloc`].
#[doc(hidden)]
#[inline]
pub unsafe fn memalign(align: usize, size: usize) -> *mut c_void {
    if !tracking() {
        // SAFETY: glibc's allocator takes any arguments.
        return unsafe { untracked(|| __libc_memalign(align, size)) };
    }
    let Some(align) = align.max(1).checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    };
    match Layout::from_size_align(size, align) {
        // SAFETY: a valid layout.
        Ok(l) => unsafe { alloc_tracked(l, false) },
        Err(_) => enomem(),
    }
}

/// C's `aligned_alloc`: the alignment must be a power of two.
///
/// # Safety
/// As for [`malloc`].
#[doc(hidden)]
#[inline]
pub unsafe fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    // SAFETY: as for `memalign`.
    unsafe { memalign(align, size) }
}

/// C's `posix_memalign`: 0, `EINVAL` or `ENOMEM`; `errno` is kept.
///
/// # Safety
/// `out` must be valid for a pointer's write.
#[doc(hidden)]
#[inline]
pub unsafe fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % std::mem::size_of::<usize>() != 0 {
        return libc::EINVAL;
    }
    // SAFETY: `__errno_location` returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: as for `memalign`.
    let p = unsafe { memalign(align, size) };
    set_errno(errno);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: `out` is writable (the contract).
    unsafe { out.write(p) };
    0
}

/// C's `valloc`: aligned to a page.
///
/// # Safety
/// As for [`malloc`].
#[doc(hidden)]
#[inline]
pub unsafe fn valloc(size: usize) -> *mut c_void {
    // SAFETY: as for `memalign`.
    unsafe { memalign(crate::sys::page_size(), size) }
}

/// C's `pvalloc`: aligned to a page, the size rounded up to pages (one
/// page for 0).
///
/// # Safety
/// As for [`malloc`].
#[doc(hidden)]
#[inline]
pub unsafe fn pvalloc(size: usize) -> *mut c_void {
    let page = crate::sys::page_size();
    match size.max(1).checked_next_multiple_of(page) {
        // SAFETY: as for `memalign`.
        Some(size) => unsafe { memalign(page, size) },
        None => enomem(),
    }
}

/// C's `free`.
///
/// # Safety
/// `ptr` is null or a block from this module's functions (or glibc's)
/// not freed yet; a double or invalid free of a tracked block is reported
/// instead.
#[doc(hidden)]
#[inline]
pub unsafe fn free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    let p = ptr.cast::<u8>();
    // SAFETY: `p` is a block handed back to us, readable for one byte; a
    // tracked one is freed with its own record's layout, by the `Warden`
    // whose inner allocator is glibc's (as is the Rust allocator's,
    // `System`, whose blocks C may free too).
    unsafe {
        if !may_be_tracked() {
            if guard::forking() {
                // In the fork window: this thread holds the registry's
                // locks, so the block's record cannot be looked up now.
                defer_free(ptr as usize);
                return;
            }
            return __libc_free(ptr);
        }
        match lookup(p) {
            Lookup::Live(rec) => dealloc_tracked(p, layout_of(&rec)),
            // Reported there (a double free, or an invalid one).
            Lookup::Freed(_) => dealloc_tracked(p, ANY),
            Lookup::Unknown if not_glibcs(p) => dealloc_tracked(p, ANY),
            // A block of C's that a `free` already gave back to glibc,
            // whose own checks would not always catch this second one (a
            // block in a fastbin): reported, and not freed again.
            Lookup::Unknown if is_marked(p) => {
                crate::warden::report_c_double_free(p as usize, crate::roots::stack_pointer())
            }
            Lookup::Unknown => __libc_free(ptr),
        }
    }
}

/// Keeps a free made in the fork window (see `guard::enter_fork`), where
/// the block's record cannot be looked up, for when it closes. Past
/// `guard::DEFERRED_MAX` frees in one window the block is never freed: it
/// may be a tracked one, which glibc cannot take (a leak, reported as such,
/// rather than a corrupt heap).
fn defer_free(addr: usize) {
    guard::defer_free(guard::Deferred {
        free: free_later,
        ptr: addr,
        layout: ANY,
    });
}

/// `free`, as [`guard::Deferred::free`] calls it.
///
/// # Safety
/// As for [`free`].
unsafe fn free_later(p: *mut u8, _: Layout) {
    // SAFETY: per the contract.
    unsafe { free(p.cast()) }
}

/// C's `realloc`, as glibc has it: `realloc(NULL, n)` is `malloc(n)`,
/// and `realloc(p, 0)` frees `p` and returns null.
///
/// # Safety
/// As for [`free`].
#[doc(hidden)]
#[inline]
pub unsafe fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: as in `free`; the new size is checked to make a valid
    // layout with the block's alignment.
    unsafe {
        if ptr.is_null() {
            return malloc(size);
        }
        if size == 0 {
            free(ptr);
            return std::ptr::null_mut();
        }
        let p = ptr.cast::<u8>();
        if !may_be_tracked() {
            if guard::forking() {
                return realloc_in_fork_window(p, size);
            }
            return untracked(|| __libc_realloc(ptr, size));
        }
        match lookup(p) {
            Lookup::Live(rec) => {
                if Layout::from_size_align(size, rec.align()).is_err() {
                    return enomem();
                }
                let new = realloc_tracked(p, layout_of(&rec), size);
                if new.is_null() {
                    set_errno(libc::ENOMEM);
                }
                new.cast()
            }
            // Reported there; null.
            Lookup::Freed(_) => realloc_tracked(p, ANY, size).cast(),
            Lookup::Unknown if not_glibcs(p) => realloc_tracked(p, ANY, size).cast(),
            // A block of C's that a `free` already gave back (see
            // `is_marked`): reported, and null.
            Lookup::Unknown if is_marked(p) => {
                crate::warden::report_c_double_free(p as usize, crate::roots::stack_pointer());
                std::ptr::null_mut()
            }
            // glibc's own block, from before tracking or from inside
            // memwarden: it stays glibc's.
            Lookup::Unknown => fresh(__libc_realloc(ptr, size)),
        }
    }
}

/// `realloc` in the `fork` window (see `guard::enter_fork`), where the
/// registry can be read (this thread holds its locks) but not changed: a
/// tracked block is copied into a new block of glibc's, untracked, and
/// freed once the window closes.
///
/// # Safety
/// As for [`free`].
unsafe fn realloc_in_fork_window(p: *mut u8, size: usize) -> *mut c_void {
    // SAFETY: `p` is a live block (the contract); the copy stays within
    // both blocks.
    unsafe {
        match lookup(p) {
            Lookup::Live(rec) => {
                let new = fresh(__libc_malloc(size));
                if new.is_null() {
                    return enomem();
                }
                std::ptr::copy_nonoverlapping(p, new.cast(), rec.size().min(size));
                defer_free(p as usize);
                new
            }
            // A double free, which cannot be reported here.
            Lookup::Freed(_) => std::ptr::null_mut(),
            Lookup::Unknown => fresh(__libc_realloc(p.cast(), size)),
        }
    }
}

/// C's `reallocarray` (glibc 2.26).
///
/// # Safety
/// As for [`free`].
#[doc(hidden)]
#[inline]
pub unsafe fn reallocarray(ptr: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: as for `realloc`.
        Some(total) => unsafe { realloc(ptr, total) },
        None => enomem(),
    }
}

/// C's `malloc_usable_size`: for a tracked block, its size as asked (the
/// bytes after it are its red zone).
///
/// # Safety
/// `ptr` is null or a live block.
#[doc(hidden)]
#[inline]
pub unsafe fn malloc_usable_size(ptr: *mut c_void) -> usize {
    if ptr.is_null() {
        return 0;
    }
    let p = ptr.cast::<u8>();
    if may_be_tracked() || guard::forking() {
        // SAFETY: as above.
        match unsafe { lookup(p) } {
            Lookup::Live(rec) => return rec.size(),
            Lookup::Freed(_) => return 0,
            Lookup::Unknown => {}
        }
    }
    // SAFETY: glibc's own block.
    unsafe { glibc_usable_size(ptr) }
}

/// glibc's `malloc_usable_size`, which the program's replaces: found
/// with `dlsym(RTLD_NEXT)` at first use.
///
/// # Safety
/// `ptr` is a live block of glibc's.
unsafe fn glibc_usable_size(ptr: *mut c_void) -> usize {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    let mut f = REAL.load(Ordering::Acquire);
    if f == 0 {
        // Not inside the re-entrancy guard: `dlsym` frees the thread's last
        // `dlerror` message, which may be a tracked block (a `free` inside
        // memwarden goes straight to glibc).
        // SAFETY: a NUL-terminated name; RTLD_NEXT looks past this binary.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"malloc_usable_size".as_ptr()) } as usize;
        if f == 0 {
            return 0;
        }
        REAL.store(f, Ordering::Release);
    }
    // SAFETY: `f` is glibc's `malloc_usable_size`.
    unsafe {
        let f: unsafe extern "C" fn(*mut c_void) -> usize = std::mem::transmute(f);
        f(ptr)
    }
}

/// Defines C's allocation functions (`malloc`, `calloc`, `realloc`,
/// `reallocarray`, `free`, `posix_memalign`, `aligned_alloc`, `memalign`,
/// `valloc`, `pvalloc`, `malloc_usable_size`) in this binary, so that C
/// code's blocks are tracked as Rust's are, and Rust blocks that only C
/// structures point to are seen as reachable. See the crate's docs.
#[cfg(all(feature = "tracking", target_os = "linux", target_env = "gnu"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __track_c_heap {
    () => {
        const _: () = {
            use ::core::ffi::{c_int, c_void};
            use $crate::c_heap as h;
            #[unsafe(no_mangle)]
            unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
                // SAFETY: C's contract, kept by the function called.
                unsafe { h::malloc(size) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
                // SAFETY: C's contract, kept by the function called.
                unsafe { h::calloc(n, size) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
                // SAFETY: C's contract, kept by the function called.
                unsafe { h::realloc(p, size) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn reallocarray(
                p: *mut c_void,
                n: usize,
                size: usize,
            ) -> *mut c_void {
                // SAFETY: C's contract, kept by the function called.
                unsafe { h::reallocarray(p, n, size) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn free(p: *mut c_void) {
                // SAFETY: C's contract, kept by the function called.
                unsafe { h::free(p) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn posix_memalign(
                out: *mut *mut c_void,
                align: usize,
                size: usize,
            ) -> c_int {
                // SAFETY: C's contract, kept by the function called.
                unsafe { h::posix_memalign(out, align, size) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
                // SAFETY: C's contract, kept by the function called.
                unsafe { h::aligned_alloc(align, size) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
                // SAFETY: C's contract, kept by the function called.
                unsafe { h::memalign(align, size) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
                // SAFETY: C's contract, kept by the function called.
                unsafe { h::valloc(size) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
                // SAFETY: C's contract, kept by the function called.
                unsafe { h::pvalloc(size) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
                // SAFETY: C's contract, kept by the function called.
                unsafe { h::malloc_usable_size(p) }
            }
        };
    };
}
