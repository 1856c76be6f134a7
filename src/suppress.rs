//! Suppressions: leaks the user has decided not to count.
//!
//! `DEBUG_MEMORY_SUPPRESS=PATH` names a text file in LeakSanitizer's form:
//!
//! ```text
//! # comments and blank lines are ignored
//! leak:my_crate::cache::*        # any frame's function matches
//! leak:*/vendor/legacy/*.rs      # any frame's file matches
//! leak:src/ffi.rs:42$            # any frame's file:line matches
//! some::function                 # `leak:` may be left out
//! ```
//!
//! A pattern matches a stack if it matches any frame's function name, file
//! path, or `file:line`. `*` matches any run of characters and `?` any one;
//! like LeakSanitizer, a pattern without `^`/`$` anchors matches anywhere
//! inside the text (`^` and `$` pin it to the start or end). Matching lost
//! blocks (definitely, indirectly or possibly lost) are counted under
//! `suppressed` and left out of the report's entries.
//!
//! Built in: a lost block with no frame of the program on its stack (made
//! by the Rust runtime itself, e.g. before `main`) is suppressed too, and
//! so is one that glibc allocated while setting up a thread (its
//! thread-local storage vector, seen when C's heap is tracked); set
//! `DEBUG_MEMORY_SUPPRESS_BUILTIN=0` (or `off`, `false`, `no`, as for the
//! other switches) to see those.
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::report::Frame;

/// A parsed suppressions file.
#[derive(Debug, Default, Clone)]
pub(crate) struct Suppressions {
    patterns: Vec<Pattern>,
    builtin: bool,
}

/// A glob matched against the whole text; unanchored patterns get `*`
/// added at the open ends.
#[derive(Debug, Clone)]
struct Pattern {
    glob: String,
    /// For a pattern that is a plain Rust path (`a::b::name`, no wildcard
    /// in its last segment): that last segment, matched against frames
    /// known only by their short name. Release builds with line tables
    /// only name an inlined function by its short name (`name`, not
    /// `a::b::name`), so the full path could never match it.
    short: Option<String>,
}

/// A malformed line of a suppressions file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SuppressError {
    pub(crate) line: usize,
    pub(crate) message: String,
}

impl fmt::Display for SuppressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl Suppressions {
    /// Parses the text of a suppressions file; malformed lines are
    /// returned as errors and skipped.
    pub(crate) fn parse(text: &str) -> (Suppressions, Vec<SuppressError>) {
        let mut patterns = Vec::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            // `type:pattern`, but not a Rust path (`a::b`) or a drive letter.
            let pat = match line.split_once(':') {
                Some((kind, rest)) if is_word(kind) && !rest.starts_with(':') && kind.len() > 1 => {
                    if kind != "leak" {
                        errors.push(SuppressError {
                            line: i + 1,
                            message: format!(
                                "unknown suppression type `{kind}:` (memwarden knows `leak:`)"
                            ),
                        });
                        continue;
                    }
                    rest.trim()
                }
                _ => line,
            };
            if pat.is_empty() || pat == "^" || pat == "$" || pat == "^$" {
                errors.push(SuppressError {
                    line: i + 1,
                    message: "empty pattern".to_owned(),
                });
                continue;
            }
            let start = pat.starts_with('^');
            let end = pat.ends_with('$') && pat.len() > usize::from(start);
            let core = &pat[usize::from(start)..pat.len() - usize::from(end)];
            let glob = format!(
                "{}{core}{}",
                if start { "" } else { "*" },
                if end { "" } else { "*" }
            );
            let short = core
                .rsplit_once("::")
                .map(|(_, last)| last)
                .filter(|last| !last.is_empty() && !last.contains(['*', '?', '/', '.', ':']))
                .map(str::to_owned);
            patterns.push(Pattern { glob, short });
        }
        (
            Suppressions {
                patterns,
                builtin: true,
            },
            errors,
        )
    }

    /// The suppressions named by the environment, with a `memwarden:`
    /// error line on stderr for each malformed line or an unreadable file.
    pub(crate) fn from_env() -> Suppressions {
        let builtin = builtin_from_env();
        let mut s = match crate::env::path_var("DEBUG_MEMORY_SUPPRESS") {
            None => Suppressions::default(),
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let (s, errors) = Suppressions::parse(&text);
                    for e in errors {
                        eprintln!(
                            "memwarden: error: DEBUG_MEMORY_SUPPRESS={}: {e}; line ignored",
                            path.to_string_lossy()
                        );
                    }
                    s
                }
                Err(e) => {
                    eprintln!(
                        "memwarden: error: cannot read the suppressions file DEBUG_MEMORY_SUPPRESS={}: {e}",
                        path.to_string_lossy()
                    );
                    Suppressions::default()
                }
            },
        };
        s.builtin = builtin;
        s
    }

    /// True if a lost block allocated from `frames` is suppressed.
    /// `runtime` says the stack has no frame of the program.
    pub(crate) fn matches(&self, frames: &[Frame], runtime: bool) -> bool {
        if self.builtin && (runtime || frames.iter().any(crate::report::symbols::is_thread_setup)) {
            return true;
        }
        self.patterns.iter().any(|p| {
            frames.iter().any(|f| {
                f.function
                    .as_deref()
                    .is_some_and(|n| p.matches(n) || p.matches_short(n))
                    || f.file.as_deref().is_some_and(|file| {
                        p.matches(file) || f.line.is_some_and(|l| p.matches(&format!("{file}:{l}")))
                    })
            })
        })
    }
}

/// `DEBUG_MEMORY_SUPPRESS_BUILTIN`, read each time a report is made: the
/// built-in suppressions stay on unless it is one of the words that switch
/// a feature off (`0`, `off`, `false`, `no`; case and blanks ignored, as
/// for every switch). A malformed value keeps them on, with one warning
/// for the whole process (scoped checks make reports too).
fn builtin_from_env() -> bool {
    const VAR: &str = "DEBUG_MEMORY_SUPPRESS_BUILTIN";
    static WARNED: AtomicBool = AtomicBool::new(false);
    let Some(v) = std::env::var_os(VAR) else {
        return true;
    };
    let v = v.as_encoded_bytes();
    match crate::env::flag_value(v) {
        Some(on) => on,
        // Malformed: warned about once (the value is read at each report).
        None if WARNED.swap(true, Ordering::Relaxed) => true,
        None => crate::env::parse_flag(VAR, v, true),
    }
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
}

impl Pattern {
    fn matches(&self, text: &str) -> bool {
        glob(self.glob.as_bytes(), text.as_bytes())
    }

    /// True if `function` is a short (unqualified) name, generic arguments
    /// aside, equal to this pattern's last path segment.
    fn matches_short(&self, function: &str) -> bool {
        let Some(short) = &self.short else {
            return false;
        };
        let name = function.split('<').next().unwrap_or(function);
        !name.contains("::") && name == short
    }
}

/// Whole-text glob match with `*` and `?`.
fn glob(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: Some(function.into()),
            file: Some(file.into()),
            line: Some(line),
        }
    }

    #[test]
    fn parses_leaksanitizer_form_with_comments() {
        let (s, errors) = Suppressions::parse(
            "# header\n\nleak:my_crate::cache::*\n  leak:src/ffi.rs:42  # trailing\nplain::name\n",
        );
        assert!(errors.is_empty());
        assert_eq!(s.patterns.len(), 3);
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let (s, errors) = Suppressions::parse("leak:ok\nrace:foo\nleak:\n");
        assert_eq!(s.patterns.len(), 1);
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].line, 2);
        assert!(
            errors[0]
                .to_string()
                .contains("unknown suppression type `race:`")
        );
        assert_eq!(errors[1].line, 3);
        assert!(errors[1].to_string().contains("empty pattern"));
    }

    #[test]
    fn matches_function_file_and_file_line_anywhere_in_the_stack() {
        let frames = [
            frame("app::make", "src/lib.rs", 10),
            frame("app::ffi::wrap", "/home/u/app/src/ffi.rs", 42),
        ];
        let m = |text: &str| Suppressions::parse(text).0.matches(&frames, false);
        assert!(m("leak:app::ffi::*"));
        assert!(m("leak:ffi::wrap"), "substring match without anchors");
        assert!(m("leak:src/ffi.rs:42"));
        assert!(m("leak:*/ffi.rs"));
        assert!(!m("leak:^ffi::wrap"), "anchored at the start");
        assert!(m("leak:^app::make$"));
        assert!(!m("leak:src/ffi.rs:43"));
        assert!(!m("leak:other::thing"));
        assert!(m("leak:app::m?ke"));
        // Unanchored, `file:line` also matches longer line numbers.
        let at_420 = [frame("app::ffi::wrap", "/home/u/app/src/ffi.rs", 420)];
        let m420 = |text: &str| Suppressions::parse(text).0.matches(&at_420, false);
        assert!(m420("leak:src/ffi.rs:42"));
        assert!(!m420("leak:src/ffi.rs:42$"));
        assert!(m("leak:src/ffi.rs:42$"));
    }

    #[test]
    fn runtime_stacks_are_suppressed_by_the_builtin_rule_only() {
        let (s, _) = Suppressions::parse("");
        assert!(s.matches(&[], true));
        assert!(!s.matches(&[], false));
        let off = Suppressions {
            builtin: false,
            ..s
        };
        assert!(!off.matches(&[], true));
    }

    #[test]
    fn a_path_matches_an_inlined_frame_known_by_its_short_name() {
        let (s, errors) = Suppressions::parse("leak:my_crate::cache::fill\nleak:other::*\n");
        assert!(errors.is_empty());
        // Release builds name inlined frames by their short name.
        assert!(s.matches(&[frame("fill", "src/cache.rs", 3)], false));
        assert!(s.matches(&[frame("fill<u8>", "src/cache.rs", 3)], false));
        // A qualified name must match the whole path, as before.
        assert!(!s.matches(&[frame("elsewhere::fill", "src/x.rs", 3)], false));
        assert!(!s.matches(&[frame("fill_more", "src/cache.rs", 3)], false));
        // A wildcard last segment never matches by short name.
        assert!(!s.matches(&[frame("anything", "src/y.rs", 1)], false));
    }

    #[test]
    fn glob_basics() {
        assert!(glob(b"a*c", b"abbbc"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"a?c", b"ac"));
        assert!(glob(b"a?c", b"abc"));
    }
}
