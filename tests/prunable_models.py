"""Four models of the kinds Keras 3 users bring, each with MNIST turned into its input, for the pruning tests
(`test_sparsity_models.py`, `test_sparsity_layers.py`) and the benchmarks (`bench_pruning.py`,
`pruning_coverage.py`):

- `lstm_model`: an image read row by row, each row through a `TimeDistributed` `Dense`, then an `LSTM`;
- `vit_model`: a ViT-style model on 7×7 patches, its transformer block a custom layer holding
  `MultiHeadAttention` and a `Dense` MLP;
- `token_model`: 2×2 pixel blocks as tokens of a 196-step sequence, through an `Embedding` table;
- `convnext_model`: ConvNeXt-style, its stem, blocks and downsampling nested models, each block holding a nested
  MLP (layers two models deep).

Each `*_inputs(x)` turns normalised MNIST images (N, 28, 28, 1) into the model's input. Custom layers of the
kinds users write: `TransformerBlock` (sublayers only), `ScaledDense` (a subclass of a Keras layer), `Opaque` (a
weight matrix under its own name: left dense, and said so) and its two prunable forms, `Declared` (tfmot's
`PrunableLayer` protocol) and `Registered` (for `register_prunable`, as for a class one cannot edit). Nothing
here imports lottery_keras, so `benchmarks/pruning_coverage.py` measures older versions of it on these models.
"""

from __future__ import annotations

import keras
import numpy as np

MNIST_MIN, MNIST_RANGE = -0.4242, 3.2457  # normalised MNIST's darkest pixel and its span


@keras.saving.register_keras_serializable(package="lottery_keras_tests")
class TransformerBlock(keras.layers.Layer):
    """A pre-norm transformer block written as one custom layer (no `build` of its own: Keras builds its
    sublayers by tracing its first call).

    Args:
        dim: Width of the token vectors.
        heads: Attention heads.
    """

    def __init__(self, dim: int, heads: int, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.heads = dim, heads
        self.attention_norm = keras.layers.LayerNormalization(name="attention_norm")
        self.attention = keras.layers.MultiHeadAttention(heads, dim // heads, name="attention")
        self.mlp_norm = keras.layers.LayerNormalization(name="mlp_norm")
        self.mlp_in = keras.layers.Dense(2 * dim, activation="gelu", name="mlp_in")
        self.mlp_out = keras.layers.Dense(dim, name="mlp_out")

    def call(self, tokens):
        normed = self.attention_norm(tokens)
        tokens = tokens + self.attention(normed, normed)
        return tokens + self.mlp_out(self.mlp_in(self.mlp_norm(tokens)))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "heads": self.heads}


@keras.saving.register_keras_serializable(package="lottery_keras_tests")
class ScaledDense(keras.layers.Dense):
    """A subclass of a supported layer: pruned like it."""

    def call(self, inputs):
        return 0.5 * super().call(inputs)


@keras.saving.register_keras_serializable(package="lottery_keras_tests")
class Opaque(keras.layers.Layer):
    """x·W, with W under a name of its own: not a kernel, so left dense unless declared.

    Args:
        units: Output width.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1], self.units))

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.w)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="lottery_keras_tests")
class Declared(Opaque):
    """`Opaque` declaring its matrix prunable (tfmot's `PrunableLayer` protocol)."""

    def get_prunable_weights(self):
        return [self.w]


@keras.saving.register_keras_serializable(package="lottery_keras_tests")
class Registered(Opaque):
    """`Opaque` as if from a library one cannot edit, for declaring its matrix prunable by registration
    (`test_sparsity_models.py` registers it)."""


def lstm_inputs(images: np.ndarray) -> np.ndarray:
    return images[..., 0]


def lstm_model(units: int = 64) -> keras.Model:
    rows = keras.Input((28, 28), name="rows")
    x = keras.layers.TimeDistributed(keras.layers.Dense(32, activation="relu", name="row_dense"),
                                     name="row_embedding")(rows)
    x = keras.layers.LSTM(units, name="lstm")(x)
    return keras.Model(rows, keras.layers.Dense(10, name="logits")(x), name="row_lstm")


def vit_inputs(images: np.ndarray) -> np.ndarray:
    """16 patches of 7×7 pixels, each followed by its position one-hot (16 values)."""
    patches = images[..., 0].reshape(-1, 4, 7, 4, 7).transpose(0, 1, 3, 2, 4).reshape(-1, 16, 49)
    positions = np.broadcast_to(np.eye(16, dtype=patches.dtype), (len(patches), 16, 16))
    return np.concatenate([patches, positions], axis=-1)


def vit_model(dim: int = 32, heads: int = 4) -> keras.Model:
    patches = keras.Input((16, 65), name="patches")
    x = keras.layers.Dense(dim, name="patch_embedding")(patches)
    x = TransformerBlock(dim, heads, name="block")(x)
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.LayerNormalization(name="norm")(x))
    return keras.Model(patches, keras.layers.Dense(10, name="logits")(x), name="vit")


def token_inputs(images: np.ndarray) -> np.ndarray:
    """Each 2×2 block of pixels, every pixel at one of 4 grey levels, as one of 256 tokens."""
    levels = np.clip(((images[..., 0] - MNIST_MIN) / MNIST_RANGE * 4).astype("int32"), 0, 3)
    blocks = levels.reshape(-1, 14, 2, 14, 2).transpose(0, 1, 3, 2, 4).reshape(-1, 196, 4)
    return blocks @ np.array([64, 16, 4, 1], "int32")


def token_model() -> keras.Model:
    tokens = keras.Input((196,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(256, 16, name="embedding")(tokens)
    x = keras.layers.Conv1D(32, 4, strides=4, activation="relu", name="conv")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(tokens, keras.layers.Dense(10, name="logits")(x), name="tokens")


def convnext_inputs(images: np.ndarray) -> np.ndarray:
    return images


def _convnext_block(dim: int, name: str) -> keras.Model:
    inputs = keras.Input((None, None, dim))
    x = keras.layers.DepthwiseConv2D(7, padding="same", name=f"{name}_depthwise")(inputs)
    x = keras.layers.LayerNormalization(name=f"{name}_norm")(x)
    mlp = keras.Sequential([keras.layers.Dense(4 * dim, activation="gelu", name=f"{name}_expand"),
                            keras.layers.Dense(dim, name=f"{name}_project")], name=f"{name}_mlp")
    return keras.Model(inputs, keras.layers.Add()([inputs, mlp(x)]), name=name)


def convnext_model() -> keras.Model:
    images = keras.Input((28, 28, 1), name="images")
    stem = keras.Sequential([keras.layers.Conv2D(16, 2, strides=2, name="stem_conv"),
                             keras.layers.LayerNormalization(name="stem_norm")], name="stem")
    downsample = keras.Sequential([keras.layers.LayerNormalization(name="down_norm"),
                                   keras.layers.Conv2D(32, 2, strides=2, name="down_conv")], name="downsample")
    x = _convnext_block(32, "stage2")(downsample(_convnext_block(16, "stage1")(stem(images))))
    x = keras.layers.LayerNormalization(name="head_norm")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(images, keras.layers.Dense(10, name="logits")(x), name="convnext")


MODELS = {"lstm": (lstm_model, lstm_inputs), "vit": (vit_model, vit_inputs), "tokens": (token_model, token_inputs),
          "convnext": (convnext_model, convnext_inputs)}
