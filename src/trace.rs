//! `tracing` integration (the `tracing` cargo feature).
//!
//! The exit report and heap errors are also emitted as `tracing` events
//! with target `memwarden`, and [`spawn_stats_events`] emits heap
//! statistics periodically. Events are never emitted from inside the
//! allocator: a subscriber allocates, and may hold its own locks while it
//! does. Heap errors found on the allocation path are queued (kept by
//! `check`) and emitted later, by the stats thread or at exit.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::report::{LeakKind, Report};

/// Heap errors already emitted as events.
static ERRORS_EMITTED: AtomicUsize = AtomicUsize::new(0);

/// Emits the heap errors reported since the last call.
pub(crate) fn emit_new_errors() {
    let errors = crate::check::errors();
    let from = ERRORS_EMITTED.swap(errors.len(), Ordering::AcqRel);
    for e in errors.iter().skip(from) {
        let at = e.frames.first();
        tracing::error!(
            target: "memwarden",
            kind = ?e.kind,
            address = %e.address,
            file = at.and_then(|f| f.file.as_deref()),
            line = at.and_then(|f| f.line),
            function = at.and_then(|f| f.function.as_deref()),
            "heap error"
        );
    }
}

/// Emits a leak report: one event per lost entry, one summary event.
pub(crate) fn emit_report(report: &Report) {
    emit_new_errors();
    for l in report
        .leaks
        .iter()
        .filter(|l| l.kind != LeakKind::StillReachable)
    {
        let at = l.frames.first();
        tracing::warn!(
            target: "memwarden",
            kind = l.kind.as_str(),
            bytes = l.bytes,
            blocks = l.blocks,
            file = at.and_then(|f| f.file.as_deref()),
            line = at.and_then(|f| f.line),
            function = at.and_then(|f| f.function.as_deref()),
            "memory leak"
        );
    }
    let s = &report.summary;
    tracing::info!(
        target: "memwarden",
        definitely_lost = s.definitely_lost.bytes,
        indirectly_lost = s.indirectly_lost.bytes,
        possibly_lost = s.possibly_lost.bytes,
        still_reachable = s.still_reachable.bytes,
        suppressed = s.suppressed.bytes,
        total_allocs = s.total_allocs,
        peak_bytes = s.peak_bytes,
        "leak summary"
    );
}

/// Starts a thread that emits a `heap stats` event (target `memwarden`,
/// level INFO) every `every`, and any heap errors reported since the last
/// one (level ERROR). The thread runs until the process ends.
pub fn spawn_stats_events(every: Duration) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("memwarden-stats".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                emit_new_errors();
                let s = crate::stats();
                tracing::info!(
                    target: "memwarden",
                    live_bytes = s.live_bytes,
                    live_blocks = s.live_blocks,
                    peak_bytes = s.peak_bytes,
                    total_allocs = s.total_allocs,
                    total_bytes = s.total_bytes,
                    "heap stats"
                );
            }
        })
        .expect("memwarden: cannot start the stats thread")
}
