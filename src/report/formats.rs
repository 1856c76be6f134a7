//! The report in other tools' formats: GitHub workflow annotations, a
//! DHAT file for the DHAT viewer (`dh_view.html`), and folded stacks for
//! flamegraph tools.
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Frame, LeakKind, Report};

/// `::error` workflow commands, one per definitely lost entry with a source
/// line, so that leaks show on the diff in GitHub Actions. Paths under
/// `root` (the checkout, `GITHUB_WORKSPACE`) are made relative to it.
pub(crate) fn github(report: &Report, root: Option<&str>) -> String {
    let mut out = String::new();
    for l in report.leaks_of(LeakKind::DefinitelyLost) {
        let Some(f) = l.frames.first() else { continue };
        let (Some(file), Some(line)) = (&f.file, f.line) else {
            continue;
        };
        let file = relative(file, root);
        let what = format!(
            "{} bytes in {} block{} definitely lost{}, allocated in {}",
            l.bytes,
            l.blocks,
            if l.blocks == 1 { "" } else { "s" },
            if l.indirect_bytes > 0 {
                format!(" (and {} bytes indirectly)", l.indirect_bytes)
            } else {
                String::new()
            },
            f.function.as_deref().unwrap_or("???"),
        );
        let _ = writeln!(
            out,
            "::error file={},line={line},title=memwarden: memory leak::{}",
            escape_property(file),
            escape_data(&what)
        );
    }
    for e in &report.errors {
        let Some(f) = e.frames.first() else { continue };
        let (Some(file), Some(line)) = (&f.file, f.line) else {
            continue;
        };
        let file = relative(file, root);
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "::error file={},line={line},title=memwarden: heap error::{}",
            escape_property(file),
            escape_data(&format!("{} at {}", kind.replace('_', " "), e.address))
        );
    }
    out
}

/// `file` relative to `root` when it lies under it.
fn relative<'a>(file: &'a str, root: Option<&str>) -> &'a str {
    root.and_then(|r| file.strip_prefix(r))
        .map(|p| p.trim_start_matches('/'))
        .unwrap_or(file)
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn frame_text(f: &Frame) -> String {
    f.to_string()
}

/// Folded stacks (`outermost;...;innermost bytes`), one line per entry,
/// each rooted at its leak kind, weighted by live bytes: the input of
/// `inferno-flamegraph` and `flamegraph.pl`.
pub(crate) fn folded(report: &Report) -> String {
    let mut out = String::new();
    for l in &report.leaks {
        let mut parts = vec![l.kind.as_str().to_owned()];
        parts.extend(
            l.frames
                .iter()
                .rev()
                .map(|f| frame_text(f).replace(';', ":")),
        );
        let _ = writeln!(out, "{} {}", parts.join(";"), l.bytes);
    }
    out
}

/// A DHAT file (format version 2, as Valgrind's `dh_main.c` documents it)
/// with one program point per report entry: its live bytes and blocks at
/// exit, and its allocation stack (innermost first), the kind as the
/// outermost frame. No block lifetimes or accesses are recorded.
pub(crate) fn dhat(report: &Report, cmd: &str, pid: u32, elapsed_us: u64) -> String {
    let mut ftbl: Vec<String> = vec!["[root]".to_owned()];
    let mut index = std::collections::HashMap::new();
    let mut id = |s: String, ftbl: &mut Vec<String>| -> usize {
        *index.entry(s.clone()).or_insert_with(|| {
            ftbl.push(s);
            ftbl.len() - 1
        })
    };
    let mut pps = Vec::new();
    for l in &report.leaks {
        let mut fs: Vec<usize> = l
            .frames
            .iter()
            .map(|f| id(frame_text(f), &mut ftbl))
            .collect();
        fs.push(id(format!("[memwarden: {}]", l.kind.words()), &mut ftbl));
        pps.push(json!({ "tb": l.bytes, "tbk": l.blocks, "fs": fs }));
    }
    let doc: Value = json!({
        "dhatFileVersion": 2,
        "mode": "rust-heap",
        "verb": "Allocated",
        "bklt": false,
        "bkacc": false,
        "tu": "µs",
        "Mtu": "s",
        "cmd": cmd,
        "pid": pid,
        "te": elapsed_us,
        "pps": pps,
        "ftbl": ftbl,
    });
    serde_json::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    fn sample() -> Report {
        let frame = |f: &str, file: &str, line| Frame {
            function: Some(f.into()),
            file: Some(file.into()),
            line: Some(line),
        };
        Report {
            version: 1,
            summary: Summary::default(),
            leaks: vec![
                Leak {
                    kind: LeakKind::DefinitelyLost,
                    bytes: 64,
                    blocks: 2,
                    indirect_bytes: 8,
                    frames: vec![
                        frame("app::leak", "/ci/work/src/lib.rs", 12),
                        frame("app::main", "/ci/work/src/main.rs", 3),
                    ],
                },
                Leak {
                    kind: LeakKind::StillReachable,
                    bytes: 100,
                    blocks: 1,
                    indirect_bytes: 0,
                    frames: vec![frame("app::cache", "/ci/work/src/lib.rs", 40)],
                },
            ],
            errors: vec![],
            outstanding: vec![],
        }
    }

    #[test]
    fn github_annotates_definite_leaks_relative_to_the_workspace() {
        let out = github(&sample(), Some("/ci/work"));
        assert_eq!(
            out,
            "::error file=src/lib.rs,line=12,title=memwarden: memory leak::64 bytes in 2 blocks definitely lost (and 8 bytes indirectly), allocated in app::leak\n"
        );
    }

    #[test]
    fn folded_lines_are_rooted_at_the_kind_outermost_first() {
        let out = folded(&sample());
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(
            lines[0],
            "definitely_lost;app::main (/ci/work/src/main.rs:3);app::leak (/ci/work/src/lib.rs:12) 64"
        );
        assert!(lines[1].ends_with(" 100"));
    }

    #[test]
    fn dhat_has_every_mandatory_field_of_version_2() {
        let v: Value = serde_json::from_str(&dhat(&sample(), "app --x", 42, 1000)).unwrap();
        assert_eq!(v["dhatFileVersion"], 2);
        for k in ["mode", "verb", "tu", "Mtu", "cmd"] {
            assert!(v[k].is_string(), "{k}");
        }
        assert_eq!(v["bklt"], false);
        assert_eq!(v["bkacc"], false);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["te"], 1000);
        let ftbl = v["ftbl"].as_array().unwrap();
        assert_eq!(ftbl[0], "[root]");
        let pps = v["pps"].as_array().unwrap();
        assert_eq!(pps.len(), 2);
        assert_eq!(pps[0]["tb"], 64);
        assert_eq!(pps[0]["tbk"], 2);
        let fs: Vec<usize> = pps[0]["fs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as usize)
            .collect();
        assert!(fs.iter().all(|&i| i > 0 && i < ftbl.len()));
        assert_eq!(ftbl[fs[0]], "app::leak (/ci/work/src/lib.rs:12)");
    }
}
