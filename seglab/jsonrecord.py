"""A JSON file of the run folder read into a dataclass: ``load`` and ``save``, a format version, and errors that name
the file, the problem and the notebook that writes it, the one to run again.

:mod:`seglab.records` declares the run folder's files on this base; :data:`STEPS` names the
series' steps and their notebooks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from seglab.atomic import write_json

STEPS = {  # each step of the series and its notebook
    "gpu_check": "00_gpu_check.ipynb",
    "data": "01_data_loading_and_preprocessing.ipynb",
    "class_weights": "02_class_weights.ipynb",
    "training": "03_training.ipynb",
    "evaluation": "04_evaluation.ipynb",
    "visualization": "05_visualization.ipynb",
    "inference": "06_inference_on_new_images.ipynb",
    "export": "07_export.ipynb",
}


class MissingInput(RuntimeError):
    """An earlier step's output is absent, unreadable or stale; the message names the notebook to run."""


class RecordError(MissingInput):
    """A run-folder file that cannot be read as its record."""


class _Missing(Exception):
    """A field absent from the file (the dotted path in args[0])."""


def _build(hint, value, where: str):
    """``value`` read from JSON as the declared type ``hint``: nested records, lists, dicts, optionals."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _Missing(where or "the top level")
        hints = typing.get_type_hints(hint)
        kwargs = {}
        for f in dataclasses.fields(hint):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}{f.name}.")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Missing(f"{where}{f.name}")
        return hint(**kwargs)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _build(inner, value, where)
    if origin is list and isinstance(value, list):
        return [_build(args[0], v, f"{where}{i}.") for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return {k: _build(args[1], v, f"{where}{k}.") for k, v in value.items()}
    return value


@dataclass
class Record:
    """A file of the run folder, written by the step ``STEP`` and read by later ones."""
    VERSION: ClassVar[int] = 1
    STEP: ClassVar[str] = ""
    FILE: ClassVar[str] = ""  # where it lies in the run folder; ``{arch}`` for one per architecture

    @classmethod
    def where(cls, arch: str | None = None) -> str:
        return cls.FILE.format(arch=arch)

    @classmethod
    def rerun(cls) -> str:
        """What to do about a bad file of this kind: run the notebook that writes it again."""
        return f"run notebook {STEPS[cls.STEP]} again"

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        rerun = cls.rerun()
        if not path.is_file():
            raise RecordError(f"{path} is missing; {rerun}.")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RecordError(f"{path} is not valid JSON ({e}), perhaps cut off while written; {rerun}.") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != cls.VERSION:
            raise RecordError(f"{path} has format version {version}, this seglab reads version {cls.VERSION}; {rerun}.")
        try:
            return _build(cls, data, "")
        except _Missing as e:
            raise RecordError(f"{path} has no field '{e.args[0].rstrip('.')}'; {rerun}.") from None

    def to_dict(self) -> dict:
        return {"format_version": self.VERSION, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())


@dataclass
class FileStamp:
    """A file's size and SHA-256: whether it is still the one that was written (a Drive copy half synced is not)."""
    size: int
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> "FileStamp":
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return cls(Path(path).stat().st_size, digest.hexdigest())
