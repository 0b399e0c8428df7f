"""The lottery-ticket architectures as subclassed Keras models built from masked layers.

`MaskedModel.train_step` is Keras's own step (forward, loss, gradients, optimizer update) followed by re-applying
every mask on the device, so a pruned weight is exactly 0.0 after every step, whichever loop drives it (`fit` or
the compiled loop of `train/loop.py`). Each model declares its prunable layers' kinds (`layer_kinds`: 'fc',
'conv', 'output'), which is what per-kind pruning rates are looked up by. Importing this module registers the
models with Keras, so `keras.models.load_model` opens saved tickets.
"""

from __future__ import annotations

import dataclasses
import importlib

import keras
import numpy as np

from lottery_keras import catalog
from lottery_keras.nn.layers import MaskedConv2D, MaskedDense, MaskedLayer

INITIALIZERS = {
    "glorot_normal": lambda seed: keras.initializers.GlorotNormal(seed=seed),
    "he_normal": lambda seed: keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal", seed=seed),
}


def kernel_initializer(name: str, seed: int | None, layer_index: int):
    """A seeded initializer per layer, so a (seed, architecture) pair always draws the same θ0."""
    if name not in INITIALIZERS:
        raise ValueError(f"unknown init {name!r}; choose one of: {', '.join(INITIALIZERS)}")
    return INITIALIZERS[name](None if seed is None else seed * 1000 + layer_index)


@dataclasses.dataclass(frozen=True)
class Execution:
    """How a model runs its forward pass, never what it computes: `batch_shards` independent parts of each batch
    through the trunk, and the fused conv-pool kernels of `conv_pool.py`. Chosen by the execution plan
    (`train/plan.py`), given at construction, never saved with the model."""

    batch_shards: int = 1
    fused_conv_pool: bool = False


class MaskedModel(keras.Model):
    """Base class: masked-layer bookkeeping, the masked training step, and the model's `Execution`.

    Subclasses define the network in two parts, `features` (the convolutional trunk, ending in a flat vector per
    sample) and `classify` (the dense head) and name their output layer `out`. `call`
    runs `features` on `execution.batch_shards` consecutive parts of the batch and concatenates the results: the
    parts are independent chains of operations, so TensorFlow's inter-op threads run them on different cores at
    once. The head runs once on the whole batch: its matrix products are small, and splitting them would only add
    operations. The loss, and so every gradient, is the whole batch's, up to float summation order.
    `execution.fused_conv_pool` runs each "ReLU convolution, then 2×2 max-pool" block of the trunk as the fused
    CPU kernels of `conv_pool.py` (same results up to float summation order).
    """

    out: MaskedLayer

    def __init__(self, num_classes: int = 10, init: str = "glorot_normal", seed: int | None = None,
                 execution: Execution | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.init = init
        self.seed = seed
        self.execution = execution or Execution()
        self._layer_count = 0

    @property
    def arch(self) -> str | None:
        """The registry name of the architecture this model is (`build_model` names a model by it), else None."""
        return self.name if self.name in catalog.architectures() else None

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
        shards = self.execution.batch_shards
        batch = inputs.shape[0]  # shards need a batch size known when the graph is built
        if shards == 1 or batch is None or batch < shards:
            return self.features(inputs)
        bounds = [batch * i // shards for i in range(shards + 1)]
        parts = [self.features(inputs[start:end]) for start, end in zip(bounds, bounds[1:])]
        return keras.ops.concatenate(parts, axis=0)

    def features(self, x):
        """The per-sample trunk (what batch shards split), ending in one flat vector per sample."""
        raise NotImplementedError

    def classify(self, x):
        """The dense head, on the whole batch's features: by default the layers of `self.fc`, then `self.out`."""
        for layer in self.fc:
            x = layer(x)
        return self.out(x)

    def conv_pool(self, conv: MaskedConv2D, x):
        """`self.pool(conv(x))`: the fused kernels when the execution asks for them and the convolution is one they
        compute (built, float32, channels last, a square kernel, stride and dilation 1, one group, a bias, ReLU),
        else the layers."""
        fusable = (conv.built and conv.compute_dtype == "float32" and conv.data_format == "channels_last"
                   and conv.kernel_size[0] == conv.kernel_size[1] and conv.strides == (1, 1)
                   and conv.dilation_rate == (1, 1) and conv.groups == 1 and conv.use_bias
                   and conv.activation is keras.activations.relu)
        if self.execution.fused_conv_pool and fusable:
            from lottery_keras.nn.conv_pool import conv_relu_pool  # TensorFlow's custom operations

            return conv_relu_pool(x, conv.kernel.value, conv.bias.value, conv.padding)
        return self.pool(conv(x))

    def masked_layers(self) -> list[MaskedLayer]:
        """Prunable layers in forward order (the last one is the output layer)."""
        return [layer for layer in self._flatten_layers(include_self=False) if isinstance(layer, MaskedLayer)]

    def layer_kinds(self) -> dict[str, str]:
        """Each prunable layer's kind in forward order: 'output' for the output layer, else the layer's own."""
        return {layer.name: "output" if layer is self.out else layer.kind for layer in self.masked_layers()}

    def state_variables(self) -> list[keras.Variable]:
        """What a round starts from and rewinding restores: every variable but the masks (normalisation layers'
        moving statistics included)."""
        masks = {id(layer.mask) for layer in self.masked_layers()}
        return [variable for variable in self.weights if id(variable) not in masks]

    def seed_states(self) -> list[keras.Variable]:
        """The states of the random generators its layers draw from in training (dropout), in layer order: not
        weights, so a round sets them itself (`controller.TrialRun.seed_randomness`)."""
        return [variable for variable in self.variables if variable.name == "seed_generator_state"]

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
        self.fc = [MaskedDense(units, activation="relu", kernel_initializer=self._kernel_init(), name=f"fc{i + 1}")
                   for i, units in enumerate(self.hidden)]
        self.out = MaskedDense(self.num_classes, kernel_initializer=self._kernel_init(), name="output")

    def features(self, x):
        return self.flatten(x)

    def get_config(self):
        return {**super().get_config(), "hidden": list(self.hidden)}


@keras.saving.register_keras_serializable(package="lottery_keras")
class LeNet5(MaskedModel):
    """LeNet-5: conv 6@5×5 (same) → pool → conv 16@5×5 → pool → fc 120 → 84 → 10 (61,470 weights on 28×28)."""


    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = MaskedConv2D(6, 5, padding="same", activation="relu", kernel_initializer=self._kernel_init(),
                                  name="conv1")
        self.conv2 = MaskedConv2D(16, 5, activation="relu", kernel_initializer=self._kernel_init(), name="conv2")
        self.pool = keras.layers.MaxPooling2D(2)
        self.flatten = keras.layers.Flatten()
        self.fc1 = MaskedDense(120, activation="relu", kernel_initializer=self._kernel_init(), name="fc1")
        self.fc2 = MaskedDense(84, activation="relu", kernel_initializer=self._kernel_init(), name="fc2")
        self.out = MaskedDense(self.num_classes, kernel_initializer=self._kernel_init(), name="output")

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
        self.convs = [MaskedConv2D(f, 3, padding="same", activation="relu", kernel_initializer=self._kernel_init(),
                                   name=f"conv{i + 1}")
                      for i, f in enumerate(filters)]
        self.pool = keras.layers.MaxPooling2D(2)
        self.flatten = keras.layers.Flatten()
        self.fc = [MaskedDense(256, activation="relu", kernel_initializer=self._kernel_init(), name=f"fc{i + 1}")
                   for i in range(2)]
        self.out = MaskedDense(self.num_classes, kernel_initializer=self._kernel_init(), name="output")

    def features(self, x):
        for i in range(0, self.depth, 2):
            x = self.conv_pool(self.convs[i + 1], self.convs[i](x))
        return self.flatten(x)

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int = 10, init: str = "glorot_normal",
                seed: int | None = None, precision: str = "float32",
                execution: Execution | None = None) -> MaskedModel:
    """Create a registered architecture by name (`catalog.architectures()`) and build its variables (θ0 is drawn
    here, from `seed`).

    `precision="bfloat16"` computes in bfloat16 with float32 variables (Keras's "mixed_bfloat16" policy);
    `execution` says how the forward pass runs (`train.plan.ExecutionPlan.model_execution`).
    """
    if precision not in catalog.PRECISION_POLICIES:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(catalog.PRECISIONS)}")
    spec = catalog.architecture(arch)
    model_class = _model_class(spec)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(catalog.PRECISION_POLICIES[precision])  # sublayers take it at construction
    try:
        model = model_class(num_classes=num_classes, init=init, seed=seed, execution=execution, name=spec.name,
                            **spec.model_args)
        model.build((None, *input_shape))
    finally:
        keras.config.set_dtype_policy(previous)
    kinds = tuple(model.layer_kinds().values())
    if kinds != spec.layer_kinds:
        raise ValueError(f"architecture {spec.name} declares layer kinds {spec.layer_kinds}, but its model builds "
                         f"{kinds}: correct its ArchitectureSpec")
    return model


def _model_class(spec: catalog.ArchitectureSpec) -> type[MaskedModel]:
    module, _, name = spec.model.partition(":")
    model_class = getattr(importlib.import_module(module), name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, MaskedModel)):
        raise ValueError(f"architecture {spec.name}: {spec.model} is not a MaskedModel subclass")
    return model_class
