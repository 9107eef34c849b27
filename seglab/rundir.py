"""The run folder: the written contract between notebooks.

A notebook's work is one :class:`Step`: it begins (its old record is forgotten, so a step
cut off half-way is never trusted), reads the records of earlier steps (noting which record
of each it read, at the moment it read it), writes its files atomically, and finishes by
recording itself in ``manifest.json``: what it wrote, the config, the package versions and
the ids of its inputs. A later step that asks for an input (:meth:`RunDir.require`) stops
with one sentence naming the notebook to run first when the input is missing or was
rewritten since.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

from seglab import machine
from seglab.records import STEPS, MissingInput, Record, RunManifest, StepEntry


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def manifest(self) -> RunManifest:
        path = self.path(RunManifest.FILE)
        return RunManifest.load(path) if path.exists() else RunManifest()

    def require(self, step: str) -> StepEntry:
        """``step``'s record, or stop naming the notebook that must run first."""
        steps = self.manifest().steps
        entry, notebook = steps.get(step), STEPS[step]
        if entry is None:
            raise MissingInput(f"Run notebook {notebook} first: {self.root} has no output of it yet.")
        absent = [rel for rel in entry.outputs if not self.path(rel).exists()]
        if absent:
            raise MissingInput(f"Run notebook {notebook} again: its output {absent[0]} is missing from {self.root}.")
        for dep, dep_id in entry.inputs.items():
            if dep not in steps or steps[dep].id != dep_id:
                raise MissingInput(f"Run notebook {notebook} again: it used an older output of {STEPS[dep]}, "
                                   "which has been rerun since.")
        return entry

    def read(self, record: type[Record], arch: str | None = None):
        """The record of type ``record`` (of architecture ``arch``), once its step is checked to be current."""
        self.require(record.STEP)
        return record.load(self.path(record.where(arch)))

    def begin(self, step: str, cfg=None) -> "Step":
        """Start ``step``: its old record is forgotten now, before it rewrites its outputs."""
        manifest = self.manifest()
        if manifest.steps.pop(step, None) is not None:
            manifest.save(self.path(RunManifest.FILE))
        return Step(self, step, cfg)


class Step:
    """One run of one notebook's step: what it read, with the ids at the time it read them, and what it wrote."""

    def __init__(self, run: RunDir, name: str, cfg=None):
        self.run, self.name, self.cfg = run, name, cfg
        self.inputs: dict[str, str] = {}
        self.outputs: list[str] = []

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

    def finish(self, **extra) -> StepEntry:
        """Record the step, once every output is in place and every input is still the one it read."""
        missing = [rel for rel in self.outputs if not self.run.path(rel).exists()]
        if missing:
            raise RuntimeError(f"step {self.name} records outputs it did not write: {', '.join(missing)}")
        manifest = self.run.manifest()
        for dep, dep_id in self.inputs.items():
            if dep not in manifest.steps or manifest.steps[dep].id != dep_id:
                raise MissingInput(f"{STEPS[dep]} was rerun while {STEPS[self.name]} ran, so what this step made "
                                   f"is from inputs that no longer exist; run {STEPS[self.name]} again.")
        config = self.cfg.to_dict() if hasattr(self.cfg, "to_dict") else self.cfg
        entry = StepEntry(
            id=uuid.uuid4().hex, notebook=STEPS[self.name],
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            outputs={rel: (self.run.path(rel).stat().st_size if self.run.path(rel).is_file() else None)
                     for rel in dict.fromkeys(self.outputs)},
            inputs=dict(self.inputs), config=config or {}, versions=machine.versions(), extra=extra)
        manifest.steps[self.name] = entry
        manifest.save(self.run.path(RunManifest.FILE))
        return entry
