#!/usr/bin/env bash
# Reruns the Valgrind ground truth for the leak scenarios in
# tests/helpers/scenarios.rs and checks it against the table in
# tests/valgrind/README.md (kept in EXPECTED below).
#
# Each scenario runs WITHOUT DEBUG_MEMORY, so memwarden is a pass-through and
# Valgrind's memcheck sees every block. For every loss record the script
# prints kind, bytes, blocks and the first frame in scenarios.rs that is not
# the allocator shim (`__rustc::__rust_alloc`, whose debug line is the
# `#[global_allocator]` line); records at a `// SITE: <tag>` line are named
# by their tag. Every SITE record must match EXPECTED, every EXPECTED row must
# be seen, and no other record may be definitely or indirectly lost.
#
# Usage: tests/valgrind/compare.sh [SCENARIO...]
#   VALGRIND_LOGS=DIR   where the memcheck logs go (default target/valgrind)
#   CARGO_PROFILE=NAME  cargo profile to build (default dev)
# Exit status: 0 when everything matches, 1 otherwise, 2 on a setup problem.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
src=tests/helpers/scenarios.rs
logs="${VALGRIND_LOGS:-target/valgrind}"
profile="${CARGO_PROFILE:-dev}"
profile_dir=$([ "$profile" = dev ] && echo debug || echo "$profile")

command -v valgrind >/dev/null || { echo "compare.sh: valgrind not found" >&2; exit 2; }

# scenario (args) | SITE tag | kind | bytes | blocks
EXPECTED='
box_leak|box_leak|definitely_lost|64|1
forget_vec|forget_vec|definitely_lost|100|1
rc_cycle|rc_cycle_a|definitely_lost|48|1
rc_cycle|rc_cycle_b|indirectly_lost|48|1
box_tree|box_tree_parent|definitely_lost|48|1
box_tree|box_tree_child|indirectly_lost|24|1
thread_leak|thread_leak|definitely_lost|48|1
loop_leak|loop_leak|definitely_lost|320|10
vec_grow|vec_grow|definitely_lost|4096|1
realloc_leak|realloc_leak|definitely_lost|1024|1
static_lazy|static_oncelock|still_reachable|128|1
static_lazy|static_lazylock_vec|still_reachable|96|1
static_lazy|static_lazylock_string|still_reachable|64|4
exit_with_locals|exit_with_locals|still_reachable|200|1
running_thread|running_thread|still_reachable|40|1
interior_pointer|interior_pointer|possibly_lost|64|1
tls_held|tls_held|still_reachable|56|1
flag|flag|definitely_lost|24|1
exit_status 7|exit_status|definitely_lost|16|1
arc_cycle_threads|arc_cycle_main|definitely_lost|40|1
arc_cycle_threads|arc_cycle_thread|indirectly_lost|40|1
nested_string|nested_outer|definitely_lost|72|1
nested_string|nested_inner|indirectly_lost|96|3
dyn_box|dyn_box|definitely_lost|40|1
static_hashmap|static_hashmap|possibly_lost|288|1
map_grown|map_grown|definitely_lost|560|1
'
# Scenarios with no SITE record (they must have no lost block at all).
CLEAN='clean clean_threads churn_threads clean_exit_7'
# Program exit status expected under Valgrind (default 0).
declare -A STATUS=([exit_status 7]=7 [clean_exit 7]=7)

# Parses a memcheck log: one line per loss record,
#   KIND|BYTES|BLOCKS|FILE:LINE|FUNCTION|VIA
# BYTES are the record's own (direct) bytes. FILE:LINE and FUNCTION are of the
# first frame in scenarios.rs that is not the allocator shim (named
# `__rustc::__rust_alloc` in debug builds, `__rust_alloc` or nothing when
# inlined in release builds; its line is always the `static GLOBAL` line),
# or "-". VIA tells whether the block went through the global
# allocator (which memwarden sees) or came from `System`/libc directly.
parse_log() {
    awk '
    function flush() {
        if (kind != "") print kind "|" bytes "|" blocks "|" site "|" fn "|" via
        kind = ""
    }
    / are (definitely lost|indirectly lost|possibly lost|still reachable) in loss record/ {
        flush()
        line = $0
        sub(/^==[0-9]+== /, "", line)
        gsub(/,/, "", line)
        n = split(line, w, " ")
        bytes = w[1]; blocks = ""
        for (i = 1; i <= n; i++) {
            if (w[i] == "blocks" || w[i] == "block") blocks = w[i - 1]
            if (w[i] ~ /^\(/) bytes = substr(w[i], 2)   # "T (D direct, I indirect) bytes"
        }
        match(line, /are (definitely lost|indirectly lost|possibly lost|still reachable)/)
        kind = substr(line, RSTART + 4, RLENGTH - 4); gsub(/ /, "_", kind)
        site = "-"; fn = "-"; via = "System/libc"
        next
    }
    kind != "" && /^==[0-9]+==    (at|by) 0x/ {
        line = $0
        sub(/^==[0-9]+==    (at|by) 0x[0-9A-Fa-f]+: /, "", line)
        f = line; sub(/ \(.*$/, "", f)
        loc = ""
        if (match(line, /\([^()]*:[0-9]+\)$/)) loc = substr(line, RSTART + 1, RLENGTH - 2)
        shim = f ~ /^(__rustc::)?__rust_(alloc|realloc|alloc_zeroed)$/ || loc ~ ("(^|/)scenarios\\.rs:" shim_line "$")
        if (shim) via = "global allocator"
        if (site == "-" && loc ~ /(^|\/)scenarios\.rs:[0-9]+$/ && !shim) { site = loc; fn = f }
        next
    }
    /^==[0-9]+== *$/ || /LEAK SUMMARY/ { flush() }
    END { flush() }
    ' shim_line="$(grep -n '^static GLOBAL' "$src" | cut -d: -f1)" "$1"
}

# tag of the SITE at line N of scenarios.rs, or empty.
site_tag() {
    sed -n "${1}p" "$src" | sed -n 's|.*// SITE: \([A-Za-z0-9_]*\)[[:space:]]*$|\1|p'
}

echo "building: cargo build --profile $profile --example scenarios" >&2
cargo build --quiet --profile "$profile" --example scenarios
bin="target/$profile_dir/examples/scenarios"
mkdir -p "$logs"

if [ $# -gt 0 ]; then
    scenarios=("$@")
else
    mapfile -t scenarios < <(printf '%s\n' "$EXPECTED" | cut -d'|' -f1 | sed '/^$/d' | awk '!seen[$0]++')
    for c in $CLEAN; do scenarios+=("${c//_7/ 7}"); done
fi

fail=0
printf '%-18s %-24s %-16s %6s %6s  %s\n' scenario site kind bytes blocks 'scenarios.rs:line (function)'
for scenario in "${scenarios[@]}"; do
    log="$logs/${scenario// /_}.log"
    set +e
    # shellcheck disable=SC2086 # $scenario may carry an argument
    env -u DEBUG_MEMORY -u DEBUG_MEMORY_REPORT -u DEBUG_MEMORY_EXITCODE -u DEBUG_MEMORY_FRAMES \
        -u DEBUG_MEMORY_SUPPRESS valgrind --leak-check=full --show-leak-kinds=all --num-callers=20 \
        --log-file="$log" "$bin" $scenario >/dev/null 2>"$log.stderr"
    status=$?
    set -e
    want_status="${STATUS[$scenario]:-0}"
    if [ "$status" != "$want_status" ]; then
        echo "MISMATCH $scenario: exit status $status, expected $want_status" >&2
        fail=1
    fi
    seen=""
    while IFS='|' read -r kind bytes blocks loc fn via; do
        tag=""
        if [ "$loc" != "-" ]; then tag=$(site_tag "${loc##*:}"); fi
        if [ -n "$tag" ]; then
            printf '%-18s %-24s %-16s %6s %6s  %s (%s)\n' "$scenario" "$tag" "$kind" "$bytes" "$blocks" "$loc" "$fn"
            row="$scenario|$tag|$kind|$bytes|$blocks"
            if ! grep -qxF "$row" <<<"$EXPECTED"; then
                echo "MISMATCH $scenario: got $row, not in the expected table" >&2
                fail=1
            fi
            seen+="$row"$'\n'
        else
            printf '%-18s %-24s %-16s %6s %6s  %s (%s) [runtime, via %s]\n' "$scenario" "-" "$kind" "$bytes" "$blocks" "$loc" "$fn" "$via"
            case "$kind" in
            definitely_lost | indirectly_lost)
                echo "MISMATCH $scenario: unexpected $kind record ($bytes bytes) at $loc" >&2
                fail=1
                ;;
            esac
        fi
    done < <(parse_log "$log")
    while IFS= read -r row; do
        [ -z "$row" ] && continue
        [ "${row%%|*}" = "$scenario" ] || continue
        if ! grep -qxF "$row" <<<"$seen"; then
            echo "MISMATCH $scenario: expected $row, Valgrind did not report it" >&2
            fail=1
        fi
    done <<<"$EXPECTED"
done

if [ "$fail" = 0 ]; then
    echo "compare.sh: Valgrind agrees with the expected table (logs in $logs)"
else
    echo "compare.sh: MISMATCHES (logs in $logs)" >&2
fi
exit "$fail"
