//! Raw memory for memwarden's own tables.
//!
//! Everything memwarden keeps for itself (the registry, the stack table, the
//! scan buffers) lives in memory from this module, never from the global
//! allocator, so that bookkeeping can never re-enter `Warden`. Two sources:
//!
//! * [`SysVec`] grows through glibc's `malloc` (by its own name,
//!   `__libc_malloc`, which `track_c_heap!` does not replace; `System`
//!   off glibc). It is used on the hot path, under a shard lock; that
//!   `malloc` never calls back into Rust's global allocator or into
//!   memwarden, so that lock cannot be taken again underneath.
//! * [`MapVec`] grows through `mmap`/`mremap`. It is used while the other
//!   threads are stopped for a leak scan: one of them may be stopped inside
//!   `malloc` holding its arena lock, so the scanner must not call `malloc`.
use std::alloc::{GlobalAlloc, Layout};

/// The allocator of [`SysVec`]: glibc's by its own names where
/// `track_c_heap!` may have replaced `malloc` (so that memwarden's buffers
/// never go through the program's `malloc`, tracked or not), `System`
/// elsewhere (and under Miri, which cannot call glibc's own names).
#[cfg(all(target_env = "gnu", not(miri)))]
use crate::c_heap::LibcHeap as Heap;
#[cfg(any(not(target_env = "gnu"), miri))]
use std::alloc::System as Heap;
use std::marker::PhantomData;
use std::ptr::NonNull;

/// The alignment glibc's `malloc` gives every block (two words).
pub(crate) const MALLOC_ALIGN: usize = 2 * std::mem::size_of::<usize>();

/// A growable array of `Copy` values in memory from the C heap ([`Heap`]).
///
/// Growth that fails leaves the vector unchanged and reports `false`: the
/// allocation path never panics.
pub(crate) struct SysVec<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    cap: usize,
}

// SAFETY: a SysVec owns its buffer exclusively, like a Vec<T>.
unsafe impl<T: Copy + Send> Send for SysVec<T> {}

impl<T: Copy> SysVec<T> {
    pub(crate) const fn new() -> Self {
        SysVec {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` is valid for `len` initialised values (or dangling
        // and well aligned with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The layout of a buffer of `cap` values: aligned to a cache line, so
    /// that a table's 32-byte slots never straddle two lines.
    fn layout(cap: usize) -> Option<Layout> {
        Layout::array::<T>(cap).ok()?.align_to(64).ok()
    }

    /// Makes room for `extra` more values; `false` if memory ran out.
    pub(crate) fn reserve(&mut self, extra: usize) -> bool {
        let Some(need) = self.len.checked_add(extra) else {
            return false;
        };
        if need <= self.cap {
            return true;
        }
        let new_cap = need.max(self.cap.saturating_mul(2)).max(8);
        let Some(new_layout) = Self::layout(new_cap) else {
            return false;
        };
        // A new buffer, the values copied, the old one wiped and freed (not
        // `realloc`): see `release`.
        // SAFETY: `new_layout` has a non-zero size (new_cap >= 8, and
        // zero-sized T is never used with SysVec).
        let Some(new_ptr) = NonNull::new(unsafe { Heap.alloc(new_layout) }.cast::<T>()) else {
            return false;
        };
        // SAFETY: the old buffer holds `len` values, the new one has room
        // for `new_cap >= len`, and the two are distinct.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), new_ptr.as_ptr(), self.len) };
        self.release();
        self.ptr = new_ptr;
        self.cap = new_cap;
        true
    }

    /// Wipes and frees the buffer (leaving the vector without one). The
    /// buffers hold block addresses (registry records, quarantine FIFOs):
    /// The C heap hands the memory to the program next, and a stale address
    /// left in a block the program does not fully write would look to the
    /// leak scan like a pointer keeping a leaked block reachable.
    fn release(&mut self) {
        if self.cap == 0 {
            return;
        }
        // SAFETY: allocated by `Heap` with this layout in `reserve`; the
        // whole buffer is ours to overwrite (T is plain data) and is freed
        // exactly once.
        unsafe {
            let layout = Self::layout(self.cap).unwrap_unchecked();
            let p = self.ptr.as_ptr().cast::<u8>();
            p.write_bytes(0, layout.size());
            Heap.dealloc(p, layout);
        }
        self.ptr = NonNull::dangling();
        self.cap = 0;
    }

    /// Appends `value`; `false` if memory ran out.
    pub(crate) fn push(&mut self, value: T) -> bool {
        if !self.reserve(1) {
            return false;
        }
        // SAFETY: `reserve` made `len < cap`.
        unsafe { self.ptr.as_ptr().add(self.len).write(value) };
        self.len += 1;
        true
    }

    /// Replaces the contents with `n` copies of `value`; `false` if memory ran out.
    pub(crate) fn fill(&mut self, value: T, n: usize) -> bool {
        self.len = 0;
        if !self.reserve(n) {
            return false;
        }
        for i in 0..n {
            // SAFETY: `reserve` made `n <= cap`.
            unsafe { self.ptr.as_ptr().add(i).write(value) };
        }
        self.len = n;
        true
    }
}

impl<T: Copy> Drop for SysVec<T> {
    fn drop(&mut self) {
        self.release();
    }
}

/// A growable array of `Copy` values in anonymous `mmap` memory.
///
/// Used while the world is stopped: it takes no lock that a stopped thread
/// could hold.
pub(crate) struct MapVec<T: Copy> {
    ptr: *mut T,
    len: usize,
    /// Capacity in values; the mapping is `cap * size_of::<T>()` bytes
    /// rounded up to a page.
    cap: usize,
    bytes: usize,
    _own: PhantomData<T>,
}

impl<T: Copy> MapVec<T> {
    pub(crate) const fn new() -> Self {
        MapVec {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
            bytes: 0,
            _own: PhantomData,
        }
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: `ptr` maps at least `len` initialised values.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        if self.ptr.is_null() {
            return &mut [];
        }
        // SAFETY: as in `as_slice`; `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Makes room for `extra` more values; `false` if the kernel said no.
    pub(crate) fn reserve(&mut self, extra: usize) -> bool {
        let Some(need) = self.len.checked_add(extra) else {
            return false;
        };
        if need <= self.cap {
            return true;
        }
        let want = need.max(self.cap.saturating_mul(2)).max(512);
        let Some(bytes) = want
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_next_multiple_of(page_size()))
        else {
            return false;
        };
        let p = if self.ptr.is_null() {
            // SAFETY: a fresh private anonymous mapping; no existing memory
            // is touched.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            }
        } else {
            remap(self.ptr.cast(), self.bytes, bytes)
        };
        if p == libc::MAP_FAILED || p.is_null() {
            return false;
        }
        self.ptr = p.cast();
        self.bytes = bytes;
        self.cap = bytes / size_of::<T>();
        true
    }

    pub(crate) fn push(&mut self, value: T) -> bool {
        if !self.reserve(1) {
            return false;
        }
        // SAFETY: `reserve` made `len < cap`.
        unsafe { self.ptr.add(self.len).write(value) };
        self.len += 1;
        true
    }

    /// Keeps the first `len` values.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: index `len` (the old `len - 1`) is initialised.
        Some(unsafe { self.ptr.add(self.len).read() })
    }

    /// Replaces the contents with `n` copies of `value`; `false` if memory ran out.
    pub(crate) fn fill(&mut self, value: T, n: usize) -> bool {
        self.len = 0;
        if !self.reserve(n) {
            return false;
        }
        for i in 0..n {
            // SAFETY: `reserve` made `n <= cap`.
            unsafe { self.ptr.add(i).write(value) };
        }
        self.len = n;
        true
    }
}

impl<T: Copy> Drop for MapVec<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr`/`bytes` is exactly the mapping made in `reserve`.
            unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn remap(old: *mut libc::c_void, old_bytes: usize, new_bytes: usize) -> *mut libc::c_void {
    // SAFETY: `old`/`old_bytes` is a mapping this module made; MREMAP_MAYMOVE
    // lets the kernel move it, and the caller takes the new address.
    unsafe { libc::mremap(old, old_bytes, new_bytes, libc::MREMAP_MAYMOVE) }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn remap(old: *mut libc::c_void, old_bytes: usize, new_bytes: usize) -> *mut libc::c_void {
    // SAFETY: a fresh private anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            new_bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p != libc::MAP_FAILED {
        // SAFETY: both mappings are at least `old_bytes` long and distinct;
        // the old one is ours to unmap.
        unsafe {
            std::ptr::copy_nonoverlapping(old.cast::<u8>(), p.cast::<u8>(), old_bytes);
            libc::munmap(old, old_bytes);
        }
    }
    p
}

/// The page size, read once.
pub(crate) fn page_size() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let p = PAGE.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let p = if p > 0 { p as usize } else { 4096 };
    PAGE.store(p, Ordering::Relaxed);
    p
}

/// One line of `/proc/self/maps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) exec: bool,
    /// Backed by a file (inode != 0).
    pub(crate) file: bool,
}

/// One line of `/proc/self/maps`, parsed (`None` for a line that is not
/// one). Allocates nothing.
pub(crate) fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut it = line.split_ascii_whitespace();
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let _offset = it.next()?;
    let _dev = it.next()?;
    let inode = it.next()?;
    let (s, e) = range.split_once('-')?;
    Some(Mapping {
        start: usize::from_str_radix(s, 16).ok()?,
        end: usize::from_str_radix(e, 16).ok()?,
        read: perms.first() == Some(&b'r'),
        write: perms.get(1) == Some(&b'w'),
        exec: perms.get(2) == Some(&b'x'),
        file: inode != "0",
    })
}

/// The mapping that holds an address (see [`mapping_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holding {
    pub(crate) lo: usize,
    pub(crate) hi: usize,
    /// The main thread's stack (`[stack]`).
    pub(crate) main_stack: bool,
    /// The mapping right below ends at `lo` and has no access: a guard
    /// page, as glibc puts below a thread's stack.
    pub(crate) guard_below: bool,
    /// The end of the mapping below this one (0 if none).
    pub(crate) prev_end: usize,
}

/// The mapping of `/proc/self/maps` that holds `addr`. Read with
/// `open`/`read`/`close` into a buffer on the stack: no allocation and no
/// lock of the C library's, so it may run while the caller's caller (C
/// code in glibc, say) holds any of them.
pub(crate) fn mapping_of(addr: usize) -> Option<Holding> {
    /// A line, or the start of one (its path cut anywhere), parsed.
    fn parse(line: &[u8]) -> Option<Mapping> {
        let text = std::str::from_utf8(line).unwrap_or_else(|e| {
            // The path is the last field: what comes before it is ASCII.
            std::str::from_utf8(&line[..e.valid_up_to()]).unwrap_or_default()
        });
        parse_maps_line(text)
    }
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // Small: this runs on the first allocation of threads with stacks of
    // 16 KiB. (A line longer than it is skipped, see below.)
    let mut buf = [0u8; 1024];
    // Bytes at the start of `buf` that belong to a line not yet ended.
    let mut kept = 0;
    // Inside a line longer than the buffer (a very long path), whose
    // range was looked at in its first bytes: skipped to its end.
    let mut skipping = false;
    // The end of the last mapping seen, if it had no access, and whatever
    // it had.
    let mut guard_end = None;
    let mut prev_end = 0;
    let mut found = None;
    'read: loop {
        // SAFETY: the rest of `buf` is writable for `buf.len() - kept` bytes.
        let n = unsafe { libc::read(fd, buf[kept..].as_mut_ptr().cast(), buf.len() - kept) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        let Ok(n @ 1..) = usize::try_from(n) else {
            break;
        };
        let end = kept + n;
        let mut start = 0;
        loop {
            let (line, whole) = match buf[start..end].iter().position(|&b| b == b'\n') {
                Some(nl) => (&buf[start..start + nl], true),
                // The start of a line longer than the buffer.
                None if start == 0 && end == buf.len() => (&buf[..end], false),
                None => break,
            };
            if !std::mem::take(&mut skipping) {
                if let Some(m) = parse(line) {
                    if m.start <= addr && addr < m.end {
                        found = Some(Holding {
                            lo: m.start,
                            hi: m.end,
                            main_stack: whole && line.ends_with(b"[stack]"),
                            guard_below: guard_end == Some(m.start),
                            prev_end,
                        });
                        break 'read;
                    }
                    guard_end = (!m.read && !m.write && !m.exec).then_some(m.end);
                    prev_end = m.end;
                }
            }
            if !whole {
                skipping = true;
                start = end;
                break;
            }
            start += line.len() + 1;
        }
        buf.copy_within(start..end, 0);
        kept = end - start;
    }
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    found
}

/// Writes `bytes` to stderr with `write(2)`: no allocation, no lock, safe
/// to call from the allocation path and from a signal handler.
pub(crate) fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid readable buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            // EINTR: try again; anything else: give up quietly.
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// A fixed-size text buffer for messages built on the allocation path.
pub(crate) struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    pub(crate) const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> std::fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = N - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(std::fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// Asks the CPU to bring the cache line of `addr` in (a hint: never
/// faults, whatever the address). Nothing under Miri, which runs neither
/// the intrinsic nor inline assembly.
#[inline(always)]
pub(crate) fn prefetch(addr: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: a prefetch is a hint that reads nothing architecturally and
    // cannot fault, even for an unmapped address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8);
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = addr;
}

/// Like [`prefetch`], for a line about to be written: it is fetched for
/// ownership (`prefetchw`, where the CPU has it), so that the write does not
/// wait for other cores' copies to be invalidated. (`_mm_prefetch` with the
/// write hint compiles to a plain `prefetcht0` unless the whole program is
/// built for CPUs with `prfchw`; hence the instruction by hand, after a
/// CPUID check.)
#[inline(always)]
pub(crate) fn prefetch_write(addr: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if has_prefetchw() {
        // SAFETY: the CPU supports PREFETCHW (checked with CPUID); like any
        // prefetch it is a hint that cannot fault and writes nothing.
        unsafe {
            std::arch::asm!(
                "prefetchw [{}]",
                in(reg) addr,
                options(nostack, preserves_flags, readonly)
            );
        }
    } else {
        prefetch(addr);
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = addr;
}

/// 0: not checked yet; 1: no PREFETCHW; 2: PREFETCHW.
#[cfg(all(target_arch = "x86_64", not(miri)))]
static PREFETCHW: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

#[cfg(all(target_arch = "x86_64", not(miri)))]
#[inline(always)]
fn has_prefetchw() -> bool {
    match PREFETCHW.load(std::sync::atomic::Ordering::Relaxed) {
        0 => check_prefetchw(),
        v => v == 2,
    }
}

/// CPUID leaf 0x8000_0001, ECX bit 8 (`PRFCHW`, "3DNowPrefetch"): no
/// allocation, no lock, so fine on the allocation path.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[cold]
#[inline(never)]
fn check_prefetchw() -> bool {
    use std::arch::x86_64::__cpuid;
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and only reads identification
    // registers (the intrinsic is `unsafe` on older compilers only).
    let yes = unsafe {
        __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
    };
    PREFETCHW.store(
        if yes { 2 } else { 1 },
        std::sync::atomic::Ordering::Relaxed,
    );
    yes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(miri))]
    fn the_mapping_of_an_address_holds_it() {
        let local = 5u64;
        let here = &local as *const u64 as usize;
        let m = mapping_of(here).expect("the stack is mapped");
        assert!(m.lo <= here && here < m.hi && m.lo % 4096 == 0 && m.hi % 4096 == 0);
        // Tests run on threads of their own, whose stacks are not `[stack]`
        // and have glibc's guard page below them.
        let on_main = std::thread::current().name() == Some("main");
        assert_eq!(m.main_stack, on_main);
        assert!(on_main || m.guard_below, "{m:?}");
        let heap = Box::new(7u64);
        let at = &*heap as *const u64 as usize;
        let m = mapping_of(at).expect("the heap is mapped");
        assert!(m.lo <= at && at < m.hi && !m.main_stack);
        // Nothing is mapped at page 0.
        assert_eq!(mapping_of(16), None);
        // A thread's stack, as the unwinder will see it.
        std::thread::spawn(|| {
            let local = 1u8;
            let here = &local as *const u8 as usize;
            let m = mapping_of(here).expect("mapped");
            assert!(m.lo <= here && here < m.hi && !m.main_stack && m.guard_below);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn prefetches_never_fault() {
        // Hints only: unmapped, null and kernel addresses are fine.
        for addr in [0, 8, usize::MAX, 0xffff_8000_0000_0000, 0x1000] {
            prefetch(addr);
            prefetch_write(addr);
        }
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        assert_eq!(has_prefetchw(), check_prefetchw());
    }

    #[test]
    fn sysvec_grows_and_keeps_values() {
        let mut v = SysVec::<u64>::new();
        for i in 0..10_000 {
            assert!(v.push(i));
        }
        assert_eq!(v.len(), 10_000);
        assert!(v.as_slice().iter().copied().eq(0..10_000));
        assert!(v.fill(7, 3));
        assert_eq!(v.as_slice(), &[7, 7, 7]);
    }

    #[test]
    fn mapvec_grows_across_remaps() {
        let mut v = MapVec::<usize>::new();
        for i in 0..100_000 {
            assert!(v.push(i));
        }
        assert!(v.as_slice().iter().copied().eq(0..100_000));
        assert_eq!(v.pop(), Some(99_999));
        assert_eq!(v.as_slice().len(), 99_999);
        assert!(v.fill(1, 5));
        assert_eq!(v.as_slice(), &[1; 5]);
    }

    #[test]
    fn stackbuf_truncates_instead_of_overflowing() {
        use std::fmt::Write;
        let mut b = StackBuf::<8>::new();
        assert!(write!(b, "memwarden: too long").is_err());
        assert_eq!(b.as_bytes(), b"memwarde");
    }
}
