//! The `DEBUG_MEMORY*` environment variables.
//!
//! Read once, on the first allocation, with `libc::getenv`: no allocation,
//! no lock. A malformed value prints one `memwarden: ` warning on stderr
//! (with `write(2)`, also allocation-free) and the documented default is
//! used instead. Variables only needed at exit (`DEBUG_MEMORY_REPORT`) are
//! read there, with `std::env`.
use std::ffi::CStr;
use std::fmt::Write as _;

use crate::sys::{StackBuf, write_stderr};

/// Default number of stack frames kept per allocation.
pub(crate) const DEFAULT_FRAMES: u32 = 16;
/// Most stack frames kept per allocation.
pub(crate) const MAX_FRAMES: u32 = 64;
/// Default exit status when something is definitely lost (LeakSanitizer's).
pub(crate) const DEFAULT_EXITCODE: i32 = 23;
/// Default quarantine size in bytes.
pub(crate) const DEFAULT_QUARANTINE: usize = 2 << 20;

/// What to do when a heap error is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnError {
    /// Print the report and abort (like AddressSanitizer).
    Abort,
    /// Print the report, count it, and go on.
    Continue,
}

/// What the environment asked for at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) enabled: bool,
    pub(crate) frames: u32,
    pub(crate) exitcode: i32,
    pub(crate) on_error: OnError,
    pub(crate) quarantine: usize,
    pub(crate) redzones: bool,
    pub(crate) poison: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            frames: DEFAULT_FRAMES,
            exitcode: DEFAULT_EXITCODE,
            on_error: OnError::Abort,
            quarantine: DEFAULT_QUARANTINE,
            redzones: true,
            poison: true,
        }
    }
}

/// Reads the start-up variables, warning about malformed ones.
pub(crate) fn read() -> Config {
    Config {
        enabled: getenv(c"DEBUG_MEMORY")
            .map(|v| parse_switch("DEBUG_MEMORY", v).unwrap_or(false))
            .unwrap_or(false),
        frames: getenv(c"DEBUG_MEMORY_FRAMES")
            .map(|v| parse_frames(v).unwrap_or(DEFAULT_FRAMES))
            .unwrap_or(DEFAULT_FRAMES),
        exitcode: getenv(c"DEBUG_MEMORY_EXITCODE")
            .map(|v| parse_exitcode(v).unwrap_or(DEFAULT_EXITCODE))
            .unwrap_or(DEFAULT_EXITCODE),
        on_error: getenv(c"DEBUG_MEMORY_ON_ERROR")
            .map(|v| parse_on_error(v).unwrap_or(OnError::Abort))
            .unwrap_or(OnError::Abort),
        quarantine: getenv(c"DEBUG_MEMORY_QUARANTINE")
            .map(|v| parse_bytes("DEBUG_MEMORY_QUARANTINE", v).unwrap_or(DEFAULT_QUARANTINE))
            .unwrap_or(DEFAULT_QUARANTINE),
        redzones: getenv(c"DEBUG_MEMORY_REDZONES")
            .map(|v| parse_flag("DEBUG_MEMORY_REDZONES", v).unwrap_or(true))
            .unwrap_or(true),
        poison: getenv(c"DEBUG_MEMORY_POISON")
            .map(|v| parse_flag("DEBUG_MEMORY_POISON", v).unwrap_or(true))
            .unwrap_or(true),
    }
}

/// `abort` or `continue`.
pub(crate) fn parse_on_error(v: &[u8]) -> Option<OnError> {
    let t = trim(v);
    if t.eq_ignore_ascii_case(b"abort") {
        Some(OnError::Abort)
    } else if t.eq_ignore_ascii_case(b"continue") {
        Some(OnError::Continue)
    } else {
        warn(
            "DEBUG_MEMORY_ON_ERROR",
            v,
            "is not abort or continue; using abort",
        );
        None
    }
}

/// A byte count, with an optional K, M or G suffix (powers of 1024).
pub(crate) fn parse_bytes(var: &str, v: &[u8]) -> Option<usize> {
    let t = trim(v);
    let (digits, shift) = match t.last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&t[..t.len() - 1], 10),
        Some(b'M') => (&t[..t.len() - 1], 20),
        Some(b'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    match parse_u64(digits)
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| n.checked_mul(1 << shift))
    {
        Some(n) => Some(n),
        None => {
            warn(
                var,
                v,
                "is not a byte count (like 1048576, 64M or 1G); using the default",
            );
            None
        }
    }
}

/// An on/off switch for a feature that is on by default (empty: on).
pub(crate) fn parse_flag(var: &str, v: &[u8]) -> Option<bool> {
    let flag = flag_value(v);
    if flag.is_none() {
        warn(var, v, "is not 1 or 0; keeping it on");
    }
    flag
}

/// [`parse_flag`] without the warning: `1/true/yes/on` or empty → on,
/// `0/false/no/off` → off, anything else `None`.
pub(crate) fn flag_value(v: &[u8]) -> Option<bool> {
    let t = trim(v);
    let is = |w: &str| t.eq_ignore_ascii_case(w.as_bytes());
    if t.is_empty() || is("1") || is("true") || is("yes") || is("on") {
        Some(true)
    } else if is("0") || is("false") || is("no") || is("off") {
        Some(false)
    } else {
        None
    }
}

/// A path variable read at exit (`DEBUG_MEMORY_REPORT`,
/// `DEBUG_MEMORY_SUPPRESS`), `None` when it is unset, empty or blank, as
/// [`getenv`] takes every variable.
pub(crate) fn path_var(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|p| !trim(p.as_encoded_bytes()).is_empty())
}

/// The variable's value; `None` when it is unset, empty or blank: every
/// variable takes an empty value as unset, silently (as a shell's
/// `VAR= cmd` is meant to reset it).
fn getenv(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated. The result, when not null, points
    // into the environment block, which lives for the whole process unless
    // the program calls setenv for this very name (then, like every getenv
    // caller, we may read a stale but still valid string).
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    Some(unsafe { CStr::from_ptr(p) }.to_bytes()).filter(|v| !trim(v).is_empty())
}

/// `1/true/yes/on` → on, `0/false/no/off` or empty → off; else a warning.
pub(crate) fn parse_switch(var: &str, v: &[u8]) -> Option<bool> {
    let t = trim(v);
    let is = |w: &str| t.eq_ignore_ascii_case(w.as_bytes());
    if t.is_empty() || is("0") || is("false") || is("no") || is("off") {
        Some(false)
    } else if is("1") || is("true") || is("yes") || is("on") {
        Some(true)
    } else {
        warn(var, v, "is not 1 or 0; tracking stays off");
        None
    }
}

pub(crate) fn parse_frames(v: &[u8]) -> Option<u32> {
    match parse_u32(trim(v)) {
        Some(n) if n <= MAX_FRAMES => Some(n),
        Some(_) => {
            warn(
                "DEBUG_MEMORY_FRAMES",
                v,
                "is more than 64; keeping 64 frames",
            );
            Some(MAX_FRAMES)
        }
        None => {
            warn(
                "DEBUG_MEMORY_FRAMES",
                v,
                "is not a number of frames (0-64); using 16",
            );
            None
        }
    }
}

pub(crate) fn parse_exitcode(v: &[u8]) -> Option<i32> {
    match parse_u32(trim(v)) {
        Some(n) if n <= 255 => Some(n as i32),
        _ => {
            warn(
                "DEBUG_MEMORY_EXITCODE",
                v,
                "is not an exit status (0-255); using 23",
            );
            None
        }
    }
}

fn parse_u32(t: &[u8]) -> Option<u32> {
    if t.len() > 9 {
        return None;
    }
    parse_u64(t).map(|n| n as u32)
}

/// Decimal digits only, at most 18 of them (so no overflow).
fn parse_u64(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 18 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(t.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// One warning line: `memwarden: DEBUG_MEMORY_FRAMES="abc" is not ...`.
pub(crate) fn warn(var: &str, value: &[u8], what: &str) {
    let mut line = StackBuf::<512>::new();
    let shown = &value[..value.len().min(64)];
    let _ = write!(line, "memwarden: warning: {var}=\"");
    for &b in shown {
        let c = if b.is_ascii_graphic() || b == b' ' {
            b as char
        } else {
            '?'
        };
        let _ = line.write_char(c);
    }
    let ellipsis = if shown.len() < value.len() { "..." } else { "" };
    let _ = writeln!(line, "{ellipsis}\" {what}");
    write_stderr(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_values() {
        assert_eq!(parse_switch("X", b"1"), Some(true));
        assert_eq!(parse_switch("X", b" TRUE "), Some(true));
        assert_eq!(parse_switch("X", b"on"), Some(true));
        assert_eq!(parse_switch("X", b"0"), Some(false));
        assert_eq!(parse_switch("X", b""), Some(false));
        assert_eq!(parse_switch("X", b"off"), Some(false));
        assert_eq!(parse_switch("X", b"banana"), None);
        assert_eq!(parse_switch("X", b"2"), None);
    }

    #[test]
    fn frames_values() {
        assert_eq!(parse_frames(b"16"), Some(16));
        assert_eq!(parse_frames(b"0"), Some(0));
        assert_eq!(parse_frames(b"64"), Some(64));
        assert_eq!(parse_frames(b"65"), Some(64));
        assert_eq!(parse_frames(b"abc"), None);
        assert_eq!(parse_frames(b"-1"), None);
        assert_eq!(parse_frames(b"99999999999"), None);
    }

    #[test]
    fn error_policy_and_sizes() {
        assert_eq!(parse_on_error(b"continue"), Some(OnError::Continue));
        assert_eq!(parse_on_error(b"ABORT"), Some(OnError::Abort));
        assert_eq!(parse_on_error(b"explode"), None);
        assert_eq!(parse_bytes("X", b"4096"), Some(4096));
        assert_eq!(parse_bytes("X", b"64M"), Some(64 << 20));
        assert_eq!(parse_bytes("X", b"2k"), Some(2048));
        assert_eq!(parse_bytes("X", b"0"), Some(0));
        assert_eq!(parse_bytes("X", b"lots"), None);
        // Plain byte counts of ten digits and more (1 GiB and up).
        assert_eq!(parse_bytes("X", b"1073741824"), Some(1 << 30));
        assert_eq!(parse_bytes("X", b"17179869184"), Some(16 << 30));
        assert_eq!(parse_bytes("X", b"16G"), Some(16 << 30));
        assert_eq!(parse_bytes("X", b"99999999999999999999"), None);
        assert_eq!(parse_bytes("X", b"999999999999999999G"), None);
        assert_eq!(parse_flag("X", b"0"), Some(false));
        assert_eq!(parse_flag("X", b"on"), Some(true));
        assert_eq!(parse_flag("X", b"maybe"), None);
        assert_eq!(parse_flag("X", b""), Some(true));
        assert_eq!(flag_value(b" Off "), Some(false));
        assert_eq!(flag_value(b"FALSE"), Some(false));
        assert_eq!(flag_value(b"no"), Some(false));
        assert_eq!(flag_value(b"yes"), Some(true));
        assert_eq!(flag_value(b"maybe"), None);
    }

    #[test]
    fn exitcode_values() {
        assert_eq!(parse_exitcode(b"23"), Some(23));
        assert_eq!(parse_exitcode(b"0"), Some(0));
        assert_eq!(parse_exitcode(b"255"), Some(255));
        assert_eq!(parse_exitcode(b"256"), None);
        assert_eq!(parse_exitcode(b"xyz"), None);
    }
}
