"""Shared fixtures: the real datasets, each loaded at most once per test session.

The environment is set up before anything imports TensorFlow: quiet C++ logs, and the data folder beside the
repository root (`<root>/../shared/datasets`) unless the caller points `LOTTERY_KERAS_DATA_DIR` elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
os.environ.setdefault("LOTTERY_KERAS_DATA_DIR", str(SHARED_DATASETS))

import pytest  # noqa: E402

from lottery_keras import data  # noqa: E402

DATA_DIR = Path(os.environ["LOTTERY_KERAS_DATA_DIR"])
MNIST_DIR = DATA_DIR / "mnist"
CIFAR_DIR = DATA_DIR / "cifar10" / "cifar-10-batches-bin"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder of the four real MNIST IDX .gz files."""
    return MNIST_DIR


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The folder of the real CIFAR-10 binary batches (each .bin.gz)."""
    return CIFAR_DIR


@pytest.fixture(scope="session")
def mnist() -> data.Splits:
    return data.load("mnist")


@pytest.fixture(scope="session")
def fashion() -> data.Splits:
    return data.load("fashion_mnist")


@pytest.fixture(scope="session")
def cifar10() -> data.Splits:
    return data.load("cifar10")


@pytest.fixture(scope="session")
def mnist_small(mnist) -> data.Splits:
    """6,000 / 1,000 / 1,000 real MNIST samples for quick training tests."""
    return mnist.head(train=6000, val=1000, test=1000)

