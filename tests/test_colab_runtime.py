"""Colab as it runs: notebooks 00 to 06, each in its own simulated Colab runtime.

A runtime here is a kernel started in its own mount namespace (``unshare``) with

- its own empty ``/content`` (a temporary folder bind-mounted there), where the kernel starts;
- its own copy-on-write view of ``.venv-colab``, Colab's package versions (``requirements-colab.txt``,
  built by ``make test-colab``): an overlay whose upper layer belongs to the runtime, so what the first
  cell installs stays through a restart of the kernel and is gone in the next runtime;
- a stand-in ``google.colab``, imported at kernel start by an IPython start-up file as on Colab, whose
  ``drive.mount`` links a Drive stand-in that all runtimes of the series share.

Each kernel runs the committed first cell as it is, with only ``SEGLAB_SOURCE`` pointed at a copy of this
checkout; pip reads a local wheelhouse of requirements-colab.txt's pins (no network). Kernels are started
as root (mount namespaces need it); the test is skipped elsewhere, and without ``SEGLAB_COLAB_VENV``.
"""
import json
import os
import re
import shutil
import threading
from pathlib import Path

import nbformat
import pytest
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from papermill.parameterize import parameterize_notebook
from traitlets import default

from seglab import colab
from seglab.records import Environment, TrainingRecord
from seglab.rundir import RunDir

from conftest import REPO

VENV = os.environ.get("SEGLAB_COLAB_VENV")
pytestmark = [
    pytest.mark.skipif(not VENV, reason="needs the Colab stand-in venv: run `make test-colab`"),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for /content"),
]

TINY = {"config_path": "demo", "run_dir": None, "overrides": [
    "data.demo.num_images=12", "data.demo.image_size=64", "data.image_size=64", "model.architectures=[unet]",
    "train.epochs=3", "train.backup_minutes=0", "train.batch_size=4", "train.steps_per_epoch=12", "evaluation.tta=false",
    "evaluation.min_component_sizes=[0]", "evaluation.saved_predictions=1"]}
EPOCHS = 3

FAKE_DRIVE = '''import os


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    """Colab's drive.mount, linking the Drive stand-in; it prints what Colab prints."""
    if os.path.islink(mountpoint) and not force_remount:
        print(f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, "
              f'call drive.mount("{mountpoint}", force_remount=True).')
        return
    os.symlink(os.environ["SIM_DRIVE"], mountpoint)
    print(f"Mounted at {mountpoint}")
'''

KERNEL = r'''set -e
mount --bind "$SIM_CONTENT" /content
mount -t overlay overlay -o "lowerdir=$SIM_VENV,upperdir=$SIM_UPPER,workdir=$SIM_WORK" "$SIM_VENV"
cd /content
exec "$SIM_VENV/bin/python" -m ipykernel_launcher -f "$1"
'''


class Colab:
    """The pieces every simulated runtime shares: fake google.colab, start-up file, wheelhouse, source."""

    def __init__(self, base: Path):
        self.base = base
        fake = base / "fake" / "google" / "colab"
        fake.mkdir(parents=True)  # google stays a namespace package, as on Colab (protobuf lives in it too)
        (fake / "__init__.py").write_text("from google.colab import drive\n")
        (fake / "drive.py").write_text(FAKE_DRIVE)
        startup = base / "ipython" / "profile_default" / "startup"
        startup.mkdir(parents=True)
        (startup / "00-colab.py").write_text("import google.colab  # as Colab's kernel start-up does\n")
        self.source = base / "seglab-src"  # what SEGLAB_SOURCE points at: this checkout, copied
        shutil.copytree(REPO, self.source, ignore=shutil.ignore_patterns(
            ".git", ".venv*", "runs", "generated", "downloads", "__pycache__", "build", "*.egg-info", ".pytest*"))

    def runtime(self, name: str, drive: Path) -> "Runtime":
        return Runtime(self, self.base / "runtimes" / name, drive)


class Runtime:
    """One Colab runtime: its own /content and installed packages; kernels started in it share both."""

    def __init__(self, colab_: Colab, root: Path, drive: Path):
        self.content, self.root = root / "content", root
        for folder in (self.content, root / "upper", root / "work", root / "kernels" / "colab"):
            folder.mkdir(parents=True)
        env = {"SIM_CONTENT": str(self.content), "SIM_VENV": VENV, "SIM_UPPER": str(root / "upper"),
               "SIM_WORK": str(root / "work"), "SIM_DRIVE": str(drive),
               "PYTHONPATH": str(colab_.base / "fake"), "IPYTHONDIR": str(colab_.base / "ipython"),
               "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": f"{VENV}/wheelhouse", "PIP_CONFIG_FILE": os.devnull,
               "PIP_CONSTRAINT": str(REPO / "requirements-colab.txt"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        spec = {"argv": ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", KERNEL, "sh",
                         "{connection_file}"], "display_name": "simulated Colab", "language": "python", "env": env}
        (root / "kernels" / "colab" / "kernel.json").write_text(json.dumps(spec))

    def client(self, nb) -> NotebookClient:
        kernels = str(self.root / "kernels")

        class RuntimeKernelManager(AsyncKernelManager):  # nbclient starts it, and shuts it down after the run
            @default("kernel_spec_manager")
            def _kernel_spec_manager_default(self):
                return KernelSpecManager(kernel_dirs=[kernels])

        return NotebookClient(nb, kernel_manager_class=RuntimeKernelManager, kernel_name="colab", timeout=600,
                              startup_timeout=120, resources={"metadata": {"path": "/content"}})

    def run(self, nb, allow_errors: bool = False):
        client = self.client(nb)
        client.allow_errors = allow_errors
        client.execute()
        return nb


def outputs(cell) -> str:
    return "".join(o.get("text", "") + (f"{o.ename}: {o.evalue}" if o.output_type == "error" else "")
                   for o in cell.outputs)


def committed(name: str, source: str | None, parameters: dict | None = TINY):
    """A notebook as committed, with SEGLAB_SOURCE pointed at ``source`` and papermill's parameters."""
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    assert setup.source == colab.setup_cell()  # the committed cell, as it is
    if source:
        setup.source, count = re.subn(r'^SEGLAB_SOURCE = ".*?"', f'SEGLAB_SOURCE = "{source}"', setup.source,
                                      count=1, flags=re.M)
        assert count == 1
    nb.metadata["papermill"] = {}  # what papermill's notebook loading sets before it injects parameters
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    return parameterize_notebook(nb, parameters) if parameters else nb


def setup_only(nb, times: int = 1, extra: str | None = None):
    setup = next(c for c in nb.cells if c.cell_type == "code")
    cells = [nbformat.v4.new_code_cell(setup.source) for _ in range(times)]
    nb.cells = cells + ([nbformat.v4.new_code_cell(extra)] if extra else [])
    return nb


def notebook(number: str) -> str:
    return next(p.name for p in (REPO / "notebooks").glob(f"{number}_*.ipynb"))


@pytest.fixture(scope="module")
def content_mountpoint():
    """/content must exist as a mount point; each runtime binds its own folder over it, privately."""
    made = not os.path.exists("/content")
    os.makedirs("/content", exist_ok=True)
    yield
    if made:
        os.rmdir("/content")


@pytest.fixture(scope="module")
def sim(tmp_path_factory, content_mountpoint):
    return Colab(tmp_path_factory.mktemp("colab"))


def _errors(nb) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]


@pytest.fixture(scope="module")
def series(sim):
    """00 to 06 in separate runtimes on one Drive; 00's runtime runs the first cell twice and restarts;
    03 is killed mid-training and run again in a new runtime."""
    drive = sim.base / "drive"
    (drive / "MyDrive").mkdir(parents=True)
    source = str(sim.source)
    done = {}
    first = sim.runtime("00", drive)
    done["setup_twice"] = first.run(setup_only(committed(notebook("00"), source, None), times=2))
    done["00"] = first.run(committed(notebook("00"), source))  # a new kernel in the same runtime: a restart
    for number in ("01", "02"):
        done[number] = sim.runtime(number, drive).run(committed(notebook(number), source))
    done["03_cut"] = _cut_off_mid_training(sim.runtime("03-cut", drive), committed(notebook("03"), source),
                                           drive / "MyDrive" / "seglab" / "runs" / "demo")
    done["03"] = sim.runtime("03", drive).run(committed(notebook("03"), source))
    for number in ("04", "05", "06"):
        done[number] = sim.runtime(number, drive).run(committed(notebook(number), source))
    return drive / "MyDrive" / "seglab" / "runs" / "demo", done, sim


def _cut_off_mid_training(runtime: Runtime, nb, run_dir: Path):
    """Run 03 and kill its kernel (a disconnect) once the first epoch is logged and its training state written
    (the state follows the log row), before the last epoch."""
    client = runtime.client(nb)
    log, state = run_dir / "history" / "unet.csv", run_dir / "train_state" / "unet" / "chief" / "checkpoint"
    stop = threading.Event()

    def kill_after_one_epoch():
        while not stop.wait(0.1):
            if log.exists() and len(log.read_text().strip().splitlines()) >= 2 and state.exists():  # header, epoch
                os.kill(client.km.provisioner.process.pid, 9)
                return

    watcher = threading.Thread(target=kill_after_one_epoch)
    watcher.start()
    try:
        with pytest.raises(DeadKernelError):
            client.execute()
    finally:
        stop.set()
        watcher.join()
    logged = len(log.read_text().strip().splitlines()) - 1
    assert 1 <= logged < EPOCHS, f"03 was not cut off mid-training: {logged} epochs logged"
    assert not (run_dir / "training.json").exists()
    return logged


def test_the_first_cell_installs_once_per_runtime_even_run_twice_or_after_a_restart(series):
    _, done, sim = series
    first, second = (outputs(c) for c in done["setup_twice"].cells)
    print("\n--- first cell, install source set (first run):\n" + first + "--- second run:\n" + second)
    assert "Mounted at /content/drive" in first and f"Installing seglab from {sim.source}" in first
    assert "seglab 0.1.0, TensorFlow 2.20.0, tf-keras 2.20.1, segmentation-models 1.0.1; CPU runtime" in first
    assert "Installing" not in second and "already installed in this runtime" in second
    restarted = outputs(next(c for c in done["00"].cells if c.cell_type == "code"))
    assert "Installing" not in restarted and "already installed in this runtime" in restarted
    assert "Drive already mounted" not in restarted  # the cell checks, instead of mounting again
    for number in ("01", "04", "06"):  # a new runtime starts without seglab: the cell installs it again
        assert "Installing seglab" in outputs(next(c for c in done[number].cells if c.cell_type == "code"))


def test_every_notebook_ran_in_its_own_runtime_on_the_run_folder_on_drive(series):
    run_dir, done, sim = series
    for name in ("00", "01", "02", "03", "04", "05", "06"):
        assert not _errors(done[name]), f"{name}: {_errors(done[name])}"
    run = RunDir(run_dir)
    assert set(run.manifest().steps) == {"gpu_check", "data", "class_weights", "training", "evaluation",
                                         "visualization", "inference"}
    runtimes = sim.base / "runtimes"
    assert sorted(p.name for p in (runtimes / "01" / "content").iterdir()) == ["data", "drive"]  # the demo source
    assert sorted(p.name for p in (runtimes / "02" / "content").iterdir()) == ["drive"]  # 02 read 01's dataset on Drive
    assert "data" not in {p.name for p in (runtimes / "06" / "content").iterdir()}  # the demo scene came from Drive
    assert run.read(Environment).versions["tensorflow"] == "2.20.0"  # Colab's own


def test_the_dataset_on_drive_is_a_few_files_and_training_read_a_local_copy(series):
    run_dir, _, sim = series
    dataset = sorted(p.name for p in (run_dir / "dataset").iterdir())
    assert dataset == [".seglab", "dataset.json", "demo_scene", "fingerprint.json", "test-00000-of-00001.tfrecord",
                       "test-originals-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord",
                       "val-00000-of-00001.tfrecord", "val-originals-00000-of-00001.tfrecord"]
    assert sorted(p.name for p in (run_dir / "dataset" / "demo_scene").iterdir()) == ["large_scene.png",
                                                                                     "large_scene_truth.png"]
    cache = sim.base / "runtimes" / "03" / "content" / "seglab_cache"
    assert {p.name for p in cache.rglob("*.tfrecord")} >= {"train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"}
    assert len(list((run_dir / "predictions" / "unet").iterdir())) <= 1 + 2 * 2  # capped, not one per test image


def test_training_cut_off_in_one_runtime_resumes_in_the_next(series):
    run_dir, done, _ = series
    summary = RunDir(run_dir).read(TrainingRecord).models["unet"]
    assert summary.resumed is True and summary.epochs == EPOCHS
    epochs = [int(float(row.split(",")[0])) for row in (run_dir / "history" / "unet.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(EPOCHS))  # each epoch once: the resumed run went on from the state on Drive
    assert done["03_cut"] < EPOCHS


def test_the_first_cell_installs_from_a_project_folder_on_drive(sim):
    drive = sim.base / "drive-with-project"
    shutil.copytree(sim.source, drive / "MyDrive" / "seglab")
    (drive / "MyDrive" / "seglab" / "runs" / "old").mkdir(parents=True)  # runs stay on Drive, not copied
    check = "from seglab.config import load_config\nprint(load_config('colab_t4').name)"
    nb = sim.runtime("from-drive", drive).run(setup_only(committed(notebook("00"), None, None), extra=check))
    text = outputs(nb.cells[0])
    print("\n--- first cell, project folder on Drive:\n" + text)
    assert "Installing seglab from the project folder on Drive, MyDrive/seglab" in text
    assert outputs(nb.cells[1]).strip() == "colab_t4"  # configs by name, from the installed package
    copy = sim.base / "runtimes" / "from-drive" / "content" / "seglab_src"
    assert (copy / "pyproject.toml").exists() and not (copy / "runs").exists()


def test_the_first_cell_without_an_install_source_stops_with_one_sentence(sim):
    drive = sim.base / "drive-empty"
    (drive / "MyDrive").mkdir(parents=True)
    nb = sim.runtime("nothing", drive).run(setup_only(committed(notebook("03"), None, None)), allow_errors=True)
    text = outputs(nb.cells[0])
    print("\n--- first cell, no install source:\n" + text)
    assert text.endswith("RuntimeError: No install source: set SEGLAB_SOURCE above to this project's pip address "
                         "(git+https://github.com/<owner>/<name>), or copy the project folder to Google Drive as "
                         "MyDrive/seglab.")
    assert "Installing" not in text
