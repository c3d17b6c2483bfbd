#!/usr/bin/env bash
# Scale benchmark: one guard engine verifying 1,000 simulated services at a
# 1 s tick (real engine, judge and SQLite; simulated platform and source).
# Prints cores used and RSS, idle vs verifying, against the goal of half a core.
#   bench/scale/run.sh [services] [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo run --quiet --release -p guard --example scale -- "${1:-1000}" "${2:-20}"
