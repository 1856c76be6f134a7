//! Suppressions and the extra output formats, end to end on the
//! scenarios binary.
#![cfg(all(feature = "tracking", target_os = "linux"))]

mod common;

use common::{expect_code, run_tracked, site_line, temp_path};
use serde_json::Value;

fn write_file(tag: &str, text: &str) -> common::TempPath {
    let p = temp_path(tag, "supp");
    std::fs::write(p.path(), text).unwrap();
    p
}

#[test]
fn a_suppressed_leak_moves_to_suppressed_and_stops_failing_the_run() {
    let supp = write_file("supp-fn", "# our known leak\nleak:scenarios::leak_box\n");
    let path = supp.path().to_str().unwrap();
    let run = run_tracked(&["box_leak"], &[("DEBUG_MEMORY_SUPPRESS", path)]);
    let s = &run.report()["summary"];
    assert_eq!(s["definitely_lost"]["blocks"], 0, "{}", run.describe());
    assert_eq!(s["suppressed"]["bytes"], 64);
    assert_eq!(s["suppressed"]["blocks"], 1);
    let listed = run.report()["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["frames"][0]["line"] == site_line("box_leak"));
    assert!(
        !listed,
        "a suppressed leak is not listed\n{}",
        run.describe()
    );
    expect_code(&run, 0);
}

#[test]
fn suppressions_match_file_and_line() {
    let line = site_line("loop_leak");
    let supp = write_file("supp-line", &format!("leak:scenarios.rs:{line}\n"));
    let path = supp.path().to_str().unwrap();
    let run = run_tracked(&["loop_leak"], &[("DEBUG_MEMORY_SUPPRESS", path)]);
    assert_eq!(
        run.report()["summary"]["suppressed"]["blocks"],
        10,
        "{}",
        run.describe()
    );
    expect_code(&run, 0);
}

#[test]
fn a_malformed_suppression_line_is_named_and_the_rest_still_applies() {
    let supp = write_file("supp-bad", "race:something\nleak:leak_box\n");
    let path = supp.path().to_str().unwrap();
    let run = run_tracked(&["box_leak"], &[("DEBUG_MEMORY_SUPPRESS", path)]);
    let msg = format!(
        "memwarden: error: DEBUG_MEMORY_SUPPRESS={path}: line 1: unknown suppression type `race:`"
    );
    assert!(run.stderr.contains(&msg), "{}", run.describe());
    assert_eq!(run.report()["summary"]["suppressed"]["blocks"], 1);
    expect_code(&run, 0);
}

#[test]
fn an_unreadable_suppressions_file_is_an_error_and_nothing_is_suppressed() {
    let run = run_tracked(
        &["box_leak"],
        &[("DEBUG_MEMORY_SUPPRESS", "/nonexistent/memwarden.supp")],
    );
    assert!(
        run.stderr.contains("memwarden: error: cannot read the suppressions file DEBUG_MEMORY_SUPPRESS=/nonexistent/memwarden.supp"),
        "{}",
        run.describe()
    );
    expect_code(&run, 23);
}

#[test]
fn github_annotations_point_at_the_leak_line() {
    let run = run_tracked(&["box_leak"], &[("GITHUB_ACTIONS", "true")]);
    let line = site_line("box_leak");
    let want = format!(
        "::error file=tests/helpers/scenarios.rs,line={line},title=memwarden: memory leak::64 bytes in 1 block definitely lost"
    );
    assert!(
        run.stdout.lines().any(|l| l.starts_with(&want)),
        "annotation {want}\n{}",
        run.describe()
    );
}

#[test]
fn dhat_and_folded_files_are_written_next_to_the_report() {
    let report = temp_path("formats", "json");
    let path = report.path().to_str().unwrap().to_owned();
    let dhat_path = report.path().with_extension("dhat.json");
    let folded_path = report.path().with_extension("folded");
    let run = common::run(
        &["loop_leak"],
        &[
            ("DEBUG_MEMORY", "1"),
            ("DEBUG_MEMORY_REPORT", &path),
            ("DEBUG_MEMORY_FORMAT", "text,dhat,folded"),
        ],
    );
    expect_code(&run, 23);

    let dhat: Value = serde_json::from_str(&std::fs::read_to_string(&dhat_path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&dhat_path);
    // The mandatory fields of DHAT format version 2 (dh_main.c).
    assert_eq!(dhat["dhatFileVersion"], 2);
    for k in ["mode", "verb", "tu", "Mtu", "cmd"] {
        assert!(dhat[k].is_string(), "{k}: {dhat}");
    }
    assert!(dhat["bklt"].is_boolean() && dhat["bkacc"].is_boolean());
    assert!(dhat["pid"].is_u64() && dhat["te"].is_u64());
    let ftbl = dhat["ftbl"].as_array().unwrap();
    assert_eq!(ftbl[0], "[root]");
    let line = site_line("loop_leak");
    let site = format!("scenarios.rs:{line})");
    let pp = dhat["pps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pp| {
            let first = pp["fs"][0].as_u64().unwrap() as usize;
            ftbl[first].as_str().unwrap().ends_with(&site)
        })
        .unwrap_or_else(|| panic!("a program point at {site}: {dhat}"));
    assert_eq!(
        (pp["tb"].as_u64(), pp["tbk"].as_u64()),
        (Some(320), Some(10))
    );

    let folded = std::fs::read_to_string(&folded_path).unwrap();
    let _ = std::fs::remove_file(&folded_path);
    let leak = folded
        .lines()
        .find(|l| l.starts_with("definitely_lost;") && l.contains(&format!("scenarios.rs:{line})")))
        .unwrap_or_else(|| panic!("a folded line for the loop leak:\n{folded}"));
    assert!(leak.ends_with(" 320"), "{leak}");
    for l in folded.lines() {
        let (stack, weight) = l.rsplit_once(' ').unwrap();
        assert!(!stack.is_empty());
        weight.parse::<u64>().unwrap();
    }
}

#[test]
fn an_unknown_format_is_a_warning() {
    let run = run_tracked(&["clean"], &[("DEBUG_MEMORY_FORMAT", "xml")]);
    assert!(
        run.stderr
            .contains("memwarden: warning: DEBUG_MEMORY_FORMAT: unknown format `xml`"),
        "{}",
        run.describe()
    );
    expect_code(&run, 0);
}

#[test]
fn a_heap_error_that_aborts_still_gets_its_annotation() {
    // Under the default DEBUG_MEMORY_ON_ERROR=abort the process ends at the
    // error, before any exit report: the annotation is written then.
    let bin = common::example_bin("heap_errors", &[]);
    let run = common::run_bin(
        &bin,
        &["double_free"],
        &[("DEBUG_MEMORY", "1"), ("GITHUB_ACTIONS", "true")],
    );
    let line = common::marked_line(include_str!("helpers/heap_errors.rs"), "BUG", "double_free");
    let want = format!(
        "::error file=tests/helpers/heap_errors.rs,line={line},title=memwarden: heap error::"
    );
    assert!(
        run.stdout.lines().any(|l| l.starts_with(&want)),
        "annotation {want}\n{}",
        run.describe()
    );
    assert!(run.stderr.contains("aborting"), "{}", run.describe());
}

#[test]
fn a_report_that_cannot_be_written_where_asked_goes_to_the_temp_dir() {
    // A path below a regular file cannot be created, not even by root.
    let not_a_dir = temp_path("not-a-dir", "file");
    std::fs::write(not_a_dir.path(), b"a file, not a directory").unwrap();
    let target = not_a_dir.path().join("report.json");
    let target = target.to_str().unwrap().to_owned();
    let run = common::run(
        &["box_leak"],
        &[("DEBUG_MEMORY", "1"), ("DEBUG_MEMORY_REPORT", &target)],
    );
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains(&format!("cannot write the JSON report to {target}")))
        .unwrap_or_else(|| panic!("no line names {target}\n{}", run.describe()));
    let instead = line
        .rsplit_once("written to ")
        .and_then(|(_, rest)| rest.strip_suffix(" instead"))
        .unwrap_or_else(|| panic!("no place named instead: {line}"));
    let text = std::fs::read_to_string(instead).expect("the report written instead");
    let _ = std::fs::remove_file(instead);
    let report: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(report["summary"]["definitely_lost"]["bytes"], 64);
    // The leak still fails the run with its own status, and says so.
    assert!(
        run.stderr
            .contains("64 bytes definitely lost: exiting with status 23"),
        "{}",
        run.describe()
    );
    expect_code(&run, 23);
}
