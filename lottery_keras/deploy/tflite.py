"""TFLite export: convert a ticket (masks stripped, `tickets.py`) to TFLite (float, sparse, int8) and check each
file against Keras on the test set; `export_rounds` does it for every finished round of a run (deploy.csv).

`export_ticket` converts the plain model with `tf.lite.TFLiteConverter` (via a SavedModel export), runs every
  file with the LiteRT interpreter and returns one row per format: size (raw and gzipped), test accuracy of the
  file and of the Keras ticket, max and mean |Δlogit| (int8 outputs dequantised), agreement of predicted
  classes (%), and median single-example latency (batch 1, one thread) with the default delegates and with the
  builtin kernels. A ticket whose units (neurons, channels) have no outgoing weights left, as structured pruning
  leaves them, is exported as the smaller dense network it is in the `float` format (`tickets.compact`; column
  `parameters`). The sparse formats keep the full shapes: their encoding already drops the zeros, and the
  converter's sparse encodings of compacted collapsed tickets disagreed with Keras (docs/cli.md, "Deployment").

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
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import pandas as pd

from lottery_keras.data import Splits
from lottery_keras.deploy.tickets import compact, model_input_shape, strip_masks
from lottery_keras.lottery.paths import RunFolder
from lottery_keras.lottery.pruning import remaining_percent
from lottery_keras.nn.models import MaskedModel
from lottery_keras.nn.network import MaskedNetwork
from lottery_keras.nn.saving import TicketError, load_ticket
from lottery_keras.storage import atomic_path, check_folder, write_csv
from lottery_keras.train.evaluation import accuracy, batched_logits

FORMATS = ("float", "sparse", "int8")  # float32 dense; float32 + EXPERIMENTAL_SPARSITY; full int8 + sparsity
REPRESENTATIVE_SAMPLES = 500  # training images the int8 converter calibrates activation ranges on
LATENCY_SAMPLES = 300  # test images timed one by one (batch 1) for the median latency
LATENCY_WARMUP = 10
EVAL_BATCH = 500  # batch the accuracy pass resizes the interpreter's input to
EXPORT_CSV = "export.csv"
DEPLOY_CSV = "deploy.csv"

EXPORT_COLUMNS = ["format", "file", "bytes", "gzip_bytes", "test_acc", "keras_test_acc", "max_abs_logit_diff",
                  "mean_abs_logit_diff", "agreement", "latency_ms", "runtime", "builtin_latency_ms", "parameters",
                  "remaining", "test_samples", "ticket"]


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

    def __init__(self, model_content: bytes, batch_size: int = 1, num_threads: int | None = None,
                 builtin: bool = False):
        """`builtin`: the plain builtin kernels; else the default delegates (XNNPack) where they accept the file."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.batch_size = batch_size
        self.runtime, self.interpreter = "builtin", None
        if not builtin:
            try:
                self.interpreter = self._open(Interpreter, model_content, batch_size, num_threads,
                                              OpResolverType.AUTO)
                self.runtime = "xnnpack"
            except (RuntimeError, ValueError):  # XNNPack rejects e.g. sparse int8 FULLY_CONNECTED
                pass
        if self.interpreter is None:
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


def export_model(model: MaskedModel, splits: Splits, output_dir: str | os.PathLike, stem: str = "ticket",
                 formats: Sequence[str] = FORMATS, test_limit: int | None = None,
                 latency_samples: int = LATENCY_SAMPLES) -> pd.DataFrame:
    """Convert a masked model to each TFLite format, write `<stem>_<format>.tflite` files and `export.csv` into
    `output_dir` (atomically), and return the comparison table (one row per format, `EXPORT_COLUMNS`).

    Accuracies and agreement are in percent, on the first `test_limit` test images (all when None).
    """
    formats = check_formats(formats)
    output_dir = Path(output_dir)
    check_folder(output_dir)
    x_test, y_test = splits.x_test[:test_limit], splits.y_test[:test_limit]
    if len(x_test) == 0:
        raise ValueError("the test split is empty; nothing to evaluate the export on")
    plain = strip_masks(model, splits.input_shape)
    # The float file holds the smaller dense network of a built-in architecture's ticket; the sparse encodings keep
    # the full shapes, as do networks of one's own (their branches do not compact unit by unit).
    networks = {"float": plain if isinstance(model, MaskedNetwork) else compact(plain)}
    reference = batched_logits(model, x_test)
    keras_acc, keras_classes = accuracy(reference, y_test), np.argmax(reference, axis=1)
    remaining = round(remaining_percent(model.get_masks()), 4)
    calibration = representative_samples(splits.x_train) if "int8" in formats else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="lottery_keras_export_") as scratch:
        saved_models = {}
        for fmt in formats:
            network = networks.get(fmt, plain)
            if id(network) not in saved_models:
                saved_models[id(network)] = Path(scratch) / f"saved_model_{len(saved_models)}"
                network.export(str(saved_models[id(network)]), format="tf_saved_model", verbose=False)
            content = to_tflite(network, fmt, calibration, saved_model_dir=saved_models[id(network)])
            path = output_dir / f"{stem}_{fmt}.tflite"
            with atomic_path(path) as tmp:
                tmp.write_bytes(content)
            runner = TFLiteRunner(content, batch_size=min(EVAL_BATCH, len(x_test)))
            logits = runner.predict(x_test)
            timer = TFLiteRunner(content, batch_size=1, num_threads=1)
            builtin = TFLiteRunner(content, batch_size=1, num_threads=1, builtin=True)
            rows.append({
                "format": fmt, "file": path.name, "bytes": len(content),
                "gzip_bytes": len(gzip.compress(content, compresslevel=9, mtime=0)),
                "test_acc": accuracy(logits, y_test), "keras_test_acc": keras_acc,
                "max_abs_logit_diff": float(np.max(np.abs(logits - reference))),
                "mean_abs_logit_diff": float(np.mean(np.abs(logits - reference))),
                "agreement": 100.0 * float(np.mean(np.argmax(logits, axis=1) == keras_classes)),
                "latency_ms": timer.median_latency_ms(x_test[:latency_samples]), "runtime": timer.runtime,
                "builtin_latency_ms": builtin.median_latency_ms(x_test[:latency_samples]),
                "parameters": network.count_params(),
                "remaining": remaining, "test_samples": len(x_test), "ticket": stem,
            })
    table = pd.DataFrame(rows, columns=EXPORT_COLUMNS)
    write_csv(output_dir / EXPORT_CSV, table)
    return table


def _load_for(ticket: Path, splits: Splits) -> MaskedModel:
    """The ticket, if it takes the split's images."""
    model = load_ticket(ticket)
    shape = model_input_shape(model)
    if shape != splits.input_shape:
        raise TicketError(f"{ticket} takes inputs of shape {shape}, but the {splits.name} images are "
                          f"{splits.input_shape}; export it with the dataset it was trained on")
    return model


def export_ticket(ticket: Path, splits: Splits, formats: Sequence[str] = FORMATS, output_dir: Path | None = None,
                  test_limit: int | None = None) -> pd.DataFrame:
    """Load a ticket file, export it to each TFLite format and compare the files with Keras on the test split.

    Writes `<ticket stem>_<format>.tflite` and `export.csv` into `output_dir` (default: beside the ticket) and
    returns the table (columns `EXPORT_COLUMNS`; accuracies and agreement in percent, latency in ms).
    """
    formats = check_formats(formats)  # before any slow work
    ticket = Path(ticket)
    model = _load_for(ticket, splits)
    return export_model(model, splits, ticket.parent if output_dir is None else output_dir, ticket.stem,
                        formats, test_limit)


def export_rounds(run: RunFolder, splits: Splits, strategy: str, trial: int, formats: Sequence[str] = FORMATS,
                  output_dir: Path | None = None, test_limit: int | None = None,
                  progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """`export_model` for every finished round of (trial, strategy) that has its trained ticket: the files go to
    `<output_dir>/round_XX/`, and one table (the rounds' rows with a leading `round` column) to
    `<output_dir>/deploy.csv` (default output_dir: `<strategy folder>/deploy`)."""
    formats = check_formats(formats)
    units = [unit for unit in run.finished_units(trial, strategy) if unit.ticket_trained.is_file()]
    if not units:
        raise TicketError(f"{run.strategy_dir(trial, strategy)} has no finished round with a trained ticket")
    output_dir = Path(output_dir) if output_dir is not None else run.strategy_dir(trial, strategy) / "deploy"
    check_folder(output_dir)
    tables = []
    for unit in units:
        if progress is not None:
            progress(f"round {unit.round}")
        table = export_model(_load_for(unit.ticket_trained, splits), splits, output_dir / unit.directory.name,
                             unit.directory.name, formats, test_limit)
        tables.append(table.assign(round=unit.round))
    table = pd.concat(tables, ignore_index=True)
    table = table[["round", *EXPORT_COLUMNS]]
    write_csv(output_dir / DEPLOY_CSV, table)
    return table
