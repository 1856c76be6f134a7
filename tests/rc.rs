//! Tracked reference counts: `Rc`/`Arc` behaviour, holder lists with the
//! file and line of each reference, and cycles found among tracked objects.
//!
//! Tracking is switched on (`memwarden::enable()`) by every test that
//! needs it; no test switches it off, so tests may run in parallel.
use std::cell::RefCell;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use memwarden::rc::{Outstanding, OutstandingKind, TrackedArc, TrackedRc, WeakArc};

/// This object's entry in the list of outstanding tracked objects.
fn entry_of(id: u64, all: &[Outstanding]) -> Outstanding {
    all.iter()
        .find(|o| o.id == id)
        .cloned()
        .unwrap_or_else(|| panic!("object #{id} not listed in {all:#?}"))
}

/// The id the registry gives an object: found by type name and line.
fn id_by_line(type_name: &str, line: u32) -> u64 {
    memwarden::rc::outstanding()
        .into_iter()
        .find(|o| o.type_name == type_name && o.taken_at.line() == line)
        .map(|o| o.id)
        .unwrap_or_else(|| panic!("no {type_name} created at line {line}"))
}

/// Switches tracking on; false if it cannot be (the `tracking` feature
/// is off, not Linux, or Miri): then nothing is tracked, as checked here.
fn tracking() -> bool {
    // Under Miri, `enable` cannot register the exit report (no `atexit`).
    if !cfg!(miri) {
        memwarden::enable();
    }
    let on = memwarden::is_enabled();
    if !on {
        let a = TrackedRc::new(1);
        let b = TrackedArc::new(2);
        assert!(!TrackedRc::is_tracked(&a) && TrackedRc::holders(&a).is_empty());
        assert!(!TrackedArc::is_tracked(&b) && TrackedArc::holders(&b).is_empty());
        assert!(memwarden::rc::outstanding().is_empty());
    }
    on
}

fn lines(v: &[&'static std::panic::Location<'static>]) -> Vec<u32> {
    v.iter().map(|l| l.line()).collect()
}

#[test]
fn rc_holders_name_where_each_reference_was_taken() {
    if !tracking() {
        return;
    }
    let line = line!() + 1;
    let a = TrackedRc::new(String::from("shared"));
    let b = a.clone();
    let c = TrackedRc::clone(&b);
    assert!(TrackedRc::is_tracked(&a));
    assert_eq!(lines(&TrackedRc::holders(&a)), [line, line + 1, line + 2]);
    assert_eq!(TrackedRc::taken_at(&c).line(), line + 2);
    assert!(TrackedRc::taken_at(&a).file().ends_with("tests/rc.rs"));
    drop(b);
    assert_eq!(lines(&TrackedRc::holders(&a)), [line, line + 2]);
    let w = TrackedRc::downgrade(&a);
    let up = line!() + 1;
    let d = w.upgrade().unwrap();
    assert_eq!(lines(&TrackedRc::holders(&a)), [line, line + 2, up]);
    assert_eq!(
        (TrackedRc::strong_count(&a), TrackedRc::weak_count(&a)),
        (3, 1)
    );
    drop((c, d));
    assert_eq!(TrackedRc::try_unwrap(a).unwrap(), "shared");
    assert!(w.upgrade().is_none());
}

#[test]
fn arc_holders_across_threads() {
    if !tracking() {
        return;
    }
    let line = line!() + 1;
    let a = TrackedArc::new(Mutex::new(0u32));
    let barrier = Arc::new(Barrier::new(5));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let a = TrackedArc::clone(&a);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                *a.lock().unwrap() += 1;
                barrier.wait(); // all four references are held now
                barrier.wait();
            })
        })
        .collect();
    barrier.wait();
    let held = lines(&TrackedArc::holders(&a));
    assert_eq!(held.len(), 5);
    assert_eq!(held[0], line);
    assert!(held[1..].iter().all(|&l| l == line + 4), "{held:?}");
    assert_eq!(TrackedArc::strong_count(&a), 5);
    barrier.wait();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(lines(&TrackedArc::holders(&a)), [line]);
    assert_eq!(TrackedArc::into_inner(a).unwrap().into_inner().unwrap(), 4);
}

#[test]
fn arc_counts_stay_exact_under_contention() {
    let a = TrackedArc::new(7u64);
    let w = TrackedArc::downgrade(&a);
    let rounds = if cfg!(miri) { 10 } else { 10_000 };
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..rounds {
                    let b = a.clone();
                    let c = w.upgrade().unwrap();
                    let w2 = TrackedArc::downgrade(&c);
                    assert_eq!(*b + *c, 14);
                    drop((b, c, w2));
                }
            });
        }
    });
    assert_eq!(
        (TrackedArc::strong_count(&a), TrackedArc::weak_count(&a)),
        (1, 1)
    );
    drop(a);
    assert!(w.upgrade().is_none());
    assert_eq!(w.strong_count(), 0);
}

#[test]
fn get_mut_and_try_unwrap_follow_std() {
    let mut a = TrackedRc::new(vec![1]);
    TrackedRc::get_mut(&mut a).unwrap().push(2);
    let b = a.clone();
    assert!(TrackedRc::get_mut(&mut a).is_none());
    let a = TrackedRc::try_unwrap(a).unwrap_err();
    drop(b);
    assert_eq!(TrackedRc::into_inner(a), Some(vec![1, 2]));

    let mut x = TrackedArc::new(1);
    let wx: WeakArc<i32> = TrackedArc::downgrade(&x);
    assert!(TrackedArc::get_mut(&mut x).is_none());
    drop(wx);
    *TrackedArc::get_mut(&mut x).unwrap() = 5;
    assert_eq!(TrackedArc::try_unwrap(x).unwrap(), 5);
}

/// A node of a graph of tracked references.
struct Node {
    next: RefCell<Option<TrackedRc<Node>>>,
}

fn node() -> Node {
    Node {
        next: RefCell::new(None),
    }
}

#[test]
#[cfg_attr(miri, ignore = "finding references inside objects uses assembly")]
fn rc_cycle_is_reported_as_a_cycle() {
    if !tracking() {
        return;
    }
    let (a, la) = (TrackedRc::new(node()), line!());
    let (b, lb) = (TrackedRc::new(node()), line!());
    let ty = std::any::type_name::<Node>();
    let (ia, ib) = (id_by_line(ty, la), id_by_line(ty, lb));
    let lab = line!() + 1;
    *a.next.borrow_mut() = Some(b.clone()); // b held inside a
    let lba = line!() + 1;
    *b.next.borrow_mut() = Some(a.clone()); // a held inside b

    // Still held from outside (the locals): not a leak yet.
    let all = memwarden::rc::outstanding();
    let ea = entry_of(ia, &all);
    assert!(!ea.unreachable && ea.cycle.is_none(), "{ea}");
    assert_eq!(ea.holders.len(), 2);
    let inside: Vec<_> = ea.holders.iter().map(|h| h.inside).collect();
    assert_eq!(inside, [None, Some(ib)]);

    // Drop the outside references: a and b only hold each other.
    drop((a, b));
    let all = memwarden::rc::outstanding();
    let (ea, eb) = (entry_of(ia, &all), entry_of(ib, &all));
    assert_eq!(ea.kind, OutstandingKind::Rc);
    for (e, other, taken) in [(&ea, ib, lba), (&eb, ia, lab)] {
        assert!(e.unreachable, "{e}");
        assert_eq!(e.cycle, Some(ia.min(ib)), "{e}");
        assert_eq!(e.holders.len(), 1);
        assert_eq!(e.holders[0].inside, Some(other));
        assert_eq!(e.holders[0].taken_at.line(), taken);
    }
    let text = ea.to_string();
    let head = "is still held by 1 reference (in reference cycle #";
    assert!(text.contains(head), "{text}");
    assert!(text.contains(&format!("rc.rs:{lba}")), "{text}");
    assert!(text.contains(&format!("held inside #{ib}")), "{text}");
}

/// Holds itself, and an object that only it holds.
struct Link {
    me: Mutex<Option<TrackedArc<Link>>>,
    _tail: TrackedArc<u64>,
}

#[test]
#[cfg_attr(miri, ignore = "finding references inside objects uses assembly")]
fn arc_self_cycle_and_what_hangs_off_a_cycle() {
    if !tracking() {
        return;
    }
    let (tail, lt) = (TrackedArc::new(99u64), line!());
    let link = Link {
        me: Mutex::new(None),
        _tail: tail.clone(),
    };
    let (l, ll) = (TrackedArc::new(link), line!());
    *l.me.lock().unwrap() = Some(l.clone());
    drop((l, tail));
    let all = memwarden::rc::outstanding();
    let il = id_by_line(std::any::type_name::<Link>(), ll);
    let it = id_by_line("u64", lt);
    let el = entry_of(il, &all);
    let et = entry_of(it, &all);
    assert_eq!(el.kind, OutstandingKind::Arc);
    assert_eq!((el.unreachable, el.cycle), (true, Some(il)), "{el}");
    assert_eq!(el.holders[0].inside, Some(il));
    // The tail is lost with the cycle but is not part of it.
    assert_eq!((et.unreachable, et.cycle), (true, None), "{et}");
    assert_eq!(et.holders[0].inside, Some(il));
    assert!(
        et.to_string().contains("(only from a leaked cycle)"),
        "{et}"
    );
}

#[test]
fn untracked_objects_have_no_holders_but_know_their_site() {
    // Created while tracking may or may not be on (tests run in parallel):
    // either way `holders` agrees with `is_tracked`.
    let line = line!() + 1;
    let a = TrackedRc::new(1u8);
    let b = a.clone();
    assert_eq!(TrackedRc::taken_at(&b).line(), line + 1);
    let held = TrackedRc::holders(&a);
    if TrackedRc::is_tracked(&a) {
        assert_eq!(lines(&held), [line, line + 1]);
    } else {
        assert!(held.is_empty());
    }
}

#[test]
fn into_inner_gives_up_its_reference_as_drop_does() {
    // Tracked or not (tests run in parallel): holders checked if tracked.
    let line = line!() + 1;
    let a = TrackedRc::new(String::from("rc"));
    let b = a.clone();
    let w = TrackedRc::downgrade(&a);
    assert_eq!(format!("{w:?}"), "(WeakRc)");
    assert_eq!(TrackedRc::into_inner(b), None);
    assert_eq!((TrackedRc::strong_count(&a), w.weak_count()), (1, 1));
    if TrackedRc::is_tracked(&a) {
        assert_eq!(lines(&TrackedRc::holders(&a)), [line]);
    }
    assert_eq!(TrackedRc::into_inner(a).as_deref(), Some("rc"));
    assert!(w.upgrade().is_none());

    let line = line!() + 1;
    let x = TrackedArc::new(String::from("arc"));
    let y = x.clone();
    let wx = TrackedArc::downgrade(&y);
    assert_eq!(format!("{wx:?}"), "(WeakArc)");
    assert_eq!(TrackedArc::into_inner(y), None);
    if TrackedArc::is_tracked(&x) {
        assert_eq!(lines(&TrackedArc::holders(&x)), [line]);
    }
    assert_eq!(TrackedArc::into_inner(x).as_deref(), Some("arc"));
    assert_eq!((wx.strong_count(), wx.weak_count()), (0, 0));
}
