"""A model of one's own as a masked model: any Sequential or functional Keras 3 classifier, its `Dense` and
convolution layers masked (`layers.MaskedWrapper`), trained and pruned by the same controller as the built-in
architectures.

- `mask_network(model, layers=None)` checks the model and returns a `MaskedNetwork` holding a clone of it with the
  chosen layers wrapped, every weight kept.
- `network_fingerprint` names a masked network's architecture independently of its weights, of the layer names
  Keras numbers per process and of initializer seeds, so a run directory derives from it.
- `build_network(config, seed)` rebuilds a network from its configuration with every initializer's (and dropout's)
  seed derived from `seed`: θ0 is a function of the seed, as for the built-in architectures.
- `plain_network` is the functional model again with plain layers, kernel ⊙ mask.

The masked layer that computes the logits (through layers without weights, if any) is the output layer, the
'output' pruning-rate family; a model whose output comes from elsewhere (a sum of branches) has none.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Callable, Iterable, Iterator

import keras
import numpy as np
from keras.src.models.functional import Functional  # what clone_model rebuilds besides Sequential; not exported

from lottery_keras.config import OWN_INIT
from lottery_keras.nn.layers import MaskedWrapper, is_prunable, prunable_names
from lottery_keras.nn.models import MaskedModel

LayerChoice = Iterable[str] | str | Callable[[keras.layers.Layer], bool] | None


class NetworkError(ValueError):
    """A model that cannot be masked or trained as a lottery-ticket network; the message says why and the fix."""


@keras.saving.register_keras_serializable(package="lottery_keras")
class MaskedNetwork(MaskedModel):
    """A Sequential or functional network whose prunable layers are `MaskedWrapper`s (see the module docstring)."""

    def __init__(self, network: keras.Model, **kwargs):
        kwargs.setdefault("name", network.name)
        super().__init__(num_classes=int(network.outputs[0].shape[-1]), init=OWN_INIT, **kwargs)
        self.network = network

    @property
    def out(self) -> MaskedWrapper | None:
        last = list(final_operations(self.network))[-1]
        return last if isinstance(last, MaskedWrapper) else None

    def masked_layers(self) -> list[MaskedWrapper]:
        """The masked layers in the network's topological order (`out` says which computes the logits)."""
        return [layer for layer in self.network.layers if isinstance(layer, MaskedWrapper)]

    def build(self, input_shape):
        self.built = True  # the functional network inside is built with its inputs

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def get_config(self):
        return {"name": self.name, "network": keras.saving.serialize_keras_object(self.network)}

    @classmethod
    def from_config(cls, config):
        return cls(network=keras.saving.deserialize_keras_object(config["network"]), name=config.get("name"))


def final_operations(model: keras.Model) -> Iterator[Any]:
    """The operations that compute the model's output, from the last one back along single inputs to the first
    that holds weights (or takes several inputs)."""
    tensor = model.outputs[0]
    while True:
        operation, node_index, _ = tensor._keras_history
        node = operation._inbound_nodes[node_index]
        yield operation
        if operation.weights or len(node.input_tensors) != 1:
            return
        tensor = node.input_tensors[0]


def _squashes(operation: Any) -> str | None:
    """'softmax' or 'sigmoid' when the operation turns logits into probabilities."""
    name = type(operation).__name__.lower()
    activation = getattr(getattr(operation, "activation", None), "__name__", None)
    return next((squash for squash in ("softmax", "sigmoid") if squash in (name, activation)), None)


def check_cloneable(model: Any, operation: str) -> None:
    """Raise a NetworkError unless `model` is a built Sequential or functional Keras model."""
    if not isinstance(model, keras.Model):
        raise NetworkError(f"{operation} takes a Keras model, not {type(model).__name__}")
    if not isinstance(model, (keras.Sequential, Functional)):
        raise NetworkError(f"{operation} needs a Sequential or functional model (what keras.models.clone_model can "
                           f"rebuild), not the subclassed {type(model).__name__}; build it functionally")
    if not model.built or not model.inputs:
        raise NetworkError(f"{operation}: model {model.name} is not built; give it an input shape "
                           "(keras.Input) or call it on data first")


def clone_with_weights(model: keras.Model, replace: Callable[[keras.layers.Layer], keras.layers.Layer]
                       ) -> keras.Model:
    """`keras.models.clone_model` with `replace` for each layer, keeping every weight of the original: a wrapper's
    inner layer takes the plain layer's weights, a plain layer the wrapper's masked kernel."""
    originals = {}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        new = replace(layer)
        originals[new.name] = layer
        return new

    cloned = keras.models.clone_model(model, clone_function=clone)
    for new in cloned.layers:
        original = originals.get(new.name)
        if original is None or not original.weights:
            continue
        if isinstance(new, MaskedWrapper) and not isinstance(original, MaskedWrapper):
            new.layer.set_weights(original.get_weights())
        elif isinstance(original, MaskedWrapper) and not isinstance(new, MaskedWrapper):
            new.set_weights([keras.ops.convert_to_numpy(variable * original.mask if variable is original.kernel
                                                        else variable) for variable in original.layer.weights])
        else:
            new.set_weights(original.get_weights())
    return cloned


def chosen_layers(model: keras.Model, layers: LayerChoice, candidates: list[keras.layers.Layer] | None = None,
                  prunable: Callable[[keras.layers.Layer], bool] = is_prunable,
                  prunable_hint: str = f"prunable layers are {prunable_names()}") -> list[str]:
    """The names of the `prunable` layers among `candidates` (default: the model's layers) that `layers` chooses
    (names, one name, a predicate, or None for all); a NetworkError for unknown or unprunable names, or when none
    is left. `prunable_hint` says what can be pruned."""
    candidates = list(model.layers) if candidates is None else candidates
    if layers is not None and not (callable(layers) or isinstance(layers, str) or _all_strings(layers)):
        raise NetworkError(f"layers must be layer names, one name or a predicate, not {layers!r}")
    if layers is None or callable(layers):
        choose = layers or (lambda layer: True)
    else:
        names = {layers} if isinstance(layers, str) else set(layers)
        by_name = {layer.name: layer for layer in candidates}
        unknown = sorted(names - set(by_name))
        if unknown:
            raise NetworkError(f"no layer named {', '.join(unknown)} in model {model.name}")
        unprunable = [f"{name} ({type(by_name[name]).__name__})" for name in sorted(names)
                      if not prunable(by_name[name])]
        if unprunable:
            raise NetworkError(f"cannot prune {', '.join(unprunable)}; {prunable_hint}")

        def choose(layer: keras.layers.Layer) -> bool:
            return layer.name in names
    wanted = [layer.name for layer in candidates if prunable(layer) and choose(layer)]
    if not wanted:
        raise NetworkError(f"model {model.name} has no layer to prune: {prunable_hint}"
                           + (" (and `layers` chose none of them)" if layers is not None else ""))
    return wanted


def _all_strings(values: Any) -> bool:
    try:
        return all(isinstance(value, str) for value in values)
    except TypeError:
        return False


def _fresh(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.__class__.from_config(layer.get_config())


def _check_rebuildable(model: keras.Model) -> None:
    """Refuse layers that rebuilding the network from its configuration (each trial's θ0) would change."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise NetworkError(f"model {model.name} holds the model {layer.name} as a layer; build it as one "
                               "functional model, so that its layers can be pruned")
        if isinstance(layer, keras.layers.Lambda):
            raise NetworkError(f"layer {layer.name} is a Lambda layer, which Keras does not rebuild from a "
                               "configuration safely; write it as a layer class (or a keras.ops call)")
        adapted = hasattr(layer, "adapt") and not (isinstance(layer, keras.layers.Normalization)
                                                   and layer.get_config().get("mean") is not None)
        if adapted:
            raise NetworkError(f"layer {layer.name} ({type(layer).__name__}) holds state adapted to data, which "
                               "rebuilding the network loses; apply it to the data beforehand and leave it out")


def mask_network(model: keras.Model, layers: LayerChoice = None) -> MaskedNetwork:
    """A `MaskedNetwork` of a clone of `model` with the prunable layers `layers` chooses (default: all) masked,
    every weight kept. The model must be a built Sequential or functional classifier with one input and one output
    giving logits (no softmax at the end: training uses the cross-entropy of logits)."""
    check_cloneable(model, "a lottery-ticket search")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise NetworkError(f"model {model.name} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                           "it needs one of each (a classifier)")
    if len(model.outputs[0].shape) != 2:
        raise NetworkError(f"model {model.name} outputs shape {tuple(model.outputs[0].shape)}; it needs one logit "
                           "per class, shape (batch, classes)")
    squash = next(filter(None, map(_squashes, final_operations(model))), None)
    if squash:
        raise NetworkError(f"model {model.name} ends in a {squash}; training uses the cross-entropy of logits, so "
                           "build it without (e.g. activation=None, or classifier_activation=None for "
                           "keras.applications)")
    _check_rebuildable(model)
    wanted = set(chosen_layers(model, layers))
    network = clone_with_weights(model, lambda layer: MaskedWrapper(_fresh(layer)) if layer.name in wanted
                                 else _fresh(layer))
    return MaskedNetwork(network)


def plain_network(model: MaskedNetwork | keras.Model) -> keras.Model:
    """The functional network of a `MaskedNetwork` (or a model holding `MaskedWrapper`s) with every wrapper
    replaced by its plain layer, kernel ⊙ mask: standard layers only, loading with no custom objects."""
    network = model.network if isinstance(model, MaskedNetwork) else model
    return clone_with_weights(network, lambda layer: _fresh(layer.layer if isinstance(layer, MaskedWrapper)
                                                            else layer))


def _walk(node: Any, visit: Callable[[str | None, Any], Any]) -> Any:
    """`node` rebuilt with `visit(key, value)` for every value below it (key None for list items)."""
    if isinstance(node, dict):
        return {key: visit(key, _walk(value, visit)) for key, value in node.items()}
    if isinstance(node, (list, tuple)):  # configurations hold tuples that JSON gives back as lists
        return [visit(None, _walk(value, visit)) for value in node]
    return node


def network_fingerprint(config: dict) -> str:
    """A short hash of a masked network's architecture: layer names become their positions (Keras numbers default
    names per process), seeds and the model's name are left out."""
    layer_names = [layer["config"]["name"] for layer in config["network"]["config"]["layers"]]
    position = {name: f"#{index}" for index, name in enumerate(layer_names)}

    def canonical(key: str | None, value: Any) -> Any:
        if key == "seed":
            return None
        return position.get(value, value) if isinstance(value, str) else value

    body = _walk(config["network"], canonical)
    body["config"]["name"] = None
    text = json.dumps(body, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def build_network(config: dict, seed: int) -> MaskedNetwork:
    """The network of `config` with fresh weights, every seed in it (initializers, dropout) derived from `seed`."""
    counter = iter(range(1, 1 << 30))

    def reseed(key: str | None, value: Any) -> Any:
        if key != "seed":
            return value
        return int(np.random.SeedSequence([seed, next(counter)]).generate_state(1)[0] % 2**31)

    model = MaskedNetwork.from_config(_walk(copy.deepcopy(config), reseed))
    model.build(None)
    return model

