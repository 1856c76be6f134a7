//! The `tracing` feature, end to end: the tracing example's leak report and
//! heap statistics arrive as `tracing` events with target `memwarden`.
#![cfg(all(feature = "tracing", target_os = "linux"))]

mod common;

use common::{example_bin, run_bin};

const SRC: &str = include_str!("../examples/tracing.rs");

fn line_of(needle: &str) -> usize {
    SRC.lines()
        .position(|l| l.contains(needle))
        .expect("line in the example")
        + 1
}

#[test]
fn leaks_and_stats_are_tracing_events() {
    let bin = example_bin("tracing", &["tracing"]);
    let run = run_bin(&bin, &[], &[("DEBUG_MEMORY", "1")]);
    let out = format!("{}{}", run.stdout, run.stderr);
    let line = line_of("std::mem::forget(vec![1u32; 16])");
    let leak = out
        .lines()
        .find(|l| l.contains(" memwarden: memory leak") && l.contains(&format!("line={line}")))
        .unwrap_or_else(|| panic!("a leak event for line {line}\n{}", run.describe()));
    assert!(leak.contains("WARN"), "{leak}");
    assert!(leak.contains("kind=\"definitely_lost\""), "{leak}");
    assert!(
        leak.contains("bytes=64") && leak.contains("blocks=1"),
        "{leak}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(" memwarden: leak summary") && l.contains("definitely_lost=64")),
        "a summary event\n{}",
        run.describe()
    );
    assert!(
        out.lines()
            .any(|l| l.contains(" memwarden: heap stats") && l.contains("live_bytes=")),
        "periodic stats events\n{}",
        run.describe()
    );
    assert_eq!(run.code(), 23, "{}", run.describe());
}
