#!/usr/bin/env bash
# `scripts/bench tracing-off`: the projector and relay benchmarks with tracing off, the normal
# build (instrumentation compiled in, no exporter configured) against the same code built with
# `--cfg telemetry_compiled_out` (instrumentation compiled out; measurement only, see
# telemetry::enabled), alternating builds run by run (A B A B A B). See bench/PROFILE.md,
# "tracing off".
#
#   ROUNDS=3                                          rounds; each runs A then B, replay then mandates
#   REPLAY_ARGS="--events 200000 --rounds 1 --no-rebuild"   `bench replay` options per run
#   MANDATES_ARGS="--changes 300 --rates 200 --open-seconds 5 --events 50000 --rounds 1"
#   NOTRACE_TARGET_DIR=<repo>/../target-notrace       the compiled-out build (deleted afterwards
#                                                     unless KEEP_NOTRACE=1)
#   OUT=target/bench-tracing-off                      every run's table (stdout), log (stderr), load
#   BUILD=0                                           run the binaries as built (both builds take
#                                                     ~30-50 min on a loaded 2-core machine)
#
# Both builds run with `--telemetry`, as the services' mains do: logs at the services' default
# filter (to the log files), the Prometheus recorder, no span exporter. Prints the summary:
# per build and metric the median and [min–max] over the rounds, the ratio of the medians
# (normal / compiled out), the paired ratios (each round's A over its B) and the spread of each
# build (max−min over median), the noise the ratio is judged against.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${ROUNDS:-3}"
REPLAY_ARGS="${REPLAY_ARGS:---events 200000 --rounds 1 --no-rebuild}"
MANDATES_ARGS="${MANDATES_ARGS:---changes 300 --rates 200 --open-seconds 5 --events 50000 --rounds 1}"
NOTRACE_TARGET_DIR="${NOTRACE_TARGET_DIR:-$(cd .. && pwd)/target-notrace}"
OUT="${OUT:-target/bench-tracing-off}"

scripts/infra up >/dev/null
eval "$(scripts/infra env)"
if [ "${BUILD:-1}" = 1 ]; then
    cargo build --release --quiet -p bench -p topics
    CARGO_TARGET_DIR="$NOTRACE_TARGET_DIR" RUSTFLAGS="--cfg telemetry_compiled_out" \
        cargo build --release --quiet -p bench -p topics
fi
target/release/topics apply >/dev/null
mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT"/*.log

declare -A BIN=([A]=target/release/bench [B]="$NOTRACE_TARGET_DIR/release/bench")
export RUST_LOG="${RUST_LOG:-info,sqlx=warn,rdkafka=warn}"
for round in $(seq 1 "$ROUNDS"); do
    for bench in replay mandates; do
        args=$REPLAY_ARGS
        [ "$bench" = mandates ] && args=$MANDATES_ARGS
        for build in A B; do
            run="$OUT/$bench-$round-$build"
            echo "$(date -u +%T) round $round $bench build $build: $(uptime | sed 's/.*load average: //')" | tee -a "$OUT/load.txt"
            # A failed run (its error is the last line of its log) is tried once more.
            for attempt in 1 2; do
                # shellcheck disable=SC2086
                "${BIN[$build]}" --telemetry "$bench" $args >"$run.txt" 2>"$run.log" && break
                echo "  attempt $attempt failed: $(grep -m1 '^Error' "$run.log")" | tee -a "$OUT/load.txt"
                [ "$attempt" = 2 ] && exit 1
            done
        done
    done
done
echo "$(date -u +%T) done: $(uptime | sed 's/.*load average: //')" | tee -a "$OUT/load.txt"
[ "${KEEP_NOTRACE:-0}" = 1 ] || rm -rf "$NOTRACE_TARGET_DIR"

# One line per run and metric: build, metric, value. Columns of the benches' own tables.
extract() {
    local build=$1 file
    for file in "$OUT"/replay-*-"$build".txt; do
        awk -F'|' -v b="$build" '
            $3 ~ /bare rdkafka/ && $2 ~ /[0-9]/ { print b, "replay bare events/s", $5+0 }
            $3 ~ /→ Redis/ && $2 ~ /[0-9]/ { print b, "replay Redis events/s", $5+0; print b, "replay Redis vs bare", $6+0; print b, "replay Redis CPU s", $7+0 }
            $3 ~ /→ MySQL/ && $2 ~ /[0-9]/ { print b, "replay MySQL events/s", $5+0; print b, "replay MySQL vs bare", $6+0; print b, "replay MySQL CPU s", $7+0 }
            /^\| events applied/ { rebuild = 1; next }
            rebuild && $2 ~ /[0-9]/ { print b, "rebuild events/s", $4+0; rebuild = 0 }
        ' "$file"
    done
    for file in "$OUT"/mandates-*-"$build".txt; do
        awk -F'|' -v b="$build" '
            $2 ~ /closed/ { print b, "closed changes/s", $6+0; print b, "closed visible p50 ms", $7+0; print b, "closed visible p99 ms", $8+0 }
            $2 ~ /open/ { split($10, a, "/"); split($11, k, "/")
                          print b, "open visible p50 ms", $7+0; print b, "open visible p99 ms", $8+0
                          print b, "open PUT answered p50 ms", a[1]+0; print b, "open in Kafka p50 ms", k[1]+0 }
            $3 ~ /IoT projector: decode/ && $2 ~ /[0-9]/ { print b, "mandates fold events/s", $5+0; print b, "mandates fold vs bare", $6+0 }
        ' "$file"
    done
}
{ extract A; extract B; } | awk '
    { metric = $2; for (i = 3; i < NF; i++) metric = metric " " $i
      if (!(metric in seen)) { seen[metric] = 1; order[++n] = metric }
      count[$1, metric]++; value[$1, metric, count[$1, metric]] = $NF }
    function sorted(b, m,   c, i, j, t) {
        c = count[b, m]
        for (i = 1; i <= c; i++) s[i] = value[b, m, i]
        for (i = 2; i <= c; i++) for (j = i; j > 1 && s[j-1] > s[j]; j--) { t = s[j]; s[j] = s[j-1]; s[j-1] = t }
        return c
    }
    function median(c) { return c % 2 ? s[(c+1)/2] : (s[c/2] + s[c/2+1]) / 2 }
    function f(v) { return v >= 100 ? sprintf("%.0f", v) : sprintf("%.3g", v) }
    END {
        print "| metric | A normal: median [min–max] | B compiled out: median [min–max] | A/B medians | A/B per round [min–max] | spread A / B |"
        print "|---|---|---|---|---|---|"
        for (k = 1; k <= n; k++) {
            m = order[k]
            ca = sorted("A", m); ma = median(ca); la = s[1]; ha = s[ca]
            cb = sorted("B", m); mb = median(cb); lb = s[1]; hb = s[cb]
            lo = ""; hi = ""
            for (r = 1; r <= ca && r <= cb; r++) if (value["B", m, r] != 0) {
                p = value["A", m, r] / value["B", m, r]
                if (lo == "" || p < lo) lo = p; if (hi == "" || p > hi) hi = p }
            printf "| %s | %s [%s–%s] | %s [%s–%s] | %s | %s | %s / %s |\n", m, f(ma), f(la), f(ha), f(mb), f(lb), f(hb),
                mb ? sprintf("%.3f", ma / mb) : "-", lo == "" ? "-" : sprintf("%.3f–%.3f", lo, hi),
                ma ? sprintf("%.0f %%", 100 * (ha - la) / ma) : "-", mb ? sprintf("%.0f %%", 100 * (hb - lb) / mb) : "-"
        }
    }' | tee "$OUT/summary.md"
