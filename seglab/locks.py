"""Locks on a run folder that several processes (two Colab runtimes on one Drive) may share.

A lock is a small file created exclusively (``O_CREAT | O_EXCL``) that names its holder: the
host, the process, when it started and when it last said it was alive. A holder refreshes
that heartbeat from a background thread while it lives, so a lock whose holder crashed (a
runtime that disconnected) is recognised and taken over: at once when the holder is a dead
process on this host, after ``STALE_SECONDS`` without a heartbeat when it ran elsewhere.
Google Drive makes a file created on one runtime visible on another after a few seconds,
so two runtimes racing within those seconds are not excluded; a step's finish still
checks that its inputs did not change under it (:meth:`seglab.rundir.Step.finish`).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

HEARTBEAT_SECONDS = 30
STALE_SECONDS = 180  # a holder on another host that has been silent this long is gone


class Locked(RuntimeError):
    """The lock is held by a live holder; the message names it."""


@dataclass
class Holder:
    host: str
    pid: int
    started: str
    heartbeat: float  # seconds since the epoch
    what: str  # the work it holds the lock for, e.g. "notebook 03_training.ipynb"

    def describe(self) -> str:
        return f"{self.what} (host {self.host}, process {self.pid}, since {self.started})"

    @classmethod
    def me(cls, what: str) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   time.time(), what)

    def is_me(self) -> bool:
        return self.host == socket.gethostname() and self.pid == os.getpid()

    def alive(self) -> bool:
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return time.time() - self.heartbeat < STALE_SECONDS


def read_holder(path: Path) -> Holder | None:
    """The holder named in a lock file; None when there is no lock or it cannot be read (being written, or junk)."""
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


class Lock:
    """An exclusive lock file at ``path``, held by this process until :meth:`release` (re-entrant within it)."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what = Path(path), what
        self._stop: threading.Event | None = None
        self._depth = 0

    def acquire(self, wait: float = 0.0) -> "Lock":
        """Take the lock, waiting up to ``wait`` seconds for a live holder; :class:`Locked` naming it after that."""
        deadline = time.monotonic() + wait
        while not self._try():
            holder = read_holder(self.path)
            if holder is not None and not holder.alive():
                self.path.unlink(missing_ok=True)  # a crashed holder does not keep it forever
                continue
            if time.monotonic() >= deadline:
                who = holder.describe() if holder else "another process (its lock file is being written)"
                raise Locked(f"{self.path} is held by {who}")
            time.sleep(0.2)
        return self

    def _try(self) -> bool:
        if self._depth:
            self._depth += 1
            return True
        holder = read_holder(self.path)
        if holder is not None and holder.is_me():  # this process took it before (a cell run again)
            self._start()
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(Holder.me(self.what)), f)
        self._start()
        return True

    def _start(self) -> None:
        self._depth = 1
        self._stop = threading.Event()
        threading.Thread(target=self._beat, args=(self._stop,), daemon=True).start()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            holder = read_holder(self.path)
            if holder is None or not holder.is_me():
                return
            holder.heartbeat = time.time()
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(asdict(holder)))
            os.replace(tmp, self.path)

    def release(self) -> None:
        if self._depth > 1:
            self._depth -= 1
            return
        self._depth = 0
        if self._stop is not None:
            self._stop.set()
        holder = read_holder(self.path)
        if holder is not None and holder.is_me():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire(wait=60)

    def __exit__(self, *exc):
        self.release()
