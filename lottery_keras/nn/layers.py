"""Masked layers: a dense and a 2-D convolution layer whose binary mask is a non-trainable variable, and a wrapper
that masks the kernel of a standard Keras layer (for models of one's own, `nn/network.py`).

Invariant: `kernel == kernel * mask` at all times outside an optimizer step. The model's `train_step` restores it
after every update (`apply_mask`), and rewinding sets masked weights directly, so the forward pass reads the
kernel as it is and pays for no extra multiply.
"""

from __future__ import annotations

import keras
from keras import ops


class MaskedLayer(keras.layers.Layer):
    """Common mask handling; subclasses create `self.kernel` and call `_add_mask` in `build`.

    `kind` names the layer's pruning-rate family ('fc' or 'conv'); a model declares which layer is its output
    layer, the third family.
    """

    kind: str
    kernel: keras.Variable
    mask: keras.Variable

    def _add_mask(self) -> None:
        self.mask = self.add_weight(name="mask", shape=self.kernel.shape, initializer="ones", trainable=False)

    def apply_mask(self) -> None:
        """Zero the kernel wherever the mask is zero (runs on the device, inside compiled steps)."""
        self.kernel.assign(self.kernel * self.mask)


@keras.saving.register_keras_serializable(package="lottery_keras")
class MaskedDense(MaskedLayer):
    """`Dense` with a pruning mask on its kernel."""

    kind = "fc"

    def __init__(self, units: int, activation=None, kernel_initializer="glorot_normal",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
        self._add_mask()

    def call(self, inputs):
        return self.activation(ops.matmul(inputs, self.kernel) + self.bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


@keras.saving.register_keras_serializable(package="lottery_keras")
class MaskedConv2D(MaskedLayer):
    """`Conv2D` (channels last, square kernel and stride) with a pruning mask on its kernel."""

    kind = "conv"

    def __init__(self, filters: int, kernel_size: int, padding: str = "valid", activation=None,
                 kernel_initializer="glorot_normal", bias_initializer="zeros", strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', not {padding!r}")
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        shape = (self.kernel_size, self.kernel_size, input_shape[-1], self.filters)
        self.kernel = self.add_weight(name="kernel", shape=shape, initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
        self._add_mask()

    def call(self, inputs):
        return self.activation(ops.conv(inputs, self.kernel, strides=self.strides, padding=self.padding) + self.bias)

    def compute_output_shape(self, input_shape):
        height, width = (self._output_size(size) for size in input_shape[1:3])
        return (input_shape[0], height, width, self.filters)

    def _output_size(self, size: int | None) -> int | None:
        if size is None:
            return None
        if self.padding == "same":
            return -(-size // self.strides)
        return (size - self.kernel_size) // self.strides + 1

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


# The standard Keras layers a wrapper can mask, and each one's pruning-rate family. Exact types only: a subclass may
# compute something else with its kernel.
PRUNABLE_LAYERS = {keras.layers.Dense: "fc", keras.layers.Conv1D: "conv", keras.layers.Conv2D: "conv",
                   keras.layers.Conv3D: "conv", keras.layers.DepthwiseConv2D: "conv"}


def is_prunable(layer: keras.layers.Layer) -> bool:
    return type(layer) in PRUNABLE_LAYERS


def prunable_names() -> str:
    return ", ".join(layer_type.__name__ for layer_type in PRUNABLE_LAYERS)


@keras.saving.register_keras_serializable(package="lottery_keras")
class MaskedWrapper(MaskedLayer, keras.layers.Wrapper):
    """A standard Keras layer (`PRUNABLE_LAYERS`) with a pruning mask on its kernel; named as the layer it wraps.

    Like the masked layers above, it leaves keeping `kernel == kernel * mask` to the model's training step."""

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        if not is_prunable(layer):
            raise ValueError(f"layer {layer.name} ({type(layer).__name__}) cannot be pruned; prunable layers: "
                             f"{prunable_names()}")
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)

    @property
    def kind(self) -> str:
        return PRUNABLE_LAYERS[type(self.layer)]

    @property
    def kernel(self) -> keras.Variable:
        return self.layer.kernel

    @property
    def bias(self) -> keras.Variable | None:
        return self.layer.bias if self.layer.use_bias else None

    @property
    def activation(self):
        return self.layer.activation

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._add_mask()
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "layer": keras.layers.deserialize(config["layer"])})
