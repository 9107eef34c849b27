"""Colab's defaults and the set-up cell, as far as they can be checked without a Colab runtime
(tests/test_colab_runtime.py runs the notebooks in simulated runtimes)."""
import ast
import contextlib
import io
import sys
import types

import pytest

from seglab import colab, config
from seglab.notebook import open_run
from seglab.config import ConfigError, load_config

from conftest import REPO


@pytest.fixture
def on_colab(monkeypatch, tmp_path):
    """``google.colab`` imported, as Colab's start-up does, and /content in a temporary folder."""
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    monkeypatch.setattr(colab, "COLAB_ROOT", tmp_path / "content")
    monkeypatch.setattr(colab, "DRIVE", tmp_path / "content" / "drive")
    return tmp_path / "content"


def test_configs_are_found_by_name_or_path_from_any_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert load_config("colab_t4").name == "colab_t4"
    assert load_config("demo").run_dir == str(REPO / "runs" / "demo")  # relative to the checkout's configs/
    assert load_config(REPO / "configs" / "demo.yaml").run_dir == str(REPO / "runs" / "demo")
    with pytest.raises(ConfigError, match="no config named 'colab'; known: colab_t4, demo"):
        load_config("colab")


def test_a_config_shipped_in_the_installed_package_reads_paths_from_the_working_directory(monkeypatch, tmp_path):
    packaged = tmp_path / "site-packages" / "seglab" / "configs"
    packaged.mkdir(parents=True)
    (packaged / "mine.yaml").write_text("name: mine\nrun_dir: ../runs/mine\n")
    monkeypatch.setattr(config, "PACKAGED_CONFIGS", packaged)
    monkeypatch.chdir(tmp_path)
    assert load_config("mine").run_dir == str(tmp_path / "runs" / "mine")  # not inside site-packages


def test_elsewhere_the_demo_config_and_its_own_run_folder():
    cfg, run = open_run(None)
    assert cfg.name == "demo" and run.root == REPO / "runs" / "demo"


def test_on_colab_the_t4_config_and_a_run_folder_on_drive(on_colab):
    (on_colab / "drive" / "MyDrive").mkdir(parents=True)
    cfg, run = open_run(None)
    assert cfg.name == "colab_t4"
    assert run.root == on_colab / "drive" / "MyDrive" / "seglab" / "runs" / "colab_t4"
    assert cfg.data.download_dir == str(on_colab / "data" / "downloads")  # archives on the runtime's own disk
    cfg, run = open_run("demo", ["data.download_dir=/elsewhere"])  # an explicit choice wins
    assert cfg.name == "demo" and run.root.name == "demo" and cfg.data.download_dir == "/elsewhere"
    assert open_run("demo", run_dir="/tmp/mine")[1].root.as_posix() == "/tmp/mine"


def test_on_colab_without_drive_the_run_folder_names_the_cell_to_run(on_colab):
    with pytest.raises(RuntimeError, match="Google Drive is not mounted .*run this notebook's first cell"):
        open_run(None)


def test_only_a_run_folder_on_drive_gets_a_local_cache(on_colab):
    assert colab.local_cache(on_colab / "drive" / "MyDrive" / "seglab" / "runs" / "x").parent == on_colab / "seglab_cache"
    assert colab.local_cache(on_colab / "runs" / "x") is None


def test_the_install_source_and_the_badges_come_from_one_setting(monkeypatch):
    monkeypatch.setattr(colab, "GITHUB_REPO", "someone/seglab")
    assert colab.install_source() == "git+https://github.com/someone/seglab@main"
    assert 'SEGLAB_SOURCE = "git+https://github.com/someone/seglab@main"' in colab.setup_cell()
    assert colab.badge_url("03_training.ipynb") == \
        "https://colab.research.google.com/github/someone/seglab/blob/main/notebooks/03_training.ipynb"


def test_the_set_up_cell_does_nothing_elsewhere_and_says_so_calmly():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(colab.setup_cell(), {})
    assert out.getvalue().startswith("Not on Colab: nothing to set up (seglab 0.1.0")


def test_the_set_up_cell_is_plain_python_without_shell_lines():
    source = colab.setup_cell()
    tree = ast.parse(source)  # no IPython syntax: a failing `!` line could not go on silently
    seglab_imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                      and any(name.startswith("seglab") for name in
                              [getattr(node, "module", None) or ""] + [alias.name for alias in node.names])]
    assert [ast.unparse(node) for node in seglab_imports] == ["from seglab.colab import setup_runtime"]
    install = source.index('"pip", "install"')  # seglab alone is installed by the cell, before it is imported
    assert install < source.index("from seglab.colab import setup_runtime")
    assert tree.body[-1].value.func.id == "setup_runtime"  # the rest of the work is the package's, tested below
    assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines())
    assert len(source.splitlines()) <= 25


@pytest.fixture
def fresh_runtime(on_colab, monkeypatch):
    """A Colab runtime where seglab was just installed: Colab's TensorFlow, no segmentation_models yet, Drive
    mounted by the cell; ``installs`` records what ``setup_runtime`` asks pip for."""
    versions = {"seglab": "0.1.0", "tensorflow": "2.20.0", "tf-keras": None, "segmentation-models": None}
    installs = []

    def pip_install(*requirements):
        installs.append(requirements)
        versions.update({"tf-keras": "2.20.1", "segmentation-models": "1.0.1"})

    monkeypatch.setattr(colab, "installed", versions.get)
    monkeypatch.setattr(colab, "_pip_install", pip_install)
    (on_colab / "drive" / "MyDrive").mkdir(parents=True)
    return versions, installs


def test_on_colab_the_runtime_gets_segmentation_models_and_the_tf_keras_of_its_own_tensorflow(fresh_runtime):
    versions, installs = fresh_runtime
    said = []
    colab.setup_runtime("seglab", log=said.append)
    assert installs == [("tf-keras~=2.20.0", "segmentation-models==1.0.1")]  # Colab's TensorFlow is kept
    assert said[0] == "Installing segmentation-models 1.0.1 and tf-keras 2.20 ..."
    assert said[1].startswith("seglab 0.1.0, TensorFlow 2.20.0, tf-keras 2.20.1, segmentation-models 1.0.1; ")
    assert said[1].endswith(" runtime; runs in MyDrive/seglab/runs.")
    said.clear()
    colab.setup_runtime("seglab", log=said.append)  # run again, or after Restart session
    assert len(installs) == 1 and said[0] == "seglab 0.1.0 is already installed in this runtime."


def test_a_tf_keras_of_another_tensorflow_minor_is_replaced(fresh_runtime):
    versions, installs = fresh_runtime
    versions.update({"tf-keras": "2.19.0", "segmentation-models": "1.0.1"})  # Colab moved on to TensorFlow 2.20
    colab.setup_runtime("seglab", log=lambda line: None)
    assert installs == [("tf-keras~=2.20.0", "segmentation-models==1.0.1")]


def test_a_runtime_without_tensorflow_stops_with_the_runtime_to_choose(fresh_runtime):
    versions, installs = fresh_runtime
    versions["tensorflow"] = None  # Colab's TPU runtimes
    with pytest.raises(RuntimeError, match="choose a GPU \\(T4\\) or CPU runtime"):
        colab.setup_runtime("seglab", log=lambda line: None)
    assert installs == []


def test_a_runtime_where_drive_is_not_mounted_mounts_it(fresh_runtime, on_colab):
    (on_colab / "drive" / "MyDrive").rmdir()
    mounted = []
    sys.modules["google.colab"].drive = types.SimpleNamespace(mount=mounted.append)
    colab.setup_runtime("seglab", log=lambda line: None)
    assert mounted == [str(on_colab / "drive")]
