#!/usr/bin/env bash
# Benchmark of the ultra-boost service against a bare hyper server answering the
# same bytes (crates/ultra-boost/examples/bare_hyper.rs), in one run on loopback.
#
# For each server: wrk throughput and p50/p99 latency on `GET /`, server CPU time
# per request (utime+stime deltas from /proc/PID/stat over the load, divided by
# the requests wrk completed), idle RSS and peak RSS under load (VmHWM); and the
# time from exec to ready (median of N starts, polling every millisecond:
# /-/ready for ultra-boost, / for the baseline). Then the ratios against the
# goals of issue 2: CPU/request <= 1.5x, throughput >= 90 %, ready < 5 ms,
# idle RSS < 7 MB.
#
# Usage: bench/service/run.sh [-d SECONDS] [-c CONNECTIONS] [-t WRK_THREADS] [-r ROUNDS] [-n]
#   -n  skip `cargo build --release` and use the binaries already in target/release
# Needs: cargo, wrk, curl (scripts/install-test-deps.sh installs wrk).
# The machine is shared: each round loads both servers back to back and the
# best round per server is reported, with every round printed.
set -euo pipefail
cd "$(dirname "$0")/../.."

duration=10
connections=32
wrk_threads=1
rounds=2
starts=10
build=1
while getopts "d:c:t:r:n" opt; do
  case $opt in
    d) duration=$OPTARG ;;
    c) connections=$OPTARG ;;
    t) wrk_threads=$OPTARG ;;
    r) rounds=$OPTARG ;;
    n) build=0 ;;
    *) echo "usage: $0 [-d SECONDS] [-c CONNECTIONS] [-t WRK_THREADS] [-r ROUNDS] [-n]" >&2; exit 2 ;;
  esac
done

for tool in wrk curl cargo; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (run scripts/install-test-deps.sh)" >&2; exit 1; }
done

if [ "$build" = 1 ]; then
  echo "== building release binaries" >&2
  cargo build --release --quiet -p ultra-boost --bin ultra-boost --example bare_hyper --example startup_probe
fi
ub=target/release/ultra-boost
bare=target/release/examples/bare_hyper
probe=target/release/examples/startup_probe

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

read_address() { # file; waits up to 5 s for a server's --address-file
  for _ in $(seq 1 500); do
    if [ -s "$1" ]; then cat "$1"; return 0; fi
    sleep 0.01
  done
  echo "bench: no address in $1 after 5 s" >&2
  return 1
}

wait_http() { # url; polls until 200, at most 5 s
  for _ in $(seq 1 500); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ]; then return 0; fi
    sleep 0.01
  done
  echo "bench: $1 not ready after 5 s" >&2
  return 1
}

cpu_ticks() { # pid -> utime+stime in clock ticks
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

rss_kib() { # pid field(VmRSS|VmHWM)
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

to_us() { # wrk latency like 1.23ms / 512.00us / 1.01s -> microseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n
  }'
}

hz=$(getconf CLK_TCK)

# One server under load; prints "rps p50_us p99_us cpu_us_per_req idle_kib hwm_kib".
measure() { # name url pid
  local url=$2 pid=$3 out t0 t1 reqs rps p50 p99 idle hwm
  idle=$(rss_kib "$pid" VmRSS)
  # Warm-up so lazy allocations and connection set-up are not billed to the run.
  wrk -t "$wrk_threads" -c "$connections" -d 1s "$url" >/dev/null
  t0=$(cpu_ticks "$pid")
  out=$(wrk -t "$wrk_threads" -c "$connections" -d "${duration}s" --latency "$url")
  t1=$(cpu_ticks "$pid")
  hwm=$(rss_kib "$pid" VmHWM)
  reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
  rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  p50=$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
  p99=$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
  if grep -q "Non-2xx" <<<"$out"; then
    echo "bench: $1 answered non-2xx responses:" >&2
    echo "$out" >&2
    exit 1
  fi
  awk -v r="$rps" -v a="$p50" -v b="$p99" -v t="$((t1 - t0))" -v hz="$hz" -v n="$reqs" -v i="$idle" -v h="$hwm" \
    'BEGIN { printf "%s %s %s %.2f %s %s\n", r, a, b, t / hz * 1e6 / n, i, h }'
}

# Identical answer bytes: the baseline serves exactly what ultra-boost serves on GET /.
rm -f "$tmp/addr"
"$ub" --listen 127.0.0.1:0 --address-file "$tmp/addr" --log-level warn --drain-delay 0s &
pids+=($!)
addr=$(read_address "$tmp/addr")
wait_http "http://$addr/-/ready"
body=$(curl -s "http://$addr/")
kill "${pids[-1]}"; wait "${pids[-1]}" || true

start_server() { # kind -> $server_pid, $addr
  rm -f "$tmp/addr"
  if [ "$1" = ultra-boost ]; then
    "$ub" --listen 127.0.0.1:0 --address-file "$tmp/addr" --log-level warn --drain-delay 0s &
    server_pid=$!
    pids+=("$server_pid")
    addr=$(read_address "$tmp/addr")
    wait_http "http://$addr/-/ready"
  else
    "$bare" --listen 127.0.0.1:0 --address-file "$tmp/addr" --body "$body" 2>/dev/null &
    server_pid=$!
    pids+=("$server_pid")
    addr=$(read_address "$tmp/addr")
    wait_http "http://$addr/"
  fi
  if [ "$(curl -s "http://$addr/")" != "$body" ]; then
    echo "bench: $1 does not answer the same bytes on GET /" >&2
    exit 1
  fi
  sleep 1 # settle before reading idle RSS
}

declare -A best
for round in $(seq 1 "$rounds"); do
  for kind in bare ultra-boost; do
    start_server "$kind"
    res=$(measure "$kind" "http://$addr/" "$server_pid")
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
    read -r rps p50 p99 cpu idle hwm <<<"$res"
    printf 'round %d %-12s %10.0f req/s  p50 %7.0f us  p99 %7.0f us  cpu %6.2f us/req  idle %5d KiB  peak %5d KiB\n' \
      "$round" "$kind" "$rps" "$p50" "$p99" "$cpu" "$idle" "$hwm" >&2
    # Best round per server: lowest CPU per request (and its own throughput/latency).
    if [ -z "${best[$kind]:-}" ] || awk -v a="$cpu" -v b="${best[$kind]#* * * }" 'BEGIN { exit !(a < b + 0) }'; then
      best[$kind]="$rps $p50 $p99 $cpu $idle $hwm"
    fi
  done
done

echo "== exec -> ready (median of $starts starts, polling every 1 ms)" >&2
# Interleaved starts (ultra-boost, bare, ultra-boost, …) so both see the same load.
ready=$("$probe" --runs "$starts" -- /-/ready "$ub" --listen '{addr}' --- / "$bare" --listen '{addr}' --body "$body")
ready_ub=$(sed -n 1p <<<"$ready")
ready_bare=$(sed -n 2p <<<"$ready")
med() { sed -E 's/.*"median_ms":([0-9.]+).*/\1/' <<<"$1"; }

read -r b_rps b_p50 b_p99 b_cpu b_idle b_hwm <<<"${best[bare]}"
read -r u_rps u_p50 u_p99 u_cpu u_idle u_hwm <<<"${best[ultra-boost]}"
u_ready=$(med "$ready_ub")
b_ready=$(med "$ready_bare")

echo
printf '%-26s %14s %14s %10s   %s\n' "figure (wrk -t$wrk_threads -c$connections -d${duration}s)" "bare hyper" "ultra-boost" "ratio" "goal"
awk -v br="$b_rps" -v ur="$u_rps" -v bp5="$b_p50" -v up5="$u_p50" -v bp9="$b_p99" -v up9="$u_p99" \
    -v bc="$b_cpu" -v uc="$u_cpu" -v bi="$b_idle" -v ui="$u_idle" -v bh="$b_hwm" -v uh="$u_hwm" \
    -v brd="$b_ready" -v urd="$u_ready" 'BEGIN {
  ok = 1
  r = ur / br;  g = (r >= 0.9);  ok = ok && g
  printf "%-26s %14.0f %14.0f %9.3fx   >= 0.90x  %s\n", "throughput (req/s)", br, ur, r, g ? "MET" : "MISSED"
  printf "%-26s %14.0f %14.0f %9.3fx\n", "latency p50 (us)", bp5, up5, up5 / bp5
  printf "%-26s %14.0f %14.0f %9.3fx\n", "latency p99 (us)", bp9, up9, up9 / bp9
  r = uc / bc;  g = (r <= 1.5);  ok = ok && g
  printf "%-26s %14.2f %14.2f %9.3fx   <= 1.50x  %s\n", "server CPU per request (us)", bc, uc, r, g ? "MET" : "MISSED"
  g = (urd < 5);  ok = ok && g
  printf "%-26s %14.2f %14.2f %9.3fx   < 5 ms    %s\n", "exec -> ready (ms, median)", brd, urd, urd / brd, g ? "MET" : "MISSED"
  g = (ui * 1024 < 7e6);  ok = ok && g
  printf "%-26s %14.2f %14.2f %9.3fx   < 7 MB    %s\n", "idle RSS (MB)", bi * 1024 / 1e6, ui * 1024 / 1e6, ui / bi, g ? "MET" : "MISSED"
  printf "%-26s %14.2f %14.2f %9.3fx\n", "peak RSS under load (MB)", bh * 1024 / 1e6, uh * 1024 / 1e6, uh / bh
  printf "\nall goals %s\n", ok ? "MET" : "NOT met"
}'
echo "exec->ready detail: ultra-boost $ready_ub; bare $ready_bare"
