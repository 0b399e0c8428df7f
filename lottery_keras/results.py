"""Where a run keeps its files, and reading them back as tables.

    <output_dir>/<dataset>-<arch>-<hash>/
        config.json                      the resolved Experiment (+ its hash)
        trial_<t>/theta0.npz             the trial's initial weights θ0 (shared by its strategies)
        trial_<t>/<strategy>/results.csv one row per finished round
        trial_<t>/<strategy>/round_<rr>/
            ticket_init.keras            the ticket: θ_start ⊙ m (θ0 for rewinding strategies)
            ticket_trained.keras         its weights after training
            masks.npz                    one 0/1 array per layer
            history.csv                  one row per evaluation (learning curves)
            metrics.json                 the round's results; written last, so it marks the round finished
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lottery_keras.storage import read_json

RESULT_COLUMNS = ["round", "remaining", "es_iteration", "val_acc", "test_acc", "final_test_acc", "train_acc",
                  "generalization_gap", "ece", "val_loss", "train_seconds"]


def trial_dir(run_dir: Path, trial: int) -> Path:
    return Path(run_dir) / f"trial_{trial}"


def round_dir(run_dir: Path, trial: int, strategy: str, round_index: int) -> Path:
    return trial_dir(run_dir, trial) / strategy / f"round_{round_index:02d}"


def is_finished(directory: Path) -> bool:
    return (directory / "metrics.json").is_file()


def strategy_results(strategy_dir: Path) -> pd.DataFrame:
    """The finished rounds of one strategy of one trial, one row each, ordered by round."""
    rows = [read_json(path) for path in sorted(Path(strategy_dir).glob("round_*/metrics.json"))]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS).sort_values("round", ignore_index=True)


def collect_results(run_dir: Path) -> pd.DataFrame:
    """Every finished round of a run, with `trial` and `strategy` columns."""
    frames = []
    for strategy_dir in sorted(Path(run_dir).glob("trial_*/*/")):
        if strategy_dir.is_dir():
            frame = strategy_results(strategy_dir)
            frame.insert(0, "strategy", strategy_dir.name)
            frame.insert(0, "trial", int(strategy_dir.parent.name.split("_")[1]))
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["trial", "strategy", *RESULT_COLUMNS])
    return pd.concat(frames, ignore_index=True)
