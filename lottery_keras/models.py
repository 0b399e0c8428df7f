"""The lottery-ticket architectures as subclassed Keras models built from masked layers.

`MaskedModel.train_step` is Keras's own step (forward, loss, gradients, optimizer update) followed by re-applying
every mask on the device, so a pruned weight is exactly 0.0 after every step, whichever loop drives it (`fit` or
the compiled loop in `training.py`).
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np

from lottery_keras.conv_pool import conv_relu_pool
from lottery_keras.layers import MaskedConv2D, MaskedDense, MaskedLayer

INITIALIZERS = {
    # The paper's TensorFlow code used Glorot normal; the ES667 study used PyTorch's kaiming_normal_ (fan_in,
    # untruncated), which Keras's "he_normal" (truncated) is not.
    "glorot_normal": lambda seed: keras.initializers.GlorotNormal(seed=seed),
    "he_normal": lambda seed: keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal", seed=seed),
}


def kernel_initializer(name: str, seed: int | None, layer_index: int):
    """A seeded initializer per layer, so a (seed, architecture) pair always draws the same θ0."""
    if name not in INITIALIZERS:
        raise ValueError(f"unknown init {name!r}; choose one of: {', '.join(INITIALIZERS)}")
    return INITIALIZERS[name](None if seed is None else seed * 1000 + layer_index)


class MaskedModel(keras.Model):
    """Base class: masked-layer bookkeeping, the masked training step, and batch sharding.

    Subclasses define the network in two parts: `features` (the convolutional trunk, ending in a flat vector per
    sample) and `classify` (the dense head). `call` runs `features` on `batch_shards` consecutive parts of the
    batch and concatenates the results: the parts are independent chains of operations, so TensorFlow's inter-op
    threads run them on different cores at once (see `parallelism.py`, which sets `batch_shards`). The head runs
    once on the whole batch: its matrix products are small, and splitting them would only add operations. The
    loss, and so every gradient, is the whole batch's, up to float summation order.
    `fused_conv_pool` runs each "ReLU convolution, then 2×2 max-pool" block of the trunk as the fused CPU kernels
    of `conv_pool.py` (same results up to float summation order). Both are execution settings, set by the
    training loop, not part of the saved configuration.
    """

    def __init__(self, num_classes: int = 10, init: str = "glorot_normal", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.init = init
        self.seed = seed
        self.batch_shards = 1
        self.fused_conv_pool = False
        self._layer_count = 0

    def _kernel_init(self):
        self._layer_count += 1
        return kernel_initializer(self.init, self.seed, self._layer_count)

    def build(self, input_shape):
        # Subclassed models have no graph to infer shapes from: one forward pass creates every layer's variables
        # (also what `keras.models.load_model` relies on to restore a saved ticket).
        self.call(keras.ops.zeros((1, *input_shape[1:])))

    def call(self, inputs):
        return self.classify(self._sharded_features(inputs))

    def _sharded_features(self, inputs):
        batch = inputs.shape[0]  # shards need a batch size known when the graph is built
        if self.batch_shards == 1 or batch is None or batch < self.batch_shards:
            return self.features(inputs)
        bounds = [batch * i // self.batch_shards for i in range(self.batch_shards + 1)]
        parts = [self.features(inputs[start:end]) for start, end in zip(bounds, bounds[1:])]
        return keras.ops.concatenate(parts, axis=0)

    def features(self, x):
        """The per-sample trunk (what batch shards split), ending in one flat vector per sample."""
        raise NotImplementedError

    def classify(self, x):
        """The dense head, on the whole batch's features."""
        raise NotImplementedError

    def conv_pool(self, conv: MaskedConv2D, x):
        """`self.pool(conv(x))` for a ReLU convolution: the fused kernels when `fused_conv_pool` is set (and the
        layer is built and computes in float32, which the kernels require), else the layers."""
        if self.fused_conv_pool and conv.built and conv.compute_dtype == "float32":
            return conv_relu_pool(x, conv.kernel.value, conv.bias.value, conv.padding)
        return self.pool(conv(x))

    def masked_layers(self) -> list[MaskedLayer]:
        """Prunable layers in forward order (the last one is the output layer)."""
        return [layer for layer in self._flatten_layers(include_self=False) if isinstance(layer, MaskedLayer)]

    def apply_masks(self) -> None:
        for layer in self.masked_layers():
            layer.apply_mask()

    def get_masks(self) -> dict[str, np.ndarray]:
        return {layer.name: keras.ops.convert_to_numpy(layer.mask) for layer in self.masked_layers()}

    def set_masks(self, masks: dict[str, np.ndarray]) -> None:
        """Install masks (by layer name) and zero the kernels they prune."""
        layers = {layer.name: layer for layer in self.masked_layers()}
        if set(masks) != set(layers):
            raise ValueError(f"masks are for layers {sorted(masks)}, this model has {sorted(layers)}")
        for name, mask in masks.items():
            layers[name].mask.assign(np.asarray(mask, dtype="float32"))
        self.apply_masks()

    def train_step(self, data):
        metrics = super().train_step(data)
        self.apply_masks()
        return metrics

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "init": self.init, "seed": self.seed}


@keras.saving.register_keras_serializable(package="lottery_keras")
class LeNetFC(MaskedModel):
    """LeNet-300-100: a fully-connected 784-300-100-10 ReLU network."""

    def __init__(self, hidden: tuple[int, ...] = (300, 100), **kwargs):
        super().__init__(**kwargs)
        self.hidden = tuple(hidden)
        self.flatten = keras.layers.Flatten()
        self.fc = [MaskedDense(units, "relu", self._kernel_init(), name=f"fc{i + 1}")
                   for i, units in enumerate(self.hidden)]
        self.out = MaskedDense(self.num_classes, None, self._kernel_init(), name="output")

    def features(self, x):
        return self.flatten(x)

    def classify(self, x):
        for layer in self.fc:
            x = layer(x)
        return self.out(x)

    def get_config(self):
        return {**super().get_config(), "hidden": list(self.hidden)}


@keras.saving.register_keras_serializable(package="lottery_keras")
class LeNet5(MaskedModel):
    """LeNet-5: conv 6@5×5 (same) → pool → conv 16@5×5 → pool → fc 120 → 84 → 10 (61,470 weights on 28×28)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = MaskedConv2D(6, 5, "same", "relu", self._kernel_init(), name="conv1")
        self.conv2 = MaskedConv2D(16, 5, "valid", "relu", self._kernel_init(), name="conv2")
        self.pool = keras.layers.MaxPooling2D(2)
        self.flatten = keras.layers.Flatten()
        self.fc1 = MaskedDense(120, "relu", self._kernel_init(), name="fc1")
        self.fc2 = MaskedDense(84, "relu", self._kernel_init(), name="fc2")
        self.out = MaskedDense(self.num_classes, None, self._kernel_init(), name="output")

    def features(self, x):
        return self.flatten(self.conv_pool(self.conv2, self.conv_pool(self.conv1, x)))

    def classify(self, x):
        return self.out(self.fc2(self.fc1(x)))


@keras.saving.register_keras_serializable(package="lottery_keras")
class ConvNet(MaskedModel):
    """Conv-2/4/6 (Frankle & Carbin, Figure 2): pairs of 3×3 convs (64, 128, 256) each followed by max-pooling,
    then fc 256 → 256 → 10."""

    def __init__(self, depth: int = 2, **kwargs):
        super().__init__(**kwargs)
        if depth not in (2, 4, 6):
            raise ValueError(f"ConvNet depth must be 2, 4 or 6, not {depth}")
        self.depth = depth
        filters = [64, 64, 128, 128, 256, 256][:depth]
        self.convs = [MaskedConv2D(f, 3, "same", "relu", self._kernel_init(), name=f"conv{i + 1}")
                      for i, f in enumerate(filters)]
        self.pool = keras.layers.MaxPooling2D(2)
        self.flatten = keras.layers.Flatten()
        self.fc = [MaskedDense(256, "relu", self._kernel_init(), name=f"fc{i + 1}") for i in range(2)]
        self.out = MaskedDense(self.num_classes, None, self._kernel_init(), name="output")

    def features(self, x):
        for i in range(0, self.depth, 2):
            x = self.conv_pool(self.convs[i + 1], self.convs[i](x))
        return self.flatten(x)

    def classify(self, x):
        for layer in self.fc:
            x = layer(x)
        return self.out(x)

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}


ARCHITECTURES: dict[str, Callable[..., MaskedModel]] = {
    "lenet300_100": LeNetFC,
    "lenet5": LeNet5,
    "conv2": lambda **kw: ConvNet(depth=2, **kw),
    "conv4": lambda **kw: ConvNet(depth=4, **kw),
    "conv6": lambda **kw: ConvNet(depth=6, **kw),
}
ARCH_ALIASES = {"lenet_fc": "lenet300_100", "lenet-300-100": "lenet300_100", "lenet_conv": "lenet5"}


def canonical_arch(name: str) -> str:
    key = ARCH_ALIASES.get(name.lower(), name.lower())
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of: "
                         f"{', '.join(sorted([*ARCHITECTURES, *ARCH_ALIASES]))}")
    return key


PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int = 10, init: str = "glorot_normal",
                seed: int | None = None, precision: str = "float32") -> MaskedModel:
    """Create an architecture by name and build its variables (θ0 is drawn here, from `seed`).

    `precision="bfloat16"` computes in bfloat16 with float32 variables (Keras's "mixed_bfloat16" policy).
    """
    if precision not in PRECISION_POLICIES:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISION_POLICIES)}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISION_POLICIES[precision])  # sublayers take the policy at construction
    try:
        model = ARCHITECTURES[canonical_arch(arch)](num_classes=num_classes, init=init, seed=seed,
                                                    name=canonical_arch(arch))
        model.build((None, *input_shape))
    finally:
        keras.config.set_dtype_policy(previous)
    return model
