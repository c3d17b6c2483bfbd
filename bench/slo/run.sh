#!/usr/bin/env bash
# Benchmark: `guard slo generate` on a spec of N SLOs (default 1000), the
# release binary, wall time and peak memory, next to the goal (under 1 s).
#
# The spec is generated here: N SLOs of one service in one prometheus/v1
# document, alternating events and raw SLIs, every SLO with page and ticket
# alerts and labels (the full Sloth output: 17 rules per SLO). Each round runs
# the real binary under /usr/bin/time (peak RSS) and is timed in nanoseconds
# around it (wall). Also runs N/10 SLOs to show how the cost scales.
#
# Usage: bench/slo/run.sh [-n SLOS] [-r ROUNDS]
# Needs: cargo, python3, /usr/bin/time (Debian package `time`), promtool
# (optional: checks the 1000-SLO output is a valid rules file).
set -euo pipefail
cd "$(dirname "$0")/../.."

n=1000
rounds=5
while getopts "n:r:" opt; do
  case $opt in
    n) n=$OPTARG ;;
    r) rounds=$OPTARG ;;
    *) echo "usage: $0 [-n SLOS] [-r ROUNDS]" >&2; exit 2 ;;
  esac
done
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }

echo "== building the release guard binary" >&2
cargo build --release --quiet -p guard --bin guard
guard=target/release/guard

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A spec of $1 SLOs.
make_spec() {
  python3 - "$1" <<'PY'
import sys
n = int(sys.argv[1])
print('version: "prometheus/v1"')
print('service: "bench-svc"')
print('labels: {owner: "bench", tier: "1"}')
print("slos:")
for i in range(n):
    print(f'  - name: "slo-{i:05d}"')
    print(f'    objective: {[99.9, 99.5, 99.99, 95][i % 4]}')
    print(f'    description: "benchmark SLO {i}"')
    print(f'    labels: {{shard: "s{i % 16}"}}')
    print('    sli:')
    if i % 2 == 0:
        print('      events:')
        print(f'        error_query: sum(rate(http_requests_total{{job="app{i}",code=~"5.."}}[{{{{.window}}}}]))')
        print(f'        total_query: sum(rate(http_requests_total{{job="app{i}"}}[{{{{.window}}}}]))')
    else:
        print('      raw:')
        print('        error_ratio_query: |')
        print(f'          1 - avg(avg_over_time(up{{job="app{i}"}}[{{{{.window}}}}]))')
    print('    alerting:')
    print(f'      name: BenchAlert{i}')
    print('      labels: {category: bench}')
    print('      annotations: {summary: "benchmark alert"}')
    print('      page_alert: {labels: {severity: critical}}')
    print('      ticket_alert: {labels: {severity: warning}}')
PY
}

# Runs the generator $rounds times on $1; prints "best_ms median_ms peak_rss_kb".
measure() {
  local spec=$1 out=$2 times=() rss=0
  for _ in $(seq "$rounds"); do
    local t0 t1 kb
    t0=$(date +%s%N)
    /usr/bin/time -f '%M' -o "$work/rss" "$guard" slo generate -i "$spec" -o "$out" 2>"$work/stderr" \
      || { cat "$work/stderr" >&2; exit 1; }
    t1=$(date +%s%N)
    times+=("$(( (t1 - t0) / 1000 ))")
    kb=$(tail -n1 "$work/rss")
    [ "$kb" -gt "$rss" ] && rss=$kb
  done
  local sorted
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  local best median
  best=$(echo "$sorted" | head -n1)
  median=$(echo "$sorted" | sed -n "$(( (rounds + 1) / 2 ))p")
  echo "$best $median $rss"
}

small=$(( n / 10 ))
make_spec "$n" >"$work/spec.yml"
make_spec "$small" >"$work/small.yml"
read -r best med rss < <(measure "$work/spec.yml" "$work/out.yml")
read -r sbest _ srss < <(measure "$work/small.yml" "$work/small-out.yml")
rules=$(grep -cE '^  - (record|alert):' "$work/out.yml")
spec_kb=$(( $(stat -c %s "$work/spec.yml") / 1024 ))
out_kb=$(( $(stat -c %s "$work/out.yml") / 1024 ))

if command -v promtool >/dev/null; then
  promtool check rules "$work/out.yml" >/dev/null && valid="promtool check rules: OK" || valid="promtool check rules: FAILED"
else
  valid="promtool not installed: output not checked"
fi

awk -v n="$n" -v small="$small" -v rounds="$rounds" -v best="$best" -v med="$med" -v rss="$rss" \
    -v sbest="$sbest" -v srss="$srss" -v rules="$rules" -v spec_kb="$spec_kb" -v out_kb="$out_kb" \
    -v valid="$valid" 'BEGIN {
  printf "guard slo generate, release build, best of %d rounds (median in brackets)\n", rounds
  printf "  %5d SLOs: %8.1f ms [%8.1f ms]  peak RSS %6.1f MiB  (spec %d KiB -> %d rules, %d KiB)\n", n, best/1000, med/1000, rss/1024, spec_kb, rules, out_kb
  printf "  %5d SLOs: %8.1f ms                peak RSS %6.1f MiB\n", small, sbest/1000, srss/1024
  printf "  per SLO at %d: %.1f us; cost ratio %d/%d SLOs: %.1fx for %.0fx the SLOs\n", n, best/n, n, small, best/sbest, n/small
  printf "goal: %d SLOs in under 1000 ms -> %.1f ms = %.3f x the goal: %s\n", n, best/1000, best/1e6, (best < 1e6 ? "MET" : "MISSED")
  printf "%s\n", valid
}'
