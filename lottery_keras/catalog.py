"""The names a user can ask for: architectures (with aliases), weight initializers and precisions.

Plain data, free of TensorFlow, so that the configuration and the command line validate names without loading
it; `nn/models.py` maps each name to the Keras object it stands for.
"""

from __future__ import annotations

ARCHITECTURES = ("lenet300_100", "lenet5", "conv2", "conv4", "conv6")
ARCH_ALIASES = {"lenet_fc": "lenet300_100", "lenet-300-100": "lenet300_100", "lenet_conv": "lenet5"}
# glorot_normal: the paper's TensorFlow code; he_normal: PyTorch's kaiming_normal_ (fan_in, untruncated), which the
# ES667 study used and Keras's own "he_normal" (truncated) is not.
INITIALIZERS = ("glorot_normal", "he_normal")
# precision name → Keras dtype policy
PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
PRECISIONS = tuple(PRECISION_POLICIES)


def canonical_arch(name: str) -> str:
    """The registry name of an architecture, accepting aliases; raises ValueError naming the choices."""
    key = ARCH_ALIASES.get(name.lower(), name.lower())
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of: "
                         f"{', '.join(sorted([*ARCHITECTURES, *ARCH_ALIASES]))}")
    return key
