#!/usr/bin/env bash
# Benchmark of guard's router (the local platform's front door) against the
# same replica reached directly, in one run on loopback.
#
# crates/guard/examples/router_bench.rs starts ultra-boost replicas through the
# local platform and prints the router's and the replicas' addresses. wrk then
# loads, per round, the replica directly and the router (same replica behind
# it), back to back: throughput, p50 and p99 latency, and the router's CPU time
# per request. Reported: the best round per path (the machine is shared; every
# round is printed), throughput ratio router/direct and p99 added by the router,
# against the goals of issue 5: >= 70 % of direct throughput, < 1 ms added p99.
#
# The replicas are started as `guard demo` starts them, with
# `--unix-socket {unix_socket}`: the router reaches them over Unix sockets
# while wrk reaches "direct" over TCP. -T makes the router use TCP too.
#
# Usage: bench/router/run.sh [-d SECONDS] [-c CONNECTIONS] [-t WRK_THREADS] [-r ROUNDS] [-n REPLICAS] [-s] [-T]
# -s skips the release build and uses the binaries already in target/release.
# With -n 2 the router balances over 2 replicas while "direct" still hits one.
# Needs: cargo, wrk, curl (scripts/install-test-deps.sh installs wrk).
set -euo pipefail
cd "$(dirname "$0")/../.."

duration=10
connections=32
wrk_threads=1
rounds=3
replicas=1
skip_build=0
replica_args=("--arg=--unix-socket={unix_socket}")
hop="unix socket"
while getopts "d:c:t:r:n:sT" opt; do
  case $opt in
    d) duration=$OPTARG ;;
    c) connections=$OPTARG ;;
    t) wrk_threads=$OPTARG ;;
    r) rounds=$OPTARG ;;
    n) replicas=$OPTARG ;;
    s) skip_build=1 ;;
    T) replica_args=(); hop="TCP" ;;
    *) echo "usage: $0 [-d SECONDS] [-c CONNECTIONS] [-t WRK_THREADS] [-r ROUNDS] [-n REPLICAS] [-s] [-T]" >&2; exit 2 ;;
  esac
done

for tool in wrk curl cargo; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (run scripts/install-test-deps.sh)" >&2; exit 1; }
done

ub=target/release/ultra-boost
rb=target/release/examples/router_bench
if [ "$skip_build" = 0 ]; then
  echo "== building release binaries" >&2
  cargo build --release --quiet -p ultra-boost --bin ultra-boost
  cargo build --release --quiet -p guard --example router_bench
fi
for b in "$ub" "$rb"; do
  [ -x "$b" ] || { echo "bench: $b is missing (run without -s)" >&2; exit 1; }
done

tmp=$(mktemp -d)
rb_pid=""
cleanup() {
  if [ -n "$rb_pid" ]; then
    kill "$rb_pid" 2>/dev/null || true
    wait "$rb_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

"$rb" --bin "$ub" --replicas "$replicas" --arg=--drain-delay=0s "${replica_args[@]}" >"$tmp/out" 2>"$tmp/err" &
rb_pid=$!
for _ in $(seq 1 1000); do
  if [ -s "$tmp/out" ]; then break; fi
  if ! kill -0 "$rb_pid" 2>/dev/null; then
    echo "bench: router_bench exited:" >&2
    cat "$tmp/err" >&2
    exit 1
  fi
  sleep 0.01
done
line=$(head -n 1 "$tmp/out")
router=$(sed -n 's/.*"router":"\([^"]*\)".*/\1/p' <<<"$line")
direct=$(sed -n 's/.*"replicas":\["\([^"]*\)".*/\1/p' <<<"$line")
if [ -z "$router" ] || [ -z "$direct" ]; then
  echo "bench: unexpected router_bench output: $line" >&2
  exit 1
fi
for a in "$router" "$direct"; do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$a/")" != 200 ]; then
    echo "bench: http://$a/ does not answer 200" >&2
    exit 1
  fi
done
echo "== router $router, direct replica $direct ($replicas replica(s) behind the router, reached over $hop)" >&2

to_us() { # wrk latency like 1.23ms / 512.00us / 1.01s -> microseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n
  }'
}

cpu_ticks() { # pid -> utime+stime in clock ticks
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
hz=$(getconf CLK_TCK)

# Prints "rps p50_us p99_us router_cpu_us_per_req" for one wrk run against url.
measure() { # url
  local out t0 t1 reqs rps p50 p99
  wrk -t "$wrk_threads" -c "$connections" -d 1s "$1" >/dev/null
  t0=$(cpu_ticks "$rb_pid")
  out=$(wrk -t "$wrk_threads" -c "$connections" -d "${duration}s" --latency "$1")
  t1=$(cpu_ticks "$rb_pid")
  if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
    echo "bench: errors against $1:" >&2
    echo "$out" >&2
    exit 1
  fi
  reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
  rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  p50=$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
  p99=$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
  awk -v r="$rps" -v a="$p50" -v b="$p99" -v t="$((t1 - t0))" -v hz="$hz" -v n="$reqs" \
    'BEGIN { printf "%s %s %s %.2f\n", r, a, b, t / hz * 1e6 / n }'
}

best_direct=""
best_router=""
printf '%-6s %-7s %12s %10s %10s %16s\n' round path req/s p50_us p99_us router_cpu_us/req
for round in $(seq 1 "$rounds"); do
  d=$(measure "http://$direct/")
  r=$(measure "http://$router/")
  read -r drps dp50 dp99 _ <<<"$d"
  read -r rrps rp50 rp99 rcpu <<<"$r"
  printf '%-6s %-7s %12s %10s %10s %16s\n' "$round" direct "$drps" "$dp50" "$dp99" "-"
  printf '%-6s %-7s %12s %10s %10s %16s\n' "$round" router "$rrps" "$rp50" "$rp99" "$rcpu"
  if [ -z "$best_direct" ] || awk -v a="$drps" -v b="${best_direct%% *}" 'BEGIN { exit !(a > b) }'; then
    best_direct=$d
  fi
  if [ -z "$best_router" ] || awk -v a="$rrps" -v b="${best_router%% *}" 'BEGIN { exit !(a > b) }'; then
    best_router=$r
  fi
done

read -r drps _ dp99 _ <<<"$best_direct"
read -r rrps _ rp99 rcpu <<<"$best_router"
echo
echo "best of $rounds rounds, ${duration}s each, wrk -t$wrk_threads -c$connections, $replicas replica(s) behind the router over $hop"
awk -v d="$drps" -v r="$rrps" -v dp="$dp99" -v rp="$rp99" -v c="$rcpu" 'BEGIN {
  ratio = r / d * 100
  added = (rp - dp) / 1000
  printf "throughput  direct %10.0f req/s   router %10.0f req/s   ratio %5.1f %%  (goal >= 70 %%: %s)\n", d, r, ratio, (ratio >= 70 ? "met" : "NOT met")
  printf "p99         direct %10.3f ms      router %10.3f ms      added %6.3f ms (goal < 1 ms: %s)\n", dp / 1000, rp / 1000, added, (added < 1 ? "met" : "NOT met")
  printf "router CPU  %.2f us per request\n", c
}'
