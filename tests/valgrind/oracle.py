#!/usr/bin/env python3
"""Valgrind stand-in for a tracked `scenarios` run: checks the tests themselves.

Used as the scenarios binary of the end-to-end tests, it makes Valgrind's
memcheck play memwarden's part, so the expectations in tests/leaks.rs and
tests/env.rs can be checked against the ground truth without memwarden's
tracking code:

    MEMWARDEN_SCENARIOS_BIN=tests/valgrind/oracle.py \
    MEMWARDEN_ORACLE_BIN=target/debug/examples/scenarios \
        cargo test --test leaks --test env

Untracked runs (no DEBUG_MEMORY=1, no `flag --debug-memory`) exec the real
binary. Tracked runs execute it under `valgrind --leak-check=full`. Either way
the real binary gets no DEBUG_MEMORY* variable and no `--debug-memory`
argument (its memwarden is then a pass-through); tracked runs turn
memcheck's loss records into the contract's JSON report, text report and exit
status. Only blocks that went through the global allocator (`__rust_alloc`,
`__rust_realloc`, ...) are kept: memwarden never sees the others (glibc's
pthread DTV, std's `Thread` handles, which use `System` directly).

It imitates the contract only as far as the tests look: it is not memwarden.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

REAL = os.environ.get("MEMWARDEN_ORACLE_BIN") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "debug", "examples", "scenarios"
)
KINDS = ["definitely_lost", "indirectly_lost", "possibly_lost", "still_reachable"]
RECORD = re.compile(
    r"^==\d+== ([\d,]+)(?: \(([\d,]+) direct, [\d,]+ indirect\))? bytes in ([\d,]+) blocks are "
    r"(definitely lost|indirectly lost|possibly lost|still reachable) in loss record"
)
FRAME = re.compile(r"^==\d+==    (?:at|by) 0x[0-9A-Fa-f]+: (.*?)(?: \((?:in [^()]*|([^()]*?):(\d+))\))?$")
TOTAL = re.compile(r"total heap usage: ([\d,]+) allocs, [\d,]+ frees, ([\d,]+) bytes allocated")
# The global allocator's shim: `__rustc::__rust_alloc` in debug builds,
# `__rust_alloc` as an inlined frame in release builds.
ALLOCATOR_ENTRY = re.compile(r"^(__rustc::)?__rust_(alloc|realloc|alloc_zeroed)$")


def say(line):
    sys.stderr.write("memwarden: " + line + "\n")


def shim_line():
    """The `static GLOBAL` line: the allocator shim's frames have it."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers", "scenarios.rs")
    with open(src) as f:
        for n, line in enumerate(f, 1):
            if line.startswith("static GLOBAL"):
                return n
    return None


SHIM_LINE = shim_line()


def internal(function, file, line=None):
    """Frames of memwarden, alloc, core, std, libc and Valgrind itself."""
    if file and file.endswith("scenarios.rs") and line == SHIM_LINE:
        return True
    if function.startswith(("__rustc::", "__rust_", "malloc", "calloc", "realloc", "memwarden::", "<memwarden::")):
        return True
    if file is None:
        return True
    # std's own dependencies (hashbrown, ...) are std internals too: their
    # debug paths are /rust/deps/<crate>-<version>/...
    std = "library/" in file or file.startswith(("/rustc/", "/rust/deps/"))
    return std or "vgpreload" in file or "/src/warden.rs" in file


def parse(log):
    records, total = [], (0, 0)
    current = None
    for line in log.splitlines():
        m = TOTAL.search(line)
        if m:
            total = tuple(int(x.replace(",", "")) for x in m.groups())
        m = RECORD.match(line)
        if m:
            direct = m.group(2) or m.group(1)
            current = {
                "kind": m.group(4).replace(" ", "_"),
                "bytes": int(direct.replace(",", "")),
                "blocks": int(m.group(3).replace(",", "")),
                "raw": [],
            }
            records.append(current)
            continue
        m = FRAME.match(line) if current else None
        if m:
            current["raw"].append((m.group(1), m.group(2), int(m.group(3)) if m.group(3) else None))
        elif current and re.match(r"^==\d+== *$", line):
            current = None
    kept = []
    for r in records:
        # Went through the global allocator: the shim is named, or (inlined in
        # release builds) shows as a frame at the `static GLOBAL` line.
        if not any(
            ALLOCATOR_ENTRY.match(f) or (file or "").endswith("scenarios.rs") and ln == SHIM_LINE
            for f, file, ln in r["raw"]
        ):
            continue
        user = [(f, file, ln) for f, file, ln in r["raw"] if not internal(f, file, ln)]
        r["frames"] = [{"function": f, "file": file, "line": ln} for f, file, ln in user]
        del r["raw"]
        kept.append(r)
    return kept, total


def main():
    args = sys.argv[1:]
    env = dict(os.environ)
    dm = env.get("DEBUG_MEMORY")
    if dm is not None:
        dm = dm.strip().lower()
    if dm not in (None, "", "0", "1", "leaks"):
        say("ignoring DEBUG_MEMORY=%r: expected 0, 1 or leaks; tracking stays off" % dm)
        dm = None
    flags = ("--debug-memory", "--debug-memory=leaks")
    flagged = args[:1] == ["flag"] and any(a in flags for a in args)
    tracked = dm in ("1", "leaks") or flagged
    leaks_only = dm == "leaks" or (args[:1] == ["flag"] and "--debug-memory=leaks" in args)
    # The real binary never sees a DEBUG_MEMORY* variable or --debug-memory:
    # its memwarden stays a pass-through (the oracle answers in its place).
    child_env = {k: v for k, v in env.items() if not k.startswith("DEBUG_MEMORY")}
    child_args = [a for a in args if a not in flags]
    if not tracked:
        os.execve(REAL, [REAL] + child_args, child_env)
    frames = env.get("DEBUG_MEMORY_FRAMES")
    max_frames = 16
    if frames is not None:
        try:
            max_frames = int(frames)
        except ValueError:
            say("ignoring DEBUG_MEMORY_FRAMES=%r: not a number; using 16" % frames)
    exitcode = 23
    if "DEBUG_MEMORY_EXITCODE" in env:
        try:
            exitcode = int(env["DEBUG_MEMORY_EXITCODE"])
        except ValueError:
            say("ignoring DEBUG_MEMORY_EXITCODE=%r: not a number; using 23" % env["DEBUG_MEMORY_EXITCODE"])
    report_path = env.get("DEBUG_MEMORY_REPORT")
    with tempfile.NamedTemporaryFile(prefix="memwarden-oracle-", suffix=".log") as log:
        proc = subprocess.run(
            ["valgrind", "--leak-check=full", "--show-leak-kinds=all", "--num-callers=40",
             "--fullpath-after=", "--log-file=" + log.name, REAL] + child_args,
            env=child_env, stdout=sys.stdout, stderr=subprocess.DEVNULL,
        )
        text = open(log.name).read()
    leaks, (allocs, total_bytes) = parse(text)
    for leak in leaks:
        leak["frames"] = leak["frames"][:max_frames]
    leaks.sort(key=lambda r: -r["bytes"])
    summary = {k: {"bytes": 0, "blocks": 0} for k in KINDS + ["suppressed"]}
    for leak in leaks:
        summary[leak["kind"]]["bytes"] += leak["bytes"]
        summary[leak["kind"]]["blocks"] += leak["blocks"]
    summary.update(total_allocs=allocs, total_bytes=total_bytes, peak_bytes=total_bytes)
    report = {"version": 1, "summary": summary, "leaks": leaks, "errors": []}

    status = proc.returncode
    failed_write = False
    if report_path:
        try:
            with open(report_path, "w") as f:
                json.dump(report, f, indent=2)
        except OSError as e:
            say("cannot write the report to %s: %s" % (report_path, e.strerror))
            failed_write = True
    if not report_path or failed_write:
        for leak in leaks:
            say("%d bytes in %d blocks are %s" % (leak["bytes"], leak["blocks"], leak["kind"].replace("_", " ")))
            for fr in leak["frames"]:
                file = (fr["file"] or "?").split("/")[-1]
                say("    at %s (%s:%s)" % (fr["function"], file, fr["line"]))
    for kind in KINDS:
        say("%s: %d bytes in %d blocks" % (kind.replace("_", " "), summary[kind]["bytes"], summary[kind]["blocks"]))
    if leaks_only:
        # memwarden's note on the checks it left out (tests look for it).
        off = []
        if env.get("DEBUG_MEMORY_REDZONES", "").strip() not in ("1", "true", "yes", "on"):
            off.append("overruns (DEBUG_MEMORY_REDZONES=1)")
        off.append("use after free (DEBUG_MEMORY_POISON=1 DEBUG_MEMORY_QUARANTINE=2M)")
        say("note: leak tracking only (DEBUG_MEMORY=leaks or --debug-memory=leaks); not checked: " + ", ".join(off))
    if summary["definitely_lost"]["blocks"] and exitcode != 0:
        status = exitcode
    if failed_write and status == 0:
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
