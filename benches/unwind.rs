//! Stack capture: memwarden's cached CFI walker (`capture_fast`) against
//! libgcc's `_Unwind_Backtrace` (`backtrace::trace_unsynchronized`, the
//! slow path), capturing 10, 20 and 40 frames.
//!
//! ```sh
//! cargo bench --bench unwind
//! ```
//!
//! Each capture starts in the benchmark's closure and skips that frame, as
//! `Warden` skips its own; the stack above is at least as deep as the
//! capture, so every run walks exactly `depth` frames past the skipped ones.
#[cfg(target_os = "linux")]
mod linux {
    use criterion::{BenchmarkId, Criterion};
    use memwarden::__bench::{capture_fast, capture_slow};
    use std::hint::black_box;

    const DEPTHS: [usize; 3] = [10, 20, 40];

    /// An address in the caller's frame, as `Warden` takes it.
    macro_rules! here {
        () => {{
            let marker = 0u8;
            black_box(&marker) as *const u8 as usize
        }};
    }

    /// Runs `f` under `depth` more frames of this function.
    #[inline(never)]
    fn nest(depth: usize, f: &mut dyn FnMut()) {
        if depth == 0 {
            f();
        } else {
            nest(black_box(depth - 1), f);
        }
        black_box(depth);
    }

    pub(crate) fn bench(c: &mut Criterion) {
        let mut group = c.benchmark_group("capture");
        for depth in DEPTHS {
            group.bench_with_input(BenchmarkId::new("fast", depth), &depth, |b, &depth| {
                nest(depth, &mut || {
                    let mut out = [0usize; 64];
                    // Check once that it does the job, then time it.
                    let entry_sp = here!();
                    let n = capture_fast(&mut out, depth, entry_sp);
                    assert_eq!(n, Some(depth), "the fast capture gave up");
                    b.iter(|| {
                        let entry_sp = here!();
                        black_box(capture_fast(&mut out, depth, entry_sp))
                    });
                });
            });
            group.bench_with_input(BenchmarkId::new("slow", depth), &depth, |b, &depth| {
                nest(depth, &mut || {
                    let mut out = [0usize; 64];
                    b.iter(|| {
                        let entry_sp = here!();
                        black_box(capture_slow(&mut out, depth, entry_sp))
                    });
                });
            });
        }
        group.finish();
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    {
        let mut c = criterion::Criterion::default().configure_from_args();
        linux::bench(&mut c);
        c.final_summary();
    }
}
