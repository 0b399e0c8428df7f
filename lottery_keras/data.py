"""Datasets: MNIST, Fashion-MNIST and CIFAR-10 as normalised in-memory train / validation / test splits.

Sources: an explicit `--data-dir` is the only place looked in. Without one: `$LOTTERY_KERAS_DATA_DIR`,
well-known local folders (`./data`, `shared/datasets` beside a source checkout, Debian's
`dataset-fashion-mnist`), then `tensorflow_datasets` when the download server answers. Files are read in their
standard formats (IDX, CIFAR-10 binary batches) and validated; a bad file is an error that names it, never a
silent fallback. `Splits.source` says where the data came from.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import socket
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "LOTTERY_KERAS_DATA_DIR"
# Well-known local roots after the explicit ones: ./data, and the `shared/datasets` folder that sits beside a
# source checkout on the project's offline machines.
WELL_KNOWN_ROOTS = (Path("data"), Path(__file__).resolve().parents[2] / "shared" / "datasets")
TFDS_SERVER = ("storage.googleapis.com", 443)
VALIDATION_SEED = 42  # the held-out validation set is the same for every experiment and trial


class DataError(RuntimeError):
    """A dataset is missing, corrupt or of the wrong shape; the message says which file and how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder_names: tuple[str, ...]
    system_folders: tuple[str, ...]
    tfds_name: str
    num_train: int  # after the validation hold-out
    num_val: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    how_to_get: str


_MNIST_HINT = "the four IDX files (train-images-idx3-ubyte.gz, …) from the MNIST release"
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", ("mnist",), (), "mnist", 55_000, 5_000, (0.1307,), (0.3081,),
        f"put {_MNIST_HINT} in DATA_DIR/mnist/",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", ("fashion_mnist", "fashion-mnist"), ("/usr/share/datasets/fashion-mnist",),
        "fashion_mnist", 55_000, 5_000, (0.2860,), (0.3530,),
        "install Debian's package (`apt-get install dataset-fashion-mnist`) or put the four Fashion-MNIST IDX "
        "files in DATA_DIR/fashion_mnist/",
    ),
    "cifar10": DatasetSpec(
        "cifar10", ("cifar10", "cifar-10"), (), "cifar10", 45_000, 5_000,
        (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
        "put the CIFAR-10 binary batches (cifar-10-batches-bin/, plain or .gz) or the official "
        "cifar-10-binary.tar.gz in DATA_DIR/cifar10/",
    ),
}
ALIASES = {"fashion": "fashion_mnist", "fashion-mnist": "fashion_mnist", "cifar-10": "cifar10"}


def canonical_name(name: str) -> str:
    """The registry name of a dataset, accepting aliases; raises ValueError naming the choices."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        choices = ", ".join(sorted([*DATASETS, *ALIASES]))
        raise ValueError(f"unknown dataset {name!r}; choose one of: {choices}")
    return key


@dataclasses.dataclass(frozen=True)
class Splits:
    """Normalised float32 images (N, H, W, C) and int32 labels, ready to live on the device."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    num_classes: int = 10

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def head(self, train: int | None = None, val: int | None = None, test: int | None = None) -> "Splits":
        """The first samples of each split (for quick tests and smoke runs)."""
        return dataclasses.replace(
            self, x_train=self.x_train[:train], y_train=self.y_train[:train],
            x_val=self.x_val[:val], y_val=self.y_val[:val], x_test=self.x_test[:test], y_test=self.y_test[:test],
        )


# ----------------------------------------------------------------------------------------------- file formats

def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err} (the file is truncated or corrupt; fetch it again)") from err


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Read an IDX file (plain or gzip) of unsigned bytes, validating magic number and size."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != expected_ndim:
        raise DataError(f"{path} is not an IDX file of {expected_ndim}-D unsigned bytes (bad magic number); "
                        "fetch the original file again")
    header = 4 + 4 * expected_ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated (header incomplete); fetch the file again")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(f"{path} holds {len(data)} bytes but its header announces {expected}; "
                        "the file is truncated or corrupt, fetch it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_file(folder: Path, stem: str) -> Path | None:
    for suffix in (".gz", ""):
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem.replace('-idx', '.idx')}{suffix}"):
            if candidate.is_file():
                return candidate
    return None


def _has_idx(folder: Path) -> bool:
    return all(_find_file(folder, stem) for pair in _IDX_FILES.values() for stem in pair)


def _load_idx_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, (images_stem, labels_stem) in _IDX_FILES.items():
        images_path, labels_path = _find_file(folder, images_stem), _find_file(folder, labels_stem)
        images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise DataError(f"{images_path} holds {images.shape} images but {labels_path} holds "
                            f"{labels.shape[0]} labels; the two files do not belong together")
        out[split] = (images[..., None], labels)
    return out


_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "test_batch.bin"


def parse_cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode CIFAR-10 binary records (label byte + channel-major 32×32×3 pixels) into NHWC images."""
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DataError(f"{where} holds {len(data)} bytes, not a whole number of {_CIFAR_RECORD}-byte CIFAR-10 "
                        "records; the file is truncated or corrupt, fetch it again")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, records[:, 0].copy()


def _cifar_dir(folder: Path) -> Path | None:
    for candidate in (folder / "cifar-10-batches-bin", folder):
        if _find_file(candidate, _CIFAR_TEST) and all(_find_file(candidate, name) for name in _CIFAR_TRAIN):
            return candidate
    return None


def _has_cifar(folder: Path) -> bool:
    return _cifar_dir(folder) is not None or (folder / "cifar-10-binary.tar.gz").is_file()


def _load_cifar_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    batches_dir = _cifar_dir(folder)
    if batches_dir is not None:
        read = {name: (_read_bytes(_find_file(batches_dir, name)), str(_find_file(batches_dir, name)))
                for name in (*_CIFAR_TRAIN, _CIFAR_TEST)}
    else:
        read = _read_cifar_tarball(folder / "cifar-10-binary.tar.gz")
    train = [parse_cifar_batch(*read[name]) for name in _CIFAR_TRAIN]
    return {
        "train": (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
        "test": parse_cifar_batch(*read[_CIFAR_TEST]),
    }


def _read_cifar_tarball(path: Path) -> dict[str, tuple[bytes, str]]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [name for name in (*_CIFAR_TRAIN, _CIFAR_TEST) if name not in members]
            if missing:
                raise DataError(f"{path} lacks {', '.join(missing)}; it is not the official cifar-10-binary.tar.gz")
            return {name: (tar.extractfile(members[name]).read(), f"{path}:{name}")
                    for name in (*_CIFAR_TRAIN, _CIFAR_TEST)}
    except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
        raise DataError(f"cannot read {path}: {err} (truncated or corrupt archive; fetch it again)") from err


# ------------------------------------------------------------------------------------------------- sources

def candidate_folders(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> list[Path]:
    """Where to look for a dataset's files, in order of preference: an explicit `data_dir` alone, if given."""
    if data_dir is not None:
        return [Path(data_dir) / name for name in spec.folder_names] + [Path(data_dir)]
    roots = [Path(p) for p in (os.environ.get(DATA_DIR_ENV),) if p] + list(WELL_KNOWN_ROOTS)
    folders = [root / name for root in roots for name in spec.folder_names]
    return folders + [Path(p) for p in spec.system_folders]


def _load_local(spec: DatasetSpec, folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return _load_cifar_folder(folder) if spec.name == "cifar10" else _load_idx_folder(folder)


def _has_local(spec: DatasetSpec, folder: Path) -> bool:
    return _has_cifar(folder) if spec.name == "cifar10" else _has_idx(folder)


def _load_tfds(spec: DatasetSpec, looked_in: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    places = ", ".join(str(p) for p in looked_in) or "(no data folder given)"
    hint = (f"{spec.name} was not found in {places} and could not be downloaded with tensorflow_datasets. "
            f"To fix: {spec.how_to_get.replace('DATA_DIR', '<folder>')}, then pass --data-dir <folder> "
            f"or set {DATA_DIR_ENV}=<folder>.")
    try:
        import tensorflow_datasets as tfds

        def from_tfds(download: bool):
            return tfds.as_numpy(tfds.load(spec.tfds_name, split=["train", "test"], batch_size=-1,
                                           as_supervised=True, download=download))
        try:
            arrays = from_tfds(download=False)  # already in tensorflow_datasets' cache: no network needed
        except Exception:  # noqa: BLE001  (not cached, in any of the ways tfds says so)
            if not _download_server_answers():
                raise DataError(f"{hint} (offline: tensorflow_datasets' download server does not answer)") from None
            arrays = from_tfds(download=True)
    except DataError:
        raise
    except Exception as err:  # no internet, no tfds, a broken cache: all mean "no data here"
        raise DataError(f"{hint} (tfds said: {type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    return {split: (np.asarray(x), np.asarray(y)) for split, (x, y) in zip(("train", "test"), arrays)}


def _download_server_answers(timeout: float = 3.0) -> bool:
    """Whether tensorflow_datasets could download at all: without this, an offline machine waits minutes."""
    try:
        socket.create_connection(TFDS_SERVER, timeout=timeout).close()
        return True
    except OSError:
        return False


def _validate(spec: DatasetSpec, raw: dict[str, tuple[np.ndarray, np.ndarray]], source: str) -> None:
    expected_train = spec.num_train + spec.num_val
    expected_test = 10_000
    for split, expected in (("train", expected_train), ("test", expected_test)):
        images, labels = raw[split]
        if images.shape[0] != expected:
            raise DataError(f"{spec.name} {split} split from {source} has {images.shape[0]} samples, expected "
                            f"{expected}; the files are incomplete or belong to another dataset")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{spec.name} {split} labels from {source} fall outside 0..9; the label file is corrupt")


def normalise(images: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """uint8 images → float32 with the dataset's per-channel mean and std."""
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    return (images.astype(np.float32) / 255.0 - mean) / std


def validation_split(num_samples: int, num_val: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of the fixed-seed validation hold-out, each sorted to keep the official order."""
    perm = np.random.default_rng(VALIDATION_SEED).permutation(num_samples)
    return np.sort(perm[num_val:]), np.sort(perm[:num_val])


def check_data_dir(data_dir: str | os.PathLike) -> None:
    """A DataError when an explicit data folder does not exist or is not a folder."""
    folder = Path(data_dir)
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DataError(f"--data-dir {data_dir} {problem}; give the folder that holds mnist/, fashion_mnist/ or "
                        "cifar10/ (or leave --data-dir out to use the usual places)")


def load(name: str, data_dir: str | os.PathLike | None = None) -> Splits:
    """Load a dataset as normalised train / validation / test splits (see the module docstring for sources)."""
    spec = DATASETS[canonical_name(name)]
    if data_dir is not None:
        check_data_dir(data_dir)
    folders = candidate_folders(spec, data_dir)
    found = next((folder for folder in folders if _has_local(spec, folder)), None)
    if found is not None:
        raw, source = _load_local(spec, found), str(found)
    elif data_dir is not None:
        raise DataError(f"--data-dir {data_dir} holds no {spec.name} (looked in "
                        f"{', '.join(str(folder) for folder in folders)}); "
                        f"{spec.how_to_get.replace('DATA_DIR', str(data_dir))}, or leave --data-dir out to use the "
                        "usual places")
    else:
        raw, source = _load_tfds(spec, folders), "tensorflow_datasets"
    _validate(spec, raw, source)
    (x_full, y_full), (x_test, y_test) = raw["train"], raw["test"]
    train_idx, val_idx = validation_split(len(x_full), spec.num_val)
    y_full, y_test = y_full.astype(np.int32), y_test.astype(np.int32)
    return Splits(
        name=spec.name,
        x_train=normalise(x_full[train_idx], spec), y_train=y_full[train_idx],
        x_val=normalise(x_full[val_idx], spec), y_val=y_full[val_idx],
        x_test=normalise(x_test, spec), y_test=y_test,
        source=source,
    )


def fingerprint(*arrays: np.ndarray) -> str:
    """A short hash of arrays' shapes, types and bytes: names the data a run of one's own data trains on."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype.str}".encode())
        digest.update(array)
    return digest.hexdigest()[:10]


# ---------------------------------------------------------------------------------------- data of one's own

OWN_VALIDATION_FRACTION = 0.1  # held out of the training samples when no validation split is given
ARRAY_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
MAX_CLASSES = 1_000_000  # a larger class index is a mistake, not a task (and would overflow int32 labels)
Pair = tuple[np.ndarray, np.ndarray]


def _labels(y, where: str) -> np.ndarray:
    """Class indices from integer labels (N,) or (N, 1), or one-hot rows (N, classes)."""
    y = np.asarray(y)
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"{where}: {int((~np.isfinite(y)).sum())} labels are NaN or infinite")
    if y.ndim == 2 and y.shape[1] > 1:
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise DataError(f"{where}: labels of shape {y.shape} must be one-hot rows (a single 1 per row); soft "
                            "or multi-label targets are not supported, give one class index per sample")
        y = np.argmax(y, axis=1)
    elif y.ndim == 2:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels of shape {y.shape}; give one class index per sample, or one-hot rows")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{where}: labels must be class indices (integers from 0), not {y.dtype} values")
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise DataError(f"{where}: labels must be whole class indices, not fractions")
    if y.size and y.min() < 0:
        raise DataError(f"{where}: labels must be class indices from 0, not negative")
    if y.size and y.max() >= MAX_CLASSES:
        raise DataError(f"{where}: labels must be class indices below {MAX_CLASSES:,} (the output layer has one "
                        f"unit per class), not {y.max()}")
    return y.astype(np.int32)


def _inputs(x, where: str) -> np.ndarray:
    """Inputs as float32, refusing what is not numbers (strings, objects) rather than parsing it."""
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: the inputs are not numeric arrays ({err})") from None
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: the inputs are {x.dtype} values, not numbers; convert them to a numeric array "
                        "first (e.g. x.astype('float32'))")
    return x.astype(np.float32)


def _pair(pair, where: str) -> Pair:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise DataError(f"{where} must be a pair (x, y) of arrays, not {type(pair).__name__}")
    x = _inputs(pair[0], where)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: {int((~np.isfinite(x)).sum())} input values are NaN or infinite (or beyond "
                        "float32); clean or impute them first")
    y = _labels(pair[1], where)
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{where} is empty")
    return x, y


def own_splits(name: str, train, validation=None, test=None, source: str = "arrays") -> Splits:
    """Splits of one's own data, each a pair (x, y): inputs as given (as float32; normalise them beforehand),
    labels as class indices (integers, or one-hot rows). Without `validation`, a fixed 10 % of the training
    samples is held out; without `test`, the validation split is also the test split (and `source` says so)."""
    x_train, y_train = _pair(train, "the training data")
    if validation is None and len(x_train) < 2:
        raise DataError(f"{name}: one training sample cannot also give a validation split; give more samples, or "
                        "a validation split of its own")
    if (y_train == y_train[0]).all():
        raise DataError(f"the training data: every label is class {y_train[0]}; a classifier needs at least two "
                        "classes (check how the labels were read)")
    if validation is None:
        train_idx, val_idx = validation_split(len(x_train), max(1, int(len(x_train) * OWN_VALIDATION_FRACTION)))
        (x_train, y_train), (x_val, y_val) = (x_train[train_idx], y_train[train_idx]), (x_train[val_idx],
                                                                                        y_train[val_idx])
        source += f" (validation: {len(x_val)} training samples held out)"
    else:
        x_val, y_val = _pair(validation, "the validation data")
    if test is None:
        (x_test, y_test), source = (x_val, y_val), source + " (test: the validation split)"
    else:
        x_test, y_test = _pair(test, "the test data")
    shapes = {x.shape[1:] for x in (x_train, x_val, x_test)}
    if len(shapes) > 1:
        raise DataError(f"{name}: the splits' samples differ in shape ({', '.join(map(str, sorted(shapes)))})")
    classes = 1 + max(int(y.max()) for y in (y_train, y_val, y_test))
    return Splits(name=name, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test,
                  y_test=y_test, source=source, num_classes=max(classes, 2))


def _check_npz(path: Path) -> None:
    """A DataError when `path` is missing or is no zip archive at all (a truncated one is left to `np.load`)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the file: {err.strerror or err}") from None
    if head != b"PK":
        raise DataError(f"{path} is not a valid .npz archive (not a zip file of arrays); save the arrays with "
                        f"numpy.savez('{path.name}', x_train=..., y_train=...)")


def load_arrays(path: str | os.PathLike) -> Splits:
    """Data of one's own from a `.npz` file with arrays x_train, y_train and optionally x_val, y_val, x_test,
    y_test (see `own_splits`), named by the file."""
    path = Path(path)
    _check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise DataError(f"{path} is not a readable .npz archive of arrays ({err})") from None
    unknown = sorted(set(arrays) - set(ARRAY_KEYS))
    missing = [key for key in ("x_train", "y_train") if key not in arrays]
    if missing or unknown:
        raise DataError(f"{path} must hold arrays named {', '.join(ARRAY_KEYS)} (validation and test optional); "
                        + (f"it lacks {', '.join(missing)}" if missing else f"unknown: {', '.join(unknown)}"))
    for split in ("val", "test"):
        if (f"x_{split}" in arrays) != (f"y_{split}" in arrays):
            raise DataError(f"{path} holds only one of x_{split} and y_{split}; give both or neither")

    def pair(split: str) -> tuple | None:
        return (arrays[f"x_{split}"], arrays[f"y_{split}"]) if f"x_{split}" in arrays else None

    return own_splits(path.stem, pair("train"), pair("val"), pair("test"), source=str(path))
