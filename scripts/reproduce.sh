#!/usr/bin/env bash
# Re-run every published experiment from scratch, then rebuild each run's report and the study.
#
#   scripts/reproduce.sh [OUTPUT_DIR]          (default: outputs/, where the published runs live)
#
# Resumable: run it again after an interruption and it goes on after the last finished round. In a clone,
# published rounds have their results but not their tickets, so each is trained again (and its results
# rewritten). Roughly 25 CPU-hours on a 2-core CPU; the Conv-6 study is GPU work and runs only with CONV6=1.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs}

run() { python run.py "$@" --output-dir "$out"; }

for arch in lenet300_100 lenet5; do
  for dataset in mnist fashion; do
    run --dataset "$dataset" --arch "$arch" --strategy core --trials 0-4                       # es667
  done
done
run --preset frankle2019 --dataset mnist --arch lenet300_100 --rounds 19 --trials 0-4 \
    --strategy magnitude_rewind --strategy magnitude_random --strategy random_rewind
if [ "${CONV6:-0}" = 1 ]; then
  run --dataset cifar10 --arch conv6 --strategy core --trials 0-4
fi

runs=()
for config in "$out"/*/config.json; do
  runs+=("$(dirname "$config")")
  python run.py report "$(dirname "$config")"
done
python run.py study "${runs[@]}" --output-dir "$out/study"
