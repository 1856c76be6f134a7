//! Report speed (issue 6, item 4): 1,000,000 live blocks from 10,000
//! distinct call stacks, then a full reachability scan and a symbolized
//! report of them. Target: under 2 seconds.
//!
//! ```sh
//! cargo bench --bench exit_report                 # in-process: checkpoint + report
//! DEBUG_MEMORY=1 DEBUG_MEMORY_EXITCODE=0 \
//!     cargo bench --bench exit_report -- exit     # the report at process exit
//! ```
//!
//! The 10,000 stacks come from two tables of 100 functions each (one
//! instance of a const-generic function per entry): the allocation site
//! `site::<S>` is called from `caller::<C>`, under a fixed recursion of
//! [`DEPTH`] frames, so every (S, C) pair is its own stack and each stack
//! is about `DEPTH + 5` frames deep. Each stack allocates 100 blocks of 16
//! bytes. Half the stacks keep their blocks reachable (the addresses sit in
//! a static `Vec`), the other half hide them (the address is stored
//! XOR-ed), so the report has 5,000 entries of each kind: still reachable
//! and definitely lost.
//!
//! Modes (first argument that does not start with `--`):
//! - `checkpoint` (default): takes `memwarden::checkpoint()` before
//!   allocating, then times `mark.report()` (scan, classification,
//!   symbolization) and the rendering of the report as text, and prints the
//!   times. Tracking is switched on by the checkpoint if `DEBUG_MEMORY` is
//!   unset.
//! - `plain`: allocates the same blocks with tracking off (run it without
//!   `DEBUG_MEMORY`) and frees them: the baseline of the memory figures.
//!   Every mode prints the resident memory after allocating, so that
//!   `(rss of checkpoint - rss of plain) / 1,000,000` is memwarden's memory
//!   per live block, all included (registry, red zones, stack table).
//! - `exit`: allocates, prints `exit_report: allocated at <unix ns>` on
//!   stdout and returns from `main`, so that memwarden's exit report (with
//!   `DEBUG_MEMORY=1`) covers the blocks. `scripts/bench.sh` times from that
//!   line to the end of the process.
#![allow(missing_docs)]

#[global_allocator]
static GLOBAL: memwarden::Warden = memwarden::Warden::new();

#[cfg(all(feature = "tracking", target_os = "linux"))]
mod driver {
    use std::hint::black_box;
    use std::sync::OnceLock;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    /// Allocation sites, and callers of them.
    const FUNCS: usize = 100;
    /// Blocks per distinct stack.
    const PER_STACK: usize = 100;
    /// All blocks.
    pub(crate) const BLOCKS: usize = FUNCS * FUNCS * PER_STACK;
    /// Recursion depth under every caller.
    const DEPTH: usize = 8;
    /// Stored in place of the address of a block meant to be lost, so that
    /// no word in memory points to it.
    const HIDE: usize = 0x5a5a_5a5a_5a5a_5a5a;

    /// Block addresses (plain or hidden): a global, so a root of the scan
    /// that keeps the visible half still reachable, also at exit.
    static KEPT: OnceLock<Vec<usize>> = OnceLock::new();

    type Site = fn(&mut Vec<usize>);
    type Caller = fn(usize, &mut Vec<usize>);

    /// One allocation site: `PER_STACK` blocks, visible when `S` is even.
    #[inline(never)]
    fn site<const S: usize>(out: &mut Vec<usize>) {
        for i in 0..PER_STACK {
            let b = Box::new([S as u64, i as u64]);
            let addr = Box::into_raw(b) as usize;
            out.push(if S % 2 == 0 { addr } else { addr ^ HIDE });
        }
        black_box(S);
    }

    /// One caller: calls site `s` (never as a tail call, so this frame
    /// stays on the stack).
    #[inline(never)]
    fn caller<const C: usize>(s: usize, out: &mut Vec<usize>) {
        SITES[s / 10][s % 10](out);
        black_box(C);
    }

    /// Ten instances of `$f` (`$f::<T*10>` to `$f::<T*10+9>`).
    macro_rules! row {
        ($f:ident, $t:literal) => {
            [
                $f::<{ $t * 10 }>,
                $f::<{ $t * 10 + 1 }>,
                $f::<{ $t * 10 + 2 }>,
                $f::<{ $t * 10 + 3 }>,
                $f::<{ $t * 10 + 4 }>,
                $f::<{ $t * 10 + 5 }>,
                $f::<{ $t * 10 + 6 }>,
                $f::<{ $t * 10 + 7 }>,
                $f::<{ $t * 10 + 8 }>,
                $f::<{ $t * 10 + 9 }>,
            ]
        };
    }

    /// A table of 100 instances of `$f`, indexed `[n / 10][n % 10]`.
    macro_rules! table {
        ($f:ident) => {
            [
                row!($f, 0),
                row!($f, 1),
                row!($f, 2),
                row!($f, 3),
                row!($f, 4),
                row!($f, 5),
                row!($f, 6),
                row!($f, 7),
                row!($f, 8),
                row!($f, 9),
            ]
        };
    }

    static SITES: [[Site; 10]; 10] = table!(site);
    static CALLERS: [[Caller; 10]; 10] = table!(caller);

    /// Recurses `depth` frames, then runs every (site, caller) pair.
    #[inline(never)]
    fn nest(depth: usize, out: &mut Vec<usize>) {
        if depth == 0 {
            for c in 0..FUNCS {
                for s in 0..FUNCS {
                    CALLERS[c / 10][c % 10](s, out);
                }
            }
        } else {
            nest(black_box(depth - 1), out);
        }
        black_box(depth);
    }

    /// Allocates the blocks (timed) and parks their addresses in [`KEPT`].
    fn allocate() {
        // Allocated before any block, with room for all of them.
        let mut out = Vec::with_capacity(BLOCKS);
        let t = Instant::now();
        nest(DEPTH, &mut out);
        let took = t.elapsed();
        assert_eq!(out.len(), BLOCKS);
        KEPT.set(out).expect("allocated once");
        eprintln!(
            "exit_report: {BLOCKS} blocks from {} stacks allocated in {:.3} s ({:.0} ns per block, tracking {})",
            FUNCS * FUNCS,
            took.as_secs_f64(),
            took.as_nanos() as f64 / BLOCKS as f64,
            if memwarden::is_enabled() { "on" } else { "off" },
        );
        println!("exit_report: resident {} KiB after allocating", rss_kib());
    }

    /// Resident memory of the process (VmRSS), in KiB.
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Frees every block (after an in-process report).
    fn free_all() {
        let Some(kept) = KEPT.get() else { return };
        for (i, &word) in kept.iter().enumerate() {
            let hidden = (i / PER_STACK) % FUNCS % 2 == 1;
            let addr = if hidden { word ^ HIDE } else { word };
            // SAFETY: `addr` is a `Box<[u64; 2]>` made by `site` with
            // `Box::into_raw` (site S is odd exactly when it hid the address,
            // and blocks were pushed in site order within each caller), and
            // each is freed once.
            drop(unsafe { Box::from_raw(addr as *mut [u64; 2]) });
        }
    }

    /// The in-process measurement: `checkpoint()` + `report()`.
    #[inline(never)]
    pub(crate) fn checkpoint_mode() {
        let t = Instant::now();
        let mark = memwarden::checkpoint();
        let checkpoint_took = t.elapsed();
        allocate();
        let t = Instant::now();
        let report = mark.report();
        let report_took = t.elapsed();
        let t = Instant::now();
        let text = report.to_string();
        let render_took = t.elapsed();
        let s = &report.summary;
        eprintln!(
            "exit_report: report of {} entries: {} blocks definitely lost, {} still reachable, {} possibly lost, {} KiB of text",
            report.leaks.len(),
            s.definitely_lost.blocks,
            s.still_reachable.blocks,
            s.possibly_lost.blocks,
            text.len() / 1024,
        );
        println!(
            "exit_report: checkpoint {:.6} s, report (scan + classify + symbolize) {:.3} s, text {:.3} s, total {:.3} s (target < 2 s)",
            checkpoint_took.as_secs_f64(),
            report_took.as_secs_f64(),
            render_took.as_secs_f64(),
            (checkpoint_took + report_took + render_took).as_secs_f64(),
        );
        drop(text);
        drop(report);
        free_all();
    }

    /// The baseline: the same blocks, untracked.
    pub(crate) fn plain_mode() {
        if memwarden::is_enabled() {
            eprintln!("exit_report: `plain` mode is meant to run without DEBUG_MEMORY");
        }
        allocate();
        free_all();
    }

    /// The exit measurement: allocate, say when, and let `main` return.
    pub(crate) fn exit_mode() {
        if !memwarden::is_enabled() {
            eprintln!("exit_report: `exit` mode needs DEBUG_MEMORY=1 (no exit report otherwise)");
        }
        allocate();
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        println!("exit_report: allocated at {ns}");
    }
}

fn main() {
    let mode = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "checkpoint".to_owned());
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    match mode.as_str() {
        "checkpoint" => driver::checkpoint_mode(),
        "exit" => driver::exit_mode(),
        "plain" => driver::plain_mode(),
        other => {
            eprintln!("exit_report: unknown mode {other:?} (checkpoint, plain or exit)");
            std::process::exit(2);
        }
    }
    #[cfg(not(all(feature = "tracking", target_os = "linux")))]
    eprintln!("exit_report: skipped ({mode}): needs the `tracking` feature on Linux");
}
