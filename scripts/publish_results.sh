#!/usr/bin/env bash
# Publish what the runs under outputs/ have finished so far, or only the paths given as arguments (one finished
# trial, say): stage every finished round's small files there, rebuild each run's report and the study from exactly
# what is staged, and stage those too. Safe while runs are still going (the
# reports are built from the staged snapshot, not from the live folders). Then review and `git commit`.
set -euo pipefail
cd "$(dirname "$0")/.."

git add "${@:-outputs}"  # default: everything finished; or only the paths given (e.g. one trial)
snapshot=$(mktemp -d)
trap 'rm -rf "$snapshot"' EXIT
git ls-files -z outputs | xargs -0 git checkout-index -f --prefix="$snapshot/" --

runs=()
for config in "$snapshot"/outputs/*/config.json; do
  run=$(dirname "$config")
  runs+=("$run")
  python run.py report "$run" >/dev/null
  rm -rf "outputs/$(basename "$run")/report"
  cp -r "$run/report" "outputs/$(basename "$run")/report"
done
# The study compares the preset protocols with ES667 and the paper; other runs (late rewinding, say) have their
# own reports.
mapfile -t protocol_runs < <(python -c 'import sys; from lottery_keras.analysis.study import protocol_runs
print(*protocol_runs(sys.argv[1:]), sep="\n")' "${runs[@]}")
python run.py study "${protocol_runs[@]}" --output-dir "$snapshot/outputs/study" >/dev/null
rm -rf outputs/study
cp -r "$snapshot/outputs/study" outputs/study
git add outputs/*/report outputs/study  # only these: rounds that finished since the snapshot wait for next time
git status --short outputs | awk '{print $2}' | sed 's|/trial_.*||' | sort | uniq -c
