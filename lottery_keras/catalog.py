"""The names a user can ask for: architectures (one `ArchitectureSpec` each), weight initializers and precisions.

Plain data, free of TensorFlow, so that the configuration, the command line and the analysis validate names and
look up what an architecture needs without loading it; `nn/models.py` builds the model a spec names. Adding an
architecture is one `register_architecture` call (the built-ins are the entries below).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping

LAYER_KINDS = ("fc", "conv", "output")  # the pruning-rate families (`Experiment.rates_by_kind`)
FAST_PATHS = ("jit", "fused", "sharded", "sparse")  # the execution plan's optional paths (`train/plan.py`)


@dataclasses.dataclass(frozen=True)
class ArchitectureSpec:
    """Everything the toolkit knows about one built-in architecture.

    Args:
        name: The registry name (lower case; it names run directories).
        model: The `nn.models.MaskedModel` subclass that builds it, as "module:Class" (text, so that this module
            imports no TensorFlow).
        layer_kinds: The pruning-rate family of each masked layer, in order ('fc', 'conv' or 'output').
        model_args: Keyword arguments for `model` (e.g. `{"depth": 6}`).
        min_image_side: For a convolutional network, the smallest image height and width its pooling leaves at
            least 1×1.
        family: The paper's group of architectures whose claims apply to it ('lenet' or 'conv'; None: no claims).
        presets: Per preset name, the protocol values that differ by architecture (e.g. frankle2019's learning
            rate); a preset that needs values and has none here does not apply to the architecture.
        fast_paths: Per device ('cpu', 'gpu'), the execution plan's paths that measured faster for it
            (`FAST_PATHS`; benchmarks/bench_train.py).
        aliases: Other names the command line accepts.
    """

    name: str
    model: str
    layer_kinds: tuple[str, ...]
    model_args: Mapping[str, object] = dataclasses.field(default_factory=dict)
    min_image_side: int | None = None
    family: str | None = None
    presets: Mapping[str, Mapping[str, object]] = dataclasses.field(default_factory=dict)
    fast_paths: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if self.name != self.name.lower() or not self.name.replace("_", "").isalnum():
            raise ValueError(f"architecture name {self.name!r}: use lower-case letters, digits and _")
        if ":" not in self.model:
            raise ValueError(f"architecture {self.name}: model must be 'module:Class', not {self.model!r}")
        unknown_kinds = set(self.layer_kinds) - set(LAYER_KINDS)
        if unknown_kinds or self.layer_kinds[-1:] != ("output",):
            raise ValueError(f"architecture {self.name}: layer kinds are {', '.join(LAYER_KINDS)}, ending in one "
                             f"output layer, not {self.layer_kinds}")
        if self.convolutional != (self.min_image_side is not None):
            raise ValueError(f"architecture {self.name}: a convolutional network declares its min_image_side, a "
                             "dense one does not")
        unknown_paths = set().union(*self.fast_paths.values()) - set(FAST_PATHS) if self.fast_paths else set()
        if unknown_paths:
            raise ValueError(f"architecture {self.name}: unknown fast path(s) {', '.join(sorted(unknown_paths))}; "
                             f"choose from {', '.join(FAST_PATHS)}")
        object.__setattr__(self, "model_args", types.MappingProxyType(dict(self.model_args)))
        object.__setattr__(self, "presets", types.MappingProxyType({k: types.MappingProxyType(dict(v))
                                                                    for k, v in self.presets.items()}))
        object.__setattr__(self, "fast_paths", types.MappingProxyType({k: frozenset(v)
                                                                       for k, v in self.fast_paths.items()}))

    @property
    def convolutional(self) -> bool:
        return "conv" in self.layer_kinds

    def runs_fast_path(self, path: str, device: str) -> bool:
        """Whether `path` (one of `FAST_PATHS`) measured faster for this architecture on `device`."""
        return path in self.fast_paths.get(device, frozenset())


_ARCHITECTURES: dict[str, ArchitectureSpec] = {}
_ALIASES: dict[str, str] = {}


def register_architecture(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Make `spec` available by its name and aliases (`--arch`, `build_model`, presets, the execution plan).

    Args:
        spec: The architecture; its name and aliases must be new.

    Returns:
        `spec`, so that registering can be a module-level statement.
    """
    taken = [name for name in (spec.name, *spec.aliases) if name in _ARCHITECTURES or name in _ALIASES]
    if taken:
        raise ValueError(f"architecture name(s) {', '.join(taken)} are taken; choose another name")
    _ARCHITECTURES[spec.name] = spec
    _ALIASES.update({alias: spec.name for alias in spec.aliases})
    return spec


def architectures() -> tuple[str, ...]:
    """The registered architectures' names, in registration order."""
    return tuple(_ARCHITECTURES)


def aliases() -> dict[str, str]:
    """Alias → registry name."""
    return dict(_ALIASES)


def canonical_arch(name: str) -> str:
    """The registry name of an architecture, accepting aliases; raises ValueError naming the choices."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of: "
                         f"{', '.join(sorted([*_ARCHITECTURES, *_ALIASES]))}")
    return key


def architecture(name: str) -> ArchitectureSpec:
    """The spec of an architecture by name or alias; raises ValueError naming the choices."""
    return _ARCHITECTURES[canonical_arch(name)]


def _frankle2019(learning_rate: float, iterations: int, **more) -> dict[str, object]:
    """The paper's per-architecture values (its Figure 2 table); the rest of its protocol is in `config.py`."""
    return {"frankle2019": {"learning_rate": learning_rate, "iterations": iterations, **more}}


_MODELS = "lottery_keras.nn.models"
register_architecture(ArchitectureSpec(
    "lenet300_100", f"{_MODELS}:LeNetFC", ("fc", "fc", "output"), family="lenet",
    presets=_frankle2019(1.2e-3, 50_000), fast_paths={"cpu": {"jit", "sparse"}},
    aliases=("lenet_fc", "lenet-300-100")))
register_architecture(ArchitectureSpec(
    "lenet5", f"{_MODELS}:LeNet5", ("conv", "conv", "fc", "fc", "output"), min_image_side=12, family="lenet",
    presets=_frankle2019(1.2e-3, 50_000), fast_paths={"cpu": {"fused", "sharded"}}, aliases=("lenet_conv",)))
register_architecture(ArchitectureSpec(
    "conv2", f"{_MODELS}:ConvNet", ("conv", "conv", "fc", "fc", "output"), model_args={"depth": 2},
    min_image_side=2, family="conv", presets=_frankle2019(2e-4, 20_000)))
register_architecture(ArchitectureSpec(
    "conv4", f"{_MODELS}:ConvNet", ("conv",) * 4 + ("fc", "fc", "output"), model_args={"depth": 4},
    min_image_side=4, family="conv", presets=_frankle2019(3e-4, 25_000)))
register_architecture(ArchitectureSpec(
    "conv6", f"{_MODELS}:ConvNet", ("conv",) * 6 + ("fc", "fc", "output"), model_args={"depth": 6},
    min_image_side=8, family="conv", presets=_frankle2019(3e-4, 30_000, prune_conv=0.15)))

# glorot_normal: the paper's TensorFlow code; he_normal: PyTorch's kaiming_normal_ (fan_in, untruncated), which the
# ES667 study used and Keras's own "he_normal" (truncated) is not.
INITIALIZERS = ("glorot_normal", "he_normal")
# precision name → Keras dtype policy
PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
PRECISIONS = tuple(PRECISION_POLICIES)
