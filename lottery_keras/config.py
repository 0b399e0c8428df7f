"""Experiment configuration: one frozen dataclass, named presets, and a hash that names the run directory.

Every field of `Experiment` that changes what a round produces goes into the hash: all but `rounds`, which only
says how far to go (a run extended by more rounds continues in its own directory), and, under global pruning,
the conv and output rates it does not use. A model or data of one's own enters by its fingerprint (`model`,
`data`), its name only naming the directory. How a run is executed (trials, strategies, folders, the execution
plan) is passed to the controller separately. Two commands that resolve to the same `Experiment` share a
directory and resume each other's work; any difference gives a new directory. Imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import re
import types
import typing
from typing import Callable

import numpy as np

from lottery_keras.catalog import INITIALIZERS, PRECISIONS, architecture, architectures, canonical_arch
from lottery_keras.data import DATASETS, canonical_name

PRUNING_SCOPES = ("layerwise", "global")
OWN_INIT = "own"  # the initializers a model of one's own declares, seeded from the trial's seed
OWN_MODEL_KEEPS = ("init", "precision")  # protocol fields a model of one's own decides itself
MAX_LEARNING_RATE = 1.0
MAX_PRUNE_RATE = 0.99  # for new experiments; runs recorded before the limit still load
# 250 × the ES667 protocol's 40,000 steps: a round that long trains for days, and each round holds its learning
# rates as one float32 per step (40 MB here); a larger count is a typo, not a protocol.
MAX_ITERATIONS = 10_000_000
# The robustness protocol (`run.py --robustness`, `train/evaluation.py`): each corruption's parameter at severities
# 1, 2, 3 (pixel scale [0, 1]), and the FGSM step per dataset; data of one's own, whose channels are scaled from
# their training range to [0, 1], takes the step of natural images.
CORRUPTIONS = {"gaussian_noise": ("σ", (0.08, 0.16, 0.32)), "gaussian_blur": ("σ px", (0.5, 1.0, 1.5)),
               "contrast": ("×", (0.6, 0.4, 0.2)), "rotation": ("°", (10.0, 20.0, 30.0))}
ADVERSARIAL_EPSILON = {"mnist": 0.05, "fashion_mnist": 0.05, "cifar10": 2 / 255}
OWN_DATA_EPSILON = 2 / 255


def _fits(value: object, hint: object) -> bool:
    """Whether a JSON value fits a field's type hint (JSON gives lists for tuples, ints for whole floats)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(item, typing.get_args(hint)[0]) for item in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return value is None if hint is type(None) else isinstance(value, hint)


def _check_subset(subset: int | None, train_size: int, dataset: str) -> None:
    """A ValueError when `--train-subset` asks for more samples than the training split holds."""
    if subset is not None and subset > train_size:
        raise ValueError(f"--train-subset {subset:,} exceeds the training split of {dataset}, which holds "
                         f"{train_size:,} samples; give at most {train_size} (leave it out to train on all)")


def adversarial_epsilon(dataset: str) -> float:
    return ADVERSARIAL_EPSILON.get(dataset, OWN_DATA_EPSILON)


def _steps(text: str) -> tuple[int, ...]:
    """A comma-separated list of training steps, e.g. `20000,30000`."""
    return tuple(int(part) for part in text.split(","))


def _nonzero_float32(value: float) -> bool:
    return bool(np.float32(value) != 0)


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of protocol value: what a keyword argument may be, how the command line reads it, and its range.

    Args:
        noun: What a keyword argument's value is, for messages ("an int").
        text: What the command line's text must hold, for messages ("a whole number").
        types: The Python types a keyword argument may have (bools are no numbers).
        parse: Reads a value from the command line's text; a ValueError for text that holds none.
        valid: Whether a value lies in the kind's range (every experiment, recorded ones too).
        requirement: What `valid` asks, for messages ("must be at least 1").
        items: For a list, its items' kind.
    """

    noun: str
    text: str
    types: tuple[type, ...]
    parse: Callable[[str], object] = str
    valid: Callable[[object], bool] = lambda value: True
    requirement: str = ""
    items: "Kind | None" = None

    def fits(self, value: object) -> bool:
        """Whether `value` is of the kind's types (bools are only switches; a list's items of `items`)."""
        if isinstance(value, (bool, np.bool_)) and bool not in self.types:
            return False
        if not isinstance(value, self.types):
            return False
        return self.items is None or all(self.items.fits(item) for item in value)


_INTEGER = Kind("an int", "a whole number", (numbers.Integral,), int)
KINDS = {
    "count": dataclasses.replace(_INTEGER, valid=lambda value: value >= 1, requirement="must be at least 1"),
    "natural": dataclasses.replace(_INTEGER, valid=lambda value: value >= 0, requirement="must be 0 or more"),
    "integer": _INTEGER,
    "positive": Kind("a number", "a number", (numbers.Real,), float,
                     lambda value: value > 0 and _nonzero_float32(value),
                     "must be positive (and not round to 0 in float32)"),
    "rate": Kind("a number", "a number", (numbers.Real,), float,
                 lambda value: 0 < value < 1 and _nonzero_float32(value),
                 "must be a fraction strictly between 0 and 1 (0.2 for 20 %) that does not round to 0 in float32"),
    "steps": Kind("a list of ints", "a comma-separated list of steps (e.g. 20000,30000)", (list, tuple), _steps,
                  items=_INTEGER),
    "choice": Kind("a str", "a name", (str,)),
    "switch": Kind("a bool", "a switch", (bool, np.bool_)),
}


@dataclasses.dataclass(frozen=True)
class Option:
    """How a protocol field is given, checked and recorded: the command line's `--flag` and `--help` text,
    `find_ticket`'s keyword, its range, and whether it enters the run hash.

    Args:
        kind: A key of `KINDS`: 'count' (a whole number ≥ 1), 'natural' (≥ 0), 'integer', 'positive' (a number
            > 0), 'rate' (a fraction in (0, 1)), 'steps' (comma-separated steps), 'choice' (one of `choices`) or
            'switch' (--x / --no-x).
        help: One line for `--help` and `find_ticket`'s docstring.
        flag: The command-line flag (default: the field's name with dashes).
        metavar: The value's placeholder in `--help`.
        choices: For 'choice', the accepted values.
        maximum: The largest value a new experiment takes (recorded ones beyond it still load).
        why: Why, said after the maximum in the refusal.
        in_hash: Whether the field enters the run hash: a bool, or a predicate of the experiment that says where
            it does (a field that does not act on a run leaves its name alone).
        added_later: The field came after runs were published: at its default it is left out of config.json and
            the hash, so those runs keep their names.
    """

    kind: str
    help: str | None = None
    flag: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    maximum: float | None = None
    why: str = ""
    in_hash: bool | Callable[["Experiment"], bool] = True
    added_later: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown option kind {self.kind!r}; choose one of: {', '.join(KINDS)}")

    def flag_for(self, name: str) -> str:
        """The command-line flag of the field `name`."""
        return self.flag or f"--{name.replace('_', '-')}"

    def requirement_missed(self, value: object, new: bool) -> str | None:
        """What `value` misses of the field's range ("must be at least 1"), or None.

        Args:
            value: A value of the field's kind.
            new: Hold it to `maximum` too (a new experiment, not a recorded one).
        """
        if self.kind == "choice":
            return None if value in self.choices else f"must be one of: {', '.join(self.choices)}"
        if new and self.maximum is not None and value > self.maximum:
            limit = f"{self.maximum:,}" if isinstance(self.maximum, int) else f"{self.maximum:g}"
            return f"must be at most {limit}{self.why}"
        return None if KINDS[self.kind].valid(value) else KINDS[self.kind].requirement

    def out_of_range(self, name: str, value: object, new: bool) -> str | None:
        """The one line that refuses `value` for the field `name`, or None where it is in range."""
        missed = self.requirement_missed(value, new)
        if missed is None:
            return None
        if self.kind == "choice":
            return f"unknown {name.replace('_', ' ')} {value!r}; choose one of: {', '.join(self.choices)}"
        shown = f"{value:,}" if isinstance(value, int) else value
        return f"{self.flag_for(name)} {missed}, not {shown}"


_RATE_LIMIT = " (a round that prunes more leaves under 1 % of a layer)"


def _layerwise(experiment: "Experiment") -> bool:
    """Whether the per-kind rates act: global pruning uses the fc rate alone."""
    return experiment.pruning_scope != "global"


def _drops_learning_rate(experiment: "Experiment") -> bool:
    """Whether the drop factor acts: only where there are drops."""
    return bool(experiment.lr_drops)


def _protocol(option: Option, default: object = dataclasses.MISSING):
    """A field of the protocol, which the command line and `find_ticket` take as an override of the preset."""
    return dataclasses.field(default=default, metadata={"option": option})


def _identity(default: None = None):
    """A fingerprint of one's own model or data, added after runs were published (left out of them at None)."""
    return dataclasses.field(default=default, metadata={"added_later": True})


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment: what is trained, on what, and the protocol (the fields with an `Option`), hashed into the
    run directory's name."""

    dataset: str
    arch: str
    init: str = _protocol(Option("choice", "how θ0 is drawn", choices=INITIALIZERS))
    learning_rate: float = _protocol(Option("positive", "Adam learning rate", flag="--lr",
                                            maximum=MAX_LEARNING_RATE, why=" (Adam diverges beyond)"))
    batch_size: int = _protocol(Option("count", "samples per training step"))
    iterations: int = _protocol(Option("count", "training iterations per round", maximum=MAX_ITERATIONS,
                                       why=" per round (250 × the ES667 protocol's 40,000, already days of "
                                           "training)"))
    eval_every: int = _protocol(Option("count", "iterations between validation evaluations"))
    rounds: int = _protocol(Option("count", "IMP rounds; round 1 trains the dense network", in_hash=False))
    prune_fc: float = _protocol(Option("rate", "rate for fully-connected layers", maximum=MAX_PRUNE_RATE,
                                       why=_RATE_LIMIT))
    prune_conv: float = _protocol(Option("rate", "rate for convolutional layers", maximum=MAX_PRUNE_RATE,
                                         why=_RATE_LIMIT, in_hash=_layerwise))
    prune_output: float = _protocol(Option("rate", "rate for the output layer", maximum=MAX_PRUNE_RATE,
                                           why=_RATE_LIMIT, in_hash=_layerwise))
    pruning_scope: str = _protocol(Option("choice", "layerwise, or one global magnitude threshold at the fc "
                                          "rate", choices=PRUNING_SCOPES), "layerwise")
    augment: bool = _protocol(Option("switch", "random crop + flip (es667: on for CIFAR-10 only)"), False)
    seed: int = _protocol(Option("natural", "seed of trial 0 (θ0, data order, random masks)", maximum=2**31 - 1,
                                 why=" (NumPy and TensorFlow seeds are 32-bit)"), 0)
    precision: str = _protocol(Option("choice", "compute precision (bfloat16: mixed, with float32 variables)",
                                      choices=PRECISIONS), "float32")
    train_subset: int | None = _protocol(Option("count", "train on this many first training samples only (smoke runs)",
                                                metavar="N"), None)
    rewind_iteration: int = _protocol(Option(
        "natural", "late rewinding: survivors rewind to the dense round's weights after this many steps and "
        "train the remaining ones (0: θ0)", metavar="K", added_later=True), 0)
    warmup_iterations: int = _protocol(Option("natural", "linear learning-rate warm-up over this many first steps",
                                              flag="--warmup", metavar="STEPS", added_later=True), 0)
    lr_drops: tuple[int, ...] = _protocol(Option(
        "steps", "steps at which the learning rate is multiplied by the drop factor", metavar="S1,S2,…",
        added_later=True), ())
    lr_drop_factor: float = _protocol(Option("positive", "factor of each learning-rate drop", metavar="F",
                                             in_hash=_drops_learning_rate, added_later=True), 0.1)
    model: str | None = _identity()  # a network of one's own (`nn/network.py`): its fingerprint; `arch` its name
    data: str | None = _identity()  # data of one's own: its fingerprint; `dataset` is its name

    def __post_init__(self):
        if self.data is None:
            object.__setattr__(self, "dataset", canonical_name(self.dataset))
        if self.model is None:
            object.__setattr__(self, "arch", canonical_arch(self.arch))
        object.__setattr__(self, "lr_drops", tuple(int(step) for step in self.lr_drops))  # a list, from JSON
        self._check_own_names()
        for name, option in protocol_fields().items():
            value = getattr(self, name)
            own_choice = self.model is not None and name in OWN_MODEL_KEEPS  # checked below
            problem = None if value is None or own_choice else option.out_of_range(name, value, new=False)
            if problem:
                raise ValueError(problem)
        if self.data is None:  # one's own data is checked against the batch size where it is loaded
            _check_subset(self.train_subset, DATASETS[self.dataset].num_train, self.dataset)
            train_size = min(DATASETS[self.dataset].num_train, self.train_subset or DATASETS[self.dataset].num_train)
            if self.batch_size > train_size:
                raise ValueError(f"batch size {self.batch_size} exceeds the {train_size} training samples")
        if not self.rewind_iteration < self.iterations:
            raise ValueError(f"--rewind-iteration must lie in 0 … {self.iterations - 1} (the dense round's steps), "
                             f"not {self.rewind_iteration}")
        if not self.warmup_iterations <= self.iterations:
            raise ValueError(f"--warmup must lie in 0 … {self.iterations} iterations, not {self.warmup_iterations}")
        if list(self.lr_drops) != sorted(set(self.lr_drops)) or not all(0 < s < self.iterations for s in self.lr_drops):
            raise ValueError(f"--lr-drops must be increasing steps between 1 and {self.iterations - 1}, not "
                             f"{','.join(map(str, self.lr_drops))}")
        if not self.lr_drop_factor <= 1:
            raise ValueError(f"--lr-drop-factor must lie in (0, 1], not {self.lr_drop_factor}")
        if self.model is not None and (self.init != OWN_INIT or self.precision != "float32"):
            raise ValueError(f"a model of one's own keeps its own initializers and dtypes (init {OWN_INIT!r}, "
                             f"precision float32), not init {self.init!r}, precision {self.precision!r}")

    def _check_own_names(self) -> None:
        for field, value in (("arch", self.arch), ("dataset", self.dataset)):
            if not NAME_PATTERN.fullmatch(value):
                raise ValueError(f"{field} {value!r} cannot name a run directory: use letters, digits and _ . -")

    @property
    def builtin_arch(self) -> str | None:
        """The architecture's registry name, None for a model of one's own."""
        return None if self.model else self.arch

    def to_dict(self) -> dict:
        """The fields as JSON would give them back; fields added after runs were published are left out at their
        defaults (`Option.added_later`), so those runs keep their names and configuration files."""
        fields = dataclasses.asdict(self)
        fields["lr_drops"] = list(self.lr_drops)
        left_out = {field.name for field in dataclasses.fields(self) if _added_later(field)
                    and getattr(self, field.name) == field.default}
        return {key: value for key, value in fields.items() if key not in left_out}

    @classmethod
    def from_dict(cls, values: dict) -> "Experiment":
        """The experiment `to_dict` recorded; a field missing, unknown or of the wrong type is a ValueError naming
        it."""
        hints = typing.get_type_hints(cls)
        required = [field.name for field in dataclasses.fields(cls) if field.default is dataclasses.MISSING]
        missing = [name for name in required if name not in values]
        unknown = sorted(set(values) - set(hints))
        wrong = [f"{name} ({values[name]!r})" for name in values if name in hints and not _fits(values[name],
                                                                                                 hints[name])]
        for problem, names in (("lacks", missing), ("has unknown fields", unknown), ("has wrongly typed", wrong)):
            if names:
                raise ValueError(f"the record {problem} {', '.join(names)}")
        return cls(**values)

    @property
    def hash(self) -> str:
        """The run directory's hash: the fields that act on this experiment's rounds (`Option.in_hash`)."""
        unused = {name for name, option in protocol_fields().items()
                  if not (option.in_hash(self) if callable(option.in_hash) else option.in_hash)}
        hashed = {key: value for key, value in self.to_dict().items() if key not in unused}
        return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def run_name(self) -> str:
        return f"{self.dataset}-{self.arch}-{self.hash}"

    @property
    def rates_by_kind(self) -> dict[str, float]:
        """Pruning rate per layer kind ('fc', 'conv', 'output', as the models declare them); layerwise scope."""
        return {"fc": self.prune_fc, "conv": self.prune_conv, "output": self.prune_output}


NAME_PATTERN = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
# A protocol override that is no field: all three per-kind rates at once (`from_preset`).
PRUNE_RATE = Option("rate", "fraction of surviving weights pruned per round, every layer", maximum=MAX_PRUNE_RATE,
                    why=_RATE_LIMIT)


def protocol_fields() -> dict[str, Option]:
    """The fields of `Experiment` that make up the protocol, with their options, in declaration order."""
    return {field.name: field.metadata["option"] for field in dataclasses.fields(Experiment)
            if "option" in field.metadata}


def protocol_options() -> dict[str, Option]:
    """Every protocol override the command line and `find_ticket` take, in declaration order (`prune_rate` before
    the per-kind rates it sets)."""
    options = {}
    for name, option in protocol_fields().items():
        if name == "prune_fc":
            options["prune_rate"] = PRUNE_RATE
        options[name] = option
    return options


def _added_later(field: dataclasses.Field) -> bool:
    option = field.metadata.get("option")
    return option.added_later if option else field.metadata.get("added_later", False)


def directory_name(name: str) -> str:
    """`name` with every character a run directory's name cannot hold replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("-") or "model"


def _es667(dataset: str, arch: str) -> dict:
    dataset = canonical_name(dataset)
    return es667_protocol(DATASETS[dataset].num_train, augment=dataset == "cifar10")


def es667_protocol(train_size: int, augment: bool) -> dict:
    """The ES667 study's protocol values for `train_size` training samples (an evaluation every epoch)."""
    batch = 60  # Conv-6 too: the study's early-stop iterations are multiples of 45,000 / 60, not of 45,000 / 128
    return dict(init="he_normal", learning_rate=1.2e-3, batch_size=batch, iterations=40_000,
                eval_every=max(1, train_size // batch), rounds=16, prune_fc=0.3, prune_conv=0.3, prune_output=0.3,
                augment=augment)


def _frankle2019(dataset: str, arch: str) -> dict:
    """The paper's protocol; its learning rate and iterations (and Conv-6's conv rate) are per architecture, in
    each `ArchitectureSpec.presets`, which `from_preset` lays over these values."""
    if "frankle2019" not in architecture(arch).presets:
        raise ValueError(f"the frankle2019 preset has no protocol for {arch} (the paper trains "
                         f"{', '.join(_archs_with_preset('frankle2019'))}); use --preset es667")
    fc = 0.2
    return dict(init="glorot_normal", batch_size=60, eval_every=100, rounds=20, prune_fc=fc, prune_conv=0.1,
                prune_output=fc / 2, augment=False)


def _archs_with_preset(preset: str) -> list[str]:
    return [name for name in architectures() if preset in architecture(name).presets]


PRESETS = {"es667": _es667, "frankle2019": _frankle2019}


def from_preset(preset: str, dataset: str, arch: str, **overrides) -> Experiment:
    """The preset's protocol for (dataset, arch), with the architecture's own values for the preset
    (`ArchitectureSpec.presets`) and `overrides` (None values ignored) on top.

    `prune_rate` sets all three per-layer-kind rates at once; the specific `prune_fc/conv/output` win over it.
    Global pruning uses the fc rate alone, so only that rate enters its hash.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    dataset, arch = canonical_name(dataset), canonical_arch(arch)
    epoch = DATASETS[dataset].num_train if preset == "es667" else None
    values = {**PRESETS[preset](dataset, arch), **architecture(arch).presets.get(preset, {})}
    return Experiment(dataset=dataset, arch=arch, **_overridden(values, overrides, epoch))


def _overridden(values: dict, overrides: dict, epoch: int | None) -> dict:
    """A protocol's `values` with `overrides` (None values ignored) on top: `prune_rate` sets the three rates (the
    specific ones win), a new batch size re-derives an evaluation every epoch of `epoch` samples (None: the
    protocol's interval stays), and global pruning refuses the rates it does not use."""
    overrides = {key: value for key, value in overrides.items() if value is not None}
    rate = overrides.pop("prune_rate", None)
    if rate is not None:
        values.update(prune_fc=rate, prune_conv=rate, prune_output=rate)
    if "batch_size" in overrides and "eval_every" not in overrides and epoch is not None:
        values["eval_every"] = max(1, epoch // overrides["batch_size"])
    unknown = set(overrides) - {field.name for field in dataclasses.fields(Experiment)}
    if unknown:
        raise ValueError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    options = protocol_options()
    for name, value in {**overrides, **({"prune_rate": rate} if rate is not None else {})}.items():
        problem = options[name].out_of_range(name, value, new=True) if name in options else None
        if problem:
            raise ValueError(problem)
    if values.get("pruning_scope") == "global" and {"prune_conv", "prune_output"} & set(overrides):
        raise ValueError("global pruning uses one rate for all layers (--prune-fc or --prune-rate); "
                         "--prune-conv and --prune-output apply to layerwise pruning only")
    return values


def for_own(arch: str, dataset: str, train_size: int, model: str | None = None, data: str | None = None,
            **overrides) -> Experiment:
    """The es667 protocol for a network of one's own (fingerprint `model`, named `arch`) or data of one's own
    (fingerprint `data`, named `dataset`, `train_size` training samples), or both, with `overrides` (None values
    ignored) on top: an evaluation every epoch, augmentation for CIFAR-10 only. A ValueError for impossible
    values."""
    values = es667_protocol(train_size, augment=data is None and canonical_name(dataset) == "cifar10")
    if model:
        values["init"] = OWN_INIT
    _check_subset(overrides.get("train_subset"), train_size, dataset)
    values = _overridden(values, overrides, min(train_size, overrides.get("train_subset") or train_size))
    return Experiment(dataset=directory_name(dataset) if data else dataset,
                      arch=directory_name(arch) if model else arch, model=model, data=data, **values)


def preset_of(experiment: Experiment) -> str | None:
    """The preset whose protocol `experiment` follows (whatever its seed and number of rounds), or None."""
    for name in PRESETS:
        try:
            protocol = from_preset(name, experiment.dataset, experiment.arch, seed=experiment.seed,
                                   rounds=experiment.rounds)
        except (KeyError, ValueError):  # the preset has no protocol for this architecture
            continue
        if protocol == experiment:
            return name
    return None
