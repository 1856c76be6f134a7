//! Pools: random take/return sequences against a model, capacity limits,
//! shrinking, boxes outliving their pool, cross-thread drops of
//! `SyncPool` boxes, and leak listings with the file and line of `alloc`.
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use memwarden::pool::{OutstandingKind, Pool, PoolBox, PoolErrorKind, SyncPool, SyncPoolBox};
use proptest::prelude::*;

/// One step of a random sequence.
#[derive(Clone, Debug)]
enum Op {
    /// Take an object holding this value.
    Take(u32),
    /// Return the live object at this index (modulo the number alive).
    Return(usize),
    /// Move the value out of the live object at this index.
    IntoInner(usize),
    /// Give empty chunks back.
    Shrink,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u32>().prop_map(Op::Take),
        3 => any::<usize>().prop_map(Op::Return),
        1 => any::<usize>().prop_map(Op::IntoInner),
        1 => Just(Op::Shrink),
    ]
}

/// A value that counts its drops, to check each is dropped exactly once.
struct Counted(u32, Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }
}

/// Turns tracking on (a pool made then is registered, and its chunks keep
/// when and on which thread each object was taken); false if it cannot be
/// (the `tracking` feature is off, or Miri, where `enable` cannot register
/// the exit report).
fn tracking_on() -> bool {
    if !cfg!(miri) {
        memwarden::enable();
    }
    memwarden::is_enabled()
}

/// True if a pool's chunks have room for more than a one-word header per
/// object of `value` bytes: the layout of a pool made while tracking was on
/// (see `src/pool/slot.rs`).
fn has_tracked_layout(s: &memwarden::pool::PoolStats, value: usize) -> bool {
    s.slots > 0 && s.bytes / s.slots > (value + 8).next_multiple_of(8)
}

/// `Pool` against a model: every live box keeps its value, addresses are
/// never shared, `alloc` fails exactly at the capacity, and the figures
/// add up. `tracked`: the pool must have been made while tracking was on.
fn pool_model(
    chunk_len: usize,
    capacity: usize,
    ops: Vec<Op>,
    tracked: bool,
) -> Result<(), TestCaseError> {
    let drops = Arc::new(AtomicUsize::new(0));
    let pool: Pool<Counted> = Pool::builder()
        .chunk_len(chunk_len)
        .capacity(capacity)
        .build();
    let mut live: Vec<PoolBox<Counted>> = Vec::new();
    let mut model: Vec<u32> = Vec::new();
    let (mut made, mut high) = (0usize, 0usize);
    for op in ops {
        match op {
            Op::Take(v) => match pool.alloc(Counted(v, Arc::clone(&drops))) {
                Ok(b) => {
                    made += 1;
                    live.push(b);
                    model.push(v);
                    high = high.max(model.len());
                }
                Err(e) => {
                    prop_assert_eq!(e.kind(), PoolErrorKind::CapacityReached { capacity });
                    prop_assert_eq!(model.len(), capacity);
                    made += 1; // the value comes back and is dropped
                    prop_assert_eq!(e.into_inner().0, v);
                }
            },
            Op::Return(i) if !live.is_empty() => {
                let i = i % live.len();
                drop(live.swap_remove(i));
                model.swap_remove(i);
            }
            Op::IntoInner(i) if !live.is_empty() => {
                let i = i % live.len();
                let v = PoolBox::into_inner(live.swap_remove(i));
                prop_assert_eq!(v.0, model.swap_remove(i));
            }
            Op::Shrink => {
                let before = pool.stats();
                let freed = pool.shrink();
                let after = pool.stats();
                prop_assert_eq!(after.chunks, before.chunks - freed);
                prop_assert_eq!(after.live, before.live);
                // Chunks still held each hold a live object.
                prop_assert!(after.chunks <= after.live);
            }
            _ => {}
        }
        let s = pool.stats();
        prop_assert_eq!(s.live, model.len());
        prop_assert_eq!(s.free, s.slots - s.live);
        prop_assert!(s.slots <= capacity);
        prop_assert_eq!(s.high_water, high);
        let values: Vec<u32> = live.iter().map(|b| b.0).collect();
        prop_assert_eq!(&values, &model);
        let addrs: HashSet<usize> = live
            .iter()
            .map(|b| &**b as *const Counted as usize)
            .collect();
        prop_assert_eq!(addrs.len(), live.len());
        prop_assert_eq!(drops.load(Ordering::Relaxed), made - model.len());
    }
    prop_assert_eq!(pool.leaks().len(), model.len());
    let s = pool.stats();
    prop_assert!(!tracked || s.slots == 0 || has_tracked_layout(&s, size_of::<Counted>()));
    drop(pool); // with boxes alive: they stay valid
    let values: Vec<u32> = live.iter().map(|b| b.0).collect();
    prop_assert_eq!(&values, &model);
    drop(live);
    prop_assert_eq!(drops.load(Ordering::Relaxed), made);
    Ok(())
}

/// `SyncPool` (with or without thread caches) against the same model, on
/// one thread. `tracked`: as for [`pool_model`].
fn sync_pool_model(
    chunk_len: usize,
    capacity: usize,
    cache: usize,
    ops: Vec<Op>,
    tracked: bool,
) -> Result<(), TestCaseError> {
    let drops = Arc::new(AtomicUsize::new(0));
    let pool: SyncPool<Counted> = SyncPool::builder()
        .chunk_len(chunk_len)
        .capacity(capacity)
        .thread_cache(cache)
        .build_sync();
    let mut live: Vec<SyncPoolBox<Counted>> = Vec::new();
    let mut model: Vec<u32> = Vec::new();
    let mut made = 0usize;
    for op in ops {
        match op {
            Op::Take(v) => match pool.alloc(Counted(v, Arc::clone(&drops))) {
                Ok(b) => {
                    made += 1;
                    live.push(b);
                    model.push(v);
                }
                Err(e) => {
                    prop_assert_eq!(e.kind(), PoolErrorKind::CapacityReached { capacity });
                    // Slots this thread caches are free too, but only the
                    // depot's count toward a refusal: with a cache, fewer
                    // than `capacity` may be live.
                    prop_assert!(model.len() <= capacity);
                    if cache == 0 {
                        prop_assert_eq!(model.len(), capacity);
                    }
                    made += 1;
                    drop(e);
                }
            },
            Op::Return(i) if !live.is_empty() => {
                let i = i % live.len();
                drop(live.swap_remove(i));
                model.swap_remove(i);
            }
            Op::IntoInner(i) if !live.is_empty() => {
                let i = i % live.len();
                let v = SyncPoolBox::into_inner(live.swap_remove(i));
                prop_assert_eq!(v.0, model.swap_remove(i));
            }
            Op::Shrink => {
                let before = pool.stats();
                let freed = pool.shrink();
                prop_assert_eq!(pool.stats().chunks, before.chunks - freed);
                prop_assert!(pool.stats().chunks <= model.len());
            }
            _ => {}
        }
        let s = pool.stats();
        prop_assert_eq!(s.live, model.len());
        prop_assert!(s.slots <= capacity);
        prop_assert!(s.high_water >= s.live);
        let values: Vec<u32> = live.iter().map(|b| b.0).collect();
        prop_assert_eq!(&values, &model);
        prop_assert_eq!(drops.load(Ordering::Relaxed), made - model.len());
    }
    let s = pool.stats();
    prop_assert!(!tracked || s.slots == 0 || has_tracked_layout(&s, size_of::<Counted>()));
    drop(pool);
    drop(live);
    prop_assert_eq!(drops.load(Ordering::Relaxed), made);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 256 }))]

    /// [`pool_model`], tracking on or off (other tests here turn it on).
    #[test]
    fn pool_matches_model(
        chunk_len in 1usize..9,
        capacity in prop_oneof![Just(usize::MAX), 0usize..40],
        ops in prop::collection::vec(op(), 0..120),
    ) {
        pool_model(chunk_len, capacity, ops, false)?;
    }

    /// [`sync_pool_model`], tracking on or off.
    #[test]
    fn sync_pool_matches_model(
        chunk_len in 1usize..9,
        capacity in prop_oneof![Just(usize::MAX), 0usize..40],
        cache in prop_oneof![Just(0usize), 1usize..8],
        ops in prop::collection::vec(op(), 0..120),
    ) {
        sync_pool_model(chunk_len, capacity, cache, ops, false)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 64 }))]

    /// [`pool_model`] on pools made while tracking is on: their chunks
    /// keep a record after each slot, and carving, reuse, capacity cuts and
    /// shrinking go by the wider stride.
    #[test]
    fn tracked_pool_matches_model(
        chunk_len in 1usize..9,
        capacity in prop_oneof![Just(usize::MAX), 0usize..40],
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let tracked = tracking_on();
        pool_model(chunk_len, capacity, ops, tracked)?;
    }

    /// [`sync_pool_model`] on pools made while tracking is on.
    #[test]
    fn tracked_sync_pool_matches_model(
        chunk_len in 1usize..9,
        capacity in prop_oneof![Just(usize::MAX), 0usize..40],
        cache in prop_oneof![Just(0usize), 1usize..8],
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let tracked = tracking_on();
        sync_pool_model(chunk_len, capacity, cache, ops, tracked)?;
    }
}

#[test]
fn pool_capacity_error_gives_the_value_back() {
    let pool: Pool<String> = Pool::builder().capacity(1).build();
    let a = pool.alloc("a".to_owned()).unwrap();
    let e = pool.alloc("b".to_owned()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pool is full: all 1 objects of its capacity are taken"
    );
    assert_eq!(e.into_inner(), "b");
    drop(a);
    assert_eq!(*pool.alloc("c".to_owned()).unwrap(), "c");
}

/// A node that owns another pool object's box.
struct Node {
    next: Option<PoolBox<Node>>,
    _payload: u64,
}

#[test]
fn objects_in_a_cycle_stay_in_leaks_until_the_cycle_is_broken() {
    let pool: Pool<Node> = Pool::new();
    let node = |x| Node {
        next: None,
        _payload: x,
    };
    let line = line!() + 1;
    let mut a = pool.alloc(node(1)).unwrap();
    let b = pool.alloc(node(2)).unwrap();
    a.next = Some(b);
    let a_value: *mut Node = &mut *a;
    // SAFETY: `a`'s slot stays taken while its box lives inside `b`.
    unsafe { (*a_value).next.as_mut().unwrap().next = Some(a) };
    // Both boxes are now owned only by each other.
    let lines: Vec<u32> = pool.leaks().iter().map(|l| l.taken_at.line()).collect();
    assert_eq!(lines, [line, line + 1]);
    assert_eq!(pool.stats().live, 2);
    // Break the cycle: `b` goes, and with it `a`.
    // SAFETY: as above; `b` is dropped once, here.
    drop(unsafe { (*a_value).next.take() });
    assert!(pool.leaks().is_empty());
    assert_eq!(pool.stats().live, 0);
}

#[test]
fn leaks_name_this_file_and_line() {
    let pool: Pool<[u8; 24]> = Pool::new();
    let line = line!() + 1;
    let kept: Vec<_> = (0..3).map(|_| pool.alloc([0; 24]).unwrap()).collect();
    let other = pool.alloc([1; 24]).unwrap();
    let leaks = pool.leaks();
    assert_eq!(leaks.len(), 4);
    for l in &leaks[..3] {
        assert!(l.taken_at.file().ends_with("pool.rs"), "{}", l.taken_at);
        assert_eq!(l.taken_at.line(), line);
        assert_eq!(l.kind, OutstandingKind::Pool);
        assert_eq!(l.bytes, 24);
        assert!(l.pool_alive);
    }
    assert_eq!(leaks[3].taken_at.line(), line + 1);
    assert_eq!(PoolBox::taken_at(&other).line(), line + 1);
    drop((kept, other));
    assert!(pool.leaks().is_empty());
}

#[test]
fn sync_pool_boxes_dropped_on_other_threads() {
    let drops = Arc::new(AtomicUsize::new(0));
    let pool: SyncPool<Counted> = SyncPool::builder().chunk_len(16).build_sync();
    let mut boxes: Vec<_> = (0..1000)
        .map(|i| pool.alloc(Counted(i, Arc::clone(&drops))).unwrap())
        .collect();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let mine: Vec<_> = boxes.drain(..250).collect();
            thread::spawn(move || {
                let sum: u64 = mine.iter().map(|b| u64::from(b.0)).sum();
                drop(mine);
                sum
            })
        })
        .collect();
    let sum: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(sum, (0..1000u64).sum::<u64>());
    assert_eq!(drops.load(Ordering::Relaxed), 1000);
    let s = pool.stats();
    assert_eq!(s.live, 0);
    assert!(s.high_water >= 1000);
    // The workers exited: their caches went back, so every chunk is empty.
    assert_eq!(pool.shrink(), s.chunks);
    assert_eq!(pool.stats().slots, 0);
}

#[test]
fn sync_pool_dropped_before_its_boxes() {
    let pool: SyncPool<Vec<u32>> = SyncPool::new();
    let boxes: Vec<_> = (0..100).map(|i| pool.alloc(vec![i; 3]).unwrap()).collect();
    drop(pool);
    let t = thread::spawn(move || boxes.iter().map(|b| b[2]).sum::<u32>());
    assert_eq!(t.join().unwrap(), (0..100).sum::<u32>());
}

#[test]
fn sync_pool_many_threads_take_and_return() {
    const THREADS: usize = 4;
    const ROUNDS: usize = if cfg!(miri) { 20 } else { 20_000 };
    let pool: Arc<SyncPool<(usize, usize)>> = Arc::new(
        SyncPool::builder()
            .chunk_len(32)
            .thread_cache(8)
            .build_sync(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<SyncPoolBox<(usize, usize)>>();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let pool = Arc::clone(&pool);
            let tx = tx.clone();
            thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..ROUNDS {
                    let b = pool.alloc((t, i)).unwrap();
                    if i % 3 == 0 {
                        tx.send(b).unwrap(); // dropped by the main thread
                    } else {
                        mine.push(b);
                    }
                    if mine.len() > 16 {
                        // Nobody else wrote into our objects.
                        for b in mine.drain(..8) {
                            assert_eq!(b.0, t);
                        }
                    }
                }
                mine.into_iter().all(|b| b.0 == t)
            })
        })
        .collect();
    drop(tx);
    let mut seen = HashSet::new();
    for b in rx {
        assert!(seen.insert(*b), "one object handed out twice: {:?}", *b);
    }
    for w in workers {
        assert!(w.join().unwrap());
    }
    assert_eq!(seen.len(), THREADS * ROUNDS.div_ceil(3));
    assert_eq!(pool.stats().live, 0);
}

#[test]
fn sync_pool_capacity_without_caches_is_exact() {
    let pool: SyncPool<u8> = SyncPool::builder().capacity(3).thread_cache(0).build_sync();
    let boxes: Vec<_> = (0..3).map(|i| pool.alloc(i).unwrap()).collect();
    assert!(matches!(
        pool.alloc(9).unwrap_err().kind(),
        PoolErrorKind::CapacityReached { capacity: 3 }
    ));
    let b = boxes.into_iter().next().unwrap();
    let t = thread::spawn(move || drop(b));
    t.join().unwrap();
    assert_eq!(*pool.alloc(7).unwrap(), 7);
}

#[test]
fn registered_pools_list_their_outstanding_objects() {
    if !tracking_on() {
        // The `tracking` feature is off (or Miri): pools are never
        // registered, and only their own `leaks()` lists objects.
        let pool: Pool<u8> = Pool::new();
        let b = pool.alloc(1).unwrap();
        assert!(memwarden::pool::outstanding().is_empty());
        assert_eq!(pool.leaks().len(), 1);
        drop(b);
        return;
    }
    let pool: Pool<u64> = Pool::new();
    let sync: SyncPool<u32> = SyncPool::new();
    let line = line!() + 1;
    let forgotten = pool.alloc(1).unwrap();
    let kept = sync.alloc(2).unwrap();
    std::mem::forget(forgotten);
    drop(pool); // its memory lives on for the forgotten object
    let all = memwarden::pool::outstanding();
    let mine: Vec<_> = all
        .iter()
        .filter(|o| o.taken_at.file().ends_with("tests/pool.rs") && o.taken_at.line() >= line)
        .filter(|o| o.taken_at.line() <= line + 1)
        .collect();
    assert_eq!(mine.len(), 2, "{all:#?}");
    let p = mine
        .iter()
        .find(|o| o.kind == OutstandingKind::Pool)
        .unwrap();
    assert_eq!((p.taken_at.line(), p.bytes, p.pool_alive), (line, 8, false));
    assert!(
        p.to_string()
            .ends_with("was never returned (its pool was dropped)"),
        "{p}"
    );
    let s = mine
        .iter()
        .find(|o| o.kind == OutstandingKind::SyncPool)
        .unwrap();
    assert_eq!(
        (s.taken_at.line(), s.type_name, s.pool_alive),
        (line + 1, "u32", true)
    );
    drop(kept);
    assert!(sync.leaks().is_empty());
}
