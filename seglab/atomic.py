"""Atomic writes: a file or folder appears at its name complete, or not at all; and only the project's own are replaced.

Everything the series writes goes through a temporary name beside the target (``.NAME.``
followed by random letters) and one rename, so a kernel killed mid-write (a Colab
disconnect) leaves the old file or none, never half a file that a later step would trust;
what such a kill leaves behind is found by :func:`leftovers` and removed by the step that
made it, the next time it starts. A folder this package makes holds the marker file
``.seglab``; a folder without it is the user's and is never replaced or deleted.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_path)`` and move the result to ``path`` only if it succeeded.

    The temporary name keeps the target's suffix (Keras requires ``.keras``, for one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(path: str | Path, data: Any) -> Path:
    text = json.dumps(data, indent=1, default=_jsonable)  # fails before anything is written
    return atomic_file(path, lambda tmp: tmp.write_text(text))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_file(path, lambda tmp: tmp.write_text(text))


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_file(path, lambda tmp: tmp.write_bytes(data))


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    return atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))


MARKER = ".seglab"  # in every folder this package made, and only there


class NotOurs(RuntimeError):
    """A folder or file that this package did not make is in the way; the message names it."""


def mark(folder: str | Path) -> Path:
    """Claim ``folder`` (made here) as this package's own."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).touch()
    return folder


def is_ours(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def check_ours(folder: str | Path, what: str = "folder") -> None:
    """Stop, deleting nothing, when ``folder`` exists with contents and is not this package's."""
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and (is_ours(folder) or not any(folder.iterdir()))):
        raise NotOurs(f"{folder} already exists and was not made by seglab, so it is left as it is: move it away, "
                      f"or choose another {what}.")


def remove_own_dir(folder: str | Path) -> None:
    """Delete ``folder`` if it is this package's own (or absent); anything else stops with :class:`NotOurs`."""
    check_ours(folder)
    shutil.rmtree(folder, ignore_errors=True)


def leftovers(target: str | Path) -> list[Path]:
    """What a write cut off by a kill left behind for ``target``: its temporary siblings (``.NAME.*``), and,
    for a folder of ours, the temporary files inside it."""
    target = Path(target)
    found = sorted(target.parent.glob(f".{target.name}.*")) if target.parent.is_dir() else []
    if target.is_dir() and is_ours(target):
        found += sorted(p for p in target.rglob(".*.tmp*") if p.is_file())
    return found


def remove_leftovers(target: str | Path) -> list[Path]:
    """Remove :func:`leftovers` of ``target``; return what was removed."""
    found = leftovers(target)
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return found


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``path`` only when the block succeeds, marked as ours.

    An existing ``path`` that is not this package's stops the block before it starts (:class:`NotOurs`).
    """
    path = Path(path)
    check_ours(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = mark(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
