"""Colab as it runs: the notebooks' first cell, and where a Colab runtime keeps its files.

On Colab each notebook gets its own runtime (its own machine and ``/content``, gone when it
ends), so what one notebook hands to the next lives on Google Drive: the run folder defaults
to ``MyDrive/seglab/runs/<config name>``. The first cell of every notebook (:func:`setup_cell`,
stamped into the notebooks by ``python -m seglab render --cells-only``) mounts Drive, installs
this project and what Colab lacks, and stops with one sentence when it cannot.

``GITHUB_REPO`` is the one place that names the project's public address: the set-up cell
installs from it and the "Open in Colab" badges link to it. Until it is set, the cell installs
from a copy of the project folder on Drive (``MyDrive/seglab``) or says what to set.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

PLACEHOLDER = "OWNER/REPO"
GITHUB_REPO = PLACEHOLDER  # the project's public GitHub repository, "owner/name"; then run `make cells`
GITHUB_BRANCH = "main"

COLAB_ROOT = Path("/content")  # a runtime's own disk, lost when the runtime ends
DRIVE = COLAB_ROOT / "drive"  # where the set-up cell mounts Google Drive
DRIVE_FOLDER = "seglab"  # MyDrive/seglab: the project folder (optional) and runs/
COLAB_CONFIG, LOCAL_CONFIG = "colab_t4", "demo"  # the default config on Colab and elsewhere


def install_source() -> str:
    """What pip installs the project from, derived from ``GITHUB_REPO``."""
    return f"git+https://github.com/{GITHUB_REPO}@{GITHUB_BRANCH}"


def badge_url(notebook: str) -> str:
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{GITHUB_BRANCH}/notebooks/{notebook}"


def badge(notebook: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({badge_url(notebook)})"


def in_colab() -> bool:
    return "google.colab" in sys.modules


def default_config() -> str:
    """The config a notebook uses when none is named: the T4 config on Colab, the CPU demo elsewhere."""
    return COLAB_CONFIG if in_colab() else LOCAL_CONFIG


def drive_runs() -> Path:
    return DRIVE / "MyDrive" / DRIVE_FOLDER / "runs"


def run_defaults(name: str) -> dict:
    """On Colab, the run folder on Drive (so the next notebook's runtime finds it) and downloads on the
    runtime's own disk: a public dataset unpacks into thousands of small files, slow on Drive, and
    only notebook 01 reads them."""
    if not drive_runs().parent.parent.is_dir():
        raise RuntimeError(f"Google Drive is not mounted at {DRIVE}: run this notebook's first cell (it mounts "
                           f"Drive), or set run_dir to a folder under {COLAB_ROOT} (lost when the runtime ends).")
    return {"run_dir": str(drive_runs() / name), "data.download_dir": str(COLAB_ROOT / "data" / "downloads")}


def local_cache(run_root: str | Path) -> Path | None:
    """A folder on the runtime's own disk for copies of a run folder on Drive; None for a local run folder."""
    root = Path(run_root).absolute()
    drive = {DRIVE, DRIVE.resolve()}
    if not any(root == d or d in root.parents or d in root.resolve().parents for d in drive):
        return None
    return COLAB_ROOT / "seglab_cache" / hashlib.sha1(str(root).encode()).hexdigest()[:12]


SETUP_DOC = """\
**Set-up.** On Colab the next cell mounts Google Drive and installs seglab; `seglab.colab.setup_runtime` then \
adds segmentation_models and the `tf-keras` that matches Colab's own TensorFlow. Elsewhere it does nothing. Each \
notebook runs in its own Colab runtime, whose disk is gone when it ends, so the run folder lives on Drive \
(`MyDrive/seglab/runs/<config>`). Run again or after *Restart session*, it installs nothing twice. On a T4 \
runtime it prints:

```
Mounted at /content/drive
Installing seglab from git+https://github.com/OWNER/REPO@main ...
Installing segmentation-models 1.0.1 and tf-keras 2.20 ...
seglab 0.1.0, TensorFlow 2.20.0, tf-keras 2.20.1, segmentation-models 1.0.1; GPU runtime; runs in MyDrive/seglab/runs.
```"""

PARAMETERS_DOC = """\
**Parameters.** One config drives the whole series, named (`"demo"`, `"colab_t4"`) or as a path to a YAML \
file. `python -m seglab run` (or papermill) replaces these values; edit them here when you run the notebook \
by hand."""

PARAMETERS = """\
config_path = None  # None: "colab_t4" on Colab, "demo" elsewhere; or a name, or a path like "../configs/demo.yaml"
overrides = []  # list of key=value strings, for example train.epochs=3
run_dir = None  # None: on Colab MyDrive/seglab/runs/<config name>, elsewhere the config's run_dir"""

_SETUP_CELL = '''\
#@title Set-up on Colab: mount Drive, install seglab (elsewhere: nothing) {{ display-mode: "form" }}
# Generated from seglab/colab.py by `make cells`: this installs seglab alone, seglab.colab.setup_runtime the rest.
SEGLAB_SOURCE = "{source}"  # pip address of this project
DRIVE_FOLDER = "{folder}"  # or copy the project folder to Google Drive as MyDrive/{folder}; runs go to its runs/
import importlib.util, os, shutil, subprocess, sys
if importlib.util.find_spec("seglab") is None:  # a new Colab runtime
    if "google.colab" not in sys.modules:
        raise RuntimeError("seglab is not installed for this kernel: run `make lab`, or `pip install -e .` in the kernel's environment.")
    from google.colab import drive
    drive.mount("/content/drive")  # where the runs go, and perhaps the project folder
    source, project = SEGLAB_SOURCE, f"/content/drive/MyDrive/{{DRIVE_FOLDER}}"
    if os.path.isfile(f"{{project}}/pyproject.toml"):  # pip builds inside the folder: a local copy, not Drive
        print(f"Installing seglab from the project folder on Drive, MyDrive/{{DRIVE_FOLDER}} ...")
        source = shutil.copytree(project, "/content/seglab_src", dirs_exist_ok=True, ignore=shutil.ignore_patterns("runs", "data", ".git", ".venv*", "__pycache__"))
    elif "{placeholder}" in source:
        raise RuntimeError(f"No install source: set SEGLAB_SOURCE above to this project's pip address (git+https://github.com/<owner>/<name>), or copy the project folder to Google Drive as MyDrive/{{DRIVE_FOLDER}}.")
    else:
        print(f"Installing seglab from {{source}} ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", source], check=True)
    importlib.invalidate_caches()
from seglab.colab import setup_runtime

setup_runtime(DRIVE_FOLDER)'''


def setup_cell(source: str | None = None) -> str:
    """The first code cell of every notebook; plain Python, for it runs before seglab is installed."""
    return _SETUP_CELL.format(source=source or install_source(), folder=DRIVE_FOLDER, placeholder=PLACEHOLDER)


def installed(name: str) -> str | None:
    """The installed version of a distribution, by its normalised name (``tf-keras``), or None."""
    from importlib import metadata
    versions = {(d.metadata["Name"] or "").lower().replace("_", "-"): d.version for d in metadata.distributions()}
    return versions.get(name)


def _pip_install(*requirements: str) -> None:
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *requirements], capture_output=True, text=True)
    if pip.returncode:
        print(pip.stdout, pip.stderr, sep="\n")
        raise RuntimeError(f"pip could not install {' '.join(requirements)} (exit code {pip.returncode}); its message "
                           "is above.")


def setup_runtime(folder: str = DRIVE_FOLDER, log=print) -> None:
    """The set-up cell's work once seglab is installed: on Colab, Drive mounted, segmentation_models and the
    ``tf-keras`` of Colab's own TensorFlow minor version installed (Colab's TensorFlow is kept, never replaced),
    and one line of versions; elsewhere, one line saying there is nothing to do."""
    if not in_colab():
        return log(f"Not on Colab: nothing to set up (seglab {installed('seglab')} in this kernel's environment).")
    if not (DRIVE / "MyDrive").is_dir():  # a runtime where seglab was installed by hand
        from google.colab import drive
        drive.mount(str(DRIVE))
    if installed("tensorflow") is None:
        raise RuntimeError("This runtime has no TensorFlow (Colab's TPU runtimes ship none): choose a GPU (T4) or CPU "
                           "runtime under Runtime > Change runtime type.")
    tf_minor = ".".join(installed("tensorflow").split(".")[:2])
    if installed("segmentation-models") and (installed("tf-keras") or "").startswith(tf_minor + "."):
        log(f"seglab {installed('seglab')} is already installed in this runtime.")
    else:
        log(f"Installing segmentation-models 1.0.1 and tf-keras {tf_minor} ...")
        _pip_install(f"tf-keras~={tf_minor}.0", "segmentation-models==1.0.1")
    gpu = "GPU" if shutil.which("nvidia-smi") else "CPU"
    log(f"seglab {installed('seglab')}, TensorFlow {installed('tensorflow')}, tf-keras {installed('tf-keras')}, "
        f"segmentation-models {installed('segmentation-models')}; {gpu} runtime; runs in MyDrive/{folder}/runs.")
    if gpu == "CPU":
        log('No GPU: the "colab_t4" config takes hours on a CPU; pick a T4 under Runtime > Change runtime type, or '
            'set config_path = "demo" below.')
