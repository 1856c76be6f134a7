//! The text report printed to stderr, in the spirit of Valgrind's: every
//! line starts with `memwarden: `.
use std::fmt::{self, Write};

use super::{Amount, LeakKind, Report};

const P: &str = "memwarden: ";

fn amount(a: Amount) -> String {
    format!(
        "{} bytes in {} block{}",
        a.bytes,
        a.blocks,
        if a.blocks == 1 { "" } else { "s" }
    )
}

pub(super) fn render(r: &Report, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for e in &r.errors {
        writeln!(f, "{P}heap error: {} at {}", kind_words(e.kind), e.address)?;
        for (i, fr) in e.frames.iter().enumerate() {
            writeln!(f, "{P}   {} {fr}", if i == 0 { "at" } else { "by" })?;
        }
    }
    let shown: Vec<_> = r
        .leaks
        .iter()
        .filter(|l| l.kind != LeakKind::StillReachable)
        .collect();
    for (i, l) in shown.iter().enumerate() {
        let mut head = String::new();
        let _ = write!(
            head,
            "{}",
            amount(Amount {
                bytes: l.bytes,
                blocks: l.blocks
            })
        );
        if l.indirect_bytes > 0 {
            let _ = write!(head, " (and {} bytes indirectly)", l.indirect_bytes);
        }
        writeln!(
            f,
            "{P}{head} {} {} (leak {} of {})",
            if l.blocks == 1 { "is" } else { "are" },
            l.kind.words(),
            i + 1,
            shown.len()
        )?;
        if l.frames.is_empty() {
            writeln!(
                f,
                "{P}   (no stack recorded: DEBUG_MEMORY_FRAMES=0, or allocated where none could be taken)"
            )?;
        }
        for (j, fr) in l.frames.iter().enumerate() {
            // Like Rust's short backtraces: stop where the runtime calls main.
            if j > 0
                && fr
                    .function
                    .as_deref()
                    .is_some_and(|n| n.contains("__rust_begin_short_backtrace"))
            {
                break;
            }
            writeln!(f, "{P}   {} {fr}", if j == 0 { "at" } else { "by" })?;
        }
        writeln!(f, "{P}")?;
    }
    if !r.outstanding.is_empty() {
        writeln!(f, "{P}still taken or held ({}):", r.outstanding.len())?;
        for o in &r.outstanding {
            for line in o.to_string().lines() {
                writeln!(f, "{P}   {line}")?;
            }
        }
        writeln!(f, "{P}")?;
    }
    let s = &r.summary;
    writeln!(f, "{P}LEAK SUMMARY:")?;
    writeln!(f, "{P}   definitely lost: {}", amount(s.definitely_lost))?;
    writeln!(f, "{P}   indirectly lost: {}", amount(s.indirectly_lost))?;
    writeln!(f, "{P}     possibly lost: {}", amount(s.possibly_lost))?;
    writeln!(f, "{P}   still reachable: {}", amount(s.still_reachable))?;
    writeln!(f, "{P}        suppressed: {}", amount(s.suppressed))?;
    writeln!(
        f,
        "{P}total heap usage: {} allocs, {} bytes allocated, {} bytes at peak",
        s.total_allocs, s.total_bytes, s.peak_bytes
    )?;
    if s.still_reachable.blocks > 0 {
        writeln!(
            f,
            "{P}(still reachable blocks are listed in the JSON report: DEBUG_MEMORY_REPORT=path)"
        )?;
    }
    Ok(())
}

fn kind_words(k: super::HeapErrorKind) -> &'static str {
    use super::HeapErrorKind::*;
    match k {
        DoubleFree => "double free",
        InvalidFree => "invalid free",
        LayoutMismatch => "layout mismatch",
        Overrun => "overrun",
        UseAfterFree => "use after free",
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn every_line_is_prefixed_and_names_file_and_line() {
        let r = Report {
            version: 1,
            summary: Summary {
                definitely_lost: Amount {
                    bytes: 64,
                    blocks: 1,
                },
                ..Summary::default()
            },
            leaks: vec![Leak {
                kind: LeakKind::DefinitelyLost,
                bytes: 64,
                blocks: 1,
                indirect_bytes: 32,
                frames: vec![Frame {
                    function: Some("leaky::make_buffer".into()),
                    file: Some("examples/leaky.rs".into()),
                    line: Some(12),
                }],
            }],
            errors: vec![],
            outstanding: vec![],
        };
        let text = r.to_string();
        assert!(text.lines().all(|l| l.starts_with("memwarden: ")), "{text}");
        assert!(
            text.contains(
                "64 bytes in 1 block (and 32 bytes indirectly) is definitely lost (leak 1 of 1)"
            ),
            "{text}"
        );
        assert!(
            text.contains("at leaky::make_buffer (examples/leaky.rs:12)"),
            "{text}"
        );
        assert!(
            text.contains("definitely lost: 64 bytes in 1 block\n"),
            "{text}"
        );
    }
}
