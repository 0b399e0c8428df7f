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
# Beyond the paper (MNIST LeNet-300-100, trials 2-4): rewinding variants, pruning at init, structured pruning,
# robustness, stability, late rewinding, and the TFLite export of trial 2's winning tickets at every level.
run --dataset mnist --arch lenet300_100 --strategy core --strategy lr_rewind --strategy oneshot --strategy snip \
    --strategy structured --trials 2-4 --robustness
run --dataset mnist --arch lenet300_100 --strategy magnitude_rewind --strategy random_rewind --strategy lr_rewind \
    --trials 2-4 --stability
run --dataset mnist --arch lenet300_100 --rewind-iteration 500 --strategy magnitude_rewind --strategy random_rewind \
    --trials 2-4 --robustness --stability
if [ "${CONV6:-0}" = 1 ]; then
  run --dataset cifar10 --arch conv6 --strategy core --trials 0-4
fi

runs=()
for config in "$out"/*/config.json; do
  runs+=("$(dirname "$config")")
  python run.py report "$(dirname "$config")"
done
mapfile -t protocol_runs < <(python -c 'import sys; from lottery_keras.analysis.study import protocol_runs
print(*protocol_runs(sys.argv[1:]), sep="\n")' "${runs[@]}")
python run.py study "${protocol_runs[@]}" --output-dir "$out/study"
python run.py report "$out/mnist-lenet300_100-77d8bf14f1" "$out/mnist-lenet300_100-73ba147a01" --output-dir "$out/beyond"
python run.py export "$out/mnist-lenet300_100-77d8bf14f1" --all-rounds --trial 2 \
    --output-dir "$out/deploy/mnist-lenet300_100-77d8bf14f1-trial_2-magnitude_rewind"
