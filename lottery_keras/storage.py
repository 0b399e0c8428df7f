"""Atomic files: everything a run writes appears whole or not at all, so a killed run never leaves a half-written
file that a resumed run would trust."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd


TEMPORARY_PREFIX = ".tmp-"  # every temporary file and staging folder this package makes starts with it


def _umask() -> int:
    """The process's umask, read without changing it (other threads may be creating files)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); move it into place only if the block succeeds. The
    file gets the permissions the umask gives new files; a failed write names `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMPORARY_PREFIX}{path.stem}.", suffix=path.suffix)
        os.close(handle)
    except OSError as err:
        raise OSError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a read-only folder: say which file
        raise OSError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_temporaries(folder: str | os.PathLike, pattern: str = "**") -> None:
    """Delete what killed writes left in the subfolders of `folder` matching `pattern` (only while no other
    process can be writing there)."""
    for leftover in Path(folder).glob(f"{pattern}/{TEMPORARY_PREFIX}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.exists():
            leftover.unlink(missing_ok=True)


def check_folder(path: str | os.PathLike) -> None:
    """A NotADirectoryError when `path`, or the nearest of its parents that exists, is a file: what a folder to
    write into cannot be."""
    path = Path(path)
    existing = next((folder for folder in (path, *path.parents) if folder.exists()), path)
    if existing.exists() and not existing.is_dir():
        which = path if existing == path else f"{path}: {existing}"
        raise NotADirectoryError(f"{which} is a file, not a folder; give a folder to write into (it is made if "
                                 "missing)")


def output_folder(path: str | os.PathLike) -> Path:
    """`path` as a folder to write into: checked (`check_folder`), made if missing, and rid of what a killed
    writer left in it (only while no other process writes the same folder)."""
    path = Path(path)
    check_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot write {path}: {err.strerror or err}") from None
    remove_temporaries(path, ".")
    return path


def _finite_or_null(value):
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Valid JSON always: NaN and infinities are written as null."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite_or_null(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")


class DamagedFileError(ValueError):
    """A file this package wrote cannot be read back (truncated, corrupt, or not ours); the message names it."""


def read_json(path: str | os.PathLike) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(f"{path} is damaged: not valid JSON ({err})") from None


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def check_archive(path: str | os.PathLike) -> None:
    """Raise DamagedFileError unless `path` is a whole zip archive (a `.keras` or `.npz` file) whose members all
    pass their checksums."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DamagedFileError(f"{path} is damaged: not a whole archive ({type(err).__name__}: {err})") from None
    if bad is not None:
        raise DamagedFileError(f"{path} is damaged: its member {bad} fails its checksum")


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, AttributeError, TypeError) as err:
        raise DamagedFileError(f"{path} is damaged: not a whole .npz archive ({type(err).__name__}: {err})") \
            from None
