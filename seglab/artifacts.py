"""The run folder: the written contract between notebooks.

Each step writes its files atomically (to a temporary name, then rename) and then records
itself in ``manifest.json``: what it wrote, the config it ran with, the package versions,
and which record of each earlier step it read. A later step asks for its inputs through
:meth:`RunDir.require`, which stops with one sentence naming the notebook to run first
when an input is missing or was rewritten since.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

STEPS = {
    "gpu_check": "00_gpu_check.ipynb",
    "data": "01_data_loading_and_preprocessing.ipynb",
    "class_weights": "02_class_weights.ipynb",
    "training": "03_training.ipynb",
    "evaluation": "04_evaluation.ipynb",
    "visualization": "05_visualization.ipynb",
    "inference": "06_inference_on_new_images.ipynb",
    "export": "07_export.ipynb",
}

_PACKAGES = ("tensorflow", "tf-keras", "segmentation-models", "numpy", "scikit-learn", "opencv-python-headless")


_UMASK = os.umask(0)
os.umask(_UMASK)


class MissingInput(RuntimeError):
    """An earlier step's output is absent or stale; the message names the notebook to run."""


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
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


def write_json(path: str | Path, data: Any) -> Path:
    return _atomic(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=_jsonable)))


def write_text(path: str | Path, text: str) -> Path:
    return _atomic(Path(path), lambda tmp: tmp.write_text(text))


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    return _atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))


def atomic_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_path)`` and move the result into place only if it succeeded."""
    return _atomic(Path(path), write)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"steps": {}}
        return read_json(self.manifest_path)

    def record(self, step: str, outputs: dict, config: Any = None, inputs: tuple = (), **extra) -> dict:
        """Register ``step`` as finished, after its files are in place."""
        missing = [name for name, rel in outputs.items() if not self.path(rel).exists()]
        if missing:
            raise RuntimeError(f"step {step} records outputs it did not write: {', '.join(missing)}")
        manifest = self.manifest()
        entry = {
            "id": uuid.uuid4().hex,
            "notebook": STEPS[step],
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "outputs": {name: str(rel) for name, rel in outputs.items()},
            "inputs": {dep: manifest["steps"][dep]["id"] for dep in inputs if dep in manifest["steps"]},
            "config": config.to_dict() if hasattr(config, "to_dict") else config,
            "versions": versions(),
            **extra,
        }
        manifest["steps"][step] = entry
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.manifest_path, manifest)
        return entry

    def start(self, step: str) -> None:
        """Forget ``step``'s record before it rewrites its outputs: a run cut off half-way is not trusted."""
        manifest = self.manifest()
        if manifest["steps"].pop(step, None) is not None:
            write_json(self.manifest_path, manifest)

    def require(self, step: str) -> dict:
        """Return ``step``'s record, or stop naming the notebook that must run first."""
        steps = self.manifest()["steps"]
        entry = steps.get(step)
        notebook = STEPS[step]
        if entry is None:
            raise MissingInput(f"Run notebook {notebook} first: {self.root} has no output of it yet.")
        absent = [rel for rel in entry["outputs"].values() if not self.path(rel).exists()]
        if absent:
            raise MissingInput(f"Run notebook {notebook} again: its output {absent[0]} is missing from {self.root}.")
        for dep, dep_id in entry.get("inputs", {}).items():
            if steps.get(dep, {}).get("id") != dep_id:
                raise MissingInput(
                    f"Run notebook {notebook} again: it used an older output of {STEPS[dep]}, which has been rerun since."
                )
        return entry

    def output(self, step: str, name: str) -> Path:
        return self.path(self.require(step)["outputs"][name])


def open_run(config_path=None, overrides=(), run_dir=None):
    """What every notebook does first: the config (with its overrides) and its run folder.

    ``config_path`` is a path or a config name; None means ``colab_t4`` on Colab and ``demo``
    elsewhere. On Colab the run folder defaults to Google Drive, ``MyDrive/seglab/runs/<name>``
    (each notebook runs in its own runtime), and downloads go to the runtime's own disk; an
    explicit ``run_dir`` or override still wins.
    """
    from seglab import colab
    from seglab.config import load_config, parse_override

    overrides = list(overrides or []) + ([f"run_dir={run_dir}"] if run_dir else [])
    config_path = config_path or colab.default_config()
    cfg = load_config(config_path, overrides)
    if colab.in_colab():
        given = {parse_override(o)[0] for o in overrides}
        defaults = [f"{key}={value}" for key, value in colab.run_defaults(cfg.name).items() if key not in given]
        cfg = load_config(config_path, defaults + overrides)
    return cfg, RunDir(cfg.run_dir)
