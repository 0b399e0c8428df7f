"""Which weights of a layer are pruned: tfmot's `PrunableLayer` protocol, a registry by layer type, and a default
for every other layer.

A layer's prunable weights are, in order of precedence:
1. what its own `get_prunable_weights()` returns (tfmot's `PrunableLayer` protocol, for custom layers);
2. what `register_prunable` declared for its class or the nearest base class that has an entry;
3. by default, its weights (its sublayers' included) named like the weight matrices of Keras's layers
   (`PRUNED_WEIGHT_NAMES`: the kernels of Dense, EinsumDense, every convolution and transposed convolution, both
   kernels of separable convolutions and of LSTM/GRU/SimpleRNN cells, Embedding's table), so MultiHeadAttention
   (its four EinsumDense kernels), Bidirectional RNNs and subclasses of the layers above prune too.
Biases, normalisation scales and other vectors are never pruned (as in tfmot).
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import keras

PRUNED_WEIGHT_NAMES = ("kernel", "recurrent_kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")
# The layer types whose weights quantization or adapters replace: pruning their kernels would prune nothing real.
_REFUSED_MODES = ("int8", "int4", "float8")

WeightsOf = Callable[[keras.layers.Layer], list]


@runtime_checkable
class PrunableLayer(Protocol):
    """A custom layer that says which of its weights to prune (tfmot's protocol, under its method name)."""

    def get_prunable_weights(self) -> list: ...


_REGISTRY: dict[type, WeightsOf] = {}


def register_prunable(layer_type: type, weights: WeightsOf) -> None:
    """Declare which weights of `layer_type` (and its subclasses without an entry of their own) are pruned.

    Args:
        layer_type: A `keras.layers.Layer` subclass.
        weights: A function from a built layer to the variables to prune (an empty list: leave the layer dense).
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, keras.layers.Layer)):
        raise TypeError(f"register_prunable takes a keras.layers.Layer subclass, not {layer_type!r}")
    if not callable(weights):
        raise TypeError(f"register_prunable: weights must be a function of the layer, not {type(weights).__name__}")
    _REGISTRY[layer_type] = weights


def prunable_weights(layer: keras.layers.Layer) -> list:
    """The variables of the built `layer` that pruning masks (see the module docstring)."""
    if isinstance(layer, PrunableLayer):
        return list(layer.get_prunable_weights())
    for base in type(layer).__mro__:
        if base in _REGISTRY:
            return list(_REGISTRY[base](layer))
    return [weight for weight in layer.weights if weight.name in PRUNED_WEIGHT_NAMES and len(weight.shape) >= 2]


def is_prunable(layer: keras.layers.Layer) -> bool:
    """Whether the built `layer` has weights to prune (and is not a model: models are pruned layer by layer)."""
    return not isinstance(layer, keras.Model) and bool(prunable_weights(layer))


def refusal(layer: keras.layers.Layer) -> str | None:
    """Why `layer` cannot be pruned although it has prunable weights, or None."""
    mode = getattr(layer, "quantization_mode", None)
    if mode in _REFUSED_MODES:
        return f"layer {layer.name} is quantized ({mode}); prune before quantizing"
    if getattr(layer, "lora_enabled", False):
        return f"layer {layer.name} has LoRA enabled, which replaces the kernel pruning would mask; prune first"
    return None
