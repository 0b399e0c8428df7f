"""Command line: `run.py [run] ...` (iterative magnitude pruning), `run.py report|study|export ...`.

Parsing, `--help` and `--dry-run` load no TensorFlow; the commands that need it load it quietly (`quiet_tensorflow`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NoReturn

from lottery_keras.config import KINDS, Experiment, Option, protocol_options

COMMANDS = ("run", "report", "study", "export")


def quiet_tensorflow() -> None:
    """Import TensorFlow without its C++ start-up logging, unless the user set TF_CPP_MIN_LOG_LEVEL.

    TensorFlow's native libraries log (oneDNN notices, CUDA probes on CPU machines, …) before they read any
    setting, so stderr is redirected at the file-descriptor level during the import; if the import fails, what it
    wrote is replayed.
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # loads the device plugins, which log too
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose refusals are the error and a line saying where the help is, without the usage
    block (its sub-parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n`{self.prog} --help` lists every option\n")


def _checked(convert, valid, requirement: str, noun: str | None = None):
    """An argparse type: `convert` the text (a value that is not `noun`, by default a whole number or a number, is
    refused), then reject values that are not `valid` with `requirement`."""
    noun = noun or ("a whole number" if convert is int else "a number")

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{text} {requirement}")
        return value

    return parse


def _trials(text: str) -> tuple[int, ...]:
    """`N` (trials 0 … N−1) or an inclusive range `A-B` (trials A … B): trial t runs with seed + t."""
    first, dash, last = text.partition("-")
    try:
        bounds = (0, int(first) - 1) if not dash else (int(first), int(last))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a count of trials (5) nor a range (1-4)") from None
    if bounds[0] < 0 or bounds[1] < bounds[0]:
        raise argparse.ArgumentTypeError(f"{text} names no trial: give a count of at least 1, or a range A-B with "
                                         "0 <= A <= B")
    return tuple(range(bounds[0], bounds[1] + 1))


_positive_int = _checked(int, lambda v: v >= 1, "must be at least 1")
_minutes = _checked(float, lambda v: 0 <= v < float("inf"), "must be a number of minutes, 0 (never) or more")
_folder = _checked(str, lambda v: v.strip() != "", "must name a folder (an empty path would mean the current one)")


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no layer (give comma-separated layer names)")
    return names


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from lottery_keras.catalog import aliases, architectures
    from lottery_keras.config import PRESETS
    from lottery_keras.data import ALIASES, DATASETS
    from lottery_keras.lottery.strategies import GROUPS, STRATEGIES

    what = parser.add_argument_group("what to run (a dataset or --data, and an architecture or --model)")
    what.add_argument("--dataset", choices=sorted([*DATASETS, *ALIASES]), metavar="NAME",
                      help=f"one of: {', '.join(DATASETS)} (aliases: {', '.join(ALIASES)})")
    what.add_argument("--data", metavar="FILE.npz",
                      help="data of one's own: arrays x_train, y_train and optionally x_val, y_val, x_test, y_test "
                           "(inputs as the model takes them, labels as class indices)")
    what.add_argument("--arch", choices=sorted([*architectures(), *aliases()]), metavar="NAME",
                      help=f"one of: {', '.join(architectures())} (aliases: {', '.join(aliases())})")
    what.add_argument("--model", metavar="FILE.keras",
                      help="a Sequential or functional Keras 3 classifier of one's own, ending in logits: its Dense "
                           "and convolution layers are pruned, θ0 drawn from its own initializers (es667 protocol "
                           "unless overridden)")
    what.add_argument("--layers", type=_names, metavar="A,B,…",
                      help="with --model: the layers to prune (default: every Dense and convolution layer)")
    what.add_argument("--strategy", action="append", choices=[*STRATEGIES, *GROUPS], metavar="NAME",
                      help=f"{', '.join(STRATEGIES)}, or core (the winning ticket and its three controls) or all "
                           "(repeatable; default magnitude_rewind)")
    what.add_argument("--preset", default="es667", choices=sorted(PRESETS),
                      help="protocol defaults: es667 (the ES667 study, default) or frankle2019 (the paper)")
    what.add_argument("--trials", type=_trials, default=(0,), metavar="N|A-B",
                      help="independent seeds: N trials 0…N−1, or the range A-B (trial t uses seed + t)")

    protocol = parser.add_argument_group("protocol overrides (default: the preset's value)")
    for name, option in protocol_options().items():
        _add_protocol_argument(protocol, name, option)

    how = parser.add_argument_group("execution")
    how.add_argument("--data-dir", type=_folder, help="folder holding mnist/, fashion_mnist/, cifar10/ "
                                        "(default: $LOTTERY_KERAS_DATA_DIR, system folders, then tfds)")
    how.add_argument("--output-dir", type=_folder, default="outputs",
                     help="where run directories go (default: outputs)")
    how.add_argument("--no-tfmot-check", dest="check_tfmot", action="store_false",
                     help="skip cross-checking masks against tensorflow-model-optimization")
    how.add_argument("--quiet", action="store_true", help="no progress bars")
    how.add_argument("--robustness", action="store_true",
                     help="also score every trained ticket under common corruptions and FGSM on the test split "
                          "(finished rounds too): columns corruption_acc, adversarial_acc")
    how.add_argument("--stability", action="store_true",
                     help="also train a second copy of every round on another data order and measure the error "
                          "barrier between the two (finished rounds too; twice the training): column instability")
    how.add_argument("--checkpoint-minutes", type=_minutes, default=10.0, metavar="M",
                     help="a round in training saves a checkpoint every M minutes, so that an interrupted run goes "
                          "on from it (default 10; 0: never)")
    how.add_argument("--dry-run", action="store_true", help="print the resolved configuration and run directory")

    plan = parser.add_argument_group("execution plan (default: what measured faster for the architecture here)")
    plan.add_argument("--loop", choices=("compiled", "keras"), default="compiled",
                      help="training loop: compiled on-device loop (default) or stock keras.Model.fit")
    plan.add_argument("--jit", action=argparse.BooleanOptionalAction, dest="jit_compile",
                      help="XLA-compile the training loop")
    plan.add_argument("--fused-kernels", action=argparse.BooleanOptionalAction,
                      help="fused C++ conv-ReLU-pool kernels (CPU)")
    plan.add_argument("--sparse-kernels", action=argparse.BooleanOptionalAction,
                      help="train sparse rounds of LeNet-300-100 on the native sparse kernels (CPU)")
    plan.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                      help="run trials side by side on N local worker processes (needs Ray; one thread each)")
    plan.add_argument("--ray-address", metavar="ADDR",
                      help="run trials on an existing Ray cluster (its nodes must share --output-dir)")
    plan.add_argument("--batch-shards", type=_positive_int, metavar="N",
                      help="split each batch into N shards that run side by side")
    plan.add_argument("--threads", type=_positive_int, metavar="N", help="threads per TensorFlow operation")


def _add_protocol_argument(group, name: str, option: Option) -> None:
    """The option for one protocol field: its flag, help and placeholder, read and range-checked as its kind
    (`config.KINDS`); the largest values new experiments take are checked with the rest of the experiment."""
    flag = option.flag_for(name)
    if option.kind == "switch":
        group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=option.help)
    elif option.kind == "choice":
        group.add_argument(flag, dest=name, choices=option.choices, metavar=option.metavar, help=option.help)
    else:
        kind = KINDS[option.kind]
        group.add_argument(flag, dest=name, metavar=option.metavar, help=option.help,
                           type=_checked(kind.parse, lambda value: option.requirement_missed(value, new=False) is None,
                                         kind.requirement, kind.text))


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished or partly finished run directories")
    parser.add_argument("--output-dir", type=_folder, help="where report.md, figures and tables go "
                                             "(default: RUN_DIR/report for one run, else beside the runs)")


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_DIR_OR_TICKET", help="a run directory, a round directory or a "
                                                                     ".keras ticket")
    parser.add_argument("--round", type=int, dest="round_index", help="round of a run directory (default: the "
                                                                      "last finished one; 0 = dense)")
    parser.add_argument("--all-rounds", action="store_true",
                        help="every finished round of the run's --trial and --strategy: files per round, "
                             "deploy.csv and deploy.png (size and latency vs weights remaining)")
    parser.add_argument("--strategy", default="magnitude_rewind", help="strategy of a run directory")
    parser.add_argument("--trial", type=int, default=0, help="trial of a run directory")
    parser.add_argument("--formats", default="float,sparse,int8", help="comma-separated: float, sparse, int8")
    parser.add_argument("--output-dir", type=_folder,
                        help="where the .tflite files and export.csv go (default: beside the ticket)")
    parser.add_argument("--dataset", help="test data for a ticket outside a run directory (default: the run's)")
    parser.add_argument("--data", metavar="FILE.npz", help="data of one's own to test on (what the run trained on)")
    parser.add_argument("--data-dir", type=_folder, help="folder holding the datasets (as for `run`)")
    parser.add_argument("--test-limit", type=_positive_int, metavar="N", help="evaluate on the first N test images")


def build_parser(prog: str = "python run.py") -> argparse.ArgumentParser:
    """The command line's parser; each command's arguments carry their own parser as `command_parser`.

    Args:
        prog: how the program is started, for the help and the error lines.
    """
    parser = _Parser(
        prog=prog,
        description="Lottery tickets in Keras: iterative magnitude pruning with rewinding, controls, reports "
                    "and export. Without a sub-command, `run` is assumed.")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run (or resume) an IMP experiment",
                              description="Run iterative magnitude pruning; a run started again with the same "
                                          "arguments resumes where it stopped (--checkpoint-minutes).")
    _add_run_arguments(run)
    report = commands.add_parser("report", help="tables, figures and report.md from run directories",
                                 description="Summarise finished (or partly finished) runs: accuracy and "
                                             "early-stop iteration vs weights remaining, learning curves, "
                                             "study tables.")
    _add_report_arguments(report)
    study = commands.add_parser("study", help="several seeds of several runs vs the ES667 study and the paper",
                                description="Compare runs over their seeds (mean and min–max) with the values the "
                                            "ES667 study and the paper published: winning tickets, controls at "
                                            "matched levels before collapse, the paper's LeNet claims, figures.")
    study.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished or partly finished run directories")
    study.add_argument("--output-dir", type=_folder,
                       help="where study.md, figures and tables go (default: study/ beside the runs)")
    export = commands.add_parser("export", help="export a ticket to TFLite and check it on the edge runtime",
                                 description="Strip a ticket's masks, convert it to TFLite (float, sparse, int8), "
                                             "run each file with LiteRT on the test set and write export.csv.")
    _add_export_arguments(export)
    for command in (run, report, study, export):
        command.set_defaults(command_parser=command)
    return parser


def _invoked_as() -> str:
    """`lottery-keras` when started by the installed script, else `python run.py`."""
    return "lottery-keras" if Path(sys.argv[0]).name == "lottery-keras" else "python run.py"


def command_run(args: argparse.Namespace) -> int:
    from lottery_keras import config
    from lottery_keras.lottery import strategies
    from lottery_keras.lottery.paths import RunFolder

    own = _check_what(args)
    names = strategies.resolve(args.strategy or [strategies.WINNING_TICKET])
    fields = {name: getattr(args, name) for name in protocol_options()}
    network = splits = None
    if not own:
        experiment = config.from_preset(args.preset, args.dataset, args.arch, **fields)
    plan = None if args.dry_run else _execution_plan(args)  # before loading a model starts TensorFlow's runtime
    if own:
        quiet_tensorflow()
        from lottery_keras import data
        from lottery_keras.lottery import find

        run = find.prepare(_load_model(args.model) if args.model else args.arch,
                           data.load_arrays(args.data) if args.data else args.dataset, layers=args.layers,
                           **fields)
        experiment, network, splits = run.experiment, run.network, run.splits
    folder = RunFolder.for_experiment(experiment, args.output_dir)
    if args.dry_run:
        print(f"preset: {args.preset}")
        for key, value in experiment.to_dict().items():
            print(f"  {key}: {value}")
        print(f"strategies: {', '.join(names)}; trials: {', '.join(map(str, args.trials))}")
        print(f"run directory: {folder.directory}")
        return 0
    _check_writable(folder.directory)
    from lottery_keras.lottery import controller

    if not args.quiet:
        print(f"execution plan: {plan.describe()}")
        if args.workers > 1 or args.ray_address:
            print(f"trials on {args.ray_address or f'{args.workers} local'} Ray worker(s), one thread each")
    options = controller.RunOptions(strategies=names, trials=args.trials, check_tfmot=args.check_tfmot, plan=plan,
                                    verbose=not args.quiet, workers=args.workers, ray_address=args.ray_address,
                                    robustness=args.robustness, stability=args.stability,
                                    checkpoint_minutes=args.checkpoint_minutes)
    folder = controller.run_experiment(experiment, args.output_dir, args.data_dir, options, network=network,
                                       splits=splits)
    print(f"\nResults in {folder.directory} (mean over its finished trials):")
    print(controller.summary_table(folder).to_string())
    return 0


def _check_writable(directory: Path) -> None:
    """A ValueError when the run directory, or before it exists the nearest folder above it, is read-only (a
    file there is left to the controller, which says so)."""
    existing = next((folder for folder in (directory, *directory.parents) if folder.exists()), directory)
    if existing.is_dir() and not os.access(existing, os.W_OK):
        raise ValueError(f"{existing} is read-only: the run cannot write its files there (its .lock first); make it "
                         f"writable (chmod -R u+w {existing}) or give a writable --output-dir")


def _check_output_dir(output_dir: str | None) -> None:
    """A ValueError, before any work, when --output-dir (or a folder above it) is a file."""
    from lottery_keras.storage import check_folder

    try:
        if output_dir:
            check_folder(output_dir)
    except NotADirectoryError as err:
        raise ValueError(f"--output-dir {err}") from None


def _execution_plan(args: argparse.Namespace):
    """The execution plan the options ask for, its thread pools applied (TensorFlow's runtime must not have
    started)."""
    quiet_tensorflow()
    from lottery_keras.train import plan as execution

    if args.model and (args.batch_shards or args.fused_kernels):
        raise ValueError("--batch-shards and --fused-kernels change how the built-in architectures run their "
                         "forward pass; leave them out with --model")
    return execution.apply_threads(execution.decide(
        None if args.model else args.arch, loop=args.loop, jit_compile=args.jit_compile,
        fused_kernels=args.fused_kernels, batch_shards=args.batch_shards, threads=args.threads,
        sparse_kernels=args.sparse_kernels if args.precision in (None, "float32") else False))


def _check_what(args: argparse.Namespace) -> bool:
    """Exactly one dataset source and one architecture source; whether the run is on something of one's own."""
    if (args.dataset is None) == (args.data is None):
        raise ValueError("give one of --dataset NAME (a built-in dataset) and --data FILE.npz (data of one's own)")
    if (args.arch is None) == (args.model is None):
        raise ValueError("give one of --arch NAME (a built-in architecture) and --model FILE.keras (a model of "
                         "one's own)")
    if args.layers and not args.model:
        raise ValueError("--layers chooses layers of a model of one's own; use it with --model")
    own = args.model is not None or args.data is not None
    if own and args.preset != "es667":
        raise ValueError(f"--preset {args.preset} defines its protocol for the built-in architectures and datasets; "
                         "with --model or --data the es667 protocol applies, with your overrides")
    return own


def _load_model(path: str):
    """A Keras model file, or one clear line saying why it is not one."""
    import keras

    from lottery_keras import nn  # noqa: F401  (registers the masked layers, should the file use them)

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--model {path}: no such file")
    if file.suffix != ".keras":
        raise ValueError(f"--model {path}: Keras 3 opens only .keras model files (model.save('model.keras'))")
    if not zipfile.is_zipfile(file):
        raise ValueError(f"--model {path} is not a .keras model file (not a zip archive); save the model with "
                         "model.save('model.keras')")
    _check_not_subclassed(file, path)
    try:
        return keras.models.load_model(file, compile=False)
    except Exception as err:  # noqa: BLE001  (any loader failure means: not a model file we can use)
        if "deserialization of a `Lambda` layer" in str(err):
            raise ValueError(f"--model {path} holds a Lambda layer: Keras refuses to load a Python lambda from a "
                             "file (safe mode), and it cannot be pruned; replace it with a built-in or registered "
                             "layer") from None
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"--model {path} could not be loaded as a Keras model: {type(err).__name__}: "
                         f"{first_line}") from None


def _check_not_subclassed(file: Path, path: str) -> None:
    """A ValueError when the model file holds a subclassed model that Keras cannot rebuild (its class is not
    registered in this process): only Sequential and functional models load from a file alone."""
    import keras

    try:
        with zipfile.ZipFile(file) as archive:
            recorded = json.loads(archive.read("config.json"))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return  # not a model file: the loader says so
    name = recorded.get("class_name") if isinstance(recorded, dict) else None
    if not isinstance(name, str) or name in ("Sequential", "Functional"):
        return
    if keras.saving.get_registered_object(recorded.get("registered_name") or name) is None:
        raise ValueError(f"--model {path} holds a subclassed model (class {name}), which is not supported: rebuild "
                         "it as a Sequential or functional model (keras.Model(inputs, outputs)) and save that")


def command_report(args: argparse.Namespace) -> int:
    _check_output_dir(args.output_dir)
    from lottery_keras.analysis import report

    folder = report.write_report([Path(p) for p in args.run_dirs], Path(args.output_dir) if args.output_dir else None)
    print(f"report written to {folder / 'report.md'}")
    return 0


def command_study(args: argparse.Namespace) -> int:
    _check_output_dir(args.output_dir)
    from lottery_keras.analysis import study

    folder = study.write_study([Path(p) for p in args.run_dirs], Path(args.output_dir) if args.output_dir else None)
    print(f"study written to {folder / 'study.md'}")
    return 0


def command_export(args: argparse.Namespace) -> int:
    _check_output_dir(args.output_dir)
    quiet_tensorflow()
    from lottery_keras.deploy import tflite
    from lottery_keras.deploy.tickets import resolve_ticket

    if args.all_rounds:
        return _export_all_rounds(args)
    ticket = resolve_ticket(Path(args.target), args.round_index, args.strategy, args.trial)
    splits = _export_splits(args, _experiment_of(ticket, data_given=args.dataset is not None or args.data is not None))
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    output_dir = Path(args.output_dir) if args.output_dir else ticket.parent
    table = tflite.export_ticket(ticket, splits, formats, output_dir, args.test_limit)
    print(f"{ticket} → {output_dir}")
    print(table.drop(columns=["file", "ticket"]).to_string(index=False))
    return 0


def _export_splits(args: argparse.Namespace, experiment):
    """The data to test an export on: --data or --dataset, else the run's own dataset."""
    from lottery_keras import data

    if args.data:
        return data.load_arrays(args.data)
    if args.dataset is None and experiment.data:
        raise ValueError(f"the run was trained on data of one's own ({experiment.dataset}); pass that file again "
                         "with --data FILE.npz")
    return data.load(args.dataset or experiment.dataset, args.data_dir)


def _experiment_of(ticket: Path, data_given: bool) -> Experiment | None:
    """The experiment of the run holding `ticket`; None outside a run, or where the run's config.json is damaged
    but --dataset or --data says which test data to use."""
    from lottery_keras.lottery.paths import RunFolder, RunFolderError

    try:
        folder = RunFolder.containing(ticket)
    except RunFolderError:
        if data_given:
            return None
        raise ValueError(f"{ticket} is not inside a run directory; pass --dataset or --data to say which test data "
                         "to use") from None
    try:
        return folder.experiment()
    except RunFolderError:
        if data_given:
            return None
        raise


def _export_all_rounds(args: argparse.Namespace) -> int:
    from lottery_keras.analysis import report
    from lottery_keras.deploy import tflite
    from lottery_keras.deploy.tickets import resolve_ticket
    from lottery_keras.lottery.paths import RunFolder, RunFolderError

    if args.round_index is not None:
        raise ValueError("--all-rounds exports every finished round; leave out --round")
    target = Path(args.target)
    try:
        run = RunFolder.containing(target) if target.is_dir() else None
    except RunFolderError:
        run = None
    if run is None or run.directory.resolve() != target.resolve():
        raise ValueError(f"--all-rounds needs a run directory, not {target}")
    resolve_ticket(run.directory, None, args.strategy, args.trial)  # the same clear errors as for one round
    splits = _export_splits(args, run.experiment())
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    output_dir = Path(args.output_dir) if args.output_dir else run.strategy_dir(args.trial, args.strategy) / "deploy"
    table = tflite.export_rounds(run, splits, args.strategy, args.trial, formats, output_dir, args.test_limit,
                                 progress=lambda step: print(f"exporting {step}", flush=True))
    title = f"{run.directory.name} · trial {args.trial} · {args.strategy}"
    report.save_figure(report.deployment_figure(table, title), output_dir, "deploy")
    print(f"{run.directory} → {output_dir} ({tflite.DEPLOY_CSV}, deploy.png)")
    columns = ["round", "remaining", "format", "parameters", "bytes", "gzip_bytes", "test_acc", "latency_ms",
               "runtime", "builtin_latency_ms"]
    print(table[columns].to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        print("\ninterrupted: finished rounds are saved; run the same command again to resume", file=sys.stderr)
        return 130


def _dispatch(argv: list[str]) -> int:
    parser = build_parser(_invoked_as())
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        parser.error(f"{argv[0]!r} is not a command: choose one of {', '.join(COMMANDS)} "
                     f"(with only options, `run` is assumed)")
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "run")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from lottery_keras.data import DataError
    from lottery_keras.lottery.paths import RunInUseError
    from lottery_keras.lottery.pruning import PruningCrossCheckError

    commands = {"run": command_run, "report": command_report, "study": command_study, "export": command_export}
    try:
        return commands[args.command](args)
    except (ValueError, DataError, OSError, PruningCrossCheckError, RunInUseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
