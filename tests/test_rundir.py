import json

import pytest

from seglab.atomic import atomic_dir, write_json
from seglab.jsonrecord import MissingInput
from seglab.rundir import RunDir


def record(run, step, *outputs, inputs=(), config=None, write=True):
    """Run ``step`` as a notebook does: begin, read its inputs, write its outputs, finish."""
    started = run.begin(step, config)
    for dep in inputs:
        started.require(dep)
    for rel in outputs:
        if write:
            write_json(run.path(rel), {})
        started.wrote(rel)
    return started.finish()


def test_atomic_json_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "x").write_text("2")
            raise RuntimeError("interrupted")
    assert (target / "x").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_require_names_the_notebook_to_run_first(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(MissingInput, match=r"Run notebook 00_gpu_check.ipynb first"):
        run.require("gpu_check")


def test_record_refuses_outputs_that_are_not_there(tmp_path):
    with pytest.raises(RuntimeError, match="did not write: env.json"):
        record(RunDir(tmp_path), "gpu_check", "env.json", write=False)


def test_a_step_started_again_is_not_trusted_until_it_records(tmp_path):
    run = RunDir(tmp_path)
    record(run, "gpu_check", "env.json")
    record(run, "data", "dataset.json", inputs=("gpu_check",))
    run.begin("gpu_check")  # e.g. cut off half-way through rewriting its outputs
    with pytest.raises(MissingInput, match="Run notebook 00_gpu_check.ipynb first"):
        run.require("gpu_check")
    with pytest.raises(MissingInput, match="01_data_loading_and_preprocessing.ipynb again"):
        run.require("data")


def test_require_detects_deleted_and_stale_inputs(tmp_path):
    run = RunDir(tmp_path)
    record(run, "gpu_check", "env.json", config={"a": 1})
    record(run, "data", "dataset.json", inputs=("gpu_check",))
    assert run.require("data").versions["tensorflow"]
    assert run.require("gpu_check").config == {"a": 1}
    record(run, "gpu_check", "env.json")  # rerun upstream: downstream is now stale
    with pytest.raises(MissingInput, match="Run notebook 01_data_loading_and_preprocessing.ipynb again: it used an older"):
        run.require("data")
    run.path("env.json").unlink()
    with pytest.raises(MissingInput, match="its output env.json is missing"):
        run.require("gpu_check")
