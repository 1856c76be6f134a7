//! C's heap through `memwarden::track_c_heap!`, end to end: the programs
//! of tests/helpers/c_heap.rs call `malloc`, `free` and the rest as C code
//! does, and glibc's own allocating functions (`strdup`); their leaks and
//! heap errors must be reported at the programs' own lines, a Rust block
//! that only a C structure holds must count as reachable, and every C
//! function must keep C's contract with tracking on and off.
#![cfg(all(feature = "tracking", target_os = "linux", target_env = "gnu"))]

mod common;

use common::{Run, example_bin, expect_stdout, run_bin, temp_path};
use serde_json::Value;

const SRC: &str = include_str!("helpers/c_heap.rs");
const FILE: &str = "tests/helpers/c_heap.rs";

/// The line of the `// <WHAT>: <tag>` marker.
fn line(what: &str, tag: &str) -> u64 {
    common::marked_line(SRC, what, tag)
}

/// Runs `program` with `env`, plus a JSON report when tracking.
fn run_program(program: &str, env: &[(&str, &str)]) -> Run {
    let report = temp_path(program, "json");
    let path = report.path().to_str().unwrap().to_owned();
    let mut all = env.to_vec();
    if env.iter().any(|(k, _)| *k == "DEBUG_MEMORY") {
        all.push(("DEBUG_MEMORY_REPORT", path.as_str()));
    }
    run_bin(&example_bin("c_heap", &[]), &[program], &all)
}

fn tracked(program: &str, extra: &[(&str, &str)]) -> Run {
    let mut env = vec![("DEBUG_MEMORY", "1")];
    env.extend_from_slice(extra);
    run_program(program, &env)
}

/// The program's line a stack starts at, checking the frame is the
/// program's.
fn top_line(frames: &Value) -> Option<u64> {
    let f = frames.as_array()?.first()?;
    assert!(
        f["file"].as_str()?.ends_with(FILE),
        "frame in the program: {f}"
    );
    f["line"].as_u64()
}

/// The leak entries of `kind` whose stack holds the program's line `line`
/// in one of its first `depth` frames.
fn entries_at<'a>(run: &'a Run, kind: &str, line: u64, depth: usize) -> Vec<&'a Value> {
    run.report()["leaks"]
        .as_array()
        .expect("leaks array")
        .iter()
        .filter(|e| e["kind"] == kind)
        .filter(|e| {
            e["frames"].as_array().is_some_and(|fs| {
                fs.iter().take(depth).any(|f| {
                    f["file"].as_str().is_some_and(|p| p.ends_with(FILE)) && f["line"] == line
                })
            })
        })
        .collect()
}

fn summary(run: &Run, kind: &str) -> (u64, u64) {
    let s = &run.report()["summary"][kind];
    (s["bytes"].as_u64().unwrap(), s["blocks"].as_u64().unwrap())
}

/// The program ran to its end (`heap still sound`) with status 0, and
/// reported no heap error and, when tracked, nothing definitely lost.
fn clean(run: &Run) {
    assert_eq!(run.code(), 0, "{}", run.describe());
    expect_stdout(run, "heap still sound");
    assert!(
        !run.stderr.contains("ERROR"),
        "no heap error\n{}",
        run.describe()
    );
    if run.report.is_some() {
        assert!(run.report()["errors"].as_array().unwrap().is_empty());
        assert_eq!(
            summary(run, "definitely_lost"),
            (0, 0),
            "{}",
            run.describe()
        );
    }
}

#[test]
fn a_leak_of_cs_heap_names_the_line_that_called_malloc() {
    let run = tracked("leaks", &[]);
    assert_eq!(run.code(), 23, "definite leaks fail\n{}", run.describe());
    for (tag, bytes) in [("malloc", 100), ("calloc", 120)] {
        let at = entries_at(&run, "definitely_lost", line("LEAK", tag), 1);
        assert_eq!(
            at.len(),
            1,
            "{tag}: one entry at its line\n{}",
            run.describe()
        );
        assert_eq!(at[0]["bytes"], bytes, "{tag}");
        assert_eq!(top_line(&at[0]["frames"]), Some(line("LEAK", tag)));
    }
    // strdup allocates inside glibc: the program's line is the next frame.
    let at = entries_at(&run, "definitely_lost", line("LEAK", "strdup"), 2);
    assert_eq!(at.len(), 1, "strdup's leak\n{}", run.describe());
    assert_eq!(at[0]["bytes"], "a string from C".len() + 1);
    assert_eq!(
        summary(&run, "definitely_lost"),
        (100 + 120 + 16, 3),
        "nothing else is lost\n{}",
        run.describe()
    );
    assert!(run.report()["errors"].as_array().unwrap().is_empty());
}

#[test]
fn blocks_held_by_c_structures_are_reachable() {
    let run = tracked("leaks", &[]);
    // A C block in a static, the C node in another, and the Rust `Box`
    // whose only pointer is inside that C node.
    for (tag, bytes) in [("held", 48), ("node", 16), ("rust_in_c", 64)] {
        let at = entries_at(&run, "still_reachable", line("LEAK", tag), 1);
        assert_eq!(at.len(), 1, "{tag} is still reachable\n{}", run.describe());
        assert_eq!(at[0]["bytes"], bytes, "{tag}");
    }
}

#[test]
fn every_c_function_keeps_cs_contract_tracked() {
    let run = tracked("round_trips", &[]);
    assert_eq!(run.code(), 0, "{}", run.describe());
    expect_stdout(&run, "all round trips");
    // A tracked block's usable size is what was asked: the red zone
    // follows it.
    expect_stdout(&run, "usable 10\n");
    assert_eq!(
        summary(&run, "definitely_lost"),
        (0, 0),
        "{}",
        run.describe()
    );
    assert!(run.report()["errors"].as_array().unwrap().is_empty());
}

#[test]
fn every_c_function_keeps_cs_contract_untracked() {
    for env in [&[][..], &[("DEBUG_MEMORY", "0")][..]] {
        let run = run_program("round_trips", env);
        assert_eq!(run.code(), 0, "{}", run.describe());
        expect_stdout(&run, "all round trips");
        assert!(
            run.memwarden_lines().is_empty(),
            "nothing to say while off\n{}",
            run.describe()
        );
    }
}

#[test]
fn every_c_function_keeps_cs_contract_without_red_zones_or_quarantine() {
    for extra in [
        ("DEBUG_MEMORY_REDZONES", "0"),
        ("DEBUG_MEMORY_QUARANTINE", "0"),
        ("DEBUG_MEMORY_POISON", "0"),
    ] {
        let run = tracked("round_trips", &[extra]);
        assert_eq!(run.code(), 0, "{extra:?}\n{}", run.describe());
        expect_stdout(&run, "all round trips");
    }
}

#[test]
fn threads_that_use_cs_heap_leave_nothing_lost() {
    let run = tracked("threads", &[]);
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert_eq!(
        summary(&run, "definitely_lost"),
        (0, 0),
        "{}",
        run.describe()
    );
    assert!(run.report()["errors"].as_array().unwrap().is_empty());
    // glibc keeps each ended thread's TLS vector in its cache of thread
    // stacks, where no root reaches it: suppressed as glibc's own unless
    // the built-in suppressions are off.
    let raw = tracked("threads", &[("DEBUG_MEMORY_SUPPRESS_BUILTIN", "0")]);
    assert_eq!(
        summary(&raw, "definitely_lost"),
        summary(&run, "suppressed"),
        "what is lost without the built-in rules is what they suppress\n{}\n{}",
        run.describe(),
        raw.describe()
    );
    let lost = raw.report()["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "definitely_lost")
        .collect::<Vec<_>>();
    assert!(
        lost.iter()
            .all(|e| e["frames"].as_array().unwrap().iter().any(|f| {
                f["function"]
                    .as_str()
                    .is_some_and(|n| n.contains("pthread_create") || n.contains("_dl_allocate_tls"))
            })),
        "what the suppression hides is glibc's thread set-up\n{}",
        raw.describe()
    );
}

/// The one error of `kind`, whose stacks start at the lines marked BUG
/// and, where given, ALLOC and FREE; the program went on.
fn c_error(program: &str, kind: &str, alloc: bool, free: bool) {
    let run = tracked(program, &[("DEBUG_MEMORY_ON_ERROR", "continue")]);
    let e = common::one_error(&run, kind);
    assert_eq!(top_line(&e["frames"]), Some(line("BUG", program)));
    if alloc {
        assert_eq!(top_line(&e["alloc_frames"]), Some(line("ALLOC", program)));
    }
    if free {
        assert_eq!(top_line(&e["free_frames"]), Some(line("FREE", program)));
    }
    assert!(
        run.stdout.contains("heap still sound"),
        "the program went on\n{}",
        run.describe()
    );
    assert_eq!(run.code(), 23, "{}", run.describe());
    // And by default the program stops there.
    let stopped = tracked(program, &[]);
    assert!(!stopped.status.success(), "{}", stopped.describe());
    assert!(!stopped.stdout.contains("heap still sound"));
}

#[test]
fn a_double_free_in_c_is_reported_with_both_earlier_stacks() {
    c_error("double_free", "double_free", true, true);
}

/// Without red zones (`DEBUG_MEMORY=leaks`), a second `free` of C's
/// cannot be told from a free of glibc's own block by the bytes before it:
/// the mark the first `free` left is what reports it, rather than glibc's
/// abort or, in a fastbin, its corrupted heap.
#[test]
fn a_double_free_in_c_is_reported_in_leaks_mode_too() {
    for program in ["double_free", "fastbin_double_free", "free_after_realloc"] {
        let run = tracked(
            program,
            &[
                ("DEBUG_MEMORY", "leaks"),
                ("DEBUG_MEMORY_ON_ERROR", "continue"),
            ],
        );
        let e = common::one_error(&run, "double_free");
        assert_eq!(
            top_line(&e["frames"]),
            Some(line("BUG", program)),
            "{program}"
        );
        assert!(
            run.stdout.contains("heap still sound"),
            "{program}: the program went on\n{}",
            run.describe()
        );
        assert_eq!(run.code(), 23, "{program}\n{}", run.describe());
    }
}

#[test]
fn a_freed_c_block_handed_out_again_untracked_frees_cleanly() {
    let run = tracked("freed_then_untracked", &[("DEBUG_MEMORY", "leaks")]);
    clean(&run);
    // The case this is about: the untracked block is the one freed.
    expect_stdout(&run, "same block again: true");
    clean(&tracked("freed_then_untracked", &[]));
}

#[test]
fn an_overrun_of_a_c_block_is_reported_at_its_free() {
    c_error("overrun", "overrun", true, false);
}

#[test]
fn a_write_to_a_freed_c_block_is_reported() {
    c_error("use_after_free", "use_after_free", true, true);
}

#[test]
fn a_free_of_a_pointer_into_a_c_block_is_reported() {
    c_error("invalid_free", "invalid_free", false, false);
}

#[test]
fn blocks_may_be_freed_across_the_languages() {
    clean(&tracked("across", &[]));
}

#[test]
fn fork_handlers_that_use_cs_heap_run_while_memwarden_holds_its_locks() {
    // Registered before memwarden's (tracking switched on after), so they
    // run after its `prepare` handler took every lock: C's allocations go
    // to glibc, and a free of a tracked block waits until the locks are
    // released.
    clean(&run_program("fork", &[]));
    clean(&tracked("fork", &[]));
}

#[test]
fn a_tracked_dlerror_message_is_freed_as_tracked() {
    clean(&tracked("dlerror", &[]));
}

#[test]
fn switching_tracking_under_allocating_threads_reports_no_error() {
    clean(&tracked("toggle", &[]));
}

#[test]
fn each_language_s_blocks_go_back_to_their_own_allocator() {
    // Around mimalloc, Rust's blocks are mimalloc's and C's glibc's: a free
    // of either that pushes the other's out of the shared quarantine goes
    // to the right one.
    let bin = example_bin("c_heap_mimalloc", &[]);
    for env in [&[("DEBUG_MEMORY", "1")][..], &[][..]] {
        clean(&run_bin(&bin, &[], env));
    }
}

#[test]
fn what_glibc_keeps_in_the_loaders_memory_is_reachable() {
    // The main thread's descriptor and the loader's `link_map`s are read
    // as roots: nothing of these is lost.
    let run = tracked("glibc_keeps", &[]);
    clean(&run);
    let (bytes, _) = summary(&run, "still_reachable");
    assert!(
        bytes >= (40..80).sum::<u64>(),
        "the 40 thread-specific values\n{}",
        run.describe()
    );
}

#[test]
fn threads_with_the_smallest_stacks_can_allocate() {
    clean(&tracked("small_stacks", &[]));
    clean(&run_program("small_stacks", &[]));
}
