//! The table of tracked objects: who holds each, and the cycles among them.
use std::collections::{BTreeMap, HashMap};
use std::panic::Location;
use std::ptr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Holder, Outstanding, OutstandingKind};
use crate::pool::{hide, quiet, read_word, reveal};

/// One tracked object.
struct Obj {
    kind: OutstandingKind,
    type_name: &'static str,
    /// Hidden address and size of the allocation.
    block: (usize, usize),
    /// Hidden address and size of the value.
    value: (usize, usize),
    bytes: usize,
    taken_at: &'static Location<'static>,
    /// One entry per strong reference held.
    holders: Vec<&'static Location<'static>>,
}

static OBJECTS: Mutex<BTreeMap<u64, Obj>> = Mutex::new(BTreeMap::new());

fn lock() -> MutexGuard<'static, BTreeMap<u64, Obj>> {
    OBJECTS.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cold]
#[inline(never)]
pub(super) fn created<T, B>(
    id: u64,
    kind: OutstandingKind,
    block: *const B,
    value: *const T,
    site: &'static Location<'static>,
) {
    let obj = Obj {
        kind,
        type_name: std::any::type_name::<T>(),
        block: (hide(block), size_of::<B>()),
        value: (hide(value), size_of::<T>()),
        bytes: size_of::<T>(),
        taken_at: site,
        holders: Vec::new(),
    };
    quiet(|| {
        let mut objs = lock();
        let o = objs.entry(id).or_insert(obj);
        o.holders.push(site);
    });
}

#[cold]
#[inline(never)]
pub(super) fn taken(id: u64, site: &'static Location<'static>) {
    quiet(|| {
        if let Some(o) = lock().get_mut(&id) {
            o.holders.push(site);
        }
    });
}

/// A strong reference taken at `site` was dropped; `last`: it was the
/// last one (the object goes).
#[cold]
#[inline(never)]
pub(super) fn released(id: u64, site: &'static Location<'static>, last: bool) {
    quiet(|| {
        let mut objs = lock();
        if last {
            objs.remove(&id);
        } else if let Some(o) = objs.get_mut(&id) {
            let i = o
                .holders
                .iter()
                .rposition(|h| ptr::eq(*h, site))
                .or_else(|| o.holders.iter().rposition(|h| **h == *site));
            if let Some(i) = i {
                o.holders.remove(i);
            }
        }
    });
}

/// The object goes (its last strong reference was dropped or unwrapped).
#[cold]
#[inline(never)]
pub(super) fn gone(id: u64) {
    quiet(|| {
        lock().remove(&id);
    });
}

pub(super) fn holders(id: u64) -> Vec<&'static Location<'static>> {
    if id == 0 {
        return Vec::new();
    }
    lock()
        .get(&id)
        .map(|o| o.holders.clone())
        .unwrap_or_default()
}

pub(super) fn outstanding() -> Vec<Outstanding> {
    quiet(|| {
        let objs = lock();
        let ids: Vec<u64> = objs.keys().copied().collect();
        let index: HashMap<u64, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let by_block: HashMap<usize, usize> = objs
            .values()
            .enumerate()
            .map(|(i, o)| (reveal::<u8>(o.block.0) as usize, i))
            .collect();
        let mut holders: Vec<Vec<Holder>> = objs
            .values()
            .map(|o| {
                o.holders
                    .iter()
                    .map(|&taken_at| Holder {
                        taken_at,
                        inside: None,
                    })
                    .collect()
            })
            .collect();
        // References stored in each value: a word holding an object's
        // address followed by a word holding one of its holders' sites.
        for (p, o) in objs.values().enumerate() {
            let start = reveal::<usize>(o.value.0);
            let words = o.value.1 / size_of::<usize>();
            if start as usize % align_of::<usize>() != 0 || words < 2 {
                continue;
            }
            for w in 0..words - 1 {
                // SAFETY: the object is listed, so its value is alive
                // (it is unlisted before it is dropped, under this
                // lock); both words lie inside it, aligned.
                let (a, s) = unsafe { (read_word(start.add(w)), read_word(start.add(w + 1))) };
                let Some(&target) = by_block.get(&a) else {
                    continue;
                };
                if let Some(h) = holders[target]
                    .iter_mut()
                    .find(|h| h.inside.is_none() && ptr::from_ref(h.taken_at) as usize == s)
                {
                    h.inside = Some(ids[p]);
                }
            }
        }
        let (unreachable, cycle) = analyse(&ids, &index, &holders);
        objs.values()
            .zip(holders)
            .enumerate()
            .map(|(i, (o, holders))| Outstanding {
                kind: o.kind,
                id: ids[i],
                type_name: o.type_name,
                bytes: o.bytes,
                taken_at: o.taken_at,
                holders,
                cycle: cycle[i],
                unreachable: unreachable[i],
                pool_alive: false,
                block: (reveal::<u8>(o.block.0) as usize, o.block.1),
                stack: 0,
            })
            .collect()
    })
}

/// Which objects are held only from inside unreachable objects, and
/// which of those form cycles (strongly connected components with a
/// loop), named by their smallest id.
fn analyse(
    ids: &[u64],
    index: &HashMap<u64, usize>,
    holders: &[Vec<Holder>],
) -> (Vec<bool>, Vec<Option<u64>>) {
    let n = ids.len();
    // Edges p -> o: o is held inside p.
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (o, hs) in holders.iter().enumerate() {
        for h in hs {
            if let Some(p) = h.inside.and_then(|id| index.get(&id)) {
                out[*p].push(o);
            }
        }
    }
    // Reachable from objects that something outside holds.
    let mut reached = vec![false; n];
    let mut todo: Vec<usize> = (0..n)
        .filter(|&o| holders[o].iter().any(|h| h.inside.is_none()))
        .collect();
    for &o in &todo {
        reached[o] = true;
    }
    while let Some(p) = todo.pop() {
        for &o in &out[p] {
            if !reached[o] {
                reached[o] = true;
                todo.push(o);
            }
        }
    }
    let unreachable: Vec<bool> = reached.iter().map(|r| !r).collect();
    // Tarjan's strongly connected components over unreachable objects.
    let mut cycle = vec![None; n];
    let mut t = Tarjan {
        out: &out,
        keep: &unreachable,
        index: vec![usize::MAX; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        sccs: Vec::new(),
    };
    for (v, &lost) in unreachable.iter().enumerate() {
        if lost && t.index[v] == usize::MAX {
            t.visit(v);
        }
    }
    for scc in t.sccs {
        let looped = scc.len() > 1 || out[scc[0]].contains(&scc[0]);
        if looped {
            let name = scc.iter().map(|&v| ids[v]).min();
            for v in scc {
                cycle[v] = name;
            }
        }
    }
    (unreachable, cycle)
}

struct Tarjan<'a> {
    out: &'a [Vec<usize>],
    keep: &'a [bool],
    index: Vec<usize>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    sccs: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, v: usize) {
        // Iterative, so that long chains do not overflow the stack.
        let mut call: Vec<(usize, usize)> = vec![(v, 0)];
        self.open(v);
        while let Some(&mut (v, ref mut i)) = call.last_mut() {
            if let Some(&w) = self.out[v].get(*i) {
                *i += 1;
                if !self.keep[w] {
                    continue;
                }
                if self.index[w] == usize::MAX {
                    self.open(w);
                    call.push((w, 0));
                } else if self.on_stack[w] {
                    self.low[v] = self.low[v].min(self.index[w]);
                }
            } else {
                call.pop();
                if let Some(&(u, _)) = call.last() {
                    self.low[u] = self.low[u].min(self.low[v]);
                }
                if self.low[v] == self.index[v] {
                    let mut scc = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on_stack[w] = false;
                        scc.push(w);
                        if w == v {
                            break;
                        }
                    }
                    self.sccs.push(scc);
                }
            }
        }
    }

    fn open(&mut self, v: usize) {
        self.index[v] = self.next;
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
    }
}
