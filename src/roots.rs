//! Where the leak scan starts: the process's mappings, the writable data of
//! every loaded object, static thread-local storage, and thread stacks.
//!
//! Everything here is gathered *before* the other threads are stopped
//! (reading `/proc` and calling `dl_iterate_phdr` may allocate or take the
//! loader lock, which a stopped thread could hold).
use std::ffi::c_void;

use crate::reach::{Mappings, Region};
pub(crate) use crate::sys::Mapping;
use crate::sys::parse_maps_line as parse_line;

/// The process's mappings, sorted by address.
#[derive(Debug, Default)]
pub(crate) struct Maps {
    maps: Vec<Mapping>,
}

impl Maps {
    /// Reads `/proc/self/maps` (empty where there is none).
    pub(crate) fn read() -> Maps {
        let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        Maps::parse(&text)
    }

    pub(crate) fn parse(text: &str) -> Maps {
        let mut maps: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
        maps.sort_by_key(|m| m.start);
        Maps { maps }
    }

    /// The mapping containing `addr`.
    pub(crate) fn find(&self, addr: usize) -> Option<&Mapping> {
        let i = self
            .maps
            .partition_point(|m| m.start <= addr)
            .checked_sub(1)?;
        let m = &self.maps[i];
        (addr < m.end).then_some(m)
    }

    /// `[start, start + len)`, cut at the end of the mapping that holds
    /// `start` (so that a root region never runs on into a neighbouring
    /// mapping, a block of the heap's own mapping, say), if readable.
    pub(crate) fn within_mapping(&self, start: usize, len: usize) -> Option<Region> {
        let m = self.find(start).filter(|m| m.read)?;
        Some(Region {
            start,
            end: start.saturating_add(len).min(m.end),
        })
    }

    /// Calls `out` with each readable part of `[start, end)`. Allocates
    /// nothing itself, so it may run while the world is stopped.
    pub(crate) fn readable_parts(&self, start: usize, end: usize, mut out: impl FnMut(Region)) {
        let first = self.maps.partition_point(|m| m.end <= start);
        for m in &self.maps[first..] {
            if m.start >= end {
                break;
            }
            if m.read {
                let s = start.max(m.start);
                let e = end.min(m.end);
                if s < e {
                    out(Region { start: s, end: e });
                }
            }
        }
    }
}

impl Mappings for Maps {
    fn file_readable(&self, addr: usize) -> Option<usize> {
        self.find(addr).filter(|m| m.file && m.read).map(|m| m.end)
    }

    fn file_exec(&self, addr: usize) -> bool {
        self.find(addr).is_some_and(|m| m.file && m.exec)
    }
}

/// Static thread-local storage of each loaded module, as an offset from the
/// thread pointer: the same for every thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TlsBlock {
    pub(crate) offset: isize,
    pub(crate) len: usize,
}

/// Writable segments of every loaded object (data, bss) and the calling
/// thread's static TLS blocks.
pub(crate) struct Images {
    pub(crate) data: Vec<Region>,
    pub(crate) tls: Vec<TlsBlock>,
    /// The loader's descriptors of the loaded objects (glibc's `link_map`s,
    /// [`LINK_MAP_BYTES`] from each): the loader allocates those of the
    /// objects loaded at start-up in memory of its own, outside any
    /// object's data, and keeps in them pointers to blocks it allocates
    /// later with `malloc` (each object's list of dependencies, the global
    /// search list), tracked blocks when C's heap is (`track_c_heap!`).
    /// Roots only then (see `scan::classify_all`).
    pub(crate) loader: Vec<Region>,
}

/// Bytes read as roots from each thread's thread pointer (cut at the end
/// of its mapping): glibc puts the thread's descriptor (`struct pthread`,
/// 2,304 bytes in glibc 2.36 on x86_64) there, with the thread's
/// `pthread_setspecific` values and its `strerror` buffer. A thread's own
/// is at the top of its stack, which its stack's scan reads; the main
/// thread's is in memory the loader allocated, which nothing else reads.
pub(crate) const THREAD_DESCRIPTOR_BYTES: usize = 2560;

/// Bytes read as roots from each `link_map` (about 1,240 in glibc 2.36;
/// cut at the end of its mapping).
pub(crate) const LINK_MAP_BYTES: usize = 2048;

/// Adds the loader's `link_map`s, found from `_r_debug` (the debugger
/// interface every glibc loader exports): called while `dl_iterate_phdr`
/// holds the loader's lock, so no `dlopen`/`dlclose` changes the list.
#[cfg(target_env = "gnu")]
fn loader_maps(out: &mut Vec<Region>) {
    /// The public head of glibc's `struct link_map` (`<link.h>`).
    #[repr(C)]
    struct LinkMap {
        l_addr: usize,
        l_name: *const libc::c_char,
        l_ld: *const c_void,
        l_next: *const LinkMap,
        l_prev: *const LinkMap,
    }
    /// `struct r_debug` (`<link.h>`), as far as `r_map`.
    #[repr(C)]
    struct RDebug {
        r_version: libc::c_int,
        r_map: *const LinkMap,
    }
    unsafe extern "C" {
        static _r_debug: RDebug;
    }
    // SAFETY: the loader initialised `_r_debug` before any code of ours
    // ran; the list is stable while the loader's lock is held (the
    // caller's).
    let mut map = unsafe { (*std::ptr::addr_of!(_r_debug)).r_map };
    let mut seen = 0;
    while !map.is_null() && seen < 1 << 16 {
        let start = map as usize;
        out.push(Region {
            start,
            end: start.saturating_add(LINK_MAP_BYTES),
        });
        // SAFETY: a live `link_map` of the list (see above).
        map = unsafe { (*map).l_next };
        seen += 1;
    }
}

/// Walks the loaded objects with `dl_iterate_phdr`.
pub(crate) fn images() -> Images {
    struct Acc {
        data: Vec<Region>,
        tls: Vec<TlsBlock>,
        loader: Vec<Region>,
        tp: usize,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        acc: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for this call, and
        // `acc` is the `&mut Acc` passed below.
        let (info, acc) = unsafe { (&*info, &mut *acc.cast::<Acc>()) };
        #[cfg(target_env = "gnu")]
        if acc.loader.is_empty() {
            loader_maps(&mut acc.loader);
        }
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let base = info.dlpi_addr as usize;
        for ph in phdrs {
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_W != 0 {
                let start = base.wrapping_add(ph.p_vaddr as usize);
                acc.data.push(Region {
                    start,
                    end: start + ph.p_memsz as usize,
                });
            }
            if ph.p_type == libc::PT_TLS && !info.dlpi_tls_data.is_null() && acc.tp != 0 {
                let addr = info.dlpi_tls_data as usize;
                let offset = addr as isize - acc.tp as isize;
                // Only static TLS lives at a fixed offset from the thread
                // pointer; dynamically allocated blocks are elsewhere.
                if offset.unsigned_abs() < 1 << 28 {
                    acc.tls.push(TlsBlock {
                        offset,
                        len: ph.p_memsz as usize,
                    });
                }
            }
        }
        0
    }
    let mut acc = Acc {
        data: Vec::with_capacity(64),
        tls: Vec::with_capacity(16),
        loader: Vec::with_capacity(16),
        tp: thread_pointer(),
    };
    crate::sync::loader::with(|| {
        // SAFETY: `each` matches the callback type and only touches `acc`.
        unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut acc).cast()) }
    });
    Images {
        data: acc.data,
        tls: acc.tls,
        loader: acc.loader,
    }
}

/// The calling thread's thread pointer (0 where unknown).
#[inline(always)]
pub(crate) fn thread_pointer() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let tp: usize;
        // SAFETY: on x86_64 Linux the first word of the TCB, at %fs:0, is
        // the thread pointer itself; reading it has no side effects.
        unsafe {
            std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
        };
        tp
    }
    #[cfg(target_arch = "aarch64")]
    {
        let tp: usize;
        // SAFETY: reading tpidr_el0 has no side effects.
        unsafe {
            std::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nostack, nomem, preserves_flags))
        };
        tp
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        0
    }
}

/// The calling function's stack pointer: every local of the caller lies
/// at or above it, and everything below is dead or belongs to callees.
#[inline(always)]
pub(crate) fn stack_pointer() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let sp: usize;
        // SAFETY: reading rsp has no side effects.
        unsafe {
            std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(target_arch = "aarch64")]
    {
        let sp: usize;
        // SAFETY: reading sp has no side effects.
        unsafe {
            std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let marker = 0u8;
        std::hint::black_box(&marker) as *const u8 as usize
    }
}

/// How many registers [`save_callee_saved`] writes: the callee-saved
/// general-purpose registers of the platform's C ABI (x86_64: rbx, rbp,
/// r12-r15; aarch64: x19-x29).
pub(crate) const CALLEE_SAVED: usize = if cfg!(target_arch = "x86_64") {
    6
} else if cfg!(target_arch = "aarch64") {
    11
} else {
    0
};

/// Writes the callee-saved registers, as they are where this is inlined,
/// each XOR-ed with `hide`, to `out`. Inlined into a function, it records
/// what that function's callers keep in those registers, except those the
/// function itself has saved in its frame (and then uses for its own
/// values): a value a caller keeps in one is saved on the stack only by
/// the first callee that needs the register, perhaps far deeper.
///
/// # Safety
/// `out` must be valid for writing `CALLEE_SAVED` words.
#[inline(always)]
pub(crate) unsafe fn save_callee_saved(out: *mut [usize; CALLEE_SAVED], hide: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: writes 6 words at `out` (the contract); only rax and the
    // flags are changed, and the registers read are only read. The scratch
    // and operand registers are fixed caller-saved ones, so none of them
    // is a register being read.
    unsafe {
        std::arch::asm!(
            "mov rax, rbx",
            "xor rax, rcx",
            "mov [rdi], rax",
            "mov rax, rbp",
            "xor rax, rcx",
            "mov [rdi + 8], rax",
            "mov rax, r12",
            "xor rax, rcx",
            "mov [rdi + 16], rax",
            "mov rax, r13",
            "xor rax, rcx",
            "mov [rdi + 24], rax",
            "mov rax, r14",
            "xor rax, rcx",
            "mov [rdi + 32], rax",
            "mov rax, r15",
            "xor rax, rcx",
            "mov [rdi + 40], rax",
            in("rdi") out,
            in("rcx") hide,
            out("rax") _,
            options(nostack),
        )
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above, 11 words, with x0-x2 as the operands and scratch.
    unsafe {
        std::arch::asm!(
            "eor x2, x19, x1",
            "str x2, [x0]",
            "eor x2, x20, x1",
            "str x2, [x0, #8]",
            "eor x2, x21, x1",
            "str x2, [x0, #16]",
            "eor x2, x22, x1",
            "str x2, [x0, #24]",
            "eor x2, x23, x1",
            "str x2, [x0, #32]",
            "eor x2, x24, x1",
            "str x2, [x0, #40]",
            "eor x2, x25, x1",
            "str x2, [x0, #48]",
            "eor x2, x26, x1",
            "str x2, [x0, #56]",
            "eor x2, x27, x1",
            "str x2, [x0, #64]",
            "eor x2, x28, x1",
            "str x2, [x0, #72]",
            "eor x2, x29, x1",
            "str x2, [x0, #80]",
            in("x0") out,
            in("x1") hide,
            out("x2") _,
            options(nostack, preserves_flags),
        )
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (out, hide);
    }
}

/// The thread ids of this process, from `/proc/self/task`.
pub(crate) fn thread_ids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The stack pointer of thread `tid` if it is blocked in a system call,
/// from `/proc/self/task/<tid>/syscall` ("nr args... sp pc").
pub(crate) fn blocked_sp(tid: i32) -> Option<usize> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let fields: Vec<&str> = text.split_ascii_whitespace().collect();
    if fields.len() < 9 {
        return None; // "running", or an unexpected format
    }
    usize::from_str_radix(fields[7].trim_start_matches("0x"), 16).ok()
}

/// The calling thread's kernel thread id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0a20000 r--p 00000000 08:01 1234   /usr/bin/prog
55d0c0a20000-55d0c0a80000 r-xp 00020000 08:01 1234   /usr/bin/prog
55d0c0a80000-55d0c0a90000 rw-p 00080000 08:01 1234   /usr/bin/prog
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0      [heap]
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
7ffd00021000-7ffd00022000 ---p 00000000 00:00 0
";

    #[test]
    fn parses_proc_maps() {
        let m = Maps::parse(SAMPLE);
        let text = m.find(0x55d0c0a30000).unwrap();
        assert!(text.exec && text.file && text.read && !text.write);
        let heap = m.find(0x55d0c1000010).unwrap();
        assert!(heap.write && !heap.file);
        assert!(m.find(0x1000).is_none());
        assert!(m.file_exec(0x55d0c0a20000));
        assert!(!m.file_exec(0x55d0c1000000));
        assert_eq!(m.file_readable(0x55d0c0a00008), Some(0x55d0c0a20000));
    }

    #[test]
    fn readable_parts_skip_unreadable_and_unmapped() {
        let m = Maps::parse(SAMPLE);
        let mut out = Vec::new();
        m.readable_parts(0x7ffd00010000, 0x7ffd00030000, |r| out.push(r));
        assert_eq!(
            out,
            [Region {
                start: 0x7ffd00010000,
                end: 0x7ffd00021000
            }]
        );
    }

    #[test]
    fn images_find_this_programs_data_and_tls() {
        thread_local! { static T: std::cell::Cell<usize> = const { std::cell::Cell::new(5) }; }
        static S: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let img = images();
        let s = &S as *const _ as usize;
        assert!(
            img.data.iter().any(|r| r.start <= s && s < r.end),
            "a static lies in a writable segment"
        );
        let t = T.with(|c| c as *const _ as usize);
        let tp = thread_pointer();
        if tp != 0 {
            assert!(
                img.tls.iter().any(|b| {
                    let start = (tp as isize + b.offset) as usize;
                    start <= t && t < start + b.len
                }),
                "a thread-local lies in a static TLS block"
            );
        }
    }

    #[test]
    fn a_blocked_thread_shows_its_stack_pointer() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tid_tx.send(gettid()).unwrap();
            let _ = rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        let maps_sp = (0..200).find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            blocked_sp(tid)
        });
        let sp = maps_sp.expect("a thread blocked in recv shows its sp");
        let maps = Maps::read();
        assert!(maps.find(sp).is_some_and(|m| m.write && !m.file));
        tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn lists_this_thread() {
        assert!(thread_ids().contains(&gettid()));
    }
}
