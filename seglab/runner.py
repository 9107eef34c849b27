"""Run the notebook series headless, as ``python -m seglab run`` does.

Each notebook is executed by papermill in its own kernel with the config path, overrides
and run folder injected after its ``parameters`` cell; the executed copy, outputs and
all, is saved in ``RUN_DIR/notebooks``. The first failing notebook stops the series.
The kernels import seglab from this checkout (it goes first on their ``PYTHONPATH``), so the
notebooks run with the code beside them, whatever else is installed.

The notebooks start in their numbered order, and without a GPU two run at once where neither
depends on the other's outputs (:data:`seglab.rundir.READS`, followed through): 04, 06 and 07
after 03, so the cores one notebook leaves idle (imports, plotting, export) do the next one's work. With a GPU one runs at a time, as each TensorFlow process takes the GPU's memory.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import papermill

from seglab.config import find_config, is_path_setting, load_config, parse_override
from seglab.atomic import check_ours, mark
from seglab.jsonrecord import STEPS
from seglab.machine import is_chief, nvidia_smi
from seglab.rundir import READS

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


class NotebookFailed(RuntimeError):
    pass


def series(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    return sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))


@dataclass
class Timings:
    notebooks: dict[str, float]  # seconds each notebook took, start to end (two may overlap)
    series: float  # seconds from the first start to the last end


def upstream(step: str) -> set[str]:
    """The steps that must have run before ``step``: those whose outputs it reads, directly or through another
    step, and 00 for every later one (01 reads nothing of 00's but checks that it ran)."""
    first = set() if step == "gpu_check" else {"gpu_check"}
    return first.union(READS[step], *(upstream(dep) for dep in READS[step]))


def independent(a: Path, b: Path) -> bool:
    """Whether two notebooks may run at once: neither reads, even indirectly, what the other writes."""
    step = {name: key for key, name in STEPS.items()}
    return step[a.name] not in upstream(step[b.name]) and step[b.name] not in upstream(step[a.name])


def default_jobs() -> int:
    """Notebooks at a time: two on a CPU, one with a GPU (TensorFlow maps the GPU's memory to one process)."""
    return 1 if nvidia_smi() else 2


def run_series(config_path: str, overrides: list[str] = (), run_dir: str | None = None,
               only: list[str] | None = None, log=print, jobs: int | None = None) -> Timings:
    """Execute the series, ``jobs`` notebooks at a time at most (:func:`default_jobs`). Raises NotebookFailed
    at the first error, once the notebooks already running have ended."""
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
    start = time.perf_counter()
    with _stderr_to(out_dir / "kernels.log"), _checkout_first():
        timings = _schedule(notebooks, out_dir, parameters, jobs or default_jobs(), log)
    return Timings(timings, round(time.perf_counter() - start, 1))


def _schedule(notebooks: list[Path], out_dir: Path, parameters: dict, jobs: int, log) -> dict[str, float]:
    """Start each notebook, in order, once every earlier one it is not :func:`independent` of has ended."""
    def execute(notebook: Path) -> float:
        start = time.perf_counter()
        # the kernel starts in notebooks/ (nbclient's resources path); papermill's cwd= would chdir this whole
        # process, and two notebooks at once would each restore the other's folder under the other's kernel start
        papermill.execute_notebook(str(notebook), str(out_dir / notebook.name), parameters=parameters,
                                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}}, kernel_name="python3",
                                   progress_bar=False)
        return round(time.perf_counter() - start, 1)

    pending, running, timings, failure = list(notebooks), {}, {}, None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for notebook in list(pending):
                earlier = notebooks[:notebooks.index(notebook)]
                if len(running) < jobs and failure is None and all(
                        nb.name in timings or independent(nb, notebook) for nb in earlier):
                    log(f"running {notebook.name} ...")
                    running[pool.submit(execute, notebook)] = notebook
                    pending.remove(notebook)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                notebook = running.pop(future)
                try:
                    timings[notebook.name] = future.result()
                except papermill.PapermillExecutionError as e:
                    failure = failure or f"{notebook.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}"
                    pending.clear()
                    continue
                log(f"  done in {timings[notebook.name]} s -> {out_dir / notebook.name}")
    if failure:
        raise NotebookFailed(failure)
    return {nb.name: timings[nb.name] for nb in notebooks}


def _work(cfg, notebooks: list[Path], log) -> Timings:
    """A worker of a ``multi_worker`` cluster only lends its devices to notebook 03's training.

    The chief runs the notebooks and writes the run folder; this worker writes nothing there.
    """
    from seglab import training
    from seglab.jsonrecord import MissingInput
    from seglab.rundir import RunDir

    if not any(nb.name.startswith("03") for nb in notebooks):
        log("a multi_worker worker takes part in notebook 03 only; nothing to do")
        return Timings({}, 0.0)
    log("a multi_worker worker: training with the chief, which runs notebook 03 and writes the run folder ...")
    start = time.perf_counter()
    try:
        training.train_as_worker(cfg, RunDir(cfg.run_dir), log)
    except MissingInput as e:  # notebooks 01 and 02 have not run (or not finished) on the chief yet
        raise NotebookFailed(f"03_training.ipynb (as a worker): {e}") from None
    seconds = round(time.perf_counter() - start, 1)
    return Timings({"03_training (worker)": seconds}, seconds)


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
