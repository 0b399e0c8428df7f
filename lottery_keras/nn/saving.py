"""Loading saved masked models safely: every way a file can fail to be one (missing, not a zip, truncated, some
other model) becomes a `TicketError` naming the file, never a traceback from inside Keras."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import keras

from lottery_keras.nn.models import MaskedModel


class TicketError(ValueError):
    """A file or directory that should hold a lottery ticket does not (the message names it and says why)."""


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
        raise TicketError(f"{path} holds {what}, not a lottery_keras ticket (a masked model: LeNetFC, LeNet5, "
                          "ConvNet or MaskedNetwork)")
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
