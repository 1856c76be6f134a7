//! Pools against `Box` (on the system allocator and on mimalloc), and
//! tracked reference counts against `Rc`/`Arc`. Figures: docs/pools.md.
//!
//! ```sh
//! cargo bench --bench pool                 # everything (about 2 minutes)
//! cargo bench --bench pool -- single       # one group
//! ```
//!
//! This binary registers no `#[global_allocator]`, so `Box` is the system
//! allocator (glibc's malloc here). mimalloc is called directly
//! (`MiMalloc.alloc`/`dealloc`), since a binary has one global allocator.
//!
//! Groups:
//! - `single/pair`: take one object and give it back at once, over and over
//!   (the best case of every allocator: the same block each time).
//! - `single/batch`: take 1000 objects, then give them all back.
//! - `cross`: one thread takes objects and sends them, 64 at a time, to a
//!   second thread that drops them.
//! - `rc`: clone+drop and new+drop of `TrackedRc`/`TrackedArc` (tracking
//!   off, the release-build case) against `Rc`/`Arc`; `rc_tracked`: the
//!   same with tracking on, the debug-build price.
#![allow(missing_docs)] // criterion_group! makes an undocumented fn

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use memwarden::pool::{Pool, SyncPool};
use memwarden::rc::{TrackedArc, TrackedRc};
use mimalloc::MiMalloc;

/// A small object: 32 bytes.
type Obj = [u64; 4];

const BATCH: usize = 1000;
const CROSS: usize = 64;

/// A box allocated with mimalloc directly.
struct MiBox(NonNull<Obj>);

// SAFETY: owns its `Obj` (plain data) like a Box.
unsafe impl Send for MiBox {}

impl MiBox {
    #[inline]
    fn new(v: Obj) -> MiBox {
        // SAFETY: `Obj` has a non-zero size.
        let p = unsafe { MiMalloc.alloc(Layout::new::<Obj>()) }.cast::<Obj>();
        let p = NonNull::new(p).expect("mimalloc out of memory");
        // SAFETY: fresh, aligned, writable.
        unsafe { p.as_ptr().write(v) };
        MiBox(p)
    }
}

impl Drop for MiBox {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { MiMalloc.dealloc(self.0.as_ptr().cast(), Layout::new::<Obj>()) }
    }
}

fn obj(i: u64) -> Obj {
    [i, i + 1, i + 2, i + 3]
}

fn single(c: &mut Criterion) {
    let mut g = c.benchmark_group("single/pair");
    g.throughput(Throughput::Elements(1));
    g.bench_function("box_system", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            drop(black_box(Box::new(obj(i))));
        })
    });
    g.bench_function("box_mimalloc", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            drop(black_box(MiBox::new(obj(i))));
        })
    });
    g.bench_function("pool", |b| {
        let pool: Pool<Obj> = Pool::new();
        let mut i = 0;
        b.iter(|| {
            i += 1;
            drop(black_box(pool.alloc(obj(i)).unwrap()));
        })
    });
    g.bench_function("sync_pool", |b| {
        let pool: SyncPool<Obj> = SyncPool::new();
        let mut i = 0;
        b.iter(|| {
            i += 1;
            drop(black_box(pool.alloc(obj(i)).unwrap()));
        })
    });
    g.finish();

    let mut g = c.benchmark_group("single/batch");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("box_system", |b| {
        let mut v = Vec::with_capacity(BATCH);
        b.iter(|| {
            for i in 0..BATCH as u64 {
                v.push(black_box(Box::new(obj(i))));
            }
            v.clear();
        })
    });
    g.bench_function("box_mimalloc", |b| {
        let mut v = Vec::with_capacity(BATCH);
        b.iter(|| {
            for i in 0..BATCH as u64 {
                v.push(black_box(MiBox::new(obj(i))));
            }
            v.clear();
        })
    });
    g.bench_function("pool", |b| {
        let pool: Pool<Obj> = Pool::new();
        let mut v = Vec::with_capacity(BATCH);
        b.iter(|| {
            for i in 0..BATCH as u64 {
                v.push(black_box(pool.alloc(obj(i)).unwrap()));
            }
            v.clear();
        })
    });
    g.bench_function("sync_pool", |b| {
        let pool: SyncPool<Obj> = SyncPool::new();
        let mut v = Vec::with_capacity(BATCH);
        b.iter(|| {
            for i in 0..BATCH as u64 {
                v.push(black_box(pool.alloc(obj(i)).unwrap()));
            }
            v.clear();
        })
    });
    g.finish();
}

/// Runs `iters` rounds of: `make` 64 objects on this thread, send them to
/// a consumer thread, which drops them. Returns the time until the
/// consumer has dropped the last one.
fn producer_consumer<B: Send + 'static>(iters: u64, mut make: impl FnMut(u64) -> B) -> Duration {
    let (tx, rx) = mpsc::sync_channel::<Vec<B>>(16);
    let (back_tx, back_rx) = mpsc::sync_channel::<Vec<B>>(16);
    let consumer = thread::spawn(move || {
        for mut v in rx {
            v.clear(); // drops the objects on this thread
            // Never block: the producer may have stopped taking buffers.
            let _ = back_tx.try_send(v);
        }
    });
    // Recycle the Vec buffers, so that only the objects are allocated.
    let mut spare: Vec<Vec<B>> = (0..20).map(|_| Vec::with_capacity(CROSS)).collect();
    let start = Instant::now();
    for round in 0..iters {
        let mut v = spare
            .pop()
            .unwrap_or_else(|| back_rx.recv().expect("consumer alive"));
        for i in 0..CROSS as u64 {
            v.push(make(round * CROSS as u64 + i));
        }
        tx.send(v).expect("consumer alive");
        while let Ok(v) = back_rx.try_recv() {
            spare.push(v);
        }
    }
    drop(tx);
    consumer.join().expect("consumer");
    start.elapsed()
}

fn cross(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross");
    g.throughput(Throughput::Elements(CROSS as u64));
    g.bench_function("box_system", |b| {
        b.iter_custom(|iters| producer_consumer(iters, |i| Box::new(obj(i))))
    });
    g.bench_function("box_mimalloc", |b| {
        b.iter_custom(|iters| producer_consumer(iters, |i| MiBox::new(obj(i))))
    });
    g.bench_function("sync_pool", |b| {
        let pool: Arc<SyncPool<Obj>> = Arc::new(SyncPool::new());
        b.iter_custom(|iters| {
            let pool = Arc::clone(&pool);
            producer_consumer(iters, move |i| pool.alloc(obj(i)).unwrap())
        })
    });
    g.finish();
}

fn rc_group(c: &mut Criterion, name: &str) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    let rc = Rc::new(obj(1));
    g.bench_function("rc_clone_drop", |b| {
        b.iter(|| drop(black_box(Rc::clone(black_box(&rc)))))
    });
    let trc = TrackedRc::new(obj(1));
    g.bench_function("tracked_rc_clone_drop", |b| {
        b.iter(|| drop(black_box(TrackedRc::clone(black_box(&trc)))))
    });
    let arc = Arc::new(obj(1));
    g.bench_function("arc_clone_drop", |b| {
        b.iter(|| drop(black_box(Arc::clone(black_box(&arc)))))
    });
    let tarc = TrackedArc::new(obj(1));
    g.bench_function("tracked_arc_clone_drop", |b| {
        b.iter(|| drop(black_box(TrackedArc::clone(black_box(&tarc)))))
    });
    g.bench_function("arc_new_drop", |b| {
        b.iter(|| drop(black_box(Arc::new(black_box(obj(2))))))
    });
    g.bench_function("tracked_arc_new_drop", |b| {
        b.iter(|| drop(black_box(TrackedArc::new(black_box(obj(2))))))
    });
    g.finish();
}

fn rc(c: &mut Criterion) {
    rc_group(c, "rc");
}

fn rc_tracked(c: &mut Criterion) {
    // Tracking on: objects created from now on record their holders. (No
    // global allocator is registered, so nothing else is tracked.)
    memwarden::enable();
    rc_group(c, "rc_tracked");
    memwarden::disable();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40)
}

criterion_group! {
    name = benches;
    config = config();
    targets = single, cross, rc, rc_tracked
}
criterion_main!(benches);
