"""Run the notebook series headless, in order, as ``python -m seglab run`` does.

Each notebook is executed by papermill in its own kernel with the config path, overrides
and run folder injected after its ``parameters`` cell; the executed copy, outputs and
all, is saved in ``RUN_DIR/notebooks``. The first failing notebook stops the series.
The kernels import seglab from this checkout (it goes first on their ``PYTHONPATH``), so the
notebooks run with the code beside them, whatever else is installed.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import papermill

from seglab.config import find_config, is_path_setting, load_config, parse_override
from seglab.atomic import check_ours, mark
from seglab.machine import is_chief

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


class NotebookFailed(RuntimeError):
    pass


def series(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    return sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))


def run_series(config_path: str, overrides: list[str] = (), run_dir: str | None = None,
               only: list[str] | None = None, log=print) -> dict:
    """Execute the series; return seconds per notebook. Raises NotebookFailed at the first error."""
    overrides = [_absolute(o) for o in overrides]
    if run_dir:
        overrides.append(f"run_dir={Path(run_dir).resolve()}")
    cfg = load_config(config_path, overrides)  # fail fast on a bad config, before any kernel starts
    notebooks = [nb for nb in series() if not only or any(nb.name.startswith(prefix) for prefix in only)]
    if cfg.train.strategy == "multi_worker" and not is_chief():
        return _work(cfg, notebooks, log)
    if not Path(cfg.run_dir, "manifest.json").exists():
        check_ours(cfg.run_dir, "run folder")  # a folder of the user's does not become a run folder
    out_dir = mark(cfg.run_dir) / "notebooks"
    out_dir.mkdir(exist_ok=True)
    parameters = {
        "config_path": os.path.relpath(find_config(config_path).resolve(), NOTEBOOK_DIR),
        "overrides": [o for o in overrides if not o.startswith("run_dir=")],
        "run_dir": os.path.relpath(cfg.run_dir, NOTEBOOK_DIR),
    }
    timings = {}
    for notebook in notebooks:
        log(f"running {notebook.name} ...")
        start = time.perf_counter()
        try:
            with _stderr_to(out_dir / "kernels.log"), _checkout_first():
                papermill.execute_notebook(str(notebook), str(out_dir / notebook.name), parameters=parameters,
                                           cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False)
        except papermill.PapermillExecutionError as e:
            raise NotebookFailed(f"{notebook.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}") from None
        timings[notebook.name] = round(time.perf_counter() - start, 1)
        log(f"  done in {timings[notebook.name]} s -> {out_dir / notebook.name}")
    return timings


def _work(cfg, notebooks: list[Path], log) -> dict:
    """A worker of a ``multi_worker`` cluster only lends its devices to notebook 03's training.

    The chief runs the notebooks and writes the run folder; this worker writes nothing there.
    """
    from seglab import training
    from seglab.jsonrecord import MissingInput
    from seglab.rundir import RunDir

    if not any(nb.name.startswith("03") for nb in notebooks):
        log("a multi_worker worker takes part in notebook 03 only; nothing to do")
        return {}
    log("a multi_worker worker: training with the chief, which runs notebook 03 and writes the run folder ...")
    start = time.perf_counter()
    try:
        training.train_as_worker(cfg, RunDir(cfg.run_dir), log)
    except MissingInput as e:  # notebooks 01 and 02 have not run (or not finished) on the chief yet
        raise NotebookFailed(f"03_training.ipynb (as a worker): {e}") from None
    return {"03_training (worker)": round(time.perf_counter() - start, 1)}


@contextmanager
def _stderr_to(path: Path):
    """Kernels inherit this process's stderr; TensorFlow's C++ start-up lines go to a log, not the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextmanager
def _checkout_first():
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(NOTEBOOK_DIR.parent), *filter(None, [saved])])
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved


def _absolute(override: str) -> str:
    """A path typed on the command line is relative to the shell, not to the notebooks."""
    key, value = parse_override(override)
    return f"{key}={Path(value).resolve()}" if is_path_setting(key, value) else override
