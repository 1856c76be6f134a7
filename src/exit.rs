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

use crate::scan::{self, Caveats};
use crate::state;

static DONE: AtomicBool = AtomicBool::new(false);

pub(crate) fn register() {
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
    if DONE.swap(true, Ordering::AcqRel) {
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
    // Allocations made by other threads from now on are not leaks of
    // interest, and the report must not chase a moving target.
    state::disable();
    let heap_errors = crate::check::check_all(crate::stack::here(entry_sp), false);
    let mut caveats = Caveats::default();
    let mut report = scan::scan(entry_sp, &mut caveats);
    report.errors = crate::check::errors();
    let mut err = std::io::stderr().lock();
    for line in scan::caveat_lines(&caveats) {
        let _ = writeln!(err, "{line}");
    }
    let _ = write!(err, "{report}");
    let mut write_failed = false;
    if let Some(path) = std::env::var_os("DEBUG_MEMORY_REPORT").filter(|p| !p.is_empty()) {
        let json = report.to_json();
        match std::fs::write(&path, json.as_bytes()) {
            Ok(()) => {
                let _ = writeln!(
                    err,
                    "memwarden: JSON report written to {}",
                    path.to_string_lossy()
                );
            }
            Err(e) => {
                write_failed = true;
                let _ = writeln!(
                    err,
                    "memwarden: error: cannot write the JSON report to {}: {e}",
                    path.to_string_lossy()
                );
            }
        }
    }
    let _ = err.flush();
    let code = state::exitcode();
    let failing = if code != 0 { code } else { 1 };
    let errors = crate::check::error_count();
    if errors > 0 {
        let _ = writeln!(
            err,
            "memwarden: ERROR SUMMARY: {errors} heap error(s) ({heap_errors} found at exit): exiting with status {failing}"
        );
        Some(failing)
    } else if write_failed {
        Some(failing)
    } else if report.has_definite_leaks() && code != 0 {
        let _ = writeln!(
            err,
            "memwarden: {} bytes definitely lost: exiting with status {code} (DEBUG_MEMORY_EXITCODE)",
            report.summary.definitely_lost.bytes
        );
        Some(code)
    } else {
        None
    }
}

/// Called just before a heap error aborts the process: writes the JSON
/// report (the error, the counters; no leak scan) if one was asked for.
pub(crate) fn write_json_on_abort() {
    let Some(path) = std::env::var_os("DEBUG_MEMORY_REPORT").filter(|p| !p.is_empty()) else {
        return;
    };
    let (total_allocs, total_bytes, _, peak_bytes, _) = crate::registry::counters();
    let mut report = crate::report::build(
        &[],
        0,
        crate::report::Counters {
            total_allocs,
            total_bytes,
            peak_bytes,
        },
    );
    report.errors = crate::check::errors();
    if let Err(e) = std::fs::write(&path, report.to_json()) {
        crate::sys::write_stderr(
            format!(
                "memwarden: error: cannot write the JSON report to {}: {e}\n",
                path.to_string_lossy()
            )
            .as_bytes(),
        );
    }
}
