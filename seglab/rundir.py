"""The run folder: the written contract between notebooks.

A notebook's work is one :class:`Step`: it begins (its old record is forgotten, so a step
cut off half-way is never trusted), reads the records of earlier steps (noting which record
of each it read, at the moment it read it), writes its files atomically, and finishes by
recording itself in ``manifest.json``: what it wrote (each file's size and checksum), the
config, the package versions and the ids of its inputs. A later step that asks for an input
(:meth:`RunDir.require`) stops with one sentence naming the notebook to run first when the
input is missing, incomplete, or was rewritten since.

Two runtimes may share one run folder (Colab, on one Drive). A step holds a lock on its part
of the folder from begin to finish (:mod:`seglab.locks`), and does not begin while a step it
reads from, or one that reads from it, is running: the second one is refused with the first
one named. ``manifest.json`` is read, changed and written under a lock of its own.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

from seglab import machine
from seglab.atomic import check_ours, mark, remove_leftovers
from seglab.jsonrecord import STEPS, FileStamp, MissingInput, Record
from seglab.locks import Lock, Locked, read_holder
from seglab.records import RunManifest, StepEntry

READS = {  # what each step reads: it may not run while one of these, or a step that reads it, runs
    "gpu_check": (), "data": (), "class_weights": ("data",), "training": ("data", "class_weights"),
    "evaluation": ("data", "training"), "visualization": ("data", "training", "evaluation"),
    "inference": ("data", "training"), "export": ("data", "training"),
}
WRITES = {  # what each step writes in the run folder: a kill's leftovers there are its to clean (figures/NN_*: the
    # figures of notebook NN, so that a step starting never removes another's figure half-written at that moment)
    "gpu_check": ("env.json",), "data": ("dataset", "figures/01_*"), "class_weights": ("class_weights.json", "figures/02_*"),
    "training": ("models", "history", "train_state", "checkpoints", "training.json", "figures/03_*"),
    "evaluation": ("metrics.json", "comparison.csv", "predictions"), "visualization": ("figures/05_*",),
    "inference": ("inference", "figures/06_*"), "export": ("export",),
}


class Busy(MissingInput):
    """Another process is running this step, or one it depends on, on the same run folder."""


def _related(step: str) -> set[str]:
    return set(READS[step]) | {other for other, reads in READS.items() if step in reads}


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._verified: dict[tuple, bool] = {}

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def lock(self, name: str, what: str) -> Lock:
        return Lock(self.path(".locks", f"{name}.lock"), what)

    def manifest(self) -> RunManifest:
        path = self.path(RunManifest.FILE)
        return RunManifest.load(path) if path.exists() else RunManifest()

    def require(self, step: str) -> StepEntry:
        """``step``'s record, or stop naming the notebook that must run first."""
        steps = self.manifest().steps
        entry, notebook = steps.get(step), STEPS[step]
        if entry is None:
            raise MissingInput(f"Run notebook {notebook} first: {self.root} has no output of it yet.")
        for rel, stamp in entry.outputs.items():
            path = self.path(rel)
            if not path.exists():
                raise MissingInput(f"Run notebook {notebook} again: its output {rel} is missing from {self.root}.")
            if stamp is not None and path.stat().st_size != stamp.size:
                raise MissingInput(f"Run notebook {notebook} again: its output {rel} in {self.root} has "
                                   f"{path.stat().st_size} bytes, not the {stamp.size} it wrote (cut off, or not "
                                   "yet synced by Google Drive).")
        for dep, dep_id in entry.inputs.items():
            if dep not in steps or steps[dep].id != dep_id:
                raise MissingInput(f"Run notebook {notebook} again: it used an older output of {STEPS[dep]}, "
                                   "which has been rerun since.")
        return entry

    def verify(self, step: str, paths: list[Path]) -> list[Path]:
        """``paths`` (outputs of ``step``), once each file's checksum is the one recorded (once per process)."""
        outputs = self.require(step).outputs
        for path in paths:
            rel, stat = str(Path(path).relative_to(self.root)), Path(path).stat()
            key = (rel, stat.st_size, stat.st_mtime_ns)
            if key not in self._verified:
                stamp = outputs.get(rel)
                if stamp is None or FileStamp.of(path) != stamp:
                    raise MissingInput(f"Run notebook {STEPS[step]} again: its output {rel} in {self.root} is not the "
                                       "file it wrote (its checksum differs: damaged, or not fully synced by Google "
                                       "Drive); the notebook rebuilds it.")
                self._verified[key] = True
        return list(paths)

    def read(self, record: type[Record], arch: str | None = None):
        """The record of type ``record`` (of architecture ``arch``), once its step is checked to be current."""
        self.require(record.STEP)
        return record.load(self.path(record.where(arch)))

    def update_manifest(self, change) -> RunManifest:
        """``change(manifest)`` applied under the manifest's lock, so that two runtimes lose no record."""
        with self.lock("manifest", "an update of manifest.json"):
            manifest = self.manifest()
            change(manifest)
            manifest.save(self.path(RunManifest.FILE))
        return manifest

    def begin(self, step: str, cfg=None, forget: bool = True) -> "Step":
        """Start ``step``: its lock taken, what an earlier run of it left half-written removed, and (unless
        ``forget`` is False, for :meth:`Step.forget` to do later) its old record forgotten."""
        if not self.path(RunManifest.FILE).exists():
            check_ours(self.root, "run folder")  # a folder of the user's does not become a run folder
        mark(self.root)
        lock = self.lock(step, f"notebook {STEPS[step]}")
        try:
            lock.acquire()
        except Locked:
            raise Busy(f"Notebook {STEPS[step]} is already running on {self.root}: "
                       f"{read_holder(lock.path).describe()}; wait until it ends.") from None
        for other in sorted(_related(step)):
            holder = read_holder(self.path(".locks", f"{other}.lock"))
            if holder is not None and holder.alive() and not holder.is_me():
                lock.release()
                raise Busy(f"Notebook {STEPS[other]} is running on {self.root} ({holder.describe()}), and "
                           f"{STEPS[step]} {'reads what it writes' if other in READS[step] else 'would rewrite what it reads'}; "
                           "run this notebook when it has ended.")
        for rel in WRITES[step]:
            remove_leftovers(self.path(rel))
        started = Step(self, step, cfg, lock)
        if forget:
            started.forget()
        return started


class Step:
    """One run of one notebook's step: what it read, with the ids at the time it read them, and what it wrote.

    Used as a context manager, the step's lock is released when the block ends, however it ends; a
    notebook's step, begun in one cell and finished in another, holds it until it finishes (or
    its kernel ends).
    """

    def __init__(self, run: RunDir, name: str, cfg=None, lock: Lock | None = None):
        self.run, self.name, self.cfg, self.lock = run, name, cfg, lock
        self.inputs: dict[str, str] = {}
        self.outputs: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def forget(self) -> None:
        """Forget this step's old record, before its outputs are rewritten: a run cut off half-way is not trusted."""
        self.run.update_manifest(lambda manifest: manifest.steps.pop(self.name, None))

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def require(self, step: str) -> StepEntry:
        entry = self.run.require(step)
        self.inputs[step] = entry.id
        return entry

    def read(self, record: type[Record], arch: str | None = None):
        self.require(record.STEP)
        return record.load(self.run.path(record.where(arch)))

    def save(self, record: Record, arch: str | None = None) -> Path:
        """Write ``record`` where its type lies in the run folder, as one of this step's outputs."""
        return self.wrote(record.save(self.run.path(record.where(arch))))

    def wrote(self, path: str | Path) -> Path:
        """Count ``path`` (a file or folder in the run folder) among this step's outputs."""
        path = Path(path)
        self.outputs.append(str(path.relative_to(self.run.root) if path.is_absolute() else path))
        return self.run.path(self.outputs[-1])

    def _record(self, manifest: RunManifest, entry: StepEntry) -> None:
        for dep, dep_id in self.inputs.items():
            if dep not in manifest.steps or manifest.steps[dep].id != dep_id:
                raise MissingInput(f"{STEPS[dep]} was rerun while {STEPS[self.name]} ran, so what this step made "
                                   f"is from inputs that no longer exist; run {STEPS[self.name]} again.")
        manifest.steps[self.name] = entry

    def finish(self, **extra) -> StepEntry:
        """Record the step, once every output is in place and every input is still the one it read."""
        missing = [rel for rel in self.outputs if not self.run.path(rel).exists()]
        if missing:
            raise RuntimeError(f"step {self.name} records outputs it did not write: {', '.join(missing)}")
        config = self.cfg.to_dict() if hasattr(self.cfg, "to_dict") else self.cfg
        entry = StepEntry(
            id=uuid.uuid4().hex, notebook=STEPS[self.name],
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            outputs={rel: (FileStamp.of(self.run.path(rel)) if self.run.path(rel).is_file() else None)
                     for rel in dict.fromkeys(self.outputs)},
            inputs=dict(self.inputs), config=config or {}, versions=machine.versions(), extra=extra)
        try:
            self.run.update_manifest(lambda manifest: self._record(manifest, entry))
        finally:
            self.release()
        return entry
