//! C's heap through `memwarden::track_c_heap!`: what a `malloc`/`free`
//! pair of C code costs, against glibc's own functions in the same
//! process. Figures: docs/performance.md.
//!
//! ```sh
//! cargo bench --bench c_heap                                     # tracking off
//! DEBUG_MEMORY=1 DEBUG_MEMORY_EXITCODE=0 cargo bench --bench c_heap  # tracking on
//! ```
//!
//! - `c_heap/glibc`: `__libc_malloc`/`__libc_free`, glibc's allocator by
//!   the names the macro does not replace (the baseline).
//! - `c_heap/malloc`: `malloc`/`free`, which the macro defines: with
//!   tracking off, one relaxed load on top of glibc's; with it on, tracked
//!   as a Rust allocation is, plus the registry lookup C's `free` makes to
//!   find the block's size.
//! - `c_heap/strdup`: glibc's `strdup` (which calls `malloc` inside glibc)
//!   and `free`.
#![allow(missing_docs)] // criterion_group! makes an undocumented fn

use std::ffi::c_void;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[global_allocator]
static GLOBAL: memwarden::Warden = memwarden::Warden::new();
memwarden::track_c_heap!();

unsafe extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_free(ptr: *mut c_void);
}

fn pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("c_heap");
    g.throughput(Throughput::Elements(1));
    g.bench_function("glibc", |b| {
        b.iter(|| {
            // SAFETY: a block of glibc's, freed once.
            unsafe {
                let p = __libc_malloc(black_box(32));
                p.cast::<u8>().write(1);
                __libc_free(black_box(p));
            }
        })
    });
    g.bench_function("malloc", |b| {
        b.iter(|| {
            // SAFETY: a block of `malloc`'s, freed once.
            unsafe {
                let p = libc::malloc(black_box(32));
                p.cast::<u8>().write(1);
                libc::free(black_box(p));
            }
        })
    });
    g.bench_function("strdup", |b| {
        b.iter(|| {
            // SAFETY: a NUL-terminated string; the copy freed once.
            unsafe { libc::free(black_box(libc::strdup(c"a short string".as_ptr())).cast()) }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .without_plots();
    targets = pairs
}
criterion_main!(benches);
