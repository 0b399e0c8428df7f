"""What pruning costs `fit`: ms per training step of a model wrapped by `prune_low_magnitude` (trained with
`UpdatePruningStep`) against the same model unwrapped, for the models of `tests/prunable_models.py`.

Both are compiled alike (Adam, `fit`'s defaults) and start from the same weights; the pruned one follows
`ConstantSparsity(--sparsity, frequency=100)` (tfmot's default frequency), so its timed steps include the mask
updates as well as the masking before every call and after every step. Data are real MNIST training images, in
each model's input form. Each model is warmed up (its train function traced), then the two alternate `--reps`
times over `--steps` steps each; the table reports medians, so background load inflates both alike and the ratio
stays fair, and the best of the reps (on a shared 2-core machine whole fits run at one of two speeds, ~1.4×
apart, whatever is timed).

Run from the repository root:
    python benchmarks/bench_pruning.py                         # the LSTM and the ViT-style model
    python benchmarks/bench_pruning.py --models lstm vit tokens convnext --steps 300 --reps 7
    python benchmarks/bench_pruning.py --json                  # one JSON list on stdout, nothing else
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import lottery_keras as lk  # noqa: E402
from lottery_keras import data  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from prunable_models import MODELS  # noqa: E402


def compiled(model: keras.Model) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def ms_per_step(model: keras.Model, x, y, batch: int, callbacks: list) -> float:
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return (time.perf_counter() - start) * 1000 / (len(x) // batch)


def measure(name: str, args: argparse.Namespace) -> dict:
    make, inputs = MODELS[name]
    splits = data.load("mnist").head(train=args.steps * args.batch)
    x, y = inputs(splits.x_train), splits.y_train
    keras.utils.set_random_seed(0)
    dense = compiled(make())
    pruned = compiled(lk.prune_low_magnitude(dense, lk.ConstantSparsity(args.sparsity, begin_step=0,
                                                                        frequency=100)))
    runs = {"unpruned": (dense, []), "pruned": (pruned, [lk.UpdatePruningStep()])}
    for model, callbacks in runs.values():  # trace the train functions
        ms_per_step(model, x[:args.batch * 10], y[:args.batch * 10], args.batch, callbacks)
    times = {label: [] for label in runs}
    for _ in range(args.reps):
        for label, (model, callbacks) in runs.items():
            times[label].append(ms_per_step(model, x, y, args.batch, callbacks))
    medians = {label: statistics.median(values) for label, values in times.items()}
    best = {label: min(values) for label, values in times.items()}
    return {"model": name, "batch": args.batch, "steps": args.steps, "unpruned_ms": round(medians["unpruned"], 3),
            "pruned_ms": round(medians["pruned"], 3), "ratio": round(medians["pruned"] / medians["unpruned"], 3),
            "unpruned_best_ms": round(best["unpruned"], 3), "pruned_best_ms": round(best["pruned"], 3),
            "best_ratio": round(best["pruned"] / best["unpruned"], 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["lstm", "vit"])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed fit (default 100)")
    parser.add_argument("--reps", type=int, default=11, help="timed fits of each, alternating (default 11)")
    parser.add_argument("--batch", type=int, default=60, help="batch size (default 60)")
    parser.add_argument("--sparsity", type=float, default=0.8, help="the pruned model's sparsity (default 0.8)")
    parser.add_argument("--json", action="store_true", help="print only a JSON list of the rows")
    args = parser.parse_args(argv)
    rows = [measure(name, args) for name in args.models]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"ms per fit step, batch {args.batch}, medians of {args.reps} × {args.steps} steps; pruned: "
          f"prune_low_magnitude at {args.sparsity:.0%} + UpdatePruningStep")
    print(f"{'model':<10}{'unpruned':>10}{'pruned':>10}{'ratio':>8}{'best unpruned':>15}{'best pruned':>13}"
          f"{'best ratio':>12}")
    for row in rows:
        print(f"{row['model']:<10}{row['unpruned_ms']:>10.2f}{row['pruned_ms']:>10.2f}{row['ratio']:>7.2f}×"
              f"{row['unpruned_best_ms']:>15.2f}{row['pruned_best_ms']:>13.2f}{row['best_ratio']:>11.2f}×")


if __name__ == "__main__":
    main()
