//! The runtime switches of the contract: malformed `DEBUG_MEMORY*` values,
//! an unwritable report path, `--debug-memory`, and the feature switched off.

mod common;

use common::*;

#[cfg(feature = "tracking")]
mod tracking {
    use super::*;

    /// Asserts one stderr line starts with `memwarden: ` and contains `needle`.
    fn expect_memwarden_line_naming(run: &Run, needle: &str) {
        assert!(
            run.memwarden_lines().iter().any(|l| l.contains(needle)),
            "no stderr line starting {PREFIX:?} names {needle:?}\n{}",
            run.describe()
        );
    }

    #[test]
    fn malformed_debug_memory_warns_once_and_stays_off() {
        let report = temp_path("banana", "json");
        let path = report.path().to_str().unwrap().to_owned();
        let run = run(
            &["box_leak"],
            &[("DEBUG_MEMORY", "banana"), ("DEBUG_MEMORY_REPORT", &path)],
        );
        let lines = run.stderr_lines();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one stderr line\n{}",
            run.describe()
        );
        assert!(
            lines[0].starts_with(PREFIX),
            "the warning must start with {PREFIX:?}\n{}",
            run.describe()
        );
        assert!(
            lines[0].contains("DEBUG_MEMORY"),
            "the warning must name DEBUG_MEMORY\n{}",
            run.describe()
        );
        // Tracking stays off: no leak report, no leak exit status.
        expect_code(&run, 0);
        assert!(
            !run.report_written,
            "tracking was on: a report was written\n{}",
            run.describe()
        );
        assert!(!report.path().exists());
    }

    #[test]
    fn debug_memory_0_is_off() {
        let report = temp_path("zero", "json");
        let path = report.path().to_str().unwrap().to_owned();
        let run = run(
            &["box_leak"],
            &[("DEBUG_MEMORY", "0"), ("DEBUG_MEMORY_REPORT", &path)],
        );
        expect_code(&run, 0);
        assert!(
            run.stderr.is_empty(),
            "DEBUG_MEMORY=0 must print nothing\n{}",
            run.describe()
        );
        assert!(
            !run.report_written,
            "DEBUG_MEMORY=0 wrote a report\n{}",
            run.describe()
        );
    }

    #[test]
    fn malformed_frames_warns_and_uses_the_default() {
        let run = run_tracked(&["box_leak"], &[("DEBUG_MEMORY_FRAMES", "abc")]);
        expect_memwarden_line_naming(&run, "DEBUG_MEMORY_FRAMES");
        check_report_shape(&run);
        expect_site(&run, "box_leak", DEFINITELY, 64, 1, "leak_box");
        expect_code(&run, DEFAULT_LEAK_EXITCODE);
    }

    #[test]
    fn frames_limits_the_frames_kept() {
        let run = run_tracked(&["box_leak"], &[("DEBUG_MEMORY_FRAMES", "2")]);
        check_report_shape(&run);
        for entry in leaks(run.report()) {
            let n = entry["frames"].as_array().map_or(0, Vec::len);
            assert!(
                n <= 2,
                "DEBUG_MEMORY_FRAMES=2 but an entry has {n} frames\n{}",
                run.describe()
            );
        }
        expect_code(&run, DEFAULT_LEAK_EXITCODE);
    }

    #[test]
    fn malformed_exitcode_warns_and_uses_23() {
        let run = run_tracked(&["box_leak"], &[("DEBUG_MEMORY_EXITCODE", "xyz")]);
        expect_memwarden_line_naming(&run, "DEBUG_MEMORY_EXITCODE");
        check_report_shape(&run);
        expect_site(&run, "box_leak", DEFINITELY, 64, 1, "leak_box");
        expect_code(&run, DEFAULT_LEAK_EXITCODE);
    }

    #[test]
    fn unwritable_report_path_is_reported_and_fails_the_run() {
        // A path below a regular file: no one, not even root, can create it
        // (a directory under `/` could be created by root).
        let not_a_dir = temp_path("not-a-dir", "file");
        std::fs::write(not_a_dir.path(), b"a file, not a directory").unwrap();
        let target = not_a_dir.path().join("x").join("report.json");
        let target = target.to_str().unwrap().to_owned();
        let run = run(
            &["box_leak"],
            &[("DEBUG_MEMORY", "1"), ("DEBUG_MEMORY_REPORT", &target)],
        );
        expect_memwarden_line_naming(&run, &target);
        // The report still reaches the user, as text on stderr.
        expect_only_memwarden_lines(&run);
        assert!(
            run.stderr.contains("definitely lost"),
            "no text report on stderr\n{}",
            run.describe()
        );
        let site = format!("scenarios.rs:{}", site_line("box_leak"));
        assert!(
            run.stderr.contains(&site),
            "the text report does not name {site}\n{}",
            run.describe()
        );
        assert_ne!(
            run.code(),
            0,
            "a report that could not be written must fail the run\n{}",
            run.describe()
        );
    }

    #[test]
    fn debug_memory_flag_switches_tracking_on() {
        let report = temp_path("flag", "json");
        let path = report.path().to_str().unwrap().to_owned();
        let run = run(
            &["flag", "--debug-memory"],
            &[("DEBUG_MEMORY_REPORT", &path)],
        );
        check_report_shape(&run);
        expect_site(&run, "flag", DEFINITELY, 24, 1, "leak_flagged");
        assert_eq!(
            summary(run.report(), "definitely_lost"),
            (24, 1),
            "summary\n{}",
            run.describe()
        );
        expect_code(&run, DEFAULT_LEAK_EXITCODE);
    }

    #[test]
    fn no_flag_no_tracking() {
        let report = temp_path("noflag", "json");
        let path = report.path().to_str().unwrap().to_owned();
        let run = run(&["flag"], &[("DEBUG_MEMORY_REPORT", &path)]);
        expect_code(&run, 0);
        assert!(
            run.stderr.is_empty(),
            "tracking off must print nothing\n{}",
            run.describe()
        );
        assert!(
            !run.report_written,
            "a report was written without --debug-memory\n{}",
            run.describe()
        );
    }
}

#[cfg(not(feature = "tracking"))]
mod feature_off {
    use super::*;

    #[test]
    fn debug_memory_does_nothing_without_the_feature() {
        let report = temp_path("off", "json");
        let path = report.path().to_str().unwrap().to_owned();
        let run = run(
            &["box_leak"],
            &[("DEBUG_MEMORY", "1"), ("DEBUG_MEMORY_REPORT", &path)],
        );
        expect_code(&run, 0);
        assert!(
            !run.stderr.contains("memwarden:") && !run.stdout.contains("memwarden:"),
            "memwarden printed something with the feature off\n{}",
            run.describe()
        );
        assert!(
            !run.report_written,
            "a report was written with the feature off\n{}",
            run.describe()
        );
        assert!(!report.path().exists());
    }

    #[test]
    fn debug_memory_flag_does_nothing_without_the_feature() {
        let report = temp_path("off-flag", "json");
        let path = report.path().to_str().unwrap().to_owned();
        let run = run(
            &["flag", "--debug-memory"],
            &[("DEBUG_MEMORY_REPORT", &path)],
        );
        expect_code(&run, 0);
        assert!(
            !run.report_written,
            "a report was written with the feature off\n{}",
            run.describe()
        );
    }
}

#[test]
fn unknown_scenario_exits_2() {
    let run = run(&["no_such_scenario"], &[]);
    expect_code(&run, 2);
    assert!(
        run.stderr.contains("no_such_scenario"),
        "the usage message must name the scenario\n{}",
        run.describe()
    );
}
