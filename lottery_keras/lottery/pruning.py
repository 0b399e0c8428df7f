"""Pruning masks: layerwise or global magnitude pruning, random pruning, and the tfmot cross-check.

Masks are cumulative and exact. After k prunings at rate p a layer of n weights keeps
`max(1, round(n · (1 − p)^k))` of them: the same count tensorflow-model-optimization's magnitude pruning keeps
for target sparsity 1 − (1 − p)^k. Each pruning removes only surviving weights, the smallest |w| first (ties
broken by position), so a layer never loses more than asked and never its last weight. Biases are never pruned.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import numpy as np

Masks = dict[str, np.ndarray]
Weights = dict[str, np.ndarray]


def target_count(size: int, rate: float, prunings: int) -> int:
    """Weights a layer of `size` keeps after `prunings` cumulative prunings at `rate`."""
    return max(1, int(round(size * (1.0 - rate) ** prunings)))


def target_sparsity(rate: float, prunings: int) -> float:
    return 1.0 - (1.0 - rate) ** prunings


def keep_largest(scores: np.ndarray, mask: np.ndarray, keep: int) -> np.ndarray:
    """A mask keeping the `keep` highest-scoring surviving positions: pruned positions never come back, whatever
    their score.

    Args:
        scores: One score per position, shaped like `mask`.
        mask: The current binary mask (nonzero: surviving).
        keep: How many surviving positions to keep (at most the number that survive).

    Returns:
        A float32 mask shaped like `mask`; ties keep the earlier position in flat order.
    """
    flat_mask = mask.reshape(-1).astype(bool)
    surviving = np.flatnonzero(flat_mask)
    if keep > surviving.size:
        raise ValueError(f"cannot keep {keep} weights: only {surviving.size} survive")
    order = np.argsort(-scores.reshape(-1)[surviving], kind="stable")
    new_mask = np.zeros(flat_mask.shape, np.float32)
    new_mask[surviving[order[:keep]]] = 1.0
    return new_mask.reshape(mask.shape)


def layerwise_counts(masks: Masks, rates: dict[str, float], prunings: int) -> dict[str, int]:
    """Per-layer weights kept after `prunings` layerwise prunings."""
    return {name: target_count(mask.size, rates[name], prunings) for name, mask in masks.items()}


def magnitude_prune(weights: Weights, masks: Masks, counts: dict[str, int]) -> Masks:
    """Each layer keeps its `counts[name]` largest-magnitude surviving weights."""
    return {name: keep_largest(np.abs(weights[name]), mask, counts[name]) for name, mask in masks.items()}


def random_prune(masks: Masks, counts: dict[str, int], rng: np.random.Generator) -> Masks:
    """Like `magnitude_prune` with random scores: the same per-layer counts, positions independent of weights."""
    return {name: keep_largest(rng.random(mask.shape), mask, counts[name]) for name, mask in masks.items()}


def global_magnitude_prune(weights: Weights, masks: Masks, rate: float, prunings: int) -> Masks:
    """One magnitude threshold over all layers; the largest surviving weight of every layer is always kept."""
    names = list(masks)
    total = sum(masks[name].size for name in names)
    scores = [np.abs(weights[name]).reshape(-1).astype(np.float64) for name in names]
    for name, score in zip(names, scores):
        surviving = np.flatnonzero(masks[name].reshape(-1))
        score[surviving[np.argmax(score[surviving])]] = np.inf
    keep = max(target_count(total, rate, prunings), len(names))
    flat = keep_largest(np.concatenate(scores), np.concatenate([masks[n].reshape(-1) for n in names]), keep)
    bounds = np.cumsum([0] + [masks[name].size for name in names])
    return {name: flat[bounds[i]:bounds[i + 1]].reshape(masks[name].shape) for i, name in enumerate(names)}


def structured_unit_rate(rate: float) -> float:
    """The share of units a structured pruning removes per round so that a layer whose inputs and outputs both
    shrink keeps the weights unstructured pruning at `rate` keeps: (1 − u)² = 1 − rate."""
    return 1.0 - np.sqrt(1.0 - rate)


def structured_prune(weights: Weights, masks: Masks, counts: dict[str, int]) -> Masks:
    """Whole units (a Dense layer's output neurons, a convolution's output channels) of the layers in `counts`,
    in forward order: each keeps its `counts[name]` surviving units of largest L1 norm (ties by position), and the
    next layer loses the inputs that came from the removed ones (through a flatten: every position of a removed
    channel), so the ticket is a smaller dense network. Layers not in `counts` (the output layer) keep their units.
    """
    names, new_masks = list(masks), {name: mask.copy() for name, mask in masks.items()}
    for name, following in zip(names, names[1:] + [None]):
        if name not in counts:
            continue
        mask = new_masks[name]
        axes = tuple(range(mask.ndim - 1))  # every axis but the units'
        alive = mask.any(axis=axes)
        scores = np.where(alive, np.abs(weights[name] * mask).sum(axis=axes), -np.inf)
        keep = np.zeros(alive.shape, np.float32)
        keep[np.argsort(-scores, kind="stable")[:min(counts[name], int(alive.sum()))]] = 1.0
        new_masks[name] = mask * keep
        if following is not None:
            new_masks[following] = _without_inputs(new_masks[following], keep)
    return new_masks


def _without_inputs(mask: np.ndarray, kept_units: np.ndarray) -> np.ndarray:
    """`mask` with the inputs from removed units zeroed: a Dense kernel's rows (channel-fastest after a flatten,
    as Keras flattens channels-last maps), a convolution's input channels."""
    if mask.ndim == 2:
        rows = np.tile(kept_units, mask.shape[0] // kept_units.size)
        return mask * rows[:, None]
    return mask * kept_units[:, None]


def remaining_percent(masks: Masks) -> float:
    return 100.0 * sum(float(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())


class PruningCrossCheckError(AssertionError):
    """Our mask disagrees with tensorflow-model-optimization's schedule or magnitude threshold."""


def tfmot_schedule_sparsity(rate: float, prunings: int) -> float:
    """The sparsity tfmot's `ConstantSparsity` schedule targets for this round's cumulative pruning."""
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule

    schedule = pruning_schedule.ConstantSparsity(target_sparsity(rate, prunings), begin_step=0, frequency=1)
    return float(schedule(tf.constant(0, tf.int64))[1].numpy())


def tfmot_magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """tfmot's magnitude mask for `weights` at `sparsity`: the round(n · (1 − s)) largest |w| and every tie with
    the last of them (the rule of its pruning implementation)."""
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_impl, pruning_schedule

    schedule = pruning_schedule.ConstantSparsity(sparsity, begin_step=0, frequency=1)
    pruning = pruning_impl.Pruning(lambda: tf.constant(0, tf.int64), [], schedule, (1, 1), "AVG")
    return pruning._update_mask(tf.constant(weights, tf.float32))[1].numpy()


@functools.cache
def tfmot_available() -> bool:
    """Whether tensorflow-model-optimization (and the tf-keras it needs) can be imported."""
    return importlib.util.find_spec("tensorflow_model_optimization") is not None and \
        importlib.util.find_spec("tf_keras") is not None


def check_against_tfmot(name: str, old_mask: np.ndarray, new_mask: np.ndarray, rate: float, prunings: int,
                        weights: np.ndarray | None = None) -> None:
    """Raise `PruningCrossCheckError` unless `new_mask` keeps the count tfmot's schedule targets and, given the
    trained `weights` (magnitude pruning), the weights tfmot's magnitude threshold keeps (ties aside). Without
    tensorflow-model-optimization installed (the `tfmot` extra) only the first check runs, and a warning says
    so once."""
    if np.any(new_mask > old_mask):
        raise PruningCrossCheckError(f"layer {name}: the new mask revives pruned weights")
    if not tfmot_available():
        warnings.warn("tensorflow-model-optimization is not installed, so masks are not cross-checked against its "
                      "schedules: pip install 'lottery_keras[tfmot]', or pass --no-tfmot-check", stacklevel=2)
        return
    sparsity = tfmot_schedule_sparsity(rate, prunings)
    kept, schedule_count = int(new_mask.sum()), max(1, int(round(new_mask.size * (1.0 - sparsity))))
    exact = new_mask.size * (1.0 - rate) ** prunings
    float_rounding = abs(abs(exact - np.floor(exact)) - 0.5) < 1e-3  # float32 vs float64 at a .5 boundary
    if abs(kept - schedule_count) > float_rounding:
        raise PruningCrossCheckError(f"layer {name}: kept {kept} weights, tfmot's schedule at sparsity "
                                     f"{sparsity:.6f} keeps {schedule_count}")
    if weights is None:
        return
    tf_mask = tfmot_magnitude_mask(weights * old_mask, sparsity)
    smaller, larger = (new_mask, tf_mask) if kept <= tf_mask.sum() else (tf_mask, new_mask)
    if np.any(smaller > larger):
        raise PruningCrossCheckError(f"layer {name}: the mask keeps other weights than tfmot's magnitude "
                                     f"threshold ({int((new_mask != tf_mask).sum())} positions differ)")
