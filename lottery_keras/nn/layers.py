"""Masked layers: Keras's `Dense` and `Conv2D` with a binary mask on the kernel as a non-trainable variable, and
a wrapper that masks the kernel of a standard Keras layer (for models of one's own, `nn/network.py`).

Invariant: `kernel == kernel * mask` at all times outside an optimizer step. The model's `train_step` restores it
after every update (`apply_mask`), and rewinding sets masked weights directly, so the forward pass is the Keras
layer's own: it reads the kernel as it is and pays for no extra multiply.
"""

from __future__ import annotations

import keras


class MaskedLayer(keras.layers.Layer):
    """Mask handling for a layer with a `kernel` variable: `build` builds the layer, then adds its mask.

    Listed before a Keras layer class among the bases (`class MaskedDense(MaskedLayer, keras.layers.Dense)`), so
    that the layer keeps its own arguments, variables and forward pass. `kind` names the layer's pruning-rate
    family ('fc' or 'conv'); a model declares which layer is its output layer, the third family. LoRA and
    quantization replace the kernel variable that the mask prunes, so masked layers refuse them.
    """

    kind: str
    kernel: keras.Variable
    mask: keras.Variable

    def build(self, input_shape):
        if self.quantization_mode is not None:
            raise _unsupported(self, f"quantized dtype policy ({self.quantization_mode})")
        super().build(input_shape)
        self.mask = self.add_weight(name="mask", shape=self.kernel.shape, initializer="ones", trainable=False)

    def apply_mask(self) -> None:
        """Zero the kernel wherever the mask is zero (runs on the device, inside compiled steps)."""
        self.kernel.assign(self.kernel * self.mask)

    def save_own_variables(self, store):
        """Save every variable in creation order, the mask included (kernel, bias, mask): Keras's `Dense` and
        `Conv2D` would save their kernel and bias only."""
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def enable_lora(self, *args, **kwargs):
        raise _unsupported(self, "LoRA")

    def quantize(self, mode=None, type_check=True, config=None):
        raise _unsupported(self, "quantization")


def _unsupported(layer: keras.layers.Layer, feature: str) -> NotImplementedError:
    return NotImplementedError(f"layer {layer.name} ({type(layer).__name__}) is masked: {feature} would replace "
                               "the kernel variable its mask prunes")


@keras.saving.register_keras_serializable(package="lottery_keras")
class MaskedDense(MaskedLayer, keras.layers.Dense):
    """`keras.layers.Dense` with a pruning mask on its kernel (a non-trainable variable `mask`, ones at build).

    Args:
        units: Positive integer, dimensionality of the output space.
        activation: Activation function to use (default: none).
        use_bias: Whether the layer adds a bias vector (never masked).
        kernel_initializer: Initializer for the kernel (Keras's default: "glorot_uniform").
        bias_initializer: Initializer for the bias.
        **kwargs: Every other argument of `keras.layers.Dense` (regularizers, constraints, `name`, `dtype`...),
            except `lora_rank` and a quantized `dtype`.
    """

    kind = "fc"


@keras.saving.register_keras_serializable(package="lottery_keras")
class MaskedConv2D(MaskedLayer, keras.layers.Conv2D):
    """`keras.layers.Conv2D` with a pruning mask on its kernel (a non-trainable variable `mask`, ones at build).

    Args:
        filters: Number of output channels.
        kernel_size: Int or tuple of 2 ints, the height and width of the kernel.
        strides: Int or tuple of 2 ints, the stride along height and width.
        padding: "valid" or "same".
        activation: Activation function to use (default: none).
        use_bias: Whether the layer adds a bias vector (never masked).
        kernel_initializer: Initializer for the kernel (Keras's default: "glorot_uniform").
        bias_initializer: Initializer for the bias.
        **kwargs: Every other argument of `keras.layers.Conv2D` (`data_format`, `dilation_rate`, `groups`,
            regularizers, constraints, `name`, `dtype`...), except `lora_rank` and a quantized `dtype`.
    """

    kind = "conv"


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
        return self.layer.bias

    @property
    def activation(self):
        return self.layer.activation

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "layer": keras.layers.deserialize(config["layer"])})
