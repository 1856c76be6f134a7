//! The loaded modules (executable and shared libraries) and where their
//! unwind tables are.
//!
//! The table is built from `dl_iterate_phdr` and published through one
//! atomic pointer; readers never lock. `dl_iterate_phdr` takes the dynamic
//! loader's lock, and a thread inside `dlopen` holds that lock and may
//! allocate, so it is only ever called here with no memwarden lock held:
//! the caller is on a cache miss in the middle of a capture and holds
//! nothing. Tables are built in fresh `mmap` memory (never the global
//! allocator) and old ones are left mapped, since a reader may still be
//! looking at one; a new table is only made when the loader's counters of
//! loaded and unloaded objects moved, so that costs one small mapping per
//! `dlopen`/`dlclose` seen.
//!
//! Every miss first asks the loader for those counters (one call to
//! `dl_iterate_phdr` that stops at the first object), so a module that
//! was unloaded and replaced is never looked up in a stale table: code on
//! the current stack was loaded before the capture began, and therefore
//! before that check.
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::sys::MapVec;

/// One executable segment of a loaded module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub(super) struct Module {
    /// The segment's addresses, `lo..hi`.
    pub(super) lo: usize,
    pub(super) hi: usize,
    /// The module's `.eh_frame_hdr` (`PT_GNU_EH_FRAME`), 0 if it has none.
    pub(super) hdr: usize,
    pub(super) hdr_len: usize,
    /// The loaded segment that holds `.eh_frame_hdr`; `.eh_frame` must lie
    /// in it too (linkers put the two side by side).
    pub(super) seg_lo: usize,
    pub(super) seg_hi: usize,
}

/// A published table: this header, then `len` modules, in one mapping.
#[repr(C)]
struct Table {
    /// The loader's counts of objects ever loaded and unloaded when the
    /// table was made (both 0 where the loader does not tell).
    adds: u64,
    subs: u64,
    len: usize,
}

static CURRENT: AtomicPtr<Table> = AtomicPtr::new(ptr::null_mut());

/// What [`find`] learned about an address.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// The executable segment holding it.
    In(Module),
    /// No loaded module holds it (JIT code, or a corrupt stack).
    Nowhere,
    /// A library was unloaded since the last table: cached rules were
    /// dropped, and the capture in progress must not be trusted.
    Unloaded,
}

/// The module holding code address `addr`.
pub(super) fn find(addr: usize) -> Found {
    // Without the loader's counters an unloaded library could not be told
    // from a loaded one: then the fast path stays off.
    let Some(now) = counters() else {
        return Found::Nowhere;
    };
    let mut table = CURRENT.load(Ordering::Acquire);
    // SAFETY: a published table stays mapped and unchanged forever.
    if table.is_null() || unsafe { counts(table) } != now {
        match refresh() {
            Some((_, true)) => return Found::Unloaded,
            Some((fresh, false)) => table = fresh,
            None => return Found::Nowhere,
        }
    }
    // SAFETY: as above; `table` is not null here.
    let modules = unsafe { modules(table) };
    match modules.iter().find(|m| m.lo <= addr && addr < m.hi) {
        Some(m) => Found::In(*m),
        None => Found::Nowhere,
    }
}

/// # Safety
/// `table` is a published, non-null table.
unsafe fn counts(table: *const Table) -> (u64, u64) {
    // SAFETY: the caller passes a live table.
    let t = unsafe { &*table };
    (t.adds, t.subs)
}

/// # Safety
/// `table` is a published, non-null table.
unsafe fn modules<'a>(table: *const Table) -> &'a [Module] {
    // SAFETY: the modules follow the header in the same mapping (`publishable`
    // sized it so), are initialised, and are never changed or unmapped.
    unsafe {
        let len = (*table).len;
        std::slice::from_raw_parts(table.add(1).cast::<Module>(), len)
    }
}

/// The loader's (added, removed) object counters, if it keeps them.
fn counters() -> Option<(u64, u64)> {
    /// # Safety
    /// Called by `dl_iterate_phdr` with a valid `info` of `size` bytes and
    /// the `out` pointer given to it below.
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        out: *mut libc::c_void,
    ) -> libc::c_int {
        if size >= std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
            // SAFETY: the loader passes a valid info of `size` bytes, which
            // covers both counters; `out` is the `Option` below.
            unsafe {
                let info = &*info;
                *out.cast::<Option<(u64, u64)>>() = Some((info.dlpi_adds, info.dlpi_subs));
            }
        }
        1 // the counters are the same in every entry: stop now
    }
    let mut out: Option<(u64, u64)> = None;
    // Under memwarden's loader lock, if it is free (see `sync::loader`):
    // on the allocation path, a held lock means no counters now, and the
    // capture takes the slow path.
    crate::sync::loader::try_with(|| {
        // SAFETY: `first` matches the callback type and only writes `out`.
        unsafe { libc::dl_iterate_phdr(Some(first), (&raw mut out).cast()) }
    });
    out
}

/// Builds a new table and publishes it unless one as new is out already.
/// Returns the table now current and whether a library was unloaded since
/// the previous table (in which case the rule cache was flushed).
#[cold]
fn refresh() -> Option<(*mut Table, bool)> {
    let mut found = Pass {
        modules: MapVec::new(),
        counts: None,
    };
    collect(&mut found);
    // The counters read in the same pass as the modules describe them
    // exactly: the loader's lock was held throughout.
    let now = found.counts?;
    let fresh = publishable(now, found.modules.as_slice())?;
    let mut current = CURRENT.load(Ordering::Acquire);
    loop {
        if !current.is_null() {
            // SAFETY: published tables stay mapped.
            let (adds, subs) = unsafe { counts(current) };
            // Both counters only grow: a table with as many of each is as
            // new as ours, and nobody needs ours.
            if adds >= now.0 && subs >= now.1 {
                discard(fresh);
                return Some((current, false));
            }
        }
        match CURRENT.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(other) => current = other,
        }
    }
    // SAFETY: `current`, if not null, is a published table.
    let unloaded = !current.is_null() && unsafe { counts(current) }.1 != now.1;
    if unloaded {
        super::rules::flush();
    }
    Some((fresh, unloaded))
}

/// What one pass over the loaded objects found.
struct Pass {
    modules: MapVec<Module>,
    /// The loader's counters, from the first object.
    counts: Option<(u64, u64)>,
}

/// Lists every executable segment of every loaded object.
fn collect(found: &mut Pass) {
    /// # Safety
    /// Called by `dl_iterate_phdr` with a valid `info` of `size` bytes and
    /// the `found` pointer given to it below.
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        found: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info for this call, and `found`
        // is the `Pass` passed below.
        let (info, found) = unsafe { (&*info, &mut *found.cast::<Pass>()) };
        if found.counts.is_none() && size >= std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8
        {
            found.counts = Some((info.dlpi_adds, info.dlpi_subs));
        }
        let out = &mut found.modules;
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let base = info.dlpi_addr as usize;
        let range = |ph: &libc::Elf64_Phdr| {
            let lo = base.wrapping_add(ph.p_vaddr as usize);
            (lo, lo.wrapping_add(ph.p_memsz as usize))
        };
        let (mut hdr, mut hdr_len) = (0, 0);
        for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_GNU_EH_FRAME) {
            (hdr, hdr_len) = (range(ph).0, ph.p_memsz as usize);
        }
        let (mut seg_lo, mut seg_hi) = (0, 0);
        for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_LOAD) {
            let (lo, hi) = range(ph);
            if hdr != 0 && lo <= hdr && hdr < hi {
                (seg_lo, seg_hi) = (lo, hi);
            }
        }
        for ph in phdrs
            .iter()
            .filter(|ph| ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0)
        {
            let (lo, hi) = range(ph);
            let has_hdr = seg_hi != 0;
            out.push(Module {
                lo,
                hi,
                hdr: if has_hdr { hdr } else { 0 },
                hdr_len: if has_hdr { hdr_len } else { 0 },
                seg_lo,
                seg_hi,
            });
        }
        0
    }
    // (As in `counters`: if the loader lock is held, no pass and no
    // counters, so the caller takes the slow path.)
    crate::sync::loader::try_with(|| {
        // SAFETY: `each` matches the callback type and only touches
        // `found`; MapVec grows with mmap, never with malloc or the global
        // allocator.
        unsafe { libc::dl_iterate_phdr(Some(each), ptr::from_mut(found).cast()) }
    });
}

/// Copies `modules` into a fresh mapping laid out as a [`Table`].
fn publishable(counts: (u64, u64), modules: &[Module]) -> Option<*mut Table> {
    let bytes = size_of::<Table>() + std::mem::size_of_val(modules);
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED || p.is_null() {
        return None;
    }
    let table = p.cast::<Table>();
    // SAFETY: the mapping is page aligned and `bytes` long: room for the
    // header and, right after it (Module's alignment divides Table's
    // size), every module.
    unsafe {
        table.write(Table {
            adds: counts.0,
            subs: counts.1,
            len: modules.len(),
        });
        ptr::copy_nonoverlapping(
            modules.as_ptr(),
            table.add(1).cast::<Module>(),
            modules.len(),
        );
    }
    Some(table)
}

/// Unmaps a table that was never published.
fn discard(table: *mut Table) {
    // SAFETY: `table` came from `publishable` and nobody else saw it.
    unsafe {
        let bytes = size_of::<Table>() + (*table).len * size_of::<Module>();
        libc::munmap(table.cast(), bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_function_is_in_a_module_with_unwind_tables() {
        let here = this_function_is_in_a_module_with_unwind_tables as *const () as usize;
        let Found::In(m) = find(here) else {
            panic!("no module for {here:#x}");
        };
        assert!(m.lo <= here && here < m.hi);
        assert!(m.hdr != 0 && m.seg_lo <= m.hdr && m.hdr < m.seg_hi);
        let on_stack = 0u8;
        assert_eq!(find(&on_stack as *const u8 as usize), Found::Nowhere);
        assert_eq!(find(0), Found::Nowhere);
    }
}
