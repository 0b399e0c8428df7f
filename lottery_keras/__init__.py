"""lottery_keras: lottery tickets (Frankle & Carbin, 2019) in Keras 3 / TensorFlow.

The package is organised by layer (dependencies point down the list):

    cli.py                 the commands of run.py
    lottery/find.py        find_ticket: IMP on one's own Keras 3 model and data, through the same controller
    sparsity/              pruning any Keras 3 model with tfmot's API (prune_low_magnitude, schedules, callback)
    lottery/               the IMP controller, the strategy registry, pruning criteria, run folders
    analysis/  deploy/     reports from run folders; tickets and TFLite export
    train/                 the compiled loop, the execution plan, the optimizer, evaluation, callbacks
    nn/                    masked layers, the architectures, native CPU kernels
    config.py  catalog.py  data.py  storage.py   experiments and presets, names, datasets, atomic files

`import lottery_keras` and its configuration load no TensorFlow. Importing `lottery_keras.nn` (which anything that
builds or loads a model does) registers the masked layers and models with Keras, so `keras.models.load_model`
opens saved tickets.
"""

__version__ = "0.1.0"

# tensorflow-model-optimization's pruning API for any Keras 3 model (`sparsity/`), loaded on first use.
_SPARSITY_API = ("ConstantSparsity", "PolynomialDecay", "PruneLowMagnitude", "PruningError", "UpdatePruningStep",
                 "prune_low_magnitude", "strip_pruning")


# Lottery tickets for one's own model and data (`lottery/find.py`), loaded on first use.
_FIND_API = ("TicketSearch", "find_ticket")


def __getattr__(name: str):
    if name in _FIND_API:
        from lottery_keras.lottery import find

        return getattr(find, name)
    if name in _SPARSITY_API:
        from lottery_keras import sparsity

        return getattr(sparsity, name)
    raise AttributeError(f"module 'lottery_keras' has no attribute {name!r}")
