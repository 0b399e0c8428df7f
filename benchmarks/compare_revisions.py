"""Before/after in one run: a benchmark of this working tree against the same benchmark at an earlier revision.

The earlier revision is checked out in a temporary git worktree; the two trees' copies of the benchmark run
alternately, `--rounds` times each (each in a fresh process, importing its own tree's `lottery_keras`), so that
background load falls on both alike. The benchmark must print a JSON list of rows on stdout (`--json`); rows are
matched by `--key` and each `--metric` is reported as the median over rounds, before and after, and their ratio.

Run from the repository root:
    python benchmarks/compare_revisions.py 3102c1e -- benchmarks/bench_train.py --arch lenet300_100 lenet5 --json
    python benchmarks/compare_revisions.py HEAD~3 --rounds 5 --metric toolkit_ms_per_step -- \
        benchmarks/bench_train.py --arch lenet5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the earlier revision (a commit, tag or branch)")
    parser.epilog = ("after `--`: the benchmark script (relative to the repository root) and its options, which "
                     "must include the one that makes it print JSON")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tree's benchmark, alternating (3)")
    parser.add_argument("--key", default="arch", help="the field that names a row (default arch)")
    parser.add_argument("--metric", action="append",
                        help="a numeric field to compare, lower is better (default: stock_ms_per_step and "
                             "toolkit_ms_per_step)")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.benchmark = argv[split + 1:]
    if not args.benchmark:
        parser.error("name the benchmark after `--`, e.g. -- benchmarks/bench_train.py --arch lenet5 --json")
    args.metric = args.metric or ["stock_ms_per_step", "toolkit_ms_per_step"]
    return args


def run_benchmark(tree: Path, benchmark: list[str]) -> list[dict]:
    """Run `benchmark` with `tree` as the repository root and its `lottery_keras` first on the path."""
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    output = subprocess.run([sys.executable, *benchmark], cwd=tree, env=environment, stdout=subprocess.PIPE,
                            text=True, check=True).stdout
    return json.loads(output)


def samples(runs: list[list[dict]], key: str, metric: str) -> dict[str, list[float]]:
    """Each row's `metric` over the runs, by the row's `key`."""
    values: dict[str, list[float]] = {}
    for rows in runs:
        for row in rows:
            values.setdefault(str(row[key]), []).append(float(row[metric]))
    return values


def compare(revision: str, args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="lottery-before-") as folder:
        before_tree = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(before_tree), revision], cwd=REPO,
                       check=True)
        try:
            runs = {"before": [], "after": []}
            for round_index in range(args.rounds):
                order = [("before", before_tree), ("after", REPO)]
                for label, tree in order if round_index % 2 == 0 else order[::-1]:
                    runs[label].append(run_benchmark(tree, args.benchmark))
                    print(f"round {round_index + 1}/{args.rounds}: {label} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=REPO, check=True)
    lines = [f"{args.key} | metric | before ({revision}) | after (working tree) | after / before | runs before | "
             "runs after", "---|---|---|---|---|---|---"]
    for metric in args.metric:
        before, after = samples(runs["before"], args.key, metric), samples(runs["after"], args.key, metric)
        for name in [name for name in before if name in after]:
            old, new = statistics.median(before[name]), statistics.median(after[name])
            lines.append(f"{name} | {metric} | {old:.3f} | {new:.3f} | {new / old:.3f} | "
                         f"{' '.join(f'{value:.3g}' for value in before[name])} | "
                         f"{' '.join(f'{value:.3g}' for value in after[name])}")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    revision = subprocess.run(["git", "rev-parse", "--short", args.revision], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, check=True).stdout.strip()
    print(f"medians of {args.rounds} alternating runs of {' '.join(args.benchmark)}")
    print(compare(revision, args))


if __name__ == "__main__":
    main()
