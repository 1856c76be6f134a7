//! The leak report: its model, how it is built from a scan, and its text
//! and JSON forms (JSON version 1 of the contract).
//!
//! The model, its text and its JSON exist with the `tracking` feature off
//! too (every report is then empty), so that code using the API builds
//! either way.
use std::fmt;

use serde::Serialize;

#[cfg(all(feature = "tracking", target_os = "linux"))]
mod build;
#[cfg(all(feature = "tracking", target_os = "linux"))]
pub(crate) mod formats;
#[cfg(all(feature = "tracking", target_os = "linux"))]
pub(crate) mod symbols;
mod text;

#[cfg(all(feature = "tracking", target_os = "linux"))]
pub(crate) use build::{Classified, Counters, build};

/// A leak report: what was still allocated, how it was reached, and where
/// it was allocated.
///
/// Its JSON form ([`Report::to_json`]) is version 1 of the schema in the
/// crate documentation; its `Display` form is the text printed at exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// Schema version, 1.
    pub version: u32,
    /// Totals per kind and heap counters.
    pub summary: Summary,
    /// One entry per (kind, allocation stack), largest first.
    pub leaks: Vec<Leak>,
    /// Heap misuse found while tracking.
    pub errors: Vec<HeapErrorReport>,
    /// Objects still taken from a `memwarden::pool` pool, and objects of
    /// tracked `Rc`/`Arc` pointers still alive, with who holds them (an
    /// addition to schema version 1; omitted when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outstanding: Vec<crate::pool::Outstanding>,
}

/// Totals of a [`Report`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// No pointer to these blocks anywhere.
    pub definitely_lost: Amount,
    /// Only reachable from definitely lost blocks.
    pub indirectly_lost: Amount,
    /// Only interior pointers to these blocks.
    pub possibly_lost: Amount,
    /// A pointer to the start of these blocks is held by a static, a
    /// thread-local or a live stack.
    pub still_reachable: Amount,
    /// Leaks matched by a suppression.
    pub suppressed: Amount,
    /// Tracked allocations (`alloc`, `alloc_zeroed` and `realloc` calls).
    pub total_allocs: u64,
    /// Bytes asked for by those allocations.
    pub total_bytes: u64,
    /// Most bytes live at once.
    pub peak_bytes: u64,
}

/// A number of bytes in a number of blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Amount {
    /// Bytes.
    pub bytes: u64,
    /// Blocks.
    pub blocks: u64,
}

impl fmt::Display for Amount {
    /// `64 bytes in 1 block`, `0 bytes in 0 blocks`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes in {} block{}",
            self.bytes,
            self.blocks,
            if self.blocks == 1 { "" } else { "s" }
        )
    }
}

impl Amount {
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    fn add(&mut self, bytes: u64, blocks: u64) {
        self.bytes += bytes;
        self.blocks += blocks;
    }
}

/// The leak kinds of Valgrind's memcheck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakKind {
    /// No pointer to the block anywhere.
    DefinitelyLost,
    /// Reachable only from lost blocks.
    IndirectlyLost,
    /// Only interior pointers to the block.
    PossiblyLost,
    /// A pointer to its start is still held.
    StillReachable,
}

impl LeakKind {
    /// The name used in reports: `definitely_lost`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            LeakKind::DefinitelyLost => "definitely_lost",
            LeakKind::IndirectlyLost => "indirectly_lost",
            LeakKind::PossiblyLost => "possibly_lost",
            LeakKind::StillReachable => "still_reachable",
        }
    }

    /// The words used in the text report: "definitely lost", ...
    pub fn words(self) -> &'static str {
        match self {
            LeakKind::DefinitelyLost => "definitely lost",
            LeakKind::IndirectlyLost => "indirectly lost",
            LeakKind::PossiblyLost => "possibly lost",
            LeakKind::StillReachable => "still reachable",
        }
    }
}

impl fmt::Display for LeakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Blocks of one kind allocated from one call stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Leak {
    /// How the blocks were (not) reached.
    pub kind: LeakKind,
    /// Their own bytes (what they keep alive is counted elsewhere).
    pub bytes: u64,
    /// How many blocks.
    pub blocks: u64,
    /// Bytes of the blocks these keep alive, only reachable through them
    /// (the `indirectly_lost` entries they own). Not part of schema
    /// version 1's required fields; omitted when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub indirect_bytes: u64,
    /// The allocation stack; `frames[0]` is the program's own line.
    pub frames: Vec<Frame>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One stack frame.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frame {
    /// Demangled function name, without hash.
    pub function: Option<String>,
    /// Source file, as the debug info has it.
    pub file: Option<String>,
    /// 1-based line.
    pub line: Option<u32>,
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.function.as_deref().unwrap_or("???"))?;
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, " ({file}:{line})"),
            (Some(file), None) => write!(f, " ({file})"),
            _ => Ok(()),
        }
    }
}

/// The kinds of heap misuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HeapErrorKind {
    /// A block freed twice.
    DoubleFree,
    /// A pointer freed that was never allocated.
    InvalidFree,
    /// A block freed or reallocated with another size or alignment.
    LayoutMismatch,
    /// Bytes written outside a block.
    Overrun,
    /// A freed block written to.
    UseAfterFree,
}

/// One heap misuse, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HeapErrorReport {
    /// What went wrong.
    pub kind: HeapErrorKind,
    /// The address involved, as `0x...`.
    pub address: String,
    /// Where it was found.
    pub frames: Vec<Frame>,
    /// Where the block was allocated (empty if unknown).
    pub alloc_frames: Vec<Frame>,
    /// Where the block was freed (empty if not freed).
    pub free_frames: Vec<Frame>,
}

impl Report {
    /// A report of nothing, with zero counters.
    pub(crate) fn empty() -> Report {
        Report {
            version: 1,
            summary: Summary::default(),
            leaks: Vec::new(),
            errors: Vec::new(),
            outstanding: Vec::new(),
        }
    }

    /// The JSON form, version 1.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"version\":1,\"error\":\"{e}\"}}"))
    }

    /// True if anything is definitely lost.
    pub fn has_definite_leaks(&self) -> bool {
        self.summary.definitely_lost.blocks > 0
    }

    /// The entries of one kind, largest first.
    pub fn leaks_of(&self, kind: LeakKind) -> impl Iterator<Item = &Leak> {
        self.leaks.iter().filter(move |l| l.kind == kind)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        text::render(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            version: 1,
            summary: Summary {
                definitely_lost: Amount {
                    bytes: 64,
                    blocks: 1,
                },
                total_allocs: 10,
                total_bytes: 1000,
                peak_bytes: 500,
                ..Summary::default()
            },
            leaks: vec![Leak {
                kind: LeakKind::DefinitelyLost,
                bytes: 64,
                blocks: 1,
                indirect_bytes: 0,
                frames: vec![Frame {
                    function: Some("leaky::make_buffer".into()),
                    file: Some("examples/leaky.rs".into()),
                    line: Some(12),
                }],
            }],
            errors: vec![],
            outstanding: vec![],
        }
    }

    #[test]
    fn json_has_the_contract_shape() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(v["version"], 1);
        for k in [
            "definitely_lost",
            "indirectly_lost",
            "possibly_lost",
            "still_reachable",
            "suppressed",
        ] {
            assert!(v["summary"][k]["bytes"].is_u64(), "{k}");
            assert!(v["summary"][k]["blocks"].is_u64(), "{k}");
        }
        assert_eq!(v["summary"]["total_allocs"], 10);
        assert_eq!(v["summary"]["peak_bytes"], 500);
        let leak = &v["leaks"][0];
        assert_eq!(leak["kind"], "definitely_lost");
        assert_eq!(leak["bytes"], 64);
        assert_eq!(leak["blocks"], 1);
        assert!(leak.get("indirect_bytes").is_none());
        assert_eq!(leak["frames"][0]["function"], "leaky::make_buffer");
        assert_eq!(leak["frames"][0]["file"], "examples/leaky.rs");
        assert_eq!(leak["frames"][0]["line"], 12);
        assert!(v["errors"].as_array().unwrap().is_empty());
    }

    #[test]
    fn unknown_frame_fields_are_null() {
        let mut r = sample();
        r.leaks[0].frames[0] = Frame {
            function: None,
            file: None,
            line: None,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert!(v["leaks"][0]["frames"][0]["file"].is_null());
        assert!(v["leaks"][0]["frames"][0]["line"].is_null());
    }

    #[test]
    fn heap_error_kinds_serialize_as_the_contract_names() {
        let names: Vec<String> = [
            HeapErrorKind::DoubleFree,
            HeapErrorKind::InvalidFree,
            HeapErrorKind::LayoutMismatch,
            HeapErrorKind::Overrun,
            HeapErrorKind::UseAfterFree,
        ]
        .iter()
        .map(|k| serde_json::to_string(k).unwrap())
        .collect();
        assert_eq!(
            names,
            [
                "\"double_free\"",
                "\"invalid_free\"",
                "\"layout_mismatch\"",
                "\"overrun\"",
                "\"use_after_free\""
            ]
        );
    }
}
