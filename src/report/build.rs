//! How a report is built from a scan's classified blocks: grouped by
//! kind and stack, symbolized once per stack, suppressions applied.
use std::collections::HashMap;

use super::{Frame, Leak, LeakKind, Report, Summary, symbols};
use crate::reach::Kind;
use crate::registry::Record;
use crate::stack::{self, StackId};
use crate::suppress::Suppressions;

impl LeakKind {
    pub(crate) fn from_reach(k: Kind) -> LeakKind {
        match k {
            Kind::Reachable => LeakKind::StillReachable,
            Kind::Possible => LeakKind::PossiblyLost,
            Kind::IndirectLeak => LeakKind::IndirectlyLost,
            Kind::Unreached => LeakKind::DefinitelyLost,
        }
    }
}

/// One classified live block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Classified {
    pub(crate) rec: Record,
    pub(crate) kind: LeakKind,
    pub(crate) indirect: u64,
    /// Where the pointer that decided `kind` was found (0: none).
    pub(crate) referrer: usize,
}

/// What the symbolized stack of a group says about it.
struct Origin {
    frames: Vec<Frame>,
    suppressed: bool,
    thread_name: bool,
}

/// Heap counters for the summary.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) total_allocs: u64,
    pub(crate) total_bytes: u64,
    pub(crate) peak_bytes: u64,
}

/// Groups blocks by (kind, stack) and symbolizes each stack once.
pub(crate) fn build(
    blocks: &[Classified],
    max_frames: usize,
    counters: Counters,
    suppressions: &Suppressions,
) -> Report {
    let mut summary = Summary {
        total_allocs: counters.total_allocs,
        total_bytes: counters.total_bytes,
        peak_bytes: counters.peak_bytes,
        ..Summary::default()
    };
    let mut groups: HashMap<(LeakKind, StackId), (u64, u64, u64)> = HashMap::new();
    for b in blocks {
        let g = groups.entry((b.kind, b.rec.stack)).or_default();
        g.0 += b.rec.size() as u64;
        g.1 += 1;
        g.2 += b.indirect;
    }
    // One entry per (kind, allocation stack as reported): stacks that
    // differ only in what the report leaves out (memwarden's and the
    // standard library's frames at the top, as for `vec![x; n]`, which
    // allocates zeroed memory when `x` is 0; or frames past the
    // `DEBUG_MEMORY_FRAMES` budget), or in return addresses within one
    // line (two calls on it), are one entry: two entries that read the
    // same would look like a fault of the report.
    let mut cache = HashMap::new();
    let mut stacks: HashMap<StackId, Origin> = HashMap::new();
    let mut merged: HashMap<(LeakKind, Vec<Frame>), (u64, u64, u64)> = HashMap::new();
    let mut leaks: Vec<Leak> = Vec::with_capacity(groups.len());
    for ((kind, id), (bytes, count, indirect_bytes)) in groups {
        let origin = stacks.entry(id).or_insert_with(|| {
            let full = symbols::symbolize(&stack::frames(id), &mut cache);
            if std::env::var_os("MEMWARDEN_DEBUG_STACKS").is_some() {
                eprintln!("memwarden: debug: stack {id}:");
                for f in &full {
                    eprintln!("memwarden: debug:    {f}");
                }
            }
            Origin {
                suppressed: suppressions.matches(&full, symbols::is_runtime(&full)),
                thread_name: symbols::is_thread_name(&full),
                frames: symbols::user_frames(full, max_frames),
            }
        });
        // std keeps a thread's record (`Thread`'s inner part) in memory
        // from `System`, which memwarden cannot see: the thread's name,
        // allocated through the global allocator and held only there, would
        // look lost while the thread runs. Valgrind, which sees the record,
        // calls the name still reachable; so does memwarden.
        let kind = if origin.thread_name {
            LeakKind::StillReachable
        } else {
            kind
        };
        if kind != LeakKind::StillReachable && origin.suppressed {
            summary.suppressed.add(bytes, count);
            continue;
        }
        let m = merged.entry((kind, origin.frames.clone())).or_default();
        m.0 += bytes;
        m.1 += count;
        m.2 += indirect_bytes;
    }
    for ((kind, frames), (bytes, count, indirect_bytes)) in merged {
        match kind {
            LeakKind::DefinitelyLost => summary.definitely_lost.add(bytes, count),
            LeakKind::IndirectlyLost => summary.indirectly_lost.add(bytes, count),
            LeakKind::PossiblyLost => summary.possibly_lost.add(bytes, count),
            LeakKind::StillReachable => summary.still_reachable.add(bytes, count),
        }
        leaks.push(Leak {
            kind,
            bytes,
            blocks: count,
            indirect_bytes,
            frames,
        });
    }
    leaks.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.blocks.cmp(&a.blocks))
            .then(a.kind.cmp(&b.kind))
            .then_with(|| a.frames.cmp(&b.frames))
    });
    Report {
        version: 1,
        summary,
        leaks,
        errors: Vec::new(),
        outstanding: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Amount;

    #[test]
    fn build_groups_by_kind_and_stack_and_sorts_largest_first() {
        let rec = |addr, size, stack| Record::new(addr, size, 8, 1, stack, 1);
        let blocks = [
            Classified {
                rec: rec(0x100, 10, 0),
                kind: LeakKind::DefinitelyLost,
                indirect: 0,
                referrer: 0,
            },
            Classified {
                rec: rec(0x200, 10, 0),
                kind: LeakKind::DefinitelyLost,
                indirect: 5,
                referrer: 0,
            },
            Classified {
                rec: rec(0x300, 5, 0),
                kind: LeakKind::IndirectlyLost,
                indirect: 0,
                referrer: 0,
            },
            Classified {
                rec: rec(0x400, 100, 0),
                kind: LeakKind::StillReachable,
                indirect: 0,
                referrer: 0,
            },
        ];
        let r = build(&blocks, 16, Counters::default(), &Suppressions::default());
        assert_eq!(
            r.summary.definitely_lost,
            Amount {
                bytes: 20,
                blocks: 2
            }
        );
        assert_eq!(
            r.summary.indirectly_lost,
            Amount {
                bytes: 5,
                blocks: 1
            }
        );
        assert_eq!(
            r.summary.still_reachable,
            Amount {
                bytes: 100,
                blocks: 1
            }
        );
        assert_eq!(r.leaks.len(), 3);
        assert_eq!(r.leaks[0].kind, LeakKind::StillReachable);
        assert_eq!(
            (
                r.leaks[1].kind,
                r.leaks[1].bytes,
                r.leaks[1].blocks,
                r.leaks[1].indirect_bytes
            ),
            (LeakKind::DefinitelyLost, 20, 2, 5)
        );
    }
}
