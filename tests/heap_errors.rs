//! Heap misuse, end to end: each program in tests/helpers/heap_errors.rs
//! commits one bug under `DEBUG_MEMORY=1`; the report must name the kind
//! and the program's own lines, and under `continue` the program must go on
//! allocating correctly.
#![cfg(all(feature = "tracking", target_os = "linux"))]

mod common;

use std::path::PathBuf;

use common::{Run, example_bin, expect_stdout, run_bin, temp_path};
use serde_json::Value;

const SRC: &str = include_str!("helpers/heap_errors.rs");

fn bin() -> PathBuf {
    example_bin("heap_errors", &[])
}

/// The line of the `// <WHAT>: <tag>` marker.
fn line(what: &str, tag: &str) -> u64 {
    common::marked_line(SRC, what, tag)
}

fn run_program(name: &str, extra: &[(&str, &str)]) -> Run {
    let report = temp_path(name, "json");
    let path = report.path().to_str().unwrap().to_owned();
    let mut env = vec![
        ("DEBUG_MEMORY", "1"),
        ("DEBUG_MEMORY_REPORT", path.as_str()),
    ];
    env.extend_from_slice(extra);
    run_bin(&bin(), &[name], &env)
}

fn run_continue(name: &str) -> Run {
    run_program(name, &[("DEBUG_MEMORY_ON_ERROR", "continue")])
}

fn top_line(frames: &Value) -> Option<u64> {
    let f = frames.as_array()?.first()?;
    assert!(
        f["file"]
            .as_str()?
            .ends_with("tests/helpers/heap_errors.rs"),
        "frame in the program: {f}"
    );
    f["line"].as_u64()
}

/// The one error of `kind` in the report.
fn error<'a>(run: &'a Run, kind: &str) -> &'a Value {
    common::one_error(run, kind)
}

fn still_sound(run: &Run) {
    assert!(
        run.stdout.contains("heap still sound"),
        "the program kept allocating correctly\n{}",
        run.describe()
    );
    assert_eq!(
        run.code(),
        23,
        "errors make the exit status fail\n{}",
        run.describe()
    );
}

/// The one error of `kind` in `run`, after checking that its stacks start
/// at the lines of `program` marked BUG (where it was found), ALLOC and
/// FREE.
fn error_at_three_lines<'a>(run: &'a Run, kind: &str, program: &str) -> &'a Value {
    let e = error(run, kind);
    for (frames, what) in [
        ("frames", "BUG"),
        ("alloc_frames", "ALLOC"),
        ("free_frames", "FREE"),
    ] {
        assert_eq!(
            top_line(&e[frames]),
            Some(line(what, program)),
            "{frames} of {program}"
        );
    }
    e
}

/// Runs `program`, which frees a block twice (the lines marked ALLOC, FREE
/// and BUG with its name), and checks the double-free report: where, and
/// both earlier stacks.
fn finds_double_free(program: &str) -> Run {
    finds_double_free_with(program, &[])
}

/// [`finds_double_free`] with more environment variables.
fn finds_double_free_with(program: &str, extra: &[(&str, &str)]) -> Run {
    let mut env = vec![("DEBUG_MEMORY_ON_ERROR", "continue")];
    env.extend_from_slice(extra);
    let run = run_program(program, &env);
    let e = error_at_three_lines(&run, "double_free", program);
    assert!(e["address"].as_str().unwrap().starts_with("0x"));
    assert!(
        run.stderr.contains("memwarden: ERROR: double free at 0x"),
        "{}",
        run.describe()
    );
    still_sound(&run);
    run
}

#[test]
fn double_free_names_allocation_first_free_and_second_free() {
    finds_double_free("double_free");
}

#[test]
fn a_double_free_is_found_deep_in_the_quarantine() {
    // Hundreds of its neighbours freed before it: its record is far back in
    // its shard's FIFO, where the second free has to find it.
    finds_double_free("double_free_after_frees");
}

#[test]
fn a_double_free_of_a_big_block_is_found_too() {
    // Too big for a shard's share: the queue for big blocks holds it.
    finds_double_free("double_free_big");
}

#[test]
fn a_double_free_is_found_while_tracking_is_paused() {
    // Untracked blocks are freed around it, some of them starting with the
    // poison byte: none of them is reported. It is found by the poison byte
    // it starts with or by the red zone before it, so with either of them
    // off too.
    for extra in [
        &[][..],
        &[("DEBUG_MEMORY_POISON", "0")][..],
        &[("DEBUG_MEMORY_REDZONES", "0")][..],
    ] {
        let run = finds_double_free_with("double_free_paused", extra);
        expect_stdout(&run, "untracked frees while paused: ok");
        let errors = run.report()["errors"].as_array().map(Vec::len);
        assert_eq!(errors, Some(1), "{}", run.describe());
    }
}

#[test]
fn realloc_of_a_freed_block_is_a_double_free_and_gives_null() {
    let run = finds_double_free("realloc_after_free");
    expect_stdout(&run, "realloc after free gave null: true");
}

#[test]
fn freeing_a_stack_address_is_an_invalid_free() {
    let run = run_continue("invalid_free");
    let e = error(&run, "invalid_free");
    assert_eq!(top_line(&e["frames"]), Some(line("BUG", "invalid_free")));
    assert!(e["alloc_frames"].as_array().unwrap().is_empty());
    still_sound(&run);
}

#[test]
fn freeing_an_interior_pointer_is_an_invalid_free() {
    let run = run_continue("interior_free");
    let e = error(&run, "invalid_free");
    assert_eq!(top_line(&e["frames"]), Some(line("BUG", "interior_free")));
    still_sound(&run);
    // The block itself was then freed properly: nothing leaked.
    assert_eq!(run.report()["summary"]["definitely_lost"]["blocks"], 0);
}

#[test]
fn dealloc_with_the_wrong_size_is_a_layout_mismatch_and_frees_correctly() {
    let run = run_continue("layout_mismatch");
    let e = error(&run, "layout_mismatch");
    assert_eq!(top_line(&e["frames"]), Some(line("BUG", "layout_mismatch")));
    assert_eq!(
        top_line(&e["alloc_frames"]),
        Some(line("ALLOC", "layout_mismatch"))
    );
    assert!(
        run.stderr
            .contains("freed with size 50, align 8; allocated with size 100, align 8"),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.report()["summary"]["definitely_lost"]["blocks"],
        0,
        "freed with its real layout"
    );
    still_sound(&run);
}

#[test]
fn realloc_with_the_wrong_align_keeps_the_real_alignment() {
    let run = run_continue("realloc_mismatch");
    let e = error(&run, "layout_mismatch");
    assert_eq!(
        top_line(&e["frames"]),
        Some(line("BUG", "realloc_mismatch"))
    );
    assert_eq!(
        top_line(&e["alloc_frames"]),
        Some(line("ALLOC", "realloc_mismatch"))
    );
    still_sound(&run);
}

#[test]
fn writing_past_the_end_is_an_overrun_found_at_free() {
    let run = run_continue("overrun");
    let e = error(&run, "overrun");
    assert_eq!(top_line(&e["alloc_frames"]), Some(line("ALLOC", "overrun")));
    assert!(
        run.stderr
            .contains("1 byte past the end of the block was written, at offset 34"),
        "{}",
        run.describe()
    );
    still_sound(&run);
}

/// `DEBUG_MEMORY=leaks`: no red zones, poison or quarantine. A double
/// free is still caught, as an invalid free at the second free's line (the
/// first free took the block's record, and no quarantine kept it); an
/// overrun inside the inner allocator's rounding goes unseen; and each
/// check comes back with its own variable.
#[test]
fn leak_only_tracking_keeps_the_checks_it_can_and_takes_others_back_one_by_one() {
    let leaks = [
        ("DEBUG_MEMORY", "leaks"),
        ("DEBUG_MEMORY_ON_ERROR", "continue"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env = leaks.to_vec();
        env.extend_from_slice(extra);
        env
    };
    let run = run_program("double_free", &leaks);
    let e = error(&run, "invalid_free");
    assert_eq!(top_line(&e["frames"]), Some(line("BUG", "double_free")));
    still_sound(&run);

    let run = run_program("overrun", &leaks);
    assert_eq!(
        run.report()["errors"],
        serde_json::json!([]),
        "{}",
        run.describe()
    );
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert!(
        run.stderr
            .contains("not checked: overruns (DEBUG_MEMORY_REDZONES=1)"),
        "{}",
        run.describe()
    );

    let run = run_program("overrun", &with(&[("DEBUG_MEMORY_REDZONES", "1")]));
    error(&run, "overrun");
    still_sound(&run);
    assert!(
        !run.stderr.contains("not checked: overruns"),
        "{}",
        run.describe()
    );

    let run = run_program(
        "use_after_free",
        &with(&[
            ("DEBUG_MEMORY_POISON", "1"),
            ("DEBUG_MEMORY_QUARANTINE", "2M"),
        ]),
    );
    error_at_three_lines(&run, "use_after_free", "use_after_free");
    still_sound(&run);
}

#[test]
fn writing_before_the_start_is_an_overrun_too() {
    let run = run_continue("underrun");
    let e = error(&run, "overrun");
    assert_eq!(
        top_line(&e["alloc_frames"]),
        Some(line("ALLOC", "underrun"))
    );
    assert!(
        run.stderr
            .contains("1 byte before the start of the block was written, at offset -1"),
        "{}",
        run.describe()
    );
    still_sound(&run);
}

#[test]
fn check_heap_finds_an_overrun_of_a_live_block_once() {
    let run = run_continue("overrun_check_heap");
    let e = error(&run, "overrun");
    assert_eq!(
        top_line(&e["frames"]),
        Some(line("BUG", "overrun_check_heap"))
    );
    assert_eq!(
        top_line(&e["alloc_frames"]),
        Some(line("ALLOC", "overrun_check_heap"))
    );
    expect_stdout(&run, "check_heap found 1");
    still_sound(&run);
}

/// Runs `program`, which frees a block, writes its byte `byte` and calls
/// `check_heap` (the lines marked ALLOC, FREE and BUG with its name), and
/// checks the use-after-free report: where, which byte, both stacks.
fn finds_use_after_free(program: &str, byte: usize) {
    let run = run_continue(program);
    error_at_three_lines(&run, "use_after_free", program);
    let said = format!("byte {byte} of the block was written after it was freed");
    assert!(run.stderr.contains(&said), "{}", run.describe());
    expect_stdout(&run, "check_heap found 1");
    still_sound(&run);
}

#[test]
fn a_write_to_a_freed_block_is_a_use_after_free() {
    finds_use_after_free("use_after_free", 5);
}

#[test]
fn a_use_after_free_is_caught_after_a_loop_of_frees_of_the_same_size() {
    // The loop cycles through the freed block's shard of the quarantine.
    finds_use_after_free("use_after_free_loop", 5);
}

#[test]
fn a_write_to_a_freed_big_block_is_a_use_after_free_too() {
    // Too big for a shard's share: the queue for big blocks holds it.
    finds_use_after_free("use_after_free_big", 1000);
}

#[test]
fn large_alignments_are_kept_with_red_zones() {
    let run = run_continue("large_align");
    expect_stdout(&run, "large alignments ok");
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert!(run.report()["errors"].as_array().unwrap().is_empty());
}

#[test]
fn the_default_policy_reports_then_aborts_and_still_writes_json() {
    let run = run_program("double_free", &[]);
    assert_eq!(
        run.status.code(),
        None,
        "killed by SIGABRT\n{}",
        run.describe()
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        run.status.signal(),
        Some(libc_sigabrt()),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("memwarden: ERROR: double free"),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("memwarden: aborting"),
        "{}",
        run.describe()
    );
    assert!(!run.stdout.contains("heap still sound"));
    let e = error(&run, "double_free");
    assert_eq!(top_line(&e["frames"]), Some(line("BUG", "double_free")));
}

fn libc_sigabrt() -> i32 {
    6
}

#[test]
fn without_quarantine_a_double_free_of_a_reused_block_is_not_claimed() {
    // With the quarantine off the freed block goes straight back, so the
    // second free is of an address memwarden no longer knows: it is still
    // refused, as an invalid free, and never forwarded.
    let run = run_program(
        "double_free",
        &[
            ("DEBUG_MEMORY_ON_ERROR", "continue"),
            ("DEBUG_MEMORY_QUARANTINE", "0"),
        ],
    );
    let errors = run.report()["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{}", run.describe());
    assert!(errors[0]["kind"] == "invalid_free" || errors[0]["kind"] == "double_free");
    still_sound(&run);
}

#[test]
fn an_error_found_again_from_the_same_stacks_is_counted_not_printed_again() {
    let run = run_continue("repeated_double_frees");
    // The first line of each error printed in full.
    let full = |kind: &str| {
        let start = format!("memwarden: ERROR: {kind} at 0x");
        run.stderr
            .lines()
            .filter(|l| l.starts_with(&start) && !l.contains("from the same stacks"))
            .count()
    };
    assert_eq!(full("double free"), 1, "{}", run.describe());
    assert_eq!(full("invalid free"), 1, "{}", run.describe());
    let again: Vec<_> = run
        .stderr
        .lines()
        .filter(|l| l.contains("from the same stacks as one printed above"))
        .collect();
    assert_eq!(again.len(), 1, "{}", run.describe());
    assert!(again[0].starts_with("memwarden: ERROR: double free at 0x"));
    // Every one is counted, and kept for the JSON report.
    assert!(
        run.stderr.contains(
            "memwarden: ERROR SUMMARY: 51 heap error(s) from 2 context(s) (0 found at exit)"
        ),
        "{}",
        run.describe()
    );
    let errors = run.report()["errors"].as_array().unwrap().clone();
    let doubles: Vec<_> = errors
        .iter()
        .filter(|e| e["kind"] == "double_free")
        .collect();
    assert_eq!(doubles.len(), 50, "{}", run.describe());
    assert!(
        doubles
            .iter()
            .all(|e| top_line(&e["frames"]) == Some(line("BUG", "repeated")))
    );
    let other = error(&run, "invalid_free");
    assert_eq!(
        top_line(&other["frames"]),
        Some(line("BUG", "repeated_other"))
    );
    still_sound(&run);
}

#[test]
fn the_same_error_on_threads_at_once_is_printed_in_full_first() {
    // The first report of a context is written before another thread can
    // say "the same as one printed above", or abort: one report at a time.
    for extra in [&[][..], &[("DEBUG_MEMORY_ON_ERROR", "continue")][..]] {
        let run = run_program("racing_double_frees", extra);
        let first = run
            .stderr
            .lines()
            .find(|l| l.starts_with("memwarden: ERROR: "))
            .unwrap_or_default();
        assert!(
            first.starts_with("memwarden: ERROR: double free at 0x")
                && !first.contains("from the same stacks"),
            "{}",
            run.describe()
        );
        assert!(
            run.stderr
                .contains(&format!("heap_errors.rs:{}", line("BUG", "racing"))),
            "{}",
            run.describe()
        );
    }
}

#[test]
fn red_zones_can_be_turned_off() {
    let run = run_program(
        "overrun",
        &[
            ("DEBUG_MEMORY_ON_ERROR", "continue"),
            ("DEBUG_MEMORY_REDZONES", "0"),
        ],
    );
    assert!(
        run.report()["errors"].as_array().unwrap().is_empty(),
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains("heap still sound"));
}

#[test]
fn a_clean_program_has_no_errors() {
    let run = run_program("clean", &[]);
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert!(run.report()["errors"].as_array().unwrap().is_empty());
}

#[test]
fn malformed_policy_warns_and_keeps_the_default() {
    let run = run_program("clean", &[("DEBUG_MEMORY_ON_ERROR", "explode")]);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("memwarden: warning: DEBUG_MEMORY_ON_ERROR=\"explode\"")),
        "{}",
        run.describe()
    );
    assert_eq!(run.code(), 0);
}

/// memwarden's tables out of memory (tests/helpers/table_oom.rs): the
/// registry cannot grow, so most boxes and some vectors' `realloc`s cannot
/// be recorded. Each such block must come out untracked, as the inner
/// allocator gave it, so that its free hands the inner allocator its own
/// pointer and layout (the helper's allocator aborts otherwise: it did,
/// with the red zones' offset, before); the vectors keep their values.
#[test]
fn blocks_the_registry_cannot_record_are_freed_as_the_inner_allocator_gave_them() {
    let bin = example_bin("table_oom", &[]);
    for extra in [&[][..], &[("DEBUG_MEMORY_REDZONES", "0")][..]] {
        let mut env = vec![("DEBUG_MEMORY", "1"), ("DEBUG_MEMORY_EXITCODE", "0")];
        env.extend_from_slice(extra);
        let run = run_bin(&bin, &[], &env);
        assert_eq!(run.code(), 0, "{}", run.describe());
        // Both paths ran: new blocks and `realloc`s went unrecorded.
        for what in ["untracked boxes: ", "untracked reallocs: "] {
            let n: u64 = run
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix(what))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {what:?} line\n{}", run.describe()));
            assert!(
                n > 0,
                "{what}0: the tables never ran out\n{}",
                run.describe()
            );
        }
        expect_stdout(&run, "grown vectors intact: true");
        expect_stdout(&run, "freed all");
    }
}
