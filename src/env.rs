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

/// What `DEBUG_MEMORY` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tracking {
    /// Unset, empty, `0`, `false`, `no`, `off`, or malformed.
    Off,
    /// `1`, `true`, `yes`, `on`: leaks and heap errors.
    Full,
    /// `leaks`: leak tracking only. Red zones, poisoning and the quarantine
    /// are off unless their own variables turn them on.
    Leaks,
}

/// What the environment asked for at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) tracking: Tracking,
    pub(crate) frames: u32,
    pub(crate) exitcode: i32,
    pub(crate) on_error: OnError,
    pub(crate) quarantine: usize,
    pub(crate) redzones: bool,
    pub(crate) poison: bool,
}

impl Config {
    /// True if tracking starts on.
    pub(crate) fn enabled(&self) -> bool {
        self.tracking != Tracking::Off
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tracking: Tracking::Off,
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
    config(getenv, None)
}

/// The red zones, poison and quarantine of leak tracking only, for
/// `--debug-memory=leaks`: off, unless their variables ask for them (read
/// again, quietly: a malformed one was warned about at start-up, and
/// counts as unset here).
pub(crate) fn leaks_only_checks() -> (bool, bool, usize) {
    let cfg = config(
        |name| getenv(name).filter(|v| quietly_valid(name, v)),
        Some(Tracking::Leaks),
    );
    (cfg.redzones, cfg.poison, cfg.quarantine)
}

/// True if `name` is one of the three check variables and `v` a
/// well-formed value of it (the other variables are not read again).
fn quietly_valid(name: &CStr, v: &[u8]) -> bool {
    if name == c"DEBUG_MEMORY_QUARANTINE" {
        bytes_value(v).is_some()
    } else if name == c"DEBUG_MEMORY_REDZONES" || name == c"DEBUG_MEMORY_POISON" {
        flag_value(v).is_some()
    } else {
        false
    }
}

/// The configuration that the variables `var` gives (`None`: unset or
/// blank) ask for, warning about malformed ones.
fn config(var: impl Fn(&CStr) -> Option<&'static [u8]>, forced: Option<Tracking>) -> Config {
    let tracking = forced.unwrap_or_else(|| {
        var(c"DEBUG_MEMORY")
            .map(|v| parse_tracking(v).unwrap_or(Tracking::Off))
            .unwrap_or(Tracking::Off)
    });
    // The checks for heap errors are on by default, and off by default
    // under `DEBUG_MEMORY=leaks`.
    let checks = tracking != Tracking::Leaks;
    Config {
        tracking,
        frames: var(c"DEBUG_MEMORY_FRAMES")
            .map(|v| parse_frames(v).unwrap_or(DEFAULT_FRAMES))
            .unwrap_or(DEFAULT_FRAMES),
        exitcode: var(c"DEBUG_MEMORY_EXITCODE")
            .map(|v| parse_exitcode(v).unwrap_or(DEFAULT_EXITCODE))
            .unwrap_or(DEFAULT_EXITCODE),
        on_error: var(c"DEBUG_MEMORY_ON_ERROR")
            .map(|v| parse_on_error(v).unwrap_or(OnError::Abort))
            .unwrap_or(OnError::Abort),
        quarantine: {
            let default = if checks { DEFAULT_QUARANTINE } else { 0 };
            var(c"DEBUG_MEMORY_QUARANTINE")
                .map(|v| parse_bytes("DEBUG_MEMORY_QUARANTINE", v).unwrap_or(default))
                .unwrap_or(default)
        },
        redzones: var(c"DEBUG_MEMORY_REDZONES")
            .map(|v| parse_flag("DEBUG_MEMORY_REDZONES", v, checks))
            .unwrap_or(checks),
        poison: var(c"DEBUG_MEMORY_POISON")
            .map(|v| parse_flag("DEBUG_MEMORY_POISON", v, checks))
            .unwrap_or(checks),
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
    match bytes_value(v) {
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

/// [`parse_bytes`] without the warning.
fn bytes_value(v: &[u8]) -> Option<usize> {
    let t = trim(v);
    let (digits, shift) = match t.last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&t[..t.len() - 1], 10),
        Some(b'M') => (&t[..t.len() - 1], 20),
        Some(b'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    parse_u64(digits)
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| n.checked_mul(1 << shift))
}

/// An on/off switch for a feature that is `default` when not set: the
/// value asked for, or (with a warning) `default` for a malformed one.
pub(crate) fn parse_flag(var: &str, v: &[u8], default: bool) -> bool {
    if trim(v).is_empty() {
        return default;
    }
    flag_value(v).unwrap_or_else(|| {
        let keeping = if default {
            "is not 1 or 0; keeping it on"
        } else {
            "is not 1 or 0; keeping it off"
        };
        warn(var, v, keeping);
        default
    })
}

/// An on/off value: `1/true/yes/on` or empty → on, `0/false/no/off` →
/// off, anything else `None` (no warning: see [`parse_flag`]).
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

/// `DEBUG_MEMORY`: `1/true/yes/on` → full tracking, `leaks` → leak
/// tracking only, `0/false/no/off` or empty → off; else a warning (and
/// `None`).
pub(crate) fn parse_tracking(v: &[u8]) -> Option<Tracking> {
    let t = trim(v);
    let is = |w: &str| t.eq_ignore_ascii_case(w.as_bytes());
    if t.is_empty() || is("0") || is("false") || is("no") || is("off") {
        Some(Tracking::Off)
    } else if is("1") || is("true") || is("yes") || is("on") {
        Some(Tracking::Full)
    } else if is("leaks") {
        Some(Tracking::Leaks)
    } else {
        warn(
            "DEBUG_MEMORY",
            v,
            "is not 1, 0 or leaks; tracking stays off",
        );
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
    fn tracking_values() {
        assert_eq!(parse_tracking(b"1"), Some(Tracking::Full));
        assert_eq!(parse_tracking(b" TRUE "), Some(Tracking::Full));
        assert_eq!(parse_tracking(b"on"), Some(Tracking::Full));
        assert_eq!(parse_tracking(b"leaks"), Some(Tracking::Leaks));
        assert_eq!(parse_tracking(b" Leaks "), Some(Tracking::Leaks));
        assert_eq!(parse_tracking(b"LEAKS"), Some(Tracking::Leaks));
        assert_eq!(parse_tracking(b"leak"), None);
        assert_eq!(parse_tracking(b"0"), Some(Tracking::Off));
        assert_eq!(parse_tracking(b""), Some(Tracking::Off));
        assert_eq!(parse_tracking(b"off"), Some(Tracking::Off));
        assert_eq!(parse_tracking(b"banana"), None);
        assert_eq!(parse_tracking(b"2"), None);
        assert_eq!(parse_tracking(b"leaks-only"), None);
    }

    /// The configuration of an environment of `vars` (name, value).
    fn config_of(vars: &'static [(&'static CStr, &'static [u8])]) -> Config {
        config_as(vars, None)
    }

    /// The same with `forced` in place of what `DEBUG_MEMORY` asks.
    fn config_as(
        vars: &'static [(&'static CStr, &'static [u8])],
        forced: Option<Tracking>,
    ) -> Config {
        config(
            |name| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| *v)
                    .filter(|v| !trim(v).is_empty())
            },
            forced,
        )
    }

    #[test]
    fn configurations() {
        assert_eq!(config_of(&[]), Config::default());
        let full = config_of(&[(c"DEBUG_MEMORY", b"1")]);
        assert_eq!(
            full,
            Config {
                tracking: Tracking::Full,
                ..Config::default()
            }
        );
        assert!(full.enabled());
        assert!(!config_of(&[(c"DEBUG_MEMORY", b"banana")]).enabled());
        // Leaks only: the checks for heap errors are off by default.
        let leaks = config_of(&[(c"DEBUG_MEMORY", b"leaks")]);
        assert!(leaks.enabled());
        assert_eq!(
            (
                leaks.tracking,
                leaks.redzones,
                leaks.poison,
                leaks.quarantine
            ),
            (Tracking::Leaks, false, false, 0)
        );
        assert_eq!(leaks.frames, DEFAULT_FRAMES);
        // Each variable of its own still wins, either way.
        let some = config_of(&[
            (c"DEBUG_MEMORY", b"leaks"),
            (c"DEBUG_MEMORY_REDZONES", b"1"),
            (c"DEBUG_MEMORY_QUARANTINE", b"64K"),
            (c"DEBUG_MEMORY_FRAMES", b"8"),
        ]);
        assert_eq!(
            (some.redzones, some.poison, some.quarantine, some.frames),
            (true, false, 64 << 10, 8)
        );
        let fewer = config_of(&[(c"DEBUG_MEMORY", b"1"), (c"DEBUG_MEMORY_POISON", b"off")]);
        assert_eq!((fewer.redzones, fewer.poison), (true, false));
        // Malformed or blank values keep the mode's defaults.
        let odd = config_of(&[
            (c"DEBUG_MEMORY", b"leaks"),
            (c"DEBUG_MEMORY_REDZONES", b"maybe"),
            (c"DEBUG_MEMORY_POISON", b"  "),
            (c"DEBUG_MEMORY_QUARANTINE", b"lots"),
        ]);
        assert_eq!(
            (odd.redzones, odd.poison, odd.quarantine),
            (false, false, 0)
        );
        let odd = config_of(&[
            (c"DEBUG_MEMORY", b"on"),
            (c"DEBUG_MEMORY_REDZONES", b"maybe"),
            (c"DEBUG_MEMORY_QUARANTINE", b"lots"),
        ]);
        assert_eq!((odd.redzones, odd.quarantine), (true, DEFAULT_QUARANTINE));
        // `--debug-memory=leaks`: the mode forced, whatever `DEBUG_MEMORY`
        // says, and each check's own variable still wins.
        let flag = config_as(
            &[(c"DEBUG_MEMORY", b"0"), (c"DEBUG_MEMORY_POISON", b"1")],
            Some(Tracking::Leaks),
        );
        assert_eq!(
            (flag.tracking, flag.redzones, flag.poison, flag.quarantine),
            (Tracking::Leaks, false, true, 0)
        );
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
        assert!(!parse_flag("X", b"0", true));
        assert!(parse_flag("X", b"on", false));
        assert!(parse_flag("X", b"maybe", true));
        assert!(!parse_flag("X", b"maybe", false));
        assert!(parse_flag("X", b"", true));
        assert!(!parse_flag("X", b" ", false));
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
