#!/usr/bin/env bash
# Detection benchmark of guard's judge (issue 4): seeded simulation of the
# grid, figures next to their baselines (Wald's oracle, a Flagger-style
# threshold check) in one run.
#   bench/detection/run.sh [trials] [seed]
# Writes bench/detection/results.jsonl and prints the table with the goals.
set -euo pipefail
cd "$(dirname "$0")/../.."
trials="${1:-1000}"
seed="${2:-1}"
cargo build --release -p guard
target/release/guard bench detection --trials "$trials" --seed "$seed" --json \
  > bench/detection/results.jsonl
target/release/guard bench detection --trials "$trials" --seed "$seed"
