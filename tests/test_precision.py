"""Mixed precision: bfloat16 compute keeps float32 variables, exact masks and accuracy on a short real run."""

import keras
import numpy as np

from lottery_keras.nn import models
from lottery_keras.train import callbacks
from lottery_keras.train import loop as training


def train_one_epoch(splits, precision):
    model = models.build_model("lenet300_100", splits.input_shape, init="he_normal", seed=0, precision=precision)
    masks = {layer.name: (np.random.default_rng(0).random(layer.mask.shape) < 0.5).astype("float32")
             for layer in model.masked_layers()}
    model.set_masks(masks)
    training.compile_model(model, 1.2e-3)
    recorder = callbacks.EarlyStopRecorder((splits.x_val, splits.y_val), (splits.x_test, splits.y_test),
                                           eval_every=500, iterations=1000)
    training.train(model, splits.x_train, splits.y_train, iterations=1000, batch_size=60, eval_every=500, seed=0,
                   callbacks=[recorder])
    return model, masks, recorder.result


def test_bfloat16_keeps_accuracy_and_exact_zeros(mnist):
    splits = mnist.head(train=30_000, val=2000, test=2000)
    model, masks, bf16 = train_one_epoch(splits, "bfloat16")
    assert model.out.compute_dtype == "bfloat16" and model.out.kernel.dtype == "float32"
    for layer in model.masked_layers():
        assert np.all(keras.ops.convert_to_numpy(layer.kernel)[masks[layer.name] == 0] == 0.0)
    _, _, fp32 = train_one_epoch(splits, "float32")
    assert bf16["val_acc"] > 95.0
    assert abs(bf16["val_acc"] - fp32["val_acc"]) < 1.0
