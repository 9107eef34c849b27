"""`make lab` / `make kernel`: the venv registered as the Jupyter kernel "seglab", and a notebook runs on it."""
import subprocess
import sys

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

from conftest import REPO


def test_make_kernel_registers_the_venv_as_the_seglab_kernel_and_a_notebook_runs_on_it(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))  # ipykernel install --user writes here
    result = subprocess.run(["make", "-s", "kernel", f"PY={sys.executable}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    spec = KernelSpecManager().get_kernel_spec("seglab")
    assert spec.argv[0] == sys.executable and spec.display_name == "Python (seglab)"
    assert spec.resource_dir.startswith(str(tmp_path / "jupyter"))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys\nfrom seglab.config import load_config\nprint(sys.executable, load_config('demo').name)")])
    NotebookClient(nb, kernel_name="seglab", timeout=120).execute()
    assert nb.cells[0].outputs[0].text.split() == [sys.executable, "demo"]


def test_make_lab_opens_the_notebooks_with_the_venv_python_as_their_python3_kernel():
    plan = subprocess.run(["make", "-n", "lab"], cwd=REPO, capture_output=True, text=True).stdout
    assert ".venv/bin/python -m ipykernel install --sys-prefix" in plan  # python3 = the venv, inside it
    assert "--name seglab" in plan  # and the named kernel for a system-wide Jupyter
    assert "JUPYTER_PREFER_ENV_PATH=1 .venv/bin/jupyter lab notebooks/" in plan  # the venv's kernels first
