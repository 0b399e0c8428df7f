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
import re
import types
import typing

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


@dataclasses.dataclass(frozen=True)
class Option:
    """How a protocol field is given: the command line's `--flag` and `--help` text, `find_ticket`'s keyword.

    Args:
        kind: The kind of value, which the command line parses and bounds: 'count' (a whole number ≥ 1),
            'natural' (≥ 0), 'integer', 'positive' (a number > 0), 'rate' (a fraction in (0, MAX_PRUNE_RATE]),
            'steps' (comma-separated steps), 'choice' (one of `choices`) or 'switch' (--x / --no-x).
        help: One line for `--help` and `find_ticket`'s docstring.
        flag: The command-line flag (default: the field's name with dashes).
        metavar: The value's placeholder in `--help`.
        choices: For 'choice', the accepted values.
    """

    kind: str
    help: str | None = None
    flag: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] = ()


def _protocol(option: Option, default: object = dataclasses.MISSING):
    """A field of the protocol, which the command line and `find_ticket` take as an override of the preset."""
    return dataclasses.field(default=default, metadata={"option": option})


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment: what is trained, on what, and the protocol (the fields with an `Option`), hashed into the
    run directory's name."""

    dataset: str
    arch: str
    init: str = _protocol(Option("choice", "how θ0 is drawn", choices=INITIALIZERS))
    learning_rate: float = _protocol(Option("positive", "Adam learning rate", flag="--lr"))
    batch_size: int = _protocol(Option("count", "samples per training step"))
    iterations: int = _protocol(Option("count", "training iterations per round"))
    eval_every: int = _protocol(Option("count", "iterations between validation evaluations"))
    rounds: int = _protocol(Option("count", "IMP rounds; round 1 trains the dense network"))
    prune_fc: float = _protocol(Option("rate", "rate for fully-connected layers"))
    prune_conv: float = _protocol(Option("rate", "rate for convolutional layers"))
    prune_output: float = _protocol(Option("rate", "rate for the output layer"))
    pruning_scope: str = _protocol(Option("choice", "layerwise, or one global magnitude threshold at the fc "
                                          "rate", choices=PRUNING_SCOPES), "layerwise")
    augment: bool = _protocol(Option("switch", "random crop + flip (es667: on for CIFAR-10 only)"), False)
    seed: int = _protocol(Option("integer", "seed of trial 0 (θ0, data order, random masks)"), 0)
    precision: str = _protocol(Option("choice", "compute precision (bfloat16: mixed, with float32 variables)",
                                              choices=PRECISIONS), "float32")
    train_subset: int | None = _protocol(Option("count", "train on this many first training samples only (smoke runs)",
                                                metavar="N"), None)
    rewind_iteration: int = _protocol(Option(
        "natural", "late rewinding: survivors rewind to the dense round's weights after this many steps and "
        "train the remaining ones (0: θ0)", metavar="K"), 0)
    warmup_iterations: int = _protocol(Option("natural", "linear learning-rate warm-up over this many first steps",
                                              flag="--warmup", metavar="STEPS"), 0)
    lr_drops: tuple[int, ...] = _protocol(Option(
        "steps", "steps at which the learning rate is multiplied by the drop factor", metavar="S1,S2,…"), ())
    lr_drop_factor: float = _protocol(Option("positive", "factor of each learning-rate drop",
                                             metavar="F"), 0.1)
    model: str | None = None  # a network of one's own (`nn/network.py`): its fingerprint; `arch` is its name
    data: str | None = None  # data of one's own: its fingerprint; `dataset` is its name

    def __post_init__(self):
        if self.data is None:
            object.__setattr__(self, "dataset", canonical_name(self.dataset))
        if self.model is None:
            object.__setattr__(self, "arch", canonical_arch(self.arch))
        object.__setattr__(self, "lr_drops", tuple(int(step) for step in self.lr_drops))  # a list, from JSON
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train subset must be at least 1 sample, not {self.train_subset}")
        if self.data is None:  # one's own data is checked against the batch size where it is loaded
            _check_subset(self.train_subset, DATASETS[self.dataset].num_train, self.dataset)
            train_size = min(DATASETS[self.dataset].num_train, self.train_subset or DATASETS[self.dataset].num_train)
            if self.batch_size > train_size:
                raise ValueError(f"batch size {self.batch_size} exceeds the {train_size} training samples")
        self._check_own_names()
        for name in ("prune_fc", "prune_conv", "prune_output"):
            rate = getattr(self, name)
            if not 0.0 < rate < 1.0 or np.float32(rate) == 0:
                raise ValueError(f"--{name.replace('_', '-')} must lie strictly between 0 and 1 (and not round to 0 "
                                 f"in float32), not {rate}")
        for name in ("batch_size", "iterations", "eval_every", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.iterations > MAX_ITERATIONS:
            raise ValueError(f"--iterations must be at most {MAX_ITERATIONS:,} per round (250 × the ES667 protocol's "
                             f"40,000, already days of training), not {self.iterations:,}")
        if not 0 < self.learning_rate <= MAX_LEARNING_RATE or np.float32(self.learning_rate) == 0:
            raise ValueError(f"--lr must be positive, at most {MAX_LEARNING_RATE:g} (Adam diverges beyond) and not "
                             f"round to 0 in float32, not {self.learning_rate}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"--seed must lie in 0 … 2**31 − 1, not {self.seed}")
        if not 0 <= self.rewind_iteration < self.iterations:
            raise ValueError(f"--rewind-iteration must lie in 0 … {self.iterations - 1} (the dense round's steps), "
                             f"not {self.rewind_iteration}")
        if not 0 <= self.warmup_iterations <= self.iterations:
            raise ValueError(f"--warmup must lie in 0 … {self.iterations} iterations, not {self.warmup_iterations}")
        if list(self.lr_drops) != sorted(set(self.lr_drops)) or not all(0 < s < self.iterations for s in self.lr_drops):
            raise ValueError(f"--lr-drops must be increasing steps between 1 and {self.iterations - 1}, not "
                             f"{','.join(map(str, self.lr_drops))}")
        if not 0 < self.lr_drop_factor <= 1:
            raise ValueError(f"--lr-drop-factor must lie in (0, 1], not {self.lr_drop_factor}")
        if self.model is None and self.init not in INITIALIZERS:
            raise ValueError(f"unknown init {self.init!r}; choose one of: {', '.join(INITIALIZERS)}")
        if self.model is not None and (self.init != OWN_INIT or self.precision != "float32"):
            raise ValueError(f"a model of one's own keeps its own initializers and dtypes (init {OWN_INIT!r}, "
                             f"precision float32), not init {self.init!r}, precision {self.precision!r}")
        if self.pruning_scope not in PRUNING_SCOPES:
            raise ValueError(f"unknown pruning scope {self.pruning_scope!r}; choose one of: "
                             f"{', '.join(PRUNING_SCOPES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")

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
        defaults, so those runs keep their names and configuration files."""
        fields = dataclasses.asdict(self)
        fields["lr_drops"] = list(self.lr_drops)
        return {key: value for key, value in fields.items()
                if key not in _LATER_FIELDS or value != _LATER_FIELDS[key]}

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
        unused = {"rounds"} | ({"prune_conv", "prune_output"} if self.pruning_scope == "global" else set())
        if not self.lr_drops:
            unused.add("lr_drop_factor")
        hashed = {key: value for key, value in self.to_dict().items() if key not in unused}
        return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def run_name(self) -> str:
        return f"{self.dataset}-{self.arch}-{self.hash}"

    @property
    def rates_by_kind(self) -> dict[str, float]:
        """Pruning rate per layer kind ('fc', 'conv', 'output', as the models declare them); layerwise scope."""
        return {"fc": self.prune_fc, "conv": self.prune_conv, "output": self.prune_output}


# Fields added after runs were published, with their defaults (see `Experiment.to_dict`).
_LATER_FIELDS = {"rewind_iteration": 0, "warmup_iterations": 0, "lr_drops": [], "lr_drop_factor": 0.1,
                 "model": None, "data": None}
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
# A protocol override that is no field: all three per-kind rates at once (`from_preset`).
PRUNE_RATE = Option("rate", "fraction of surviving weights pruned per round, every layer")


def protocol_options() -> dict[str, Option]:
    """Every protocol override the command line and `find_ticket` take, in declaration order (`prune_rate` before
    the per-kind rates it sets)."""
    options = {}
    for field in dataclasses.fields(Experiment):
        if "option" in field.metadata:
            if field.name == "prune_fc":
                options["prune_rate"] = PRUNE_RATE
            options[field.name] = field.metadata["option"]
    return options


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
    for name in ("prune_fc", "prune_conv", "prune_output"):
        if values[name] > MAX_PRUNE_RATE:
            raise ValueError(f"--{name.replace('_', '-')} must be at most {MAX_PRUNE_RATE:g} (a round that prunes "
                             f"more leaves under 1 % of a layer), not {values[name]}")
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
