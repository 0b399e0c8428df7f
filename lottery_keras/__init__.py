"""lottery_keras: lottery tickets (Frankle & Carbin, 2019) in Keras 3 / TensorFlow.

The package is organised by layer (dependencies point down the list):

    cli.py                 the commands of run.py
    lottery/find.py        find_ticket: IMP on one's own Keras 3 model and data, through the same controller
    sparsity/              pruning any Keras 3 model with tfmot's API (prune_low_magnitude, schedules, callback)
    lottery/               the IMP controller, the strategy registry with its mask sources and start rules,
                           pruning criteria, run folders, Ray workers
    analysis/  deploy/     reports from run folders; tickets and TFLite export
    train/                 the compiled loop, the execution plan, the optimizer, evaluation, callbacks
    nn/                    masked layers, the architectures, native CPU kernels
    config.py  catalog.py  data.py  storage.py   experiments and presets, names, datasets, atomic files

`import lottery_keras` and its configuration load no TensorFlow. Once Keras is imported too (before or after),
the masked layers, the models and the pruning wrapper are registered with it, so `keras.models.load_model` opens
saved tickets and pruned models.
"""

import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# tensorflow-model-optimization's pruning API for any Keras 3 model (`sparsity/`), loaded on first use.
_SPARSITY_API = ("ConstantSparsity", "PolynomialDecay", "PrunableLayer", "PruneLowMagnitude", "PruningError",
                 "PruningSummaries", "UpdatePruningStep", "prune_low_magnitude", "prune_scope", "register_prunable",
                 "sparsity_report", "strip_pruning")


# Lottery tickets for one's own model and data (`lottery/find.py`), loaded on first use.
_FIND_API = ("TicketSearch", "find_ticket")

# The open registries (free of TensorFlow): strategies and the criteria they combine, architectures, result
# columns and the optional evaluations that fill them.
_REGISTRY_API = {"Strategy": "lottery.strategies", "register_strategy": "lottery.strategies",
                 "MaskSource": "lottery.masks", "register_mask_source": "lottery.masks", "StartRule": "lottery.starts",
                 "register_start": "lottery.starts", "ArchitectureSpec": "catalog",
                 "register_architecture": "catalog", "Column": "columns", "register_column": "columns",
                 "Evaluation": "lottery.evaluations", "register_evaluation": "lottery.evaluations"}


def __getattr__(name: str):
    if name in _FIND_API:
        from lottery_keras.lottery import find

        return getattr(find, name)
    if name in _REGISTRY_API:
        import importlib

        return getattr(importlib.import_module(f"lottery_keras.{_REGISTRY_API[name]}"), name)
    if name in _SPARSITY_API:
        from lottery_keras import sparsity

        return getattr(sparsity, name)
    raise AttributeError(f"module 'lottery_keras' has no attribute {name!r}")


def _register_with_keras() -> None:
    """Import the modules whose classes Keras must find by name when it loads a ticket or a pruned model."""
    import lottery_keras.nn.network  # noqa: F401  (the masked layers, models and networks)
    import lottery_keras.sparsity  # noqa: F401  (PruneLowMagnitude and the schedules)


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Registers lottery_keras's classes once Keras is imported, without importing Keras (and its backend) with
    lottery_keras.

    When Keras is first imported from inside a lottery_keras module, registering at once would re-enter that
    half-initialised module; registration then waits until the outermost lottery_keras import has finished.
    """

    def __init__(self):
        self._searching = False
        self._loading = 0  # lottery_keras modules being executed right now
        self._keras_loaded = False

    def find_spec(self, name, path=None, target=None):
        if self._searching or not (name == "keras" or name.startswith("lottery_keras.")):
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(name)  # the spec the other finders give
        finally:
            self._searching = False
        if spec is not None and spec.loader is not None:
            spec.loader.exec_module = self._watch(spec.loader.exec_module, is_keras=name == "keras")
        return spec

    def _watch(self, execute, is_keras: bool):
        def exec_module(module):
            self._loading += not is_keras
            try:
                execute(module)
            finally:
                self._loading -= not is_keras
            self._keras_loaded |= is_keras
            if self._keras_loaded and not self._loading and self in sys.meta_path:
                sys.meta_path.remove(self)
                _register_with_keras()

        return exec_module


if "keras" in sys.modules:
    _register_with_keras()
else:
    sys.meta_path.insert(0, _RegisterAfterKeras())
