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

from lottery_keras.catalog import INITIALIZERS, PRECISIONS, canonical_arch
from lottery_keras.data import DATASETS, canonical_name

PRUNING_SCOPES = ("layerwise", "global")
OWN_INIT = "own"  # the initializers a model of one's own declares, seeded from the trial's seed
MAX_LEARNING_RATE = 1.0
MAX_PRUNE_RATE = 0.99  # for new experiments; runs recorded before the limit still load
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


def adversarial_epsilon(dataset: str) -> float:
    return ADVERSARIAL_EPSILON.get(dataset, OWN_DATA_EPSILON)


@dataclasses.dataclass(frozen=True)
class Experiment:
    dataset: str
    arch: str
    init: str
    learning_rate: float
    batch_size: int
    iterations: int
    eval_every: int
    rounds: int
    prune_fc: float
    prune_conv: float
    prune_output: float
    pruning_scope: str = "layerwise"
    augment: bool = False
    seed: int = 0
    precision: str = "float32"
    train_subset: int | None = None  # use only the first N training samples (smoke runs, tests)
    rewind_iteration: int = 0  # survivors rewind to θ_K, the dense round's weights after K steps (0: θ0)
    warmup_iterations: int = 0  # linear learning-rate warm-up over the first steps
    lr_drops: tuple[int, ...] = ()  # steps at which the learning rate is multiplied by lr_drop_factor
    lr_drop_factor: float = 0.1
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


def directory_name(name: str) -> str:
    """`name` with every character a run directory's name cannot hold replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("-") or "model"


def _es667(dataset: str, arch: str) -> dict:
    dataset = canonical_name(dataset)
    return _es667_protocol(DATASETS[dataset].num_train, augment=dataset == "cifar10")


def _es667_protocol(train_size: int, augment: bool) -> dict:
    batch = 60  # Conv-6 too: the study's early-stop iterations are multiples of 45,000 / 60, not of 45,000 / 128
    return dict(init="he_normal", learning_rate=1.2e-3, batch_size=batch, iterations=40_000,
                eval_every=max(1, train_size // batch), rounds=16, prune_fc=0.3, prune_conv=0.3, prune_output=0.3,
                augment=augment)


_FRANKLE_LR = {"lenet300_100": 1.2e-3, "lenet5": 1.2e-3, "conv2": 2e-4, "conv4": 3e-4, "conv6": 3e-4}
_FRANKLE_ITERATIONS = {"lenet300_100": 50_000, "lenet5": 50_000, "conv2": 20_000, "conv4": 25_000, "conv6": 30_000}


def _frankle2019(dataset: str, arch: str) -> dict:
    fc = 0.2
    return dict(init="glorot_normal", learning_rate=_FRANKLE_LR[arch], batch_size=60,
                iterations=_FRANKLE_ITERATIONS[arch], eval_every=100, rounds=20, prune_fc=fc,
                prune_conv=0.15 if arch == "conv6" else 0.1, prune_output=fc / 2, augment=False)


PRESETS = {"es667": _es667, "frankle2019": _frankle2019}


def from_preset(preset: str, dataset: str, arch: str, **overrides) -> Experiment:
    """The preset's protocol for (dataset, arch), with `overrides` (None values ignored) on top.

    `prune_rate` sets all three per-layer-kind rates at once; the specific `prune_fc/conv/output` win over it.
    Global pruning uses the fc rate alone, so only that rate enters its hash.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    dataset, arch = canonical_name(dataset), canonical_arch(arch)
    epoch = DATASETS[dataset].num_train if preset == "es667" else None
    return Experiment(dataset=dataset, arch=arch, **_overridden(PRESETS[preset](dataset, arch), overrides, epoch))


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
    values = _es667_protocol(train_size, augment=data is None and canonical_name(dataset) == "cifar10")
    if model:
        values["init"] = OWN_INIT
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
