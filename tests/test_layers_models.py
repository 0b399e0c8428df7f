"""Masked layers and the architectures: sizes, masks, seeded θ0, initialisers, masks under training, saving."""

from __future__ import annotations

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from lottery_keras import catalog
from lottery_keras.nn import layers, models
from lottery_keras.train import loop as training
from lottery_keras.train.plan import ExecutionPlan

MNIST_SHAPE, CIFAR_SHAPE = (28, 28, 1), (32, 32, 3)


def random_masks(model: models.MaskedModel, keep: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.random(mask.shape) < keep).astype(np.float32) for name, mask in model.get_masks().items()}


def kernels(model: models.MaskedModel) -> dict[str, np.ndarray]:
    return {layer.name: keras.ops.convert_to_numpy(layer.kernel) for layer in model.masked_layers()}


def biases(model: models.MaskedModel) -> dict[str, np.ndarray]:
    return {layer.name: keras.ops.convert_to_numpy(layer.bias) for layer in model.masked_layers()}


# ------------------------------------------------------------------------------------------------ architectures

@pytest.mark.parametrize("arch, shape, prunable, names", [
    ("lenet300_100", MNIST_SHAPE, 266_200, ["fc1", "fc2", "output"]),
    ("lenet5", MNIST_SHAPE, 61_470, ["conv1", "conv2", "fc1", "fc2", "output"]),
    ("conv2", CIFAR_SHAPE, 4_300_992, ["conv1", "conv2", "fc1", "fc2", "output"]),
    ("conv4", CIFAR_SHAPE, 2_425_024, ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2", "output"]),
    ("conv6", CIFAR_SHAPE, 2_261_184,
     ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc1", "fc2", "output"]),
])
def test_prunable_weight_counts(arch, shape, prunable, names):
    model = models.build_model(arch, shape, seed=0)
    masked = model.masked_layers()
    assert [layer.name for layer in masked] == names
    assert sum(int(np.prod(layer.kernel.shape)) for layer in masked) == prunable
    assert all(isinstance(layer, layers.MaskedLayer) for layer in masked)
    # every weight is a kernel, a bias or a mask; masks start at one and are not trainable
    n_bias = sum(int(np.prod(layer.bias.shape)) for layer in masked)
    assert model.count_params() == 2 * prunable + n_bias
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == prunable + n_bias
    assert all(np.all(mask == 1.0) for mask in model.get_masks().values())
    out = model(np.zeros((2, *shape), np.float32))
    assert tuple(out.shape) == (2, 10)


def test_lenet300_100_layer_shapes():
    model = models.build_model("lenet300_100", MNIST_SHAPE, seed=0)
    assert [tuple(layer.kernel.shape) for layer in model.masked_layers()] == [(784, 300), (300, 100), (100, 10)]


def test_lenet5_layer_shapes():
    model = models.build_model("lenet5", MNIST_SHAPE, seed=0)
    shapes = [tuple(layer.kernel.shape) for layer in model.masked_layers()]
    assert shapes == [(5, 5, 1, 6), (5, 5, 6, 16), (400, 120), (120, 84), (84, 10)]


@pytest.mark.parametrize("alias, canonical", [
    ("lenet300_100", "lenet300_100"), ("LeNet-300-100", "lenet300_100"), ("lenet_fc", "lenet300_100"),
    ("lenet_conv", "lenet5"), ("Conv6", "conv6"),
])
def test_architecture_aliases(alias, canonical):
    assert catalog.canonical_arch(alias) == canonical


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ValueError) as info:
        models.build_model("resnet50", CIFAR_SHAPE)
    message = str(info.value)
    assert "resnet50" in message
    for choice in ("lenet300_100", "lenet5", "conv2", "conv4", "conv6"):
        assert choice in message
    with pytest.raises(ValueError, match="depth"):
        models.ConvNet(depth=3)


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="he_normal"):
        models.build_model("lenet300_100", MNIST_SHAPE, init="uniform_please", seed=0)


def test_num_classes():
    model = models.build_model("lenet5", MNIST_SHAPE, num_classes=7, seed=0)
    assert tuple(model(np.zeros((3, *MNIST_SHAPE), np.float32)).shape) == (3, 7)


# ---------------------------------------------------------------------------------------------------- seeds

@pytest.mark.parametrize("arch, shape", [("lenet300_100", MNIST_SHAPE), ("lenet5", MNIST_SHAPE)])
def test_same_seed_same_theta0_different_seed_different_theta0(arch, shape):
    first = models.build_model(arch, shape, seed=3).get_weights()
    again = models.build_model(arch, shape, seed=3).get_weights()
    other = models.build_model(arch, shape, seed=4).get_weights()
    assert len(first) == len(again) == len(other)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    kernels_first = [w for w in first if w.ndim > 1 and not np.all(w == 1.0)]
    kernels_other = [w for w in other if w.ndim > 1 and not np.all(w == 1.0)]
    assert len(kernels_first) == len(models.build_model(arch, shape, seed=3).masked_layers())
    for a, b in zip(kernels_first, kernels_other):
        assert not np.allclose(a, b)


def test_layers_of_one_model_draw_different_values():
    model = models.build_model("lenet300_100", MNIST_SHAPE, seed=0)
    fc1, fc2, _ = kernels(model).values()
    assert not np.allclose(fc1[:300, :100], fc2)


# ------------------------------------------------------------------------------------------------ initialisers

@pytest.mark.parametrize("arch, shape, layer, fan_in", [
    ("lenet300_100", MNIST_SHAPE, "fc1", 784),
    ("lenet300_100", MNIST_SHAPE, "fc2", 300),
    ("conv2", CIFAR_SHAPE, "conv2", 3 * 3 * 64),
])
def test_he_normal_std_is_sqrt_2_over_fan_in(arch, shape, layer, fan_in):
    model = models.build_model(arch, shape, init="he_normal", seed=1)
    kernel = kernels(model)[layer]
    assert abs(float(kernel.mean())) < 0.05 * np.sqrt(2.0 / fan_in)
    assert float(kernel.std()) == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.03)
    # untruncated, like PyTorch's kaiming_normal_: values beyond 2 std occur (about 4.6%)
    beyond = np.mean(np.abs(kernel) > 2 * np.sqrt(2.0 / fan_in))
    assert 0.03 < beyond < 0.06


def test_glorot_normal_std():
    model = models.build_model("lenet300_100", MNIST_SHAPE, init="glorot_normal", seed=1)
    kernel = kernels(model)["fc1"]
    assert float(kernel.std()) == pytest.approx(np.sqrt(2.0 / (784 + 300)), rel=0.03)


def test_biases_start_at_zero():
    model = models.build_model("lenet5", MNIST_SHAPE, init="he_normal", seed=1)
    assert all(np.all(bias == 0.0) for bias in biases(model).values())


# ------------------------------------------------------------------------------------------------------ masks

def test_set_masks_zeroes_the_pruned_kernels_and_keeps_the_rest():
    model = models.build_model("lenet5", MNIST_SHAPE, seed=0)
    before = kernels(model)
    masks = random_masks(model, keep=0.3)
    model.set_masks(masks)
    after = kernels(model)
    for name, mask in masks.items():
        assert 0 < mask.sum() < mask.size
        np.testing.assert_array_equal(model.get_masks()[name], mask)
        assert np.all(after[name][mask == 0] == 0.0)
        np.testing.assert_array_equal(after[name][mask == 1], before[name][mask == 1])
    # the pruned network computes what the masked weights compute
    x = np.random.default_rng(1).normal(size=(4, *MNIST_SHAPE)).astype(np.float32)
    reference = models.build_model("lenet5", MNIST_SHAPE, seed=0)
    for layer in reference.masked_layers():
        layer.kernel.assign(before[layer.name] * masks[layer.name])
    np.testing.assert_allclose(model(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shards, batch", [(2, 61), (3, 60), (2, 1)])
def test_batch_shards_compute_the_same_outputs(shards, batch):
    model = models.build_model("lenet5", (28, 28, 1), seed=0)
    x = np.random.default_rng(0).normal(size=(batch, 28, 28, 1)).astype(np.float32)
    whole = keras.ops.convert_to_numpy(model(x))
    model = models.build_model("lenet5", (28, 28, 1), seed=0, execution=models.Execution(batch_shards=shards))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), whole, rtol=1e-5, atol=1e-5)
    unknown_batch = tf.function(model, input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    np.testing.assert_allclose(unknown_batch(x).numpy(), whole, rtol=1e-5, atol=1e-5)


def test_batch_shards_split_the_trunk_into_independent_chains_and_run_the_head_once():
    """The point of sharding: one copy of each convolution per shard, so the inter-op pool can run them on
    different cores; the dense head (three matrix products) runs once, on the whole batch."""
    model = models.build_model("lenet5", (28, 28, 1), seed=0, execution=models.Execution(batch_shards=2))
    graph = tf.function(model).get_concrete_function(tf.TensorSpec([60, 28, 28, 1], tf.float32)).graph
    assert sum(op.type == "Conv2D" for op in graph.get_operations()) == 4
    assert sum(op.type == "MatMul" for op in graph.get_operations()) == 3


def test_set_masks_rejects_wrong_layer_names():
    model = models.build_model("lenet300_100", MNIST_SHAPE, seed=0)
    masks = random_masks(model, keep=0.5)
    del masks["fc2"]
    with pytest.raises(ValueError, match="fc2"):
        model.set_masks(masks)
    masks = {**random_masks(model, keep=0.5), "conv9": np.ones((3, 3))}
    with pytest.raises(ValueError):
        model.set_masks(masks)


def test_masked_layers_alone():
    dense = layers.MaskedDense(4, "relu", name="d")
    out = dense(np.ones((2, 3), np.float32))
    assert tuple(out.shape) == (2, 4)
    assert not dense.mask.trainable and dense.kernel.trainable
    dense.mask.assign(np.zeros((3, 4), np.float32))
    dense.apply_mask()
    np.testing.assert_array_equal(dense(np.ones((2, 3), np.float32)), np.zeros((2, 4)))  # zero bias, relu
    conv = layers.MaskedConv2D(5, 3, padding="valid", name="c")
    assert tuple(conv(np.ones((1, 8, 8, 2), np.float32)).shape) == (1, 6, 6, 5)
    assert conv.compute_output_shape((None, 8, 8, 2)) == (None, 6, 6, 5)
    same = layers.MaskedConv2D(5, 3, padding="same")
    assert tuple(same(np.ones((1, 8, 8, 2), np.float32)).shape) == (1, 8, 8, 5)


@pytest.mark.parametrize("kernel_size, strides, padding, size", [
    (3, 1, "valid", 8), (3, 2, "valid", 9), (5, 2, "valid", 8), (3, 2, "same", 9), (4, 3, "same", 10),
    (1, 1, "same", 7),
])
def test_masked_conv_output_shape_for_any_stride_and_padding(kernel_size, strides, padding, size):
    """`compute_output_shape` (what functional models use) agrees with the layer's own output and with Keras's
    Conv2D, whose stride and padding arithmetic it must follow."""
    masked = layers.MaskedConv2D(5, kernel_size, strides=strides, padding=padding)
    plain = keras.layers.Conv2D(5, kernel_size, strides=strides, padding=padding)
    x = np.ones((1, size, size + 1, 2), np.float32)
    expected = tuple(plain(x).shape)
    assert tuple(masked(x).shape) == expected
    assert masked.compute_output_shape((1, size, size + 1, 2)) == expected
    assert masked.compute_output_shape((None, None, size + 1, 2)) == (None, None, *expected[2:])


@pytest.mark.parametrize("arch, kinds", [
    ("lenet300_100", {"fc1": "fc", "fc2": "fc", "output": "output"}),
    ("lenet5", {"conv1": "conv", "conv2": "conv", "fc1": "fc", "fc2": "fc", "output": "output"}),
    ("conv2", {"conv1": "conv", "conv2": "conv", "fc1": "fc", "fc2": "fc", "output": "output"}),
])
def test_models_declare_their_layer_kinds(arch, kinds):
    model = models.build_model(arch, (32, 32, 3) if arch == "conv2" else MNIST_SHAPE)
    assert model.layer_kinds() == kinds
    assert list(model.layer_kinds()) == [layer.name for layer in model.masked_layers()]  # forward order
    assert model.arch == arch


def test_the_catalog_names_every_initializer():
    assert set(models.INITIALIZERS) == set(catalog.INITIALIZERS)


def test_an_architecture_spec_that_misdescribes_its_model_is_refused():
    spec = catalog.ArchitectureSpec("misdescribed", "lottery_keras.nn.models:LeNetFC", ("fc", "output"))
    catalog.register_architecture(spec)
    try:
        with pytest.raises(ValueError, match="declares layer kinds .* correct its ArchitectureSpec"):
            models.build_model("misdescribed", MNIST_SHAPE)
    finally:
        del catalog._ARCHITECTURES["misdescribed"]
    with pytest.raises(ValueError, match="are taken"):
        catalog.register_architecture(catalog.ArchitectureSpec("lenet5", "m:C", ("output",)))
    with pytest.raises(ValueError, match="declares its min_image_side"):
        catalog.ArchitectureSpec("x", "m:C", ("conv", "output"))
    with pytest.raises(ValueError, match="unknown fast path"):
        catalog.ArchitectureSpec("x", "m:C", ("fc", "output"), fast_paths={"cpu": {"turbo"}})


def test_masked_conv_matches_keras_conv():
    rng = np.random.default_rng(0)
    masked = layers.MaskedConv2D(4, 3, padding="same", activation="relu")
    plain = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
    x = rng.normal(size=(2, 9, 9, 3)).astype(np.float32)
    masked(x), plain(x)
    kernel, bias = rng.normal(size=(3, 3, 3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    masked.kernel.assign(kernel), masked.bias.assign(bias)
    plain.set_weights([kernel, bias])
    np.testing.assert_allclose(masked(x), plain(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- masks under training

def _assert_pruned_weights_are_zero(model, masks, start_kernels, start_biases):
    end_kernels, end_biases = kernels(model), biases(model)
    for name, mask in masks.items():
        pruned = end_kernels[name][mask == 0]
        assert pruned.size > 0 and np.all(pruned == 0.0), f"{name}: pruned weights moved"
        kept_changed = np.mean(end_kernels[name][mask == 1] != start_kernels[name][mask == 1])
        assert kept_changed > 0.5, f"{name}: the surviving weights did not train"
        np.testing.assert_array_equal(model.get_masks()[name], mask)
        assert np.all(np.isfinite(end_kernels[name]))
    assert any(not np.array_equal(end_biases[n], start_biases[n]) for n in masks)  # biases train, unmasked


def _train_and_check_zeros(splits, arch, model_seed, keep, mask_seed, iterations, **train_options):
    """Train `iterations` steps under a random mask; pruned weights must stay exactly zero."""
    model = models.build_model(arch, MNIST_SHAPE, seed=model_seed)
    masks = random_masks(model, keep=keep, seed=mask_seed)
    model.set_masks(masks)
    training.compile_model(model, 1.2e-3)
    start_kernels, start_biases = kernels(model), biases(model)
    training.train(model, splits.x_train, splits.y_train, iterations=iterations, batch_size=60,
                   eval_every=iterations // 2, seed=0, **train_options)
    assert int(model.optimizer.iterations.numpy()) == iterations
    _assert_pruned_weights_are_zero(model, masks, start_kernels, start_biases)


@pytest.mark.parametrize("loop, jit", [("compiled", False), ("compiled", True), ("keras", None)])
def test_pruned_weights_stay_exactly_zero_after_200_adam_steps(mnist_small, loop, jit):
    _train_and_check_zeros(mnist_small, "lenet300_100", 5, 0.2, 1, 200,
                           plan=ExecutionPlan(loop=loop, jit_compile=bool(jit)))


def test_pruned_conv_weights_stay_zero_with_augmentation(mnist_small):
    _train_and_check_zeros(mnist_small, "lenet5", 2, 0.5, 2, 40, augment=True, plan=ExecutionPlan())


# ------------------------------------------------------------------------------------------------------ saving

@pytest.mark.parametrize("arch", ["lenet300_100", "lenet5"])
def test_masks_and_weights_survive_save_and_load(tmp_path, mnist_small, arch):
    model = models.build_model(arch, MNIST_SHAPE, init="he_normal", seed=7)
    masks = random_masks(model, keep=0.4, seed=3)
    model.set_masks(masks)
    training.compile_model(model, 1.2e-3)
    training.train(model, mnist_small.x_train, mnist_small.y_train, iterations=30, batch_size=60,
                   eval_every=30, seed=1, plan=ExecutionPlan())
    path = tmp_path / f"{arch}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert (loaded.name, loaded.init, loaded.seed) == (model.name, "he_normal", 7)
    assert [layer.name for layer in loaded.masked_layers()] == [layer.name for layer in model.masked_layers()]
    loaded_masks = loaded.get_masks()
    assert set(loaded_masks) == set(masks)
    for name, mask in masks.items():
        np.testing.assert_array_equal(loaded_masks[name], mask)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = mnist_small.x_test[:200]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))

    # the loaded ticket keeps its masks when it trains on
    training.compile_model(loaded, 1.2e-3)
    training.train(loaded, mnist_small.x_train, mnist_small.y_train, iterations=20, batch_size=60,
                   eval_every=20, seed=2, plan=ExecutionPlan())
    for name, kernel in kernels(loaded).items():
        assert np.all(kernel[masks[name] == 0] == 0.0)
    assert not np.array_equal(kernels(loaded)["output"], kernels(model)["output"])


FIXTURES = pathlib.Path(__file__).parent / "data"


@pytest.mark.parametrize("file, prefix", [("old_lenet_fc_ticket.keras", "ticket"),
                                          ("old_masked_layers.keras", "layers")])
def test_tickets_saved_by_the_hand_written_layers_still_load(file, prefix):
    """Files saved before `MaskedDense`/`MaskedConv2D` became subclasses of Keras's layers (tests/data/README.md):
    every variable, the masks included, and the outputs come back exactly."""
    expected = np.load(FIXTURES / "old_models_expected.npz")
    loaded = keras.models.load_model(FIXTURES / file)
    saved = {key.split(":", 1)[1]: expected[key] for key in expected.files if key.startswith(f"{prefix}:")}
    assert {v.path: keras.ops.convert_to_numpy(v) for v in loaded.weights}.keys() == saved.keys()
    for variable in loaded.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), saved[variable.path])
    masked = [layer for layer in loaded._flatten_layers() if isinstance(layer, layers.MaskedLayer)]
    assert masked and all(0 < np.mean(keras.ops.convert_to_numpy(layer.mask)) < 1 for layer in masked)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(expected[f"{prefix}_x"])),
                               expected[f"{prefix}_y"], rtol=1e-6, atol=1e-6)


def test_masked_layers_take_keras_full_argument_surface(tmp_path):
    """Non-square kernels, strides, dilation, no bias, regularizers and constraints are Keras's own; the mask
    still prunes, survives a training step and a save/load."""
    inputs = keras.Input((12, 10, 2))
    x = layers.MaskedConv2D(3, (3, 2), strides=(2, 1), dilation_rate=1, use_bias=False, padding="same",
                            kernel_regularizer=keras.regularizers.L2(1e-2), name="conv")(inputs)
    x = layers.MaskedConv2D(4, (1, 3), dilation_rate=(1, 2), activation="relu", name="dilated",
                            kernel_constraint=keras.constraints.MaxNorm(0.5, axis=[0, 1, 2]))(x)
    x = keras.layers.Flatten()(x)
    outputs = layers.MaskedDense(5, use_bias=False, bias_regularizer=None, name="dense",
                                 kernel_regularizer=keras.regularizers.L1(1e-3))(x)
    model = keras.Model(inputs, outputs)
    conv, dilated, dense = (model.get_layer(name) for name in ("conv", "dilated", "dense"))
    assert tuple(conv.kernel.shape) == (3, 2, 2, 3) and conv.bias is None and dense.bias is None
    assert tuple(model.output.shape) == (None, 5)
    assert len(model.losses) == 2  # both kernel regularizers are active
    rng = np.random.default_rng(0)
    for layer in (conv, dilated, dense):
        layer.mask.assign((rng.random(layer.mask.shape) < 0.5).astype(np.float32))
        layer.apply_mask()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(rng.random((4, 12, 10, 2)), rng.random((4, 5)))
    for layer in (conv, dilated, dense):
        layer.apply_mask()
        kernel, mask = (keras.ops.convert_to_numpy(v) for v in (layer.kernel, layer.mask))
        assert np.all(kernel[mask == 0] == 0.0) and np.any(kernel[mask == 1] != 0.0)
    assert np.max(np.linalg.norm(keras.ops.convert_to_numpy(dilated.kernel).reshape(-1, 4), axis=0)) <= 0.5 + 1e-6
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert loaded.get_layer("conv").get_config()["kernel_size"] == (3, 2)
