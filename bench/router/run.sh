#!/usr/bin/env bash
# Benchmark of guard's router (the local platform's front door) against the
# same replica reached directly, in one run on loopback.
#
# crates/guard/examples/router_bench.rs starts two identical services through
# the local platform, each with its own router and replicas, and prints the
# addresses: "router" in its steady state (one release: it hands client
# connections over to the replicas, `--handoff-socket {handoff_socket}`), and
# "relay" forced to relay every request, as every router does during a
# rollout. wrk then loads, per round, a replica directly, the router and the
# relay, back to back: throughput, p50 and p99 latency, and guard's CPU time
# per request. Reported: the best round per path (the machine is shared; every
# round is printed), throughput ratio against direct and p99 added, for both
# states, against the goals of issue 5: >= 70 % of direct throughput, < 1 ms
# added p99.
#
# The replicas are started as `guard demo` starts them, with
# `--unix-socket {unix_socket} --handoff-socket {handoff_socket}`: relayed
# requests reach them over Unix sockets while wrk reaches "direct" over TCP.
# -T makes relayed requests use TCP too; -H starts the replicas without the
# handoff socket (then "router" relays as well).
#
# Usage: bench/router/run.sh [-d SECONDS] [-c CONNECTIONS] [-t WRK_THREADS] [-r ROUNDS] [-n REPLICAS] [-s] [-T] [-H]
# -s skips the release build and uses the binaries already in target/release.
# With -n 2 the routers balance over 2 replicas while "direct" still hits one.
# Needs: cargo, wrk, curl (scripts/install-test-deps.sh installs wrk).
set -euo pipefail
cd "$(dirname "$0")/../.."

duration=10
connections=32
wrk_threads=1
rounds=3
replicas=1
skip_build=0
unix_args=("--arg=--unix-socket={unix_socket}")
handoff_args=("--arg=--handoff-socket={handoff_socket}")
hop="unix socket"
while getopts "d:c:t:r:n:sTH" opt; do
  case $opt in
    d) duration=$OPTARG ;;
    c) connections=$OPTARG ;;
    t) wrk_threads=$OPTARG ;;
    r) rounds=$OPTARG ;;
    n) replicas=$OPTARG ;;
    s) skip_build=1 ;;
    T) unix_args=(); hop="TCP" ;;
    H) handoff_args=() ;;
    *) echo "usage: $0 [-d SECONDS] [-c CONNECTIONS] [-t WRK_THREADS] [-r ROUNDS] [-n REPLICAS] [-s] [-T] [-H]" >&2; exit 2 ;;
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

"$rb" --bin "$ub" --replicas "$replicas" --relay-router --arg=--drain-delay=0s "${unix_args[@]}" "${handoff_args[@]}" >"$tmp/out" 2>"$tmp/err" &
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
relay=$(sed -n 's/.*"relay_router":"\([^"]*\)".*/\1/p' <<<"$line")
direct=$(sed -n 's/.*"replicas":\["\([^"]*\)".*/\1/p' <<<"$line")
hands_over=$(sed -n 's/.*"hands_over":\([a-z]*\).*/\1/p' <<<"$line")
if [ -z "$router" ] || [ -z "$relay" ] || [ -z "$direct" ]; then
  echo "bench: unexpected router_bench output: $line" >&2
  exit 1
fi
for a in "$router" "$relay" "$direct"; do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$a/")" != 200 ]; then
    echo "bench: http://$a/ does not answer 200" >&2
    exit 1
  fi
done
if [ "$hands_over" = true ]; then steady="hands connections over"; else steady="relays (no handoff socket)"; fi
echo "== router $router ($steady), relay $relay (relays over $hop), direct replica $direct; $replicas replica(s) behind each" >&2

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
best_relay=""
better() { # candidate_line best_line -> success when candidate has more req/s
  [ -z "$2" ] || awk -v a="${1%% *}" -v b="${2%% *}" 'BEGIN { exit !(a > b) }'
}
printf '%-6s %-7s %12s %10s %10s %15s\n' round path req/s p50_us p99_us guard_cpu_us/req
for round in $(seq 1 "$rounds"); do
  d=$(measure "http://$direct/")
  r=$(measure "http://$router/")
  l=$(measure "http://$relay/")
  for pair in "direct:$d" "router:$r" "relay:$l"; do
    read -r rps p50 p99 cpu <<<"${pair#*:}"
    [ "${pair%%:*}" = direct ] && cpu="-"
    printf '%-6s %-7s %12s %10s %10s %15s\n' "$round" "${pair%%:*}" "$rps" "$p50" "$p99" "$cpu"
  done
  if better "$d" "$best_direct"; then best_direct=$d; fi
  if better "$r" "$best_router"; then best_router=$r; fi
  if better "$l" "$best_relay"; then best_relay=$l; fi
done

summary() { # label best_line
  read -r drps _ dp99 _ <<<"$best_direct"
  read -r rps _ p99 cpu <<<"$2"
  awk -v label="$1" -v d="$drps" -v r="$rps" -v dp="$dp99" -v rp="$p99" -v c="$cpu" 'BEGIN {
    ratio = r / d * 100
    added = (rp - dp) / 1000
    printf "%-34s %10.0f req/s vs direct %10.0f: ratio %5.1f %% (goal >= 70 %%: %s); p99 %7.3f ms, added %6.3f ms (goal < 1 ms: %s); guard CPU %.2f us/request\n", label, r, d, ratio, (ratio >= 70 ? "met" : "NOT met"), rp / 1000, added, (added < 1 ? "met" : "NOT met"), c
  }'
}
echo
echo "best of $rounds rounds, ${duration}s each, wrk -t$wrk_threads -c$connections, $replicas replica(s) behind each router"
summary "router, steady state ($steady)" "$best_router"
summary "router relaying (rollouts), $hop" "$best_relay"
