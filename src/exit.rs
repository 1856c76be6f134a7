//! The exit-time report.
//!
//! Registered with `atexit` when tracking first turns on, so it runs when
//! `main` returns and when the program calls `std::process::exit`, after
//! Rust's runtime has flushed stdout and run the main thread's TLS
//! destructors. It runs once. It prints the text report to stderr, writes
//! the JSON report to `DEBUG_MEMORY_REPORT`, and ends the process with
//! `DEBUG_MEMORY_EXITCODE` when something is definitely lost (or the report
//! could not be written).
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::report::formats;
use crate::scan::{self, Caveats};
use crate::state;

static DONE: AtomicBool = AtomicBool::new(false);
/// The process that registered the report: a child made by `fork` (without
/// `exec`) inherits the `atexit` hook but not the job of reporting.
static OWNER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// `fork` handlers: the registry and stack-table locks are taken before
/// `fork` and released after it in both processes, so that a child never
/// starts with a lock some other (vanished) thread held.
extern "C" fn before_fork() {
    // The child's one thread is this one, on this thread's stack, but it is
    // the child's main thread, which `/proc/self/maps` would place on the
    // main stack: its stack is found now, while it can be. (The thread
    // library, asked otherwise, knows the child's thread as it is.)
    #[cfg(target_env = "gnu")]
    if crate::c_heap::in_use() {
        let _ = crate::unwind::stack_bounds();
    }
    // The registry of pools first: a leak scan takes it before the others.
    crate::pool::hold_for_fork();
    // Then the loader lock, so that no memwarden call is inside the
    // loader's own lock when the process is copied (see `sync::loader`):
    // after the registry of pools (nothing under the loader lock waits for
    // that registry), and before the registry's and stack table's locks,
    // which the scan's listing of the loaded objects (under it) may take
    // to allocate.
    crate::sync::loader::hold_for_fork();
    crate::stack::lock_all_raw();
    crate::registry::lock_all_raw();
    // The `fork` handlers registered before memwarden's run after this one
    // and may allocate: see `guard::enter_fork`.
    crate::guard::enter_fork();
}

extern "C" fn after_fork() {
    crate::guard::leave_fork();
    // The frees made while the locks were held, done once they are not.
    let deferred = crate::guard::take_deferred();
    // SAFETY: `before_fork` took every lock, in this thread (fork handlers
    // run in the thread that calls fork, and the child's one thread is it).
    // The deferred frees were taken out once, after the window closed.
    unsafe {
        crate::registry::unlock_all_raw();
        crate::stack::unlock_all_raw();
        // (Before the deferred frees, which may capture stacks and so call
        // into the loader.)
        crate::sync::loader::release_after_fork();
        deferred.run();
    }
    crate::pool::release_after_fork();
}

extern "C" fn after_fork_in_child() {
    // First: the deferred frees below may report.
    crate::report::symbols::after_fork_in_child();
    after_fork();
    // The child's only thread: no other is half-way through a free. (Unless
    // `fork` was called from a signal handler that interrupted one, which
    // the spin locks above already make unsafe.)
    crate::registry::requeue_stranded_big();
}

pub(crate) fn register() {
    // SAFETY: getpid has no preconditions.
    OWNER.store(unsafe { libc::getpid() }, Ordering::Relaxed);
    // SAFETY: the handlers are `extern "C"` functions that never unwind and
    // only take and release memwarden's own locks (the registry of pools,
    // the loader lock, the spin locks).
    unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork),
            Some(after_fork_in_child),
        )
    };
    // `Instant::now` reads the clock; it does not allocate.
    START.get_or_init(std::time::Instant::now);
    // SAFETY: `at_exit` is an `extern "C" fn()` that never unwinds.
    let rc = unsafe { libc::atexit(at_exit) };
    if rc != 0 {
        crate::sys::write_stderr(b"memwarden: warning: atexit failed; no leak report at exit\n");
    }
}

extern "C" fn at_exit() {
    // The scan of this thread's stack starts here: the frames of `exit`
    // and of the program above it, none of the dead frames below.
    let entry_sp = crate::roots::stack_pointer();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if DONE.swap(true, Ordering::AcqRel) || pid != OWNER.load(Ordering::Relaxed) {
        return;
    }
    let status = scan::guarded(|| {
        std::panic::catch_unwind(|| report_at_exit(entry_sp)).unwrap_or_else(|_| {
            crate::sys::write_stderr(b"memwarden: internal error while making the leak report\n");
            None
        })
    })
    .flatten();
    if let Some(code) = status {
        // SAFETY: fflush(NULL) flushes every C stdio stream; no preconditions.
        unsafe { libc::fflush(std::ptr::null_mut()) };
        // SAFETY: _exit ends the process at once; nothing runs after it.
        unsafe { libc::_exit(code) };
    }
}

/// Makes and writes the report; returns the exit status to force, if any.
fn report_at_exit(entry_sp: usize) -> Option<i32> {
    let heap_errors = crate::check::check_all(crate::stack::here(entry_sp), false);
    let mut caveats = Caveats::default();
    // Tracking stays on until the scan has stopped the other threads and
    // taken its snapshot: a thread still running until then may move the
    // blocks it holds into a new block, which must be a tracked one for
    // the scan to see what it points to (switched off first, such moves
    // made a leak-free program report thousands of blocks lost).
    let mut report = scan::scan(entry_sp, &mut caveats);
    // Allocations made by other threads from now on are not leaks of
    // interest.
    state::disable();
    report.errors = crate::check::errors();
    report.outstanding = crate::pool::outstanding();
    #[cfg(feature = "tracing")]
    crate::trace::emit_report(&report);
    let mut err = std::io::stderr().lock();
    for line in scan::caveat_lines(&caveats) {
        let _ = writeln!(err, "{line}");
    }
    // One write for the whole text: stderr is unbuffered, and a report of
    // many entries would otherwise cost a system call per fragment.
    let _ = err.write_all(report.to_string().as_bytes());
    if !report.leaks.is_empty()
        && !report
            .leaks
            .iter()
            .any(|l| crate::report::symbols::has_line_tables(&l.frames))
    {
        let _ = writeln!(
            err,
            "memwarden: note: no leak above has a source line: the program has no line tables (a release build's default); `debug = \"line-tables-only\"` under `[profile.release]` in Cargo.toml gives them"
        );
    }
    if let Some(note) = unchecked_note() {
        let _ = writeln!(err, "{note}");
    }
    let mut write_failed = false;
    let report_path = crate::env::path_var("DEBUG_MEMORY_REPORT");
    let mut write = |what: &str, path: &std::path::Path, data: &str| {
        write_failed |= !write_output(&mut err, what, path, data);
    };
    if let Some(path) = &report_path {
        write("JSON report", path.as_ref(), &report.to_json());
    }
    let formats = Formats::from_env();
    if formats.dhat {
        let path = sibling(report_path.as_deref(), "dhat.json");
        let cmd: Vec<String> = std::env::args().collect();
        let data = formats::dhat(&report, &cmd.join(" "), std::process::id(), elapsed_us());
        write("DHAT file", &path, &data);
    }
    if formats.folded {
        let path = sibling(report_path.as_deref(), "folded");
        write("folded stacks", &path, &formats::folded(&report));
    }
    if formats.github {
        write_github(&report);
    }
    let _ = err.flush();
    let code = state::exitcode();
    let failing = if code != 0 { code } else { 1 };
    let errors = crate::check::error_count();
    if errors > 0 {
        let (contexts, more) = crate::check::error_contexts();
        let more = if more { "more than " } else { "" };
        let _ = writeln!(
            err,
            "memwarden: ERROR SUMMARY: {errors} heap error(s) from {more}{contexts} context(s) ({heap_errors} found at exit): exiting with status {failing}"
        );
        return Some(failing);
    }
    let leaking = report.has_definite_leaks() && code != 0;
    if leaking {
        let _ = writeln!(
            err,
            "memwarden: {} bytes definitely lost: exiting with status {code} (DEBUG_MEMORY_EXITCODE)",
            report.summary.definitely_lost.bytes
        );
        Some(code)
    } else if write_failed {
        let _ = writeln!(
            err,
            "memwarden: exiting with status {failing}: an output asked for could not be written where asked"
        );
        Some(failing)
    } else {
        None
    }
}

/// Under `DEBUG_MEMORY=leaks`, the line that says so, with the heap errors
/// that went unchecked and how to check them (none when every check was
/// asked back).
fn unchecked_note() -> Option<String> {
    if !state::leaks_only() {
        return None;
    }
    let no_quarantine = state::quarantine() == 0;
    let mut off = Vec::new();
    if !state::redzones() {
        off.push("overruns (DEBUG_MEMORY_REDZONES=1)");
    }
    if !state::poison() || no_quarantine {
        off.push("use after free (DEBUG_MEMORY_POISON=1 DEBUG_MEMORY_QUARANTINE=2M)");
    }
    if off.is_empty() && !no_quarantine {
        // Every check was asked back.
        return None;
    }
    let mut note = String::from(
        "memwarden: note: leak tracking only (DEBUG_MEMORY=leaks or --debug-memory=leaks)",
    );
    if !off.is_empty() {
        note.push_str("; not checked: ");
        note.push_str(&off.join(", "));
    }
    if no_quarantine {
        note.push_str(
            "; without a quarantine, double frees are found only in part (docs/guide.md, \"Leak tracking only\")",
        );
    }
    Some(note)
}

/// Writes `data` (the `what`) to `path`, saying so on `err`. If it cannot
/// be written there, it is written to a file of its own in the temp
/// directory instead (or, failing that too, to `err`), so that nothing is
/// lost, and the answer is false: the run then fails.
fn write_output(err: &mut impl Write, what: &str, path: &std::path::Path, data: &str) -> bool {
    let e = match std::fs::write(path, data) {
        Ok(()) => {
            let _ = writeln!(err, "memwarden: {what} written to {}", path.display());
            return true;
        }
        Err(e) => e,
    };
    let name = path
        .file_name()
        .map_or_else(|| "report".into(), |n| n.to_string_lossy().into_owned());
    let instead = std::env::temp_dir().join(format!("memwarden-{}-{name}", std::process::id()));
    match std::fs::write(&instead, data) {
        Ok(()) => {
            let _ = writeln!(
                err,
                "memwarden: error: cannot write the {what} to {}: {e}; written to {} instead",
                path.display(),
                instead.display()
            );
        }
        Err(e2) => {
            let _ = writeln!(
                err,
                "memwarden: error: cannot write the {what} to {} ({e}) nor to {} ({e2}); here it is:",
                path.display(),
                instead.display()
            );
            let _ = err.write_all(data.as_bytes());
            let _ = writeln!(err);
        }
    }
    false
}

/// The GitHub Actions annotations of `report`, on stdout (where the runner
/// reads workflow commands).
fn write_github(report: &crate::report::Report) {
    let root = std::env::var("GITHUB_WORKSPACE").ok().or_else(|| {
        std::env::current_dir()
            .ok()
            .map(|d| d.to_string_lossy().into_owned())
    });
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(formats::github(report, root.as_deref()).as_bytes());
    let _ = out.flush();
}

/// Called just before a heap error aborts the process: writes the JSON
/// report (the error, the counters; no leak scan) if one was asked for,
/// and the GitHub annotations of the error if asked for.
pub(crate) fn write_json_on_abort() {
    let path = crate::env::path_var("DEBUG_MEMORY_REPORT");
    let github = Formats::from_env().github;
    if path.is_none() && !github {
        return;
    }
    let (total_allocs, total_bytes, _, peak_bytes, _) = crate::registry::counters();
    let mut report = crate::report::build(
        &[],
        0,
        crate::report::Counters {
            total_allocs,
            total_bytes,
            peak_bytes,
        },
        &crate::suppress::Suppressions::default(),
    );
    report.errors = crate::check::errors();
    if let Some(path) = path {
        write_output(
            &mut std::io::stderr().lock(),
            "JSON report",
            path.as_ref(),
            &report.to_json(),
        );
    }
    if github {
        write_github(&report);
    }
}

/// Extra outputs asked for with `DEBUG_MEMORY_FORMAT` (a comma-separated
/// list of `text`, `github`, `dhat`, `folded`; the text report on stderr is
/// always written) and `GITHUB_ACTIONS=true`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Formats {
    github: bool,
    dhat: bool,
    folded: bool,
}

impl Formats {
    fn from_env() -> Formats {
        let mut f = Formats::parse(
            &std::env::var("DEBUG_MEMORY_FORMAT").unwrap_or_default(),
            |bad| {
                eprintln!(
                    "memwarden: warning: DEBUG_MEMORY_FORMAT: unknown format `{bad}` (known: text, github, dhat, folded); ignored"
                )
            },
        );
        if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
            f.github = true;
        }
        f
    }

    fn parse(list: &str, mut unknown: impl FnMut(&str)) -> Formats {
        let mut f = Formats::default();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.to_ascii_lowercase().as_str() {
                "text" => {}
                "github" => f.github = true,
                "dhat" => f.dhat = true,
                "folded" => f.folded = true,
                _ => unknown(part),
            }
        }
        f
    }
}

/// `x.json` → `x.<ext>` next to the JSON report, or `memwarden.<ext>` in
/// the current directory without one.
fn sibling(report: Option<&std::ffi::OsStr>, ext: &str) -> std::path::PathBuf {
    match report {
        Some(p) => std::path::Path::new(p).with_extension(ext),
        None => std::path::PathBuf::from(format!("memwarden.{ext}")),
    }
}

static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Microseconds since tracking started (the DHAT file's end time).
fn elapsed_us() -> u64 {
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_lists_and_report_unknown_parts() {
        let mut bad = Vec::new();
        let f = Formats::parse("text, DHAT,folded,xml", |b| bad.push(b.to_owned()));
        assert_eq!(
            f,
            Formats {
                github: false,
                dhat: true,
                folded: true
            }
        );
        assert_eq!(bad, ["xml"]);
    }

    #[test]
    fn side_files_sit_next_to_the_json_report() {
        assert_eq!(
            sibling(Some(std::ffi::OsStr::new("/tmp/r/leaks.json")), "dhat.json"),
            std::path::PathBuf::from("/tmp/r/leaks.dhat.json")
        );
        assert_eq!(
            sibling(None, "folded"),
            std::path::PathBuf::from("memwarden.folded")
        );
    }
}
