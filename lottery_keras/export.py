"""Exporting tickets: load a saved ticket safely, strip its masks into a plain Keras model, convert it to TFLite
(float, sparse, int8) and check each file against Keras on the test set.

- `load_ticket` opens a `.keras` ticket and turns every way a file can fail to be one (missing, not a zip,
  truncated, some other model) into a `TicketError` naming the file.
- `strip_masks` rebuilds a masked model as a standard functional Keras model of `Dense` / `Conv2D` (plus the
  weightless layers the architecture uses) with kernel = kernel ⊙ mask: the graph comes from the subclassed
  model's own `call` applied to a `keras.Input`, then `keras.models.clone_model` swaps each masked layer for its
  plain counterpart (`PLAIN_LAYERS`). The result loads with `keras.models.load_model` and no custom objects.
- `export_ticket` converts the plain model with `tf.lite.TFLiteConverter` (via a SavedModel export), runs every
  file with the LiteRT interpreter and returns one row per format: size (raw and gzipped), test accuracy of the
  file and of the Keras ticket, max and mean |Δlogit| (int8 outputs dequantised), agreement of predicted
  classes (%), and median single-example latency (batch 1, one thread).

For int8 the max |Δlogit| is dominated by the few logits outside the output range calibrated on the
representative images (the quantised output saturates there, typically on the most negative logit, which
does not change the predicted class); the mean |Δlogit| is about half an output quantisation step.

LiteRT's default XNNPack delegate handles the float files (it densifies sparse float weights) but rejects sparse
int8 FULLY_CONNECTED ops; each file is run with the default delegates when they accept it and with the plain
builtin kernels (`BUILTIN_WITHOUT_DEFAULT_DELEGATES`) otherwise; the `runtime` column says which
(`xnnpack` or `builtin`).
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import pandas as pd

from lottery_keras import results
from lottery_keras.data import Splits
from lottery_keras.layers import MaskedConv2D, MaskedDense, MaskedLayer
from lottery_keras.models import MaskedModel
from lottery_keras.storage import atomic_path, write_csv

FORMATS = ("float", "sparse", "int8")
FORMAT_DESCRIPTIONS = {
    "float": "float32 weights, dense storage",
    "sparse": "float32 weights, Optimize.EXPERIMENTAL_SPARSITY (sparse tensor storage)",
    "int8": "full-integer int8 (weights, activations, input and output) + EXPERIMENTAL_SPARSITY",
}
REPRESENTATIVE_SAMPLES = 500  # training images the int8 converter calibrates activation ranges on
LATENCY_SAMPLES = 300  # test images timed one by one (batch 1) for the median latency
LATENCY_WARMUP = 10
EVAL_BATCH = 500  # batch the accuracy pass resizes the interpreter's input to
EXPORT_CSV = "export.csv"
TICKET_FILES = ("ticket_trained.keras", "ticket_init.keras")

EXPORT_COLUMNS = ["format", "file", "bytes", "gzip_bytes", "test_acc", "keras_test_acc", "max_abs_logit_diff",
                  "mean_abs_logit_diff", "agreement", "latency_ms", "runtime", "remaining", "test_samples",
                  "ticket"]


class TicketError(ValueError):
    """A file or directory that should hold a lottery ticket does not (the message names it and says why)."""


# ----------------------------------------------------------------------------------------------- loading

def _ticket_config(path: Path) -> dict:
    """Validate that `path` is a readable `.keras` archive and return its `config.json`."""
    if not path.exists():
        raise TicketError(f"{path}: no such file")
    if path.is_dir():
        raise TicketError(f"{path} is a directory, not a .keras ticket file (pass a run directory to "
                          "resolve_ticket to pick a ticket from it)")
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise TicketError(f"{path}: cannot read the file: {err.strerror or err}") from None
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK"):
            raise TicketError(f"{path} is a truncated or corrupt zip archive, not a whole .keras ticket")
        raise TicketError(f"{path} is not a .keras ticket: the file is not a zip archive"
                          + (" (it is empty)" if not head else ""))
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = {"config.json", "model.weights.h5"} - names
            if missing:
                raise TicketError(f"{path} is a zip archive but not a Keras model file: it lacks "
                                  f"{', '.join(sorted(missing))}")
            damaged = archive.testzip()
            if damaged is not None:
                raise TicketError(f"{path} is corrupt: the archive member {damaged} fails its CRC check")
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        if isinstance(err, TicketError):
            raise
        raise TicketError(f"{path} is a truncated or corrupt .keras archive ({err})") from None
    if not isinstance(config, dict):
        raise TicketError(f"{path}: config.json is not a Keras model configuration")
    return config


def _ticket_class(path: Path, config: dict) -> type:
    """The registered MaskedModel subclass a `.keras` config describes, or a TicketError saying what it is."""
    registered = config.get("registered_name") or config.get("class_name")
    cls = keras.saving.get_registered_object(registered) if isinstance(registered, str) else None
    if not (isinstance(cls, type) and issubclass(cls, MaskedModel)):
        kind = config.get("class_name")
        what = f"a Keras {kind} object" if isinstance(kind, str) else "an unrecognised Keras object"
        raise TicketError(f"{path} holds {what}, not a lottery_keras ticket (a masked model such as LeNetFC, "
                          "LeNet5 or ConvNet)")
    return cls


def load_ticket(path: str | os.PathLike) -> MaskedModel:
    """Load a saved ticket (`.keras` file of a lottery_keras masked model) without its optimizer.

    Raises `TicketError` (a ValueError) naming the file when it is missing, not a zip archive, truncated or
    corrupt, a Keras file of some other model, or fails to load for another reason.
    """
    path = Path(path)
    config = _ticket_config(path)
    _ticket_class(path, config)
    if path.suffix != ".keras":
        raise TicketError(f"{path} looks like a ticket but Keras only opens files named *.keras; rename it")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001  (any loader failure is a bad ticket; keep the cause chained)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise TicketError(f"{path} could not be loaded as a ticket: {type(err).__name__}: {first_line[:300]}") \
            from err
    if not isinstance(model, MaskedModel):
        raise TicketError(f"{path} loaded as {type(model).__name__}, not a lottery_keras masked model")
    return model


# ----------------------------------------------------------------------------------------------- stripping

def _plain_dense(layer: MaskedDense) -> keras.layers.Layer:
    plain = keras.layers.Dense(layer.units, activation=layer.activation, name=layer.name)
    plain.build((None, layer.kernel.shape[0]))
    return plain


def _plain_conv2d(layer: MaskedConv2D) -> keras.layers.Layer:
    plain = keras.layers.Conv2D(layer.filters, layer.kernel_size, padding=layer.padding,
                                activation=layer.activation, name=layer.name)
    plain.build((None, None, None, layer.kernel.shape[2]))
    return plain


# The standard Keras layer each masked layer becomes (built, with the same kernel layout): a new masked layer
# type needs one entry here.
PLAIN_LAYERS: dict[type, Callable[[MaskedLayer], keras.layers.Layer]] = {
    MaskedDense: _plain_dense,
    MaskedConv2D: _plain_conv2d,
}


def _to_plain(layer: keras.layers.Layer) -> keras.layers.Layer:
    if isinstance(layer, MaskedLayer):
        factory = PLAIN_LAYERS.get(type(layer))
        if factory is None:
            raise TypeError(f"strip_masks has no plain Keras counterpart for {type(layer).__name__} "
                            f"(layer {layer.name}); add one to export.PLAIN_LAYERS")
        plain = factory(layer)
        plain.set_weights([keras.ops.convert_to_numpy(layer.kernel * layer.mask),
                           keras.ops.convert_to_numpy(layer.bias)])
        return plain
    return layer.__class__.from_config(layer.get_config())


def model_input_shape(model: keras.Model) -> tuple[int, ...]:
    """The per-example input shape a built model was built for (e.g. (28, 28, 1))."""
    build_config = model.get_build_config() or {}
    shape = build_config.get("input_shape")
    if not shape:
        raise ValueError(f"model {model.name} is not built; build it (or load a saved ticket) first")
    return tuple(int(d) for d in shape[1:])


def strip_masks(model: MaskedModel, input_shape: Sequence[int] | None = None) -> keras.Model:
    """A standard functional Keras model computing the same function as `model` with kernel = kernel ⊙ mask.

    Its layers are built-in Keras layers only (`Dense`, `Conv2D` and the weightless layers of the architecture),
    so it saves and loads with `keras.models.load_model` in a process that never imports lottery_keras. The
    masked model is left untouched (the graph is traced from a copy).
    """
    input_shape = tuple(input_shape) if input_shape is not None else model_input_shape(model)
    copy = model.__class__.from_config(model.get_config())
    copy.build((None, *input_shape))
    copy.set_weights(model.get_weights())
    inputs = keras.Input(input_shape, name="input")
    traced = keras.Model(inputs, copy.call(inputs), name=model.name)
    return keras.models.clone_model(traced, clone_function=_to_plain)


def remaining_percent(model: MaskedModel) -> float:
    """Nonzero mask entries over all prunable weights, in percent."""
    masks = model.get_masks()
    return 100.0 * sum(float(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())


# ----------------------------------------------------------------------------------------------- TFLite

def check_formats(formats: Sequence[str]) -> list[str]:
    """Validate format names (duplicates dropped, order kept); raises ValueError naming the choices."""
    if isinstance(formats, str):
        formats = [formats]
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown export format {', '.join(map(repr, unknown)) or '(none)'}; choose from: "
                         f"{', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def representative_samples(x_train: np.ndarray, count: int = REPRESENTATIVE_SAMPLES, seed: int = 0) -> np.ndarray:
    """`count` training images drawn without replacement (fixed seed) for int8 calibration."""
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(x_train), size=min(count, len(x_train)), replace=False))
    return np.asarray(x_train[index], dtype=np.float32)


def to_tflite(plain: keras.Model, fmt: str, representative: np.ndarray | None = None,
              saved_model_dir: str | os.PathLike | None = None) -> bytes:
    """Convert a plain (mask-stripped) Keras model to a TFLite flatbuffer in format `fmt`.

    `int8` needs `representative` (calibration images). `saved_model_dir`, when given, is an existing
    `model.export(..., format="tf_saved_model")` of `plain` to convert from (saves re-exporting per format).
    """
    import tensorflow as tf

    check_formats([fmt])
    if fmt == "int8" and representative is None:
        raise ValueError("int8 conversion needs representative samples (a few hundred training images)")
    with tempfile.TemporaryDirectory(prefix="lottery_keras_export_") as scratch:
        if saved_model_dir is None:
            saved_model_dir = Path(scratch) / "saved_model"
            plain.export(str(saved_model_dir), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
        if fmt == "sparse":
            converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        elif fmt == "int8":
            samples = np.asarray(representative, dtype=np.float32)
            converter.optimizations = [tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
            converter.representative_dataset = lambda: ([samples[i:i + 1]] for i in range(len(samples)))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return converter.convert()


class TFLiteRunner:
    """A LiteRT interpreter over one flatbuffer that takes float images and returns float logits (int8 input
    quantised and output dequantised with the file's own scales)."""

    def __init__(self, model_content: bytes, batch_size: int = 1, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.batch_size = batch_size
        self.runtime = "xnnpack"
        try:
            self.interpreter = self._open(Interpreter, model_content, batch_size, num_threads,
                                          OpResolverType.AUTO)
        except (RuntimeError, ValueError):  # XNNPack rejects e.g. sparse int8 FULLY_CONNECTED
            self.runtime = "builtin"
            self.interpreter = self._open(Interpreter, model_content, batch_size, num_threads,
                                          OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    @staticmethod
    def _open(interpreter_class, content, batch_size, num_threads, resolver):
        interpreter = interpreter_class(model_content=content, num_threads=num_threads,
                                        experimental_op_resolver_type=resolver)
        detail = interpreter.get_input_details()[0]
        if int(detail["shape"][0]) != batch_size:
            interpreter.resize_tensor_input(detail["index"], [batch_size, *detail["shape"][1:]])
        interpreter.allocate_tensors()
        # Delegates are applied lazily: one invoke on zeros makes a delegate that rejects an op fail here.
        interpreter.set_tensor(detail["index"], np.zeros([batch_size, *detail["shape"][1:]], detail["dtype"]))
        interpreter.invoke()
        return interpreter

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return np.asarray(x, np.float32)
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(np.asarray(x, np.float32) / scale) + zero_point, info.min, info.max).astype(dtype)

    def dequantize_output(self, y: np.ndarray) -> np.ndarray:
        if self.output["dtype"] == np.float32:
            return y
        scale, zero_point = self.output["quantization"]
        return (y.astype(np.float32) - zero_point) * scale

    def invoke(self, quantized: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], quantized)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float logits for all of `x`, in batches of `batch_size` (the last one zero-padded)."""
        outputs = []
        for start in range(0, len(x), self.batch_size):
            chunk = self.quantize_input(x[start:start + self.batch_size])
            count = len(chunk)
            if count < self.batch_size:
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - count, *chunk.shape[1:]), chunk.dtype)])
            outputs.append(self.dequantize_output(self.invoke(chunk))[:count])
        return np.concatenate(outputs)

    def median_latency_ms(self, x: np.ndarray, warmup: int = LATENCY_WARMUP) -> float:
        """Median wall time of one example's set-input / invoke / read-output, in ms (needs batch_size 1)."""
        if self.batch_size != 1:
            raise ValueError("latency is measured with batch size 1")
        quantized = self.quantize_input(x)
        for i in range(min(warmup, len(quantized))):
            self.invoke(quantized[i:i + 1])
        times = []
        for i in range(len(quantized)):
            started = time.perf_counter()
            self.invoke(quantized[i:i + 1])
            times.append(time.perf_counter() - started)
        return 1000.0 * statistics.median(times)


def keras_logits(model: keras.Model, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    return np.concatenate([keras.ops.convert_to_numpy(model(x[i:i + batch_size], training=False))
                           for i in range(0, len(x), batch_size)])


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels))


def export_model(model: MaskedModel, splits: Splits, output_dir: str | os.PathLike, stem: str = "ticket",
                 formats: Sequence[str] = FORMATS, test_limit: int | None = None,
                 latency_samples: int = LATENCY_SAMPLES) -> pd.DataFrame:
    """Convert a masked model to each TFLite format, write `<stem>_<format>.tflite` files and `export.csv` into
    `output_dir` (atomically), and return the comparison table (one row per format, `EXPORT_COLUMNS`).

    Accuracies and agreement are in percent, on the first `test_limit` test images (all when None).
    """
    formats = check_formats(formats)
    output_dir = Path(output_dir)
    x_test, y_test = splits.x_test[:test_limit], splits.y_test[:test_limit]
    if len(x_test) == 0:
        raise ValueError("the test split is empty; nothing to evaluate the export on")
    plain = strip_masks(model, splits.input_shape)
    reference = keras_logits(model, x_test)
    keras_acc, keras_classes = _accuracy(reference, y_test), np.argmax(reference, axis=1)
    remaining = round(remaining_percent(model), 4)
    calibration = representative_samples(splits.x_train) if "int8" in formats else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="lottery_keras_export_") as scratch:
        saved_model = Path(scratch) / "saved_model"
        plain.export(str(saved_model), format="tf_saved_model", verbose=False)
        for fmt in formats:
            content = to_tflite(plain, fmt, calibration, saved_model_dir=saved_model)
            path = output_dir / f"{stem}_{fmt}.tflite"
            with atomic_path(path) as tmp:
                tmp.write_bytes(content)
            runner = TFLiteRunner(content, batch_size=min(EVAL_BATCH, len(x_test)))
            logits = runner.predict(x_test)
            timer = TFLiteRunner(content, batch_size=1, num_threads=1)
            rows.append({
                "format": fmt, "file": path.name, "bytes": len(content),
                "gzip_bytes": len(gzip.compress(content, compresslevel=9, mtime=0)),
                "test_acc": _accuracy(logits, y_test), "keras_test_acc": keras_acc,
                "max_abs_logit_diff": float(np.max(np.abs(logits - reference))),
                "mean_abs_logit_diff": float(np.mean(np.abs(logits - reference))),
                "agreement": 100.0 * float(np.mean(np.argmax(logits, axis=1) == keras_classes)),
                "latency_ms": timer.median_latency_ms(x_test[:latency_samples]), "runtime": timer.runtime,
                "remaining": remaining, "test_samples": len(x_test), "ticket": stem,
            })
    table = pd.DataFrame(rows, columns=EXPORT_COLUMNS)
    write_csv(output_dir / EXPORT_CSV, table)
    return table


def export_ticket(ticket: Path, splits: Splits, formats: Sequence[str] = FORMATS, output_dir: Path | None = None,
                  test_limit: int | None = None) -> pd.DataFrame:
    """Load a ticket file, export it to each TFLite format and compare the files with Keras on the test split.

    Writes `<ticket stem>_<format>.tflite` and `export.csv` into `output_dir` (default: beside the ticket) and
    returns the table (columns `EXPORT_COLUMNS`; accuracies and agreement in percent, latency in ms).
    """
    formats = check_formats(formats)  # before any slow work
    ticket = Path(ticket)
    model = load_ticket(ticket)
    shape = model_input_shape(model)
    if shape != splits.input_shape:
        raise TicketError(f"{ticket} takes inputs of shape {shape}, but the {splits.name} images are "
                          f"{splits.input_shape}; export it with the dataset it was trained on")
    return export_model(model, splits, ticket.parent if output_dir is None else output_dir, ticket.stem,
                        formats, test_limit)


# ----------------------------------------------------------------------------------------------- finding tickets

def _finished_rounds(strategy_dir: Path) -> list[int]:
    rounds = []
    for directory in strategy_dir.glob("round_*"):
        suffix = directory.name.removeprefix("round_")
        if suffix.isdigit() and results.is_finished(directory) and (directory / TICKET_FILES[0]).is_file():
            rounds.append(int(suffix))
    return sorted(rounds)


def resolve_ticket(path: Path, round_index: int | None = None, strategy: str = "magnitude_rewind",
                   trial: int = 0) -> Path:
    """The ticket file `path` names: a `.keras` file itself, a round directory's `ticket_trained.keras`, or, for
    a run directory, `trial_<trial>/<strategy>/round_<round_index>/ticket_trained.keras` (round_index counts
    from 0 like the directory names; default: the last finished round). Raises TicketError when absent."""
    path = Path(path)
    if not path.exists():
        raise TicketError(f"{path}: no such ticket file or run directory")
    if path.is_file():
        return path
    if (path / TICKET_FILES[0]).is_file():  # a round directory
        return path / TICKET_FILES[0]
    trial_dir = results.trial_dir(path, trial)
    if not trial_dir.is_dir():
        trials = sorted(p.name for p in path.glob("trial_*") if p.is_dir())
        if not trials:
            raise TicketError(f"{path} is neither a ticket file nor a run directory (no trial_* folders)")
        raise TicketError(f"{path} has no trial {trial}; it holds: {', '.join(trials)}")
    strategy_dir = trial_dir / strategy
    if not strategy_dir.is_dir():
        strategies = sorted(p.name for p in trial_dir.iterdir() if p.is_dir())
        raise TicketError(f"{trial_dir} has no strategy {strategy!r}; it holds: {', '.join(strategies) or 'none'}")
    finished = _finished_rounds(strategy_dir)
    if not finished:
        raise TicketError(f"{strategy_dir} has no finished round with a {TICKET_FILES[0]} yet")
    if round_index is None:
        round_index = finished[-1]
    elif round_index < 0:
        raise TicketError(f"round index must be 0 or more, not {round_index}")
    elif round_index not in finished:
        raise TicketError(f"{strategy_dir} has no finished round {round_index}; finished rounds: "
                          f"{', '.join(map(str, finished))}")
    return results.round_dir(path, trial, strategy, round_index) / TICKET_FILES[0]
