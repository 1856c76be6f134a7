//! Helpers shared by the end-to-end tests: build and find the `scenarios`
//! example (tests/helpers/scenarios.rs), run it as a child process with a
//! clean `DEBUG_MEMORY*` environment, read its JSON report, and find the leak
//! entries of a `// SITE: <tag>` line.
//!
//! Each test spawns its own child and writes its report to its own uniquely
//! named file, so tests run in parallel.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::env;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The scenarios' source, read to find the line of a `// SITE: <tag>` marker.
pub(crate) const SCENARIOS_SRC: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/scenarios.rs");

/// How the `file` of a scenario frame must end.
pub(crate) const SCENARIOS_FILE_SUFFIX: &str = "tests/helpers/scenarios.rs";

/// Every line memwarden prints starts with this.
pub(crate) const PREFIX: &str = "memwarden: ";

/// The exit status memwarden uses by default when something is definitely lost.
pub(crate) const DEFAULT_LEAK_EXITCODE: i32 = 23;

/// Path of the `scenarios` example binary that matches this test build.
///
/// `current_exe()` is `<target>/<profile>/deps/<test>-<hash>`, so the example
/// is `<target>/<profile>/examples/scenarios`. `cargo test` builds examples
/// only when no single target is selected (`cargo test --test env` does not),
/// and a binary left by an earlier build may have been built with other
/// features, so the first call runs `cargo build --example scenarios` with
/// this build's profile and `tracking` feature (a no-op when it is up to date)
/// and then checks the binary's own `--features` answer. Set
/// `MEMWARDEN_SCENARIOS_BIN` to use a given binary and skip the build.
pub(crate) fn scenarios_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = match env::var_os("MEMWARDEN_SCENARIOS_BIN") {
            Some(path) => PathBuf::from(path),
            None => build_example("scenarios", &[]),
        };
        check_features(&bin);
        bin
    })
}

/// Path of example `name`, built (once per test binary) with this test
/// build's profile and `tracking` feature, plus `features`.
pub(crate) fn example_bin(name: &str, features: &[&str]) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let key = format!("{name}:{}", features.join(","));
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let p = build_example(name, features);
    built.push((key, p.clone()));
    p
}

fn build_example(name: &str, features: &[&str]) -> PathBuf {
    let exe = env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a parent dir");
    let profile_dir = deps.parent().expect("deps dir has a parent dir");
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", env::consts::EXE_SUFFIX));

    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => panic!("cannot tell the profile from {}", profile_dir.display()),
    };
    // `<target>/<profile>`, or `<target>/<triple>/<profile>` when built with
    // --target; Cargo marks the target dir's root with CACHEDIR.TAG.
    let above = profile_dir.parent().expect("profile dir has a parent dir");
    let (target_dir, triple) = if above.join("CACHEDIR.TAG").exists() {
        (above, None)
    } else {
        (above.parent().unwrap_or(above), above.file_name())
    };

    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "--example", name, "--profile", &profile])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if let Some(triple) = triple {
        cmd.arg("--target").arg(triple);
    }
    let mut all: Vec<&str> = features.to_vec();
    if cfg!(feature = "tracking") {
        all.push("tracking");
    } else {
        cmd.arg("--no-default-features");
    }
    if !all.is_empty() {
        cmd.args(["--features", &all.join(",")]);
    }
    strip_debug_memory_env(&mut cmd);
    let out = cmd.output().expect("run cargo build --example");
    assert!(
        out.status.success(),
        "building the {name} example failed ({:?}):\n{}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bin.exists(),
        "cargo built the example but {} does not exist",
        bin.display()
    );
    bin
}

fn check_features(bin: &Path) {
    let mut cmd = Command::new(bin);
    cmd.arg("--features");
    strip_debug_memory_env(&mut cmd);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let want = if cfg!(feature = "tracking") {
        "tracking=on"
    } else {
        "tracking=off"
    };
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        got.trim(),
        want,
        "{} was built with other features than this test ({})",
        bin.display(),
        want
    );
}

/// Removes every inherited `DEBUG_MEMORY*` variable from `cmd`'s environment.
pub(crate) fn strip_debug_memory_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with("DEBUG_MEMORY") {
            cmd.env_remove(&key);
        }
    }
}

/// A path in the temp dir that no other test (or test process) uses; nothing
/// is created there. Removed again when the guard drops.
pub(crate) fn temp_path(tag: &str, ext: &str) -> TempPath {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "memwarden-test-{}-{n}-{nanos}-{tag}.{ext}",
        std::process::id()
    );
    TempPath(env::temp_dir().join(name))
}

/// A temp path removed (file or directory) on drop.
#[derive(Debug)]
pub(crate) struct TempPath(pub(crate) PathBuf);

impl TempPath {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What one run of the scenarios binary did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// Where `DEBUG_MEMORY_REPORT` pointed, if the run set it.
    pub(crate) report_path: Option<PathBuf>,
    /// Whether a file existed at `report_path` after the run.
    pub(crate) report_written: bool,
    /// The parsed report, if one was written.
    pub(crate) report: Option<Value>,
}

impl Run {
    /// The exit code; panics if the child was killed by a signal.
    pub(crate) fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("child was killed by a signal\n{}", self.describe()))
    }

    /// The JSON report; panics if none was written.
    pub(crate) fn report(&self) -> &Value {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON report was written\n{}", self.describe()))
    }

    /// Everything about the run, for assertion messages.
    pub(crate) fn describe(&self) -> String {
        let report = match &self.report {
            Some(r) => serde_json::to_string_pretty(r).unwrap_or_default(),
            None => "(none)".to_owned(),
        };
        format!(
            "--- scenarios {:?} with {:?}\n--- status: {}\n--- stdout:\n{}\n--- stderr:\n{}\n--- report:\n{}\n",
            self.args, self.env, self.status, self.stdout, self.stderr, report
        )
    }

    /// The stderr lines (without line ends).
    pub(crate) fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }

    /// The stderr lines that start with [`PREFIX`].
    pub(crate) fn memwarden_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with(PREFIX))
            .collect()
    }
}

/// How long a test's child process may run before it is taken for hung
/// (a deadlock in the allocator, say) and killed: far above what any
/// child needs (a few seconds in a debug build on a loaded machine), so
/// that a hang fails its test instead of stalling the whole run.
pub(crate) const CHILD_DEADLINE: Duration = Duration::from_secs(180);

/// Runs `cmd` to its end, as `Command::output` does, but kills it and
/// fails the test, with what it printed so far, if it runs longer than
/// `deadline`.
pub(crate) fn output_within(cmd: &mut Command, deadline: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    // Read both pipes while waiting, so that a child writing more than a
    // pipe holds is not blocked on a full one.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!(
                "{cmd:?} still ran after {deadline:?} (hung?): killed\n--- stdout:\n{}\n--- stderr:\n{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Runs `scenarios ARGS...` with only the given `DEBUG_MEMORY*` variables
/// set (every inherited one is removed first). If `env` sets
/// `DEBUG_MEMORY_REPORT`, the file there is read and parsed (and removed).
pub(crate) fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_bin(scenarios_bin(), args, env)
}

/// As [`run`], for any binary.
pub(crate) fn run_bin(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    strip_debug_memory_env(&mut cmd);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let report_path = env
        .iter()
        .rev()
        .find(|(k, _)| *k == "DEBUG_MEMORY_REPORT")
        .map(|(_, v)| PathBuf::from(v));
    if let Some(path) = &report_path {
        assert!(
            !path.exists(),
            "report path {} exists before the run",
            path.display()
        );
    }
    let out = output_within(&mut cmd, CHILD_DEADLINE);
    let mut run = Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report_path: report_path.clone(),
        report_written: false,
        report: None,
    };
    if let Some(path) = report_path.filter(|p| p.is_file()) {
        run.report_written = true;
        let text = fs::read_to_string(&path).expect("read the JSON report");
        let _ = fs::remove_file(&path);
        match serde_json::from_str(&text) {
            Ok(value) => run.report = Some(value),
            Err(e) => panic!(
                "the report is not valid JSON: {e}\n{text}\n{}",
                run.describe()
            ),
        }
    }
    run
}

/// Runs a scenario with `DEBUG_MEMORY=1` and `DEBUG_MEMORY_REPORT` pointing at
/// a fresh temp file, plus `extra` variables (which may override those two).
pub(crate) fn run_tracked(args: &[&str], extra: &[(&str, &str)]) -> Run {
    let report = temp_path(args.first().copied().unwrap_or("none"), "json");
    let path = report
        .path()
        .to_str()
        .expect("temp dir is UTF-8")
        .to_owned();
    let mut env = vec![
        ("DEBUG_MEMORY", "1"),
        ("DEBUG_MEMORY_REPORT", path.as_str()),
    ];
    env.extend_from_slice(extra);
    run(args, &env)
}

/// Runs a scenario with `DEBUG_MEMORY=1` and no report file: the full report
/// goes to stderr as text.
pub(crate) fn run_tracked_text(args: &[&str], extra: &[(&str, &str)]) -> Run {
    let mut env = vec![("DEBUG_MEMORY", "1")];
    env.extend_from_slice(extra);
    run(args, &env)
}

/// The 1-based line of the `// SITE: <tag>` marker in scenarios.rs.
pub(crate) fn site_line(tag: &str) -> u64 {
    static SOURCE: OnceLock<String> = OnceLock::new();
    let source =
        SOURCE.get_or_init(|| fs::read_to_string(SCENARIOS_SRC).expect("read scenarios.rs"));
    let marker = format!("// SITE: {tag}");
    let lines: Vec<u64> = source
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim_end().ends_with(&marker))
        .map(|(i, _)| i as u64 + 1)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one `{marker}` in scenarios.rs, found lines {lines:?}"
    );
    lines[0]
}

/// The report's `leaks` array.
pub(crate) fn leaks(report: &Value) -> &Vec<Value> {
    report["leaks"]
        .as_array()
        .unwrap_or_else(|| panic!("report has no `leaks` array:\n{report:#}"))
}

/// `frames[0]` of a leak entry, if it has one.
pub(crate) fn top_frame(entry: &Value) -> Option<&Value> {
    entry["frames"].as_array().and_then(|f| f.first())
}

/// Whether a frame's `file` is scenarios.rs.
pub(crate) fn is_scenarios_file(frame: &Value) -> bool {
    frame["file"]
        .as_str()
        .is_some_and(|f| f.replace('\\', "/").ends_with(SCENARIOS_FILE_SUFFIX))
}

/// The leak entries whose `frames[0]` is the `// SITE: <tag>` line.
pub(crate) fn site_entries<'a>(report: &'a Value, tag: &str) -> Vec<&'a Value> {
    let line = site_line(tag);
    leaks(report)
        .iter()
        .filter(|entry| {
            top_frame(entry)
                .is_some_and(|f| is_scenarios_file(f) && f["line"].as_u64() == Some(line))
        })
        .collect()
}

/// Asserts that the report holds exactly one leak entry whose `frames[0]` is
/// the `// SITE: <tag>` line of scenarios.rs, of the given kind, bytes and
/// blocks, and that `frames[0].function` names `function`. Returns it.
pub(crate) fn expect_site<'a>(
    run: &'a Run,
    tag: &str,
    kind: &str,
    bytes: u64,
    blocks: u64,
    function: &str,
) -> &'a Value {
    let report = run.report();
    let line = site_line(tag);
    let found = site_entries(report, tag);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one leak entry with frames[0] at scenarios.rs:{line} (SITE {tag}), found {}\n{}",
        found.len(),
        run.describe()
    );
    let entry = found[0];
    let what = format!("entry of SITE {tag} (scenarios.rs:{line})");
    assert_eq!(
        entry["kind"].as_str(),
        Some(kind),
        "kind of the {what}\n{}",
        run.describe()
    );
    assert_eq!(
        entry["bytes"].as_u64(),
        Some(bytes),
        "bytes of the {what}\n{}",
        run.describe()
    );
    assert_eq!(
        entry["blocks"].as_u64(),
        Some(blocks),
        "blocks of the {what}\n{}",
        run.describe()
    );
    let frame = top_frame(entry).expect("site entry has a frame");
    let name = frame["function"].as_str().unwrap_or("");
    assert!(
        name.contains(function),
        "frames[0].function of the {what} is {name:?}, expected it to name `{function}`\n{}",
        run.describe()
    );
    entry
}

/// Asserts that no leak entry has its `frames[0]` at the SITE line.
pub(crate) fn expect_no_site(run: &Run, tag: &str) {
    let found = site_entries(run.report(), tag);
    assert!(
        found.is_empty(),
        "expected no leak entry at scenarios.rs:{} (SITE {tag})\n{}",
        site_line(tag),
        run.describe()
    );
}

/// `summary.<kind>` as (bytes, blocks).
pub(crate) fn summary(report: &Value, kind: &str) -> (u64, u64) {
    let s = &report["summary"][kind];
    match (s["bytes"].as_u64(), s["blocks"].as_u64()) {
        (Some(bytes), Some(blocks)) => (bytes, blocks),
        _ => panic!("report has no summary.{kind}.bytes/blocks:\n{report:#}"),
    }
}

/// `kind` of a definitely lost entry.
pub(crate) const DEFINITELY: &str = "definitely_lost";
/// `kind` of an indirectly lost entry.
pub(crate) const INDIRECTLY: &str = "indirectly_lost";
/// `kind` of a possibly lost entry.
pub(crate) const POSSIBLY: &str = "possibly_lost";
/// `kind` of a still reachable entry.
pub(crate) const REACHABLE: &str = "still_reachable";

/// The leak kinds of the contract, in its order.
pub(crate) const LEAK_KINDS: [&str; 4] = [
    "definitely_lost",
    "indirectly_lost",
    "possibly_lost",
    "still_reachable",
];

/// Checks what every report must satisfy: `version` 1, all summary fields,
/// leak entries well formed and listed largest first, each lost kind's
/// summary equal to the sum of its entries, no memory errors.
pub(crate) fn check_report_shape(run: &Run) {
    let report = run.report();
    let ctx = run.describe();
    assert_eq!(report["version"].as_u64(), Some(1), "version\n{ctx}");
    for kind in LEAK_KINDS.iter().chain(&["suppressed"]) {
        summary(report, kind);
    }
    for field in ["total_allocs", "total_bytes", "peak_bytes"] {
        assert!(
            report["summary"][field].is_u64(),
            "summary.{field} is not a count\n{ctx}"
        );
    }
    let entries = leaks(report);
    for entry in entries {
        let kind = entry["kind"].as_str().unwrap_or("");
        assert!(
            LEAK_KINDS.contains(&kind),
            "unknown leak kind {kind:?}\n{ctx}"
        );
        assert!(
            entry["bytes"].is_u64() && entry["blocks"].as_u64() >= Some(1),
            "bad entry {entry}\n{ctx}"
        );
        let frames = entry["frames"]
            .as_array()
            .unwrap_or_else(|| panic!("entry without frames {entry}\n{ctx}"));
        for frame in frames {
            for key in ["function", "file", "line"] {
                assert!(
                    frame.get(key).is_some(),
                    "frame without `{key}` (null when unknown): {frame}\n{ctx}"
                );
            }
        }
    }
    let sizes: Vec<u64> = entries
        .iter()
        .map(|e| e["bytes"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        sizes.windows(2).all(|w| w[0] >= w[1]),
        "leaks are not listed largest first: {sizes:?}\n{ctx}"
    );
    for kind in LEAK_KINDS {
        let (bytes, blocks) =
            entries
                .iter()
                .filter(|e| e["kind"] == kind)
                .fold((0, 0), |(b, n), e| {
                    (
                        b + e["bytes"].as_u64().unwrap_or(0),
                        n + e["blocks"].as_u64().unwrap_or(0),
                    )
                });
        assert_eq!(
            summary(report, kind),
            (bytes, blocks),
            "summary.{kind} is not the sum of its entries\n{ctx}"
        );
    }
    let live: u64 = sizes.iter().sum();
    let s = &report["summary"];
    let peak = s["peak_bytes"].as_u64().unwrap_or(0);
    assert!(
        peak >= live,
        "peak_bytes {peak} < bytes still live at exit {live}\n{ctx}"
    );
    assert!(
        s["total_bytes"].as_u64().unwrap_or(0) >= peak,
        "total_bytes < peak_bytes\n{ctx}"
    );
    let blocks: u64 = entries
        .iter()
        .map(|e| e["blocks"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        s["total_allocs"].as_u64().unwrap_or(0) >= blocks,
        "total_allocs < blocks live at exit\n{ctx}"
    );
    let errors = report["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("report has no `errors` array\n{ctx}"));
    assert!(
        errors.is_empty(),
        "the scenario makes no memory error, yet errors were reported\n{ctx}"
    );
}

/// Asserts the exit code of a run.
pub(crate) fn expect_code(run: &Run, code: i32) {
    assert_eq!(run.code(), code, "exit status\n{}", run.describe());
}

/// Asserts that a run's stdout holds `text`.
#[track_caller]
pub(crate) fn expect_stdout(run: &Run, text: &str) {
    assert!(run.stdout.contains(text), "{}", run.describe());
}

/// Asserts that every stderr line starts with [`PREFIX`] (the scenarios print
/// nothing themselves) and that there is at least one.
pub(crate) fn expect_only_memwarden_lines(run: &Run) {
    let lines = run.stderr_lines();
    assert!(
        !lines.is_empty(),
        "memwarden printed nothing on stderr\n{}",
        run.describe()
    );
    for line in lines {
        assert!(
            line.starts_with(PREFIX),
            "stderr line does not start with {PREFIX:?}: {line:?}\n{}",
            run.describe()
        );
    }
}

/// The line of `src` marked `// <WHAT>: <tag>` (a child program's source):
/// exactly one line must end with that marker.
pub(crate) fn marked_line(src: &str, what: &str, tag: &str) -> u64 {
    let marker = format!("// {what}: {tag}");
    let found: Vec<u64> = src
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_end().ends_with(&marker))
        .map(|(i, _)| i as u64 + 1)
        .collect();
    assert_eq!(found.len(), 1, "exactly one line marked {marker}");
    found[0]
}

/// The one heap error of `kind` in `run`'s JSON report.
pub(crate) fn one_error<'a>(run: &'a Run, kind: &str) -> &'a Value {
    let errors: Vec<&Value> = run.report()["errors"]
        .as_array()
        .expect("errors array")
        .iter()
        .filter(|e| e["kind"] == kind)
        .collect();
    assert_eq!(errors.len(), 1, "one {kind} error\n{}", run.describe());
    errors[0]
}
