"""Datasets: split sizes, the fixed validation hold-out, normalisation, label counts, names, and bad files."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from lottery_keras import data

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # shared/datasets/README.md
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # the official test set
CIFAR_BATCH1_COUNTS = [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]  # shared/datasets/README.md
CIFAR_FILES = [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]
IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def full_labels(splits: data.Splits) -> np.ndarray:
    """The official training labels in the official order, reassembled from the train / validation splits."""
    total = len(splits.y_train) + len(splits.y_val)
    train_idx, val_idx = data.validation_split(total, len(splits.y_val))
    labels = np.full(total, -1, np.int64)
    labels[train_idx], labels[val_idx] = splits.y_train, splits.y_val
    return labels


def row_set(images: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in images}


# ------------------------------------------------------------------------------------------------ split sizes

@pytest.mark.parametrize("fixture, shape, train, val", [
    ("mnist", (28, 28, 1), 55_000, 5_000),
    ("fashion", (28, 28, 1), 55_000, 5_000),
    ("cifar10", (32, 32, 3), 45_000, 5_000),
])
def test_split_sizes_shapes_and_dtypes(request, fixture, shape, train, val):
    splits = request.getfixturevalue(fixture)
    assert splits.x_train.shape == (train, *shape)
    assert splits.x_val.shape == (val, *shape)
    assert splits.x_test.shape == (10_000, *shape)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (train, val, 10_000)
    assert splits.input_shape == shape
    assert splits.num_classes == 10
    for x in (splits.x_train, splits.x_val, splits.x_test):
        assert x.dtype == np.float32
    for y in (splits.y_train, splits.y_val, splits.y_test):
        assert y.dtype == np.int32
        assert y.min() == 0 and y.max() == 9


def test_local_sources_are_used(mnist, fashion, cifar10, mnist_dir):
    assert Path(mnist.source) == mnist_dir
    assert Path(fashion.source) in data.candidate_folders(data.DATASETS["fashion_mnist"], None)
    assert Path(cifar10.source).name == "cifar10"
    assert (mnist.name, fashion.name, cifar10.name) == ("mnist", "fashion_mnist", "cifar10")


# ------------------------------------------------------------------------------------------ validation hold-out

@pytest.mark.parametrize("total, num_val", [(60_000, 5_000), (50_000, 5_000)])
def test_validation_split_indices_disjoint_complete_sorted_and_fixed(total, num_val):
    train_idx, val_idx = data.validation_split(total, num_val)
    assert len(val_idx) == num_val and len(train_idx) == total - num_val
    assert np.intersect1d(train_idx, val_idx).size == 0
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(total))
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)
    again_train, again_val = data.validation_split(total, num_val)
    assert np.array_equal(train_idx, again_train) and np.array_equal(val_idx, again_val)
    # a real hold-out, not the last 5k samples
    assert val_idx.min() < total // 10 and val_idx.max() > total - total // 10


@pytest.mark.parametrize("fixture", ["mnist", "fashion", "cifar10"])
def test_validation_images_are_not_training_images(request, fixture):
    splits = request.getfixturevalue(fixture)
    train_rows = row_set(splits.x_train)
    assert not any(row.tobytes() in train_rows for row in splits.x_val)
    assert not any(row.tobytes() in train_rows for row in splits.x_test[:2000])


def test_loaded_validation_split_is_the_fixed_index_split(mnist, mnist_dir):
    raw = data.read_idx(mnist_dir / "train-images-idx3-ubyte.gz", 3)[..., None]
    train_idx, val_idx = data.validation_split(60_000, 5_000)
    spec = data.DATASETS["mnist"]
    sample = np.random.default_rng(0).choice(5_000, 300, replace=False)
    np.testing.assert_array_equal(mnist.x_val[sample], data.normalise(raw[val_idx[sample]], spec))
    np.testing.assert_array_equal(mnist.x_train[:300], data.normalise(raw[train_idx[:300]], spec))
    np.testing.assert_array_equal(mnist.x_train[-300:], data.normalise(raw[train_idx[-300:]], spec))


# ------------------------------------------------------------------------------------------------ normalisation

@pytest.mark.parametrize("fixture", ["mnist", "fashion"])
def test_grey_normalisation_gives_zero_mean_unit_std(request, fixture):
    x = request.getfixturevalue(fixture).x_train
    assert abs(float(x.mean())) < 0.01
    assert float(x.std()) == pytest.approx(1.0, abs=0.01)


def test_normalisation_constants_match_the_design():
    assert data.DATASETS["mnist"].mean == (0.1307,) and data.DATASETS["mnist"].std == (0.3081,)
    assert data.DATASETS["fashion_mnist"].mean == (0.2860,) and data.DATASETS["fashion_mnist"].std == (0.3530,)
    assert data.DATASETS["cifar10"].mean == (0.4914, 0.4822, 0.4465)
    assert data.DATASETS["cifar10"].std == (0.2023, 0.1994, 0.2010)


def test_cifar_normalisation_per_channel(cifar10):
    mean = cifar10.x_train.mean(axis=(0, 1, 2), dtype=np.float64)
    assert mean.shape == (3,)
    np.testing.assert_allclose(mean, 0.0, atol=0.01)
    # undoing the design constants gives back whole grey levels 0..255
    spec = data.DATASETS["cifar10"]
    pixels = (cifar10.x_train[:50] * np.asarray(spec.std) + np.asarray(spec.mean)) * 255.0
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
    assert pixels.min() > -0.01 and pixels.max() < 255.01


def test_normalise_formula():
    spec = data.DATASETS["cifar10"]
    images = np.zeros((1, 2, 2, 3), np.uint8)
    images[0, 0, 0] = (255, 0, 51)
    out = data.normalise(images, spec)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out[0, 0, 0], [(1 - 0.4914) / 0.2023, -0.4822 / 0.1994, (0.2 - 0.4465) / 0.2010],
                               rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 1], [-0.4914 / 0.2023, -0.4822 / 0.1994, -0.4465 / 0.2010], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------- labels

def test_mnist_label_counts_match_the_official_release(mnist):
    labels = full_labels(mnist)
    assert labels.min() >= 0
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert labels[0] == 5  # train[0] is the famous "5"
    assert np.bincount(mnist.y_test, minlength=10).tolist() == MNIST_TEST_COUNTS
    train_counts = np.bincount(mnist.y_train, minlength=10)
    assert train_counts.sum() == 55_000 and np.all(train_counts < np.asarray(MNIST_TRAIN_COUNTS))


def test_fashion_labels_are_balanced(fashion):
    assert np.bincount(full_labels(fashion), minlength=10).tolist() == [6000] * 10
    assert np.bincount(fashion.y_test, minlength=10).tolist() == [1000] * 10


def test_cifar_labels_keep_the_official_order(cifar10):
    labels = full_labels(cifar10)
    assert np.bincount(labels[:10_000], minlength=10).tolist() == CIFAR_BATCH1_COUNTS
    assert np.bincount(labels, minlength=10).tolist() == [5000] * 10
    assert np.bincount(cifar10.y_test, minlength=10).tolist() == [1000] * 10


# ------------------------------------------------------------------------------------------------------ names

@pytest.mark.parametrize("alias, name", [
    ("mnist", "mnist"), ("MNIST", "mnist"), ("fashion", "fashion_mnist"), ("fashion-mnist", "fashion_mnist"),
    ("Fashion_MNIST", "fashion_mnist"), ("cifar-10", "cifar10"), ("CIFAR10", "cifar10"),
])
def test_aliases(alias, name):
    assert data.canonical_name(alias) == name


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError) as info:
        data.canonical_name("imagenet")
    message = str(info.value)
    assert "imagenet" in message
    for choice in ("mnist", "fashion_mnist", "cifar10", "fashion"):
        assert choice in message
    with pytest.raises(ValueError, match="cifar10"):
        data.load("svhn")


# ------------------------------------------------------------------------------------------- bad MNIST files

@pytest.fixture
def mnist_copy(tmp_path, mnist_dir) -> Path:
    """A data folder holding a copy of the real MNIST files (tmp/mnist/...)."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in IDX_FILES:
        shutil.copyfile(mnist_dir / name, folder / name)
    return folder


def _rewrite_gz(path: Path, edit) -> None:
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes())), compresslevel=1))


def test_copied_mnist_folder_loads(mnist_copy, mnist):
    splits = data.load("mnist", data_dir=mnist_copy.parent)
    assert Path(splits.source) == mnist_copy
    np.testing.assert_array_equal(splits.y_train, mnist.y_train)
    np.testing.assert_array_equal(splits.x_val[:100], mnist.x_val[:100])


def test_plain_idx_files_load(tmp_path, mnist_dir, mnist):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in IDX_FILES:  # uncompressed, with the dotted names some mirrors use (t10k-images.idx3-ubyte)
        plain = name[:-3].replace("-idx", ".idx")
        (folder / plain).write_bytes(gzip.decompress((mnist_dir / name).read_bytes()))
    splits = data.load("mnist", data_dir=tmp_path)
    assert Path(splits.source) == folder
    np.testing.assert_array_equal(splits.x_test, mnist.x_test)
    np.testing.assert_array_equal(splits.y_val, mnist.y_val)


def test_truncated_gz_file_is_named(mnist_copy):
    target = mnist_copy / "train-labels-idx1-ubyte.gz"
    raw = target.read_bytes()
    target.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz"):
        data.load("mnist", data_dir=mnist_copy.parent)


def test_truncated_content_is_named(mnist_copy):
    target = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    _rewrite_gz(target, lambda content: content[:-100])
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz") as info:
        data.load("mnist", data_dir=mnist_copy.parent)
    assert "truncated" in str(info.value)


def test_bad_magic_number_is_named(mnist_copy):
    target = mnist_copy / "train-labels-idx1-ubyte.gz"
    _rewrite_gz(target, lambda content: b"\x00\x00\x09\x01" + content[4:])
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz") as info:
        data.load("mnist", data_dir=mnist_copy.parent)
    assert "magic" in str(info.value)


def test_images_file_with_labels_magic_is_rejected(mnist_copy):
    shutil.copyfile(mnist_copy / "t10k-labels-idx1-ubyte.gz", mnist_copy / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz"):
        data.load("mnist", data_dir=mnist_copy.parent)


@pytest.mark.parametrize("garbage", [
    b"this is not a gzip file at all" * 10,
    b"\x1f\x8b" + b"\xff" * 200,  # a gzip signature followed by garbage
])
def test_garbage_gz_file_is_named(mnist_copy, garbage):
    (mnist_copy / "train-labels-idx1-ubyte.gz").write_bytes(garbage)
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz"):
        data.load("mnist", data_dir=mnist_copy.parent)


def test_mismatched_images_and_labels_are_rejected(mnist_copy):
    shutil.copyfile(mnist_copy / "t10k-labels-idx1-ubyte.gz", mnist_copy / "train-labels-idx1-ubyte.gz")
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz"):
        data.load("mnist", data_dir=mnist_copy.parent)


def test_read_idx_reads_a_hand_built_file(tmp_path):
    content = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    (tmp_path / "tiny.idx").write_bytes(content)
    (tmp_path / "tiny.idx.gz").write_bytes(gzip.compress(content))
    for name in ("tiny.idx", "tiny.idx.gz"):
        array = data.read_idx(tmp_path / name, 3)
        assert array.dtype == np.uint8
        np.testing.assert_array_equal(array, [[[1, 2, 3]], [[4, 5, 6]]])
    with pytest.raises(data.DataError, match="tiny.idx"):
        data.read_idx(tmp_path / "tiny.idx", 1)  # a 3-D file read as labels


# ------------------------------------------------------------------------------------------- missing datasets

class _NoInternet(Exception):
    pass


@pytest.fixture
def no_tfds_download(monkeypatch):
    """tensorflow_datasets as on a machine without internet: every load fails."""
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []

    def failing_load(name, *args, download=True, **kwargs):
        calls.append((name, download))
        raise _NoInternet(f"could not download {name}: no internet\nsecond line")

    monkeypatch.setattr(tfds, "load", failing_load)
    return calls


@pytest.fixture
def no_local_copies(tmp_path, monkeypatch):
    """No data folder besides the ones a test names: no env var, no well-known roots (./data, shared/datasets)."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data, "WELL_KNOWN_ROOTS", (), raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_an_explicit_data_dir_is_authoritative(tmp_path, no_local_copies, no_tfds_download, name, monkeypatch,
                                               mnist_dir):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(mnist_dir.parent))  # real data elsewhere must not be used instead
    (tmp_path / name).mkdir()  # an empty dataset folder
    with pytest.raises(data.DataError) as info:
        data.load(name, data_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"--data-dir {tmp_path} holds no {name}")
    assert str(tmp_path / name) in message and "leave --data-dir out" in message
    assert no_tfds_download == []


def test_without_local_data_tfds_is_the_fallback_when_online(tmp_path, monkeypatch, no_local_copies,
                                                             no_tfds_download):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setattr(data, "_download_server_answers", lambda: True)
    with pytest.raises(data.DataError, match="LOTTERY_KERAS_DATA_DIR") as info:
        data.load("mnist")
    assert str(tmp_path / "nowhere" / "mnist") in str(info.value) and "_NoInternet" in str(info.value)
    assert no_tfds_download == [("mnist", False), ("mnist", True)]  # its cache first, then a download


def test_offline_without_local_data_fails_at_once(tmp_path, monkeypatch, no_local_copies, no_tfds_download):
    monkeypatch.setattr(data, "TFDS_SERVER", ("127.0.0.1", 9))  # nothing listens on the discard port
    started = time.perf_counter()
    with pytest.raises(data.DataError, match="offline: tensorflow_datasets' download server does not answer"):
        data.load("mnist")
    assert time.perf_counter() - started < 5 and no_tfds_download == [("mnist", False)]  # the cache only


def test_candidate_folders_order(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    explicit = data.candidate_folders(data.DATASETS["fashion_mnist"], tmp_path / "explicit")
    assert explicit == [tmp_path / "explicit" / "fashion_mnist", tmp_path / "explicit" / "fashion-mnist",
                        tmp_path / "explicit"]
    folders = data.candidate_folders(data.DATASETS["fashion_mnist"], None)
    assert folders[0] == tmp_path / "env" / "fashion_mnist"
    assert folders[-1] == Path("/usr/share/datasets/fashion-mnist")


def test_a_gzip_with_a_corrupt_body_names_the_file(mnist_copy):
    images = mnist_copy / "train-images-idx3-ubyte.gz"
    raw = bytearray(images.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)  # the header survives, the deflate stream does not
    images.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match=f"cannot read {images}.*truncated or corrupt"):
        data.load("mnist", data_dir=mnist_copy.parent)


# ---------------------------------------------------------------------------------------------------- CIFAR-10

def _cifar_record(label: int, pixels: np.ndarray) -> bytes:
    """One binary record from an HWC uint8 image."""
    return bytes([label]) + pixels.transpose(2, 0, 1).tobytes()


def test_parse_cifar_batch_decodes_channel_major_records():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    raw = b"".join(_cifar_record(label, image) for label, image in zip([7, 0, 9], images))
    decoded, labels = data.parse_cifar_batch(raw, "synthetic")
    np.testing.assert_array_equal(decoded, images)
    assert labels.tolist() == [7, 0, 9]
    # the first red row is the first 32 pixel bytes of the record
    assert decoded[0, 0, :, 0].tobytes() == raw[1:33]
    assert decoded[0, 0, 0, 1] == raw[1 + 1024] and decoded[0, 0, 0, 2] == raw[1 + 2048]


@pytest.mark.parametrize("size", [0, 3073 * 2 + 100, 3072])
def test_parse_cifar_batch_rejects_partial_records(size):
    with pytest.raises(data.DataError, match="where/it/came/from"):
        data.parse_cifar_batch(b"\x01" * size, "where/it/came/from")


def _write_small_cifar(folder: Path, records: int = 2, compress: bool = False) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in CIFAR_FILES:
        raw = b"".join(_cifar_record(int(rng.integers(10)), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                       for _ in range(records))
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def test_truncated_cifar_batch_is_named(tmp_path):
    batches = tmp_path / "cifar10" / "cifar-10-batches-bin"
    _write_small_cifar(batches)
    target = batches / "data_batch_3.bin"
    target.write_bytes(target.read_bytes()[:-7])
    with pytest.raises(data.DataError, match="data_batch_3.bin"):
        data.load("cifar10", data_dir=tmp_path)


def test_truncated_cifar_gz_is_named(tmp_path):
    batches = tmp_path / "cifar10" / "cifar-10-batches-bin"
    _write_small_cifar(batches, compress=True)
    target = batches / "test_batch.bin.gz"
    target.write_bytes(target.read_bytes()[:-20])
    with pytest.raises(data.DataError, match="test_batch.bin.gz"):
        data.load("cifar10", data_dir=tmp_path)


def test_incomplete_cifar_is_rejected(tmp_path):
    _write_small_cifar(tmp_path / "cifar10" / "cifar-10-batches-bin")
    with pytest.raises(data.DataError, match="expected 50000"):
        data.load("cifar10", data_dir=tmp_path)


def test_corrupt_cifar_tarball_is_named(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    (folder / "cifar-10-binary.tar.gz").write_bytes(gzip.compress(b"not a tar archive" * 100)[:-10])
    with pytest.raises(data.DataError, match="cifar-10-binary.tar.gz"):
        data.load("cifar10", data_dir=tmp_path)


def test_cifar_tarball_missing_members_is_named(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    with tarfile.open(folder / "cifar-10-binary.tar.gz", "w:gz") as tar:
        content = b"\x00" * 3073
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    with pytest.raises(data.DataError, match="test_batch.bin"):
        data.load("cifar10", data_dir=tmp_path)


@pytest.fixture(scope="module")
def cifar_plain_bytes(cifar_dir) -> dict[str, bytes]:
    """The real CIFAR-10 batches, decompressed (about 184 MB)."""
    return {name: gzip.decompress((cifar_dir / f"{name}.gz").read_bytes()) for name in CIFAR_FILES}


def _assert_same_splits(a: data.Splits, b: data.Splits) -> None:
    # np.array_equal: np.testing.assert_array_equal takes ~8 s on 45,000 CIFAR images
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        first, second = getattr(a, field), getattr(b, field)
        assert first.shape == second.shape and first.dtype == second.dtype, field
        assert np.array_equal(first, second), f"{field} differs"


def test_cifar_plain_batches_equal_gz_batches(tmp_path, cifar_plain_bytes, cifar10):
    batches = tmp_path / "cifar10" / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    for name, content in cifar_plain_bytes.items():
        (batches / name).write_bytes(content)
    splits = data.load("cifar10", data_dir=tmp_path)
    assert Path(splits.source) == tmp_path / "cifar10"
    _assert_same_splits(splits, cifar10)


def test_cifar_tarball_reader_finds_nested_members(tmp_path):
    """The tarball path on small synthetic batches (the real-file comparison below is marked slow)."""
    rng = np.random.default_rng(2)
    contents = {name: rng.integers(0, 256, 3073 * (i + 1), dtype=np.uint8).tobytes()
                for i, name in enumerate(CIFAR_FILES)}
    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, content in contents.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    read = data._read_cifar_tarball(path)
    assert set(read) == set(CIFAR_FILES)
    for name, (content, where) in read.items():
        assert content == contents[name]
        assert str(path) in where and name in where
        images, _ = data.parse_cifar_batch(content, where)
        assert images.shape == (CIFAR_FILES.index(name) + 1, 32, 32, 3)


@pytest.mark.slow
def test_cifar_official_tarball_equals_gz_batches(tmp_path, cifar_plain_bytes, cifar10):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    with tarfile.open(folder / "cifar-10-binary.tar.gz", "w:gz", compresslevel=1) as tar:  # like the official one
        for name in ("batches.meta.txt", *CIFAR_FILES):
            content = cifar_plain_bytes.get(name, b"airplane\nautomobile\n")
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    splits = data.load("cifar10", data_dir=tmp_path)
    assert Path(splits.source) == folder
    _assert_same_splits(splits, cifar10)
