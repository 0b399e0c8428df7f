"""Pruning masks: exact counts, smallest magnitudes first, random masks independent of weights, tfmot agreement."""

import numpy as np
import pytest

from lottery_keras.lottery import pruning


@pytest.fixture
def layers():
    rng = np.random.default_rng(0)
    weights = {"fc1": rng.normal(size=(784, 300)), "fc2": rng.normal(size=(300, 100)),
               "out": rng.normal(size=(100, 10))}
    masks = {name: np.ones(w.shape, np.float32) for name, w in weights.items()}
    return weights, masks


def test_per_layer_sparsity_after_k_rounds_is_exact(layers):
    weights, masks = layers
    rates = {"fc1": 0.3, "fc2": 0.2, "out": 0.1}
    for k in range(1, 9):
        masks = pruning.magnitude_prune(weights, masks, pruning.layerwise_counts(masks, rates, k))
        for name, mask in masks.items():
            assert int(mask.sum()) == max(1, round(mask.size * (1 - rates[name]) ** k))


def test_remaining_percent_follows_the_es667_sequence(layers):
    weights, masks = layers
    rates = dict.fromkeys(masks, 0.3)
    seen = []
    for k in range(1, 5):
        masks = pruning.magnitude_prune(weights, masks, pruning.layerwise_counts(masks, rates, k))
        seen.append(round(pruning.remaining_percent(masks), 2))
    assert seen == [70.0, 49.0, 34.3, 24.01]


def test_pruned_positions_are_the_smallest_surviving_magnitudes(layers):
    weights, masks = layers
    rates = dict.fromkeys(masks, 0.4)
    first = pruning.magnitude_prune(weights, masks, pruning.layerwise_counts(masks, rates, 1))
    second = pruning.magnitude_prune(weights, first, pruning.layerwise_counts(first, rates, 2))
    for name, w in weights.items():
        dropped = (first[name] == 1) & (second[name] == 0)
        kept = second[name] == 1
        assert dropped.any()
        assert np.abs(w[dropped]).max() <= np.abs(w[kept]).min()
        assert not np.any(second[name] > first[name])  # cumulative: nothing comes back


def test_ties_and_tiny_layers_never_lose_more_than_asked_nor_the_last_weight():
    weights = {"tiny": np.ones((3,)), "tied": np.zeros((10,))}
    masks = {name: np.ones(w.shape, np.float32) for name, w in weights.items()}
    rates = {"tiny": 0.9, "tied": 0.5}
    for k in range(1, 6):
        masks = pruning.magnitude_prune(weights, masks, pruning.layerwise_counts(masks, rates, k))
        assert masks["tiny"].sum() == 1
        assert masks["tied"].sum() == max(1, round(10 * 0.5 ** k))


def test_random_masks_have_the_same_counts_and_ignore_magnitudes(layers):
    weights, masks = layers
    rates = dict.fromkeys(masks, 0.5)
    counts = pruning.layerwise_counts(masks, rates, 1)
    magnitude = pruning.magnitude_prune(weights, masks, counts)
    random_a = pruning.random_prune(masks, counts, np.random.default_rng(1))
    random_b = pruning.random_prune(masks, counts, np.random.default_rng(1))
    for name in masks:
        assert random_a[name].sum() == magnitude[name].sum()
        np.testing.assert_array_equal(random_a[name], random_b[name])
    # Kept vs dropped magnitudes look alike under random pruning, not under magnitude pruning.
    w, m = np.abs(weights["fc1"]), random_a["fc1"]
    assert abs(w[m == 1].mean() - w[m == 0].mean()) < 0.02
    assert w[magnitude["fc1"] == 1].mean() - w[magnitude["fc1"] == 0].mean() > 0.5


def test_global_pruning_uses_one_threshold_and_keeps_every_layer_alive(layers):
    weights, masks = layers
    weights["out"] = weights["out"] * 1e-3  # the output layer is all small: global pruning empties it but one
    new = pruning.global_magnitude_prune(weights, masks, 0.5, 1)
    total = sum(m.size for m in masks.values())
    assert sum(int(m.sum()) for m in new.values()) == round(total * 0.5)
    assert new["out"].sum() == 1
    kept = np.concatenate([np.abs(weights[n])[new[n] == 1] for n in ("fc1", "fc2")])
    dropped = np.concatenate([np.abs(weights[n])[new[n] == 0] for n in ("fc1", "fc2")])
    assert dropped.max() <= kept.min()


def test_masks_agree_with_tfmot(layers):
    weights, masks = layers
    rates = {"fc1": 0.2, "fc2": 0.2, "out": 0.1}
    for k in (1, 2):
        new = pruning.magnitude_prune(weights, masks, pruning.layerwise_counts(masks, rates, k))
        for name in masks:
            pruning.check_against_tfmot(name, masks[name], new[name], rates[name], k, weights[name])
        masks = new


def test_tfmot_cross_check_catches_a_wrong_mask(layers):
    weights, masks = layers
    counts = pruning.layerwise_counts(masks, dict.fromkeys(masks, 0.3), 1)
    wrong = pruning.random_prune(masks, counts, np.random.default_rng(0))  # right count, wrong weights
    with pytest.raises(pruning.PruningCrossCheckError, match="fc1"):
        pruning.check_against_tfmot("fc1", masks["fc1"], wrong["fc1"], 0.3, 1, weights["fc1"])
    too_many = pruning.magnitude_prune(weights, masks, {n: c - 5 for n, c in counts.items()})
    with pytest.raises(pruning.PruningCrossCheckError, match="kept"):
        pruning.check_against_tfmot("fc2", masks["fc2"], too_many["fc2"], 0.3, 1)


def test_structured_pruning_follows_channels_through_a_flatten():
    """A conv of 3 channels on a 2×2 map, flattened (channel fastest) into a dense layer of 4 units, then 2 outputs."""
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(3, 3, 1, 3))
    conv[..., 1] *= 0.01  # channel 1: the smallest norm
    weights = {"conv": conv, "dense": rng.normal(size=(12, 4)), "out": rng.normal(size=(4, 2))}
    masks = {name: np.ones_like(w, np.float32) for name, w in weights.items()}
    new = pruning.structured_prune(weights, masks, {"conv": 2, "dense": 3})
    assert new["conv"][..., 1].sum() == 0 and new["conv"][..., [0, 2]].all()
    assert np.array_equal(new["dense"].any(axis=1), np.tile([True, False, True], 4))  # rows of channel 1 gone
    assert new["dense"].any(axis=0).sum() == 3 and new["out"].any(axis=1).sum() == 3 and new["out"].any(axis=0).all()
    assert pruning.structured_unit_rate(0.3) == pytest.approx(1 - 0.7 ** 0.5)
