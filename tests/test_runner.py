"""The headless runner: the notebooks in their order, two at a time where neither reads the other's outputs."""
import os
import threading
import time
from pathlib import Path

import papermill
import pytest

from conftest import REPO
from seglab import runner

NAMES = {nb.name[:2]: nb for nb in runner.series()}


def _fake_notebooks(monkeypatch, fail: str | None = None, seconds: float = 0.3) -> dict:
    """papermill replaced by a sleep; the (start, end) of each notebook, by its number."""
    spans, lock = {}, threading.Lock()

    def execute(input_path, output_path, **kwargs):
        number = Path(input_path).name[:2]
        start = time.perf_counter()
        time.sleep(seconds)
        if number == fail:
            raise papermill.PapermillExecutionError(1, 3, "", "ValueError", "bad input", [])
        with lock:
            spans[number] = (start, time.perf_counter())

    monkeypatch.setattr(runner.papermill, "execute_notebook", execute)
    return spans


def _overlap(spans, a, b) -> bool:
    return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]


def _series(tmp_path, **kwargs):
    return runner.run_series(str(REPO / "configs" / "demo.yaml"), run_dir=str(tmp_path / "run"), log=lambda _: None,
                             **kwargs)


def test_independent_notebooks_run_side_by_side_and_dependent_ones_in_order(tmp_path, monkeypatch):
    spans = _fake_notebooks(monkeypatch)
    timings = _series(tmp_path, jobs=2)
    assert list(timings.notebooks) == [nb.name for nb in runner.series()]
    for before, after in [("00", "01"), ("01", "02"), ("02", "03"), ("03", "04"), ("03", "06"), ("03", "07"), ("04", "05")]:
        assert spans[after][0] >= spans[before][1], f"{after} started before {before} ended"
    assert _overlap(spans, "04", "06")  # both read only 01's and 03's outputs
    ends = sorted(end for _, end in spans.values())
    assert all(sum(s < t < e for s, e in spans.values()) <= 2 for t in ends)  # never more than two at once
    assert timings.series < sum(timings.notebooks.values())


def test_one_job_runs_the_notebooks_one_after_another(tmp_path, monkeypatch):
    spans = _fake_notebooks(monkeypatch, seconds=0.05)
    _series(tmp_path, jobs=1)
    order = sorted(spans, key=lambda number: spans[number][0])
    assert order == sorted(NAMES)
    assert all(spans[b][0] >= spans[a][1] for a, b in zip(order, order[1:]))


def test_a_failure_lets_the_running_notebook_end_and_starts_no_other(tmp_path, monkeypatch):
    spans = _fake_notebooks(monkeypatch, fail="04")
    with pytest.raises(runner.NotebookFailed, match=r"04_evaluation.ipynb failed in cell 3: ValueError: bad input"):
        _series(tmp_path, jobs=2)
    assert "06" in spans  # it started beside 04 and was let finish
    assert "05" not in spans and "07" not in spans


def test_independence_follows_what_each_step_reads_through_other_steps():
    independent = runner.independent
    assert not any(independent(NAMES["00"], nb) for number, nb in NAMES.items() if number != "00")  # 01 checks 00 ran
    assert independent(NAMES["04"], NAMES["07"]) and independent(NAMES["06"], NAMES["07"])
    assert not independent(NAMES["05"], NAMES["04"])  # 05 draws 04's metrics
    assert not independent(NAMES["02"], NAMES["04"])  # 04 reads 03's models, trained with 02's weights


def test_with_a_gpu_one_notebook_at_a_time(monkeypatch):
    monkeypatch.setattr(runner, "nvidia_smi", lambda: ["Tesla T4, 15360 MiB, 550.54"])
    assert runner.default_jobs() == 1
    monkeypatch.setattr(runner, "nvidia_smi", lambda: [])
    assert runner.default_jobs() == 2


def test_every_kernel_starts_in_the_notebooks_folder_when_two_run_at_once(tmp_path, monkeypatch):
    """papermill's ``cwd=`` changes the working folder of the whole process: with two notebooks at once, one ending
    put the folder back under the other's kernel start (04 failed: ``../configs/demo.yaml does not exist``). The
    fake is papermill's semantics: a kernel starts in nbclient's resources path if given, else the process's
    folder at that moment, which it samples throughout the notebook's run."""
    seen, lock = {}, threading.Lock()

    def execute(input_path, output_path, cwd=None, resources=None, **kwargs):
        with papermill.utils.chdir(cwd):
            samples = []
            for _ in range(15):
                samples.append((resources or {}).get("metadata", {}).get("path") or os.getcwd())
                time.sleep(0.01)
        with lock:
            seen[Path(input_path).name[:2]] = set(samples)

    monkeypatch.setattr(runner.papermill, "execute_notebook", execute)
    before = os.getcwd()
    _series(tmp_path, jobs=2)
    assert os.getcwd() == before
    assert {number: {str(runner.NOTEBOOK_DIR)} for number in NAMES} == seen
