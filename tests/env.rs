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
    fn debug_reach_names_the_word_and_mapping_that_reached_each_block() {
        let run = run_tracked(&["box_leak"], &[("MEMWARDEN_DEBUG_REACH", "1")]);
        expect_code(&run, DEFAULT_LEAK_EXITCODE);
        let debug: Vec<&str> = run
            .memwarden_lines()
            .into_iter()
            .filter(|l| l.starts_with("memwarden: debug: 0x"))
            .collect();
        // The leaked box: nothing reached it.
        assert!(
            debug.iter().any(|l| l.contains("(64 bytes,")
                && l.ends_with("DefinitelyLost via the word at 0x0 (none)")),
            "{}",
            run.describe()
        );
        // Each reachable block names the mapping of the word that reached
        // it, as /proc/self/maps has it (a range, then permissions).
        let reachable: Vec<&&str> = debug
            .iter()
            .filter(|l| l.contains("StillReachable"))
            .collect();
        assert!(!reachable.is_empty(), "{}", run.describe());
        for l in reachable {
            // "... via the word at 0x<hex> (<the maps line>)".
            let mapping = l
                .split_once(" via the word at 0x")
                .and_then(|(_, rest)| rest.split_once(" ("))
                .map(|(_, m)| m.strip_suffix(')').unwrap_or(m))
                .unwrap_or_default();
            let range = mapping.split(' ').next().unwrap_or_default();
            assert!(
                range.split_once('-').is_some_and(|(lo, hi)| {
                    usize::from_str_radix(lo, 16).is_ok() && usize::from_str_radix(hi, 16).is_ok()
                }) && mapping
                    .split(' ')
                    .nth(1)
                    .is_some_and(|p| p.starts_with("rw")),
                "{l}\n{}",
                run.describe()
            );
        }
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

    /// Runs the `threads` program of the `c_heap` example (C's heap
    /// tracked, threads that start and end) with a JSON report. glibc
    /// keeps each ended thread's TLS vector where no root reaches it, and
    /// the built-in suppressions hide those blocks: the one program whose
    /// report they change (no scenario leaves a block of the runtime's
    /// own lost).
    #[cfg(target_env = "gnu")]
    fn c_threads(builtin: Option<&str>) -> Run {
        let report = temp_path("builtin", "json");
        let path = report.path().to_str().unwrap().to_owned();
        let mut env = vec![
            ("DEBUG_MEMORY", "1"),
            ("DEBUG_MEMORY_REPORT", path.as_str()),
        ];
        if let Some(v) = builtin {
            env.push(("DEBUG_MEMORY_SUPPRESS_BUILTIN", v));
        }
        run_bin(&example_bin("c_heap", &[]), &["threads"], &env)
    }

    #[cfg(target_env = "gnu")]
    #[test]
    fn suppress_builtin_takes_the_words_of_every_switch() {
        let default = c_threads(None);
        let hidden = summary(default.report(), "suppressed");
        assert!(
            hidden.1 > 0 && summary(default.report(), "definitely_lost") == (0, 0),
            "by default the built-in rules suppress glibc's blocks\n{}",
            default.describe()
        );
        expect_code(&default, 0);
        for off in ["0", "off", "false", " No ", "OFF"] {
            let run = c_threads(Some(off));
            assert!(
                !run.stderr.contains("warning"),
                "DEBUG_MEMORY_SUPPRESS_BUILTIN={off:?} is well formed\n{}",
                run.describe()
            );
            assert_eq!(
                summary(run.report(), "suppressed"),
                (0, 0),
                "DEBUG_MEMORY_SUPPRESS_BUILTIN={off:?} turns the built-in rules off\n{}",
                run.describe()
            );
            assert_eq!(
                summary(run.report(), "definitely_lost"),
                hidden,
                "what they suppressed is now definitely lost\n{}",
                run.describe()
            );
            expect_code(&run, DEFAULT_LEAK_EXITCODE);
        }
        for on in ["1", "on", "true", ""] {
            let run = c_threads(Some(on));
            assert!(!run.stderr.contains("warning"), "{}", run.describe());
            assert_eq!(
                summary(run.report(), "suppressed"),
                hidden,
                "DEBUG_MEMORY_SUPPRESS_BUILTIN={on:?} keeps the built-in rules\n{}",
                run.describe()
            );
            expect_code(&run, 0);
        }
    }

    #[cfg(target_env = "gnu")]
    #[test]
    fn malformed_suppress_builtin_warns_and_keeps_the_builtin_rules() {
        let default = c_threads(None);
        let run = c_threads(Some("maybe"));
        let warnings: Vec<_> = run
            .memwarden_lines()
            .into_iter()
            .filter(|l| l.contains("warning"))
            .collect();
        assert!(
            warnings.len() == 1 && warnings[0].contains("DEBUG_MEMORY_SUPPRESS_BUILTIN=\"maybe\""),
            "one warning naming the variable and its value\n{}",
            run.describe()
        );
        assert_eq!(
            summary(run.report(), "suppressed"),
            summary(default.report(), "suppressed"),
            "a malformed value keeps the built-in rules on\n{}",
            run.describe()
        );
        expect_code(&run, 0);
    }

    #[test]
    fn malformed_suppress_builtin_warns_once_per_process() {
        // `scoped_caught` makes two reports (its `assert_no_leaks` and the
        // exit report), each reading the variable: one warning in all.
        let run = run_tracked_text(
            &["scoped_caught"],
            &[("DEBUG_MEMORY_SUPPRESS_BUILTIN", "banana")],
        );
        let warnings: Vec<_> = run
            .stderr_lines()
            .into_iter()
            .filter(|l| l.contains("DEBUG_MEMORY_SUPPRESS_BUILTIN"))
            .collect();
        assert_eq!(
            warnings.len(),
            1,
            "exactly one line names the variable\n{}",
            run.describe()
        );
        assert!(
            warnings[0].starts_with(PREFIX) && warnings[0].contains("warning"),
            "a `memwarden: warning:` line\n{}",
            run.describe()
        );
        expect_code(&run, 0);
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
    fn debug_memory_leaks_flag_switches_leak_tracking_only_on() {
        let report = temp_path("flag_leaks", "json");
        let path = report.path().to_str().unwrap().to_owned();
        let leaks_only = run(
            &["flag", "--debug-memory=leaks"],
            &[("DEBUG_MEMORY_REPORT", &path)],
        );
        check_report_shape(&leaks_only);
        expect_site(&leaks_only, "flag", DEFINITELY, 24, 1, "leak_flagged");
        expect_code(&leaks_only, DEFAULT_LEAK_EXITCODE);
        expect_memwarden_line_naming(
            &leaks_only,
            "leak tracking only (DEBUG_MEMORY=leaks or --debug-memory=leaks); not checked: overruns",
        );
        // A check's own variable still wins.
        let with_redzones = run(
            &["flag", "--debug-memory=leaks"],
            &[
                ("DEBUG_MEMORY_REPORT", path.as_str()),
                ("DEBUG_MEMORY_REDZONES", "1"),
            ],
        );
        expect_site(&with_redzones, "flag", DEFINITELY, 24, 1, "leak_flagged");
        expect_memwarden_line_naming(&with_redzones, "not checked: use after free");
        assert!(
            !with_redzones.stderr.contains("not checked: overruns"),
            "{}",
            with_redzones.describe()
        );
        // A malformed one is warned about once, at start-up, and counts as
        // unset when the flag is read.
        let malformed = run(
            &["flag", "--debug-memory=leaks"],
            &[
                ("DEBUG_MEMORY_REPORT", path.as_str()),
                ("DEBUG_MEMORY_REDZONES", "maybe"),
            ],
        );
        expect_site(&malformed, "flag", DEFINITELY, 24, 1, "leak_flagged");
        let warnings = malformed
            .memwarden_lines()
            .into_iter()
            .filter(|l| l.contains("DEBUG_MEMORY_REDZONES=\"maybe\""))
            .count();
        assert_eq!(warnings, 1, "{}", malformed.describe());
        expect_memwarden_line_naming(&malformed, "not checked: overruns");
    }

    #[test]
    fn empty_values_count_as_unset_silently() {
        let run = run_tracked(
            &["box_leak"],
            &[
                ("DEBUG_MEMORY_FRAMES", ""),
                ("DEBUG_MEMORY_EXITCODE", " "),
                ("DEBUG_MEMORY_QUARANTINE", ""),
                ("DEBUG_MEMORY_ON_ERROR", ""),
                ("DEBUG_MEMORY_REDZONES", ""),
                ("DEBUG_MEMORY_POISON", ""),
                ("DEBUG_MEMORY_SUPPRESS_BUILTIN", ""),
                ("DEBUG_MEMORY_FORMAT", ""),
                ("DEBUG_MEMORY_SUPPRESS", " "),
            ],
        );
        assert!(
            !run.stderr.contains("warning"),
            "no warning for an empty value\n{}",
            run.describe()
        );
        check_report_shape(&run);
        expect_site(&run, "box_leak", DEFINITELY, 64, 1, "leak_box");
        expect_code(&run, DEFAULT_LEAK_EXITCODE);
        // A blank report path is no report path either.
        let run = run_tracked_text(&["box_leak"], &[("DEBUG_MEMORY_REPORT", "  ")]);
        assert!(
            !run.stderr.contains("JSON report written") && !run.stderr.contains("error"),
            "{}",
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
    fn the_whole_api_builds_and_reports_nothing_without_the_feature() {
        // Code written against memwarden builds with the feature off: the
        // scoped checks run their closures and report nothing.
        let mark = memwarden::checkpoint();
        let leaked = Box::leak(Box::new([1u8; 64]));
        let (sum, report) = memwarden::check_leaks(|| {
            let v: Vec<u64> = (1..=10).collect();
            std::mem::forget(v.clone());
            v.iter().sum::<u64>()
        });
        assert_eq!(sum, 55);
        for r in [report, mark.report(), mark.leaks()] {
            assert!(r.leaks.is_empty() && r.errors.is_empty());
            assert!(!r.has_definite_leaks());
            assert_eq!(r.summary.definitely_lost.blocks, 0);
            let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
            assert_eq!(json["version"], 1);
            assert_eq!(json["summary"]["definitely_lost"]["bytes"], 0);
            assert!(r.to_string().contains("LEAK SUMMARY"), "{r}");
        }
        assert!(memwarden::top_sites(5).is_empty());
        assert_eq!(memwarden::check_heap(), 0);
        assert_eq!(memwarden::assert_no_leaks(|| leaked.len()), 64);
        memwarden::enable();
        assert!(!memwarden::is_enabled());
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
