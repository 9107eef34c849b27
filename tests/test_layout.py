"""The package's layout, as its README and docstrings describe it: layers that import only downward,
steps that never import one another, a serving path without the training stack, small functions."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "seglab"
# Lowest first: a module may import its own layer and the ones below, never one above.
LAYERS = {
    "foundation (no TensorFlow)": {"atomic", "jsonrecord", "locks", "settings", "geometry", "machine", "colab", "config", "records", "rundir",
                                   "readers", "splits", "stats", "planning", "demo_data", "downloads", "notebook"},
    "TensorFlow building blocks": {"backend", "architectures", "shards", "normalization", "pipeline", "models",
                                   "losses", "metrics", "callbacks", "devices", "predictor", "plots"},
    "steps, one per notebook": {"gpu_check", "data_loading", "class_weights", "training", "evaluation",
                                "visualization", "inference", "export"},
    "drivers": {"runner", "render", "__main__"},
}
STEPS = LAYERS["steps, one per notebook"]


def _imports(path: Path) -> set[str]:
    """The seglab modules a file imports, at its top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seglab"):
            found |= {node.module.split(".")[1]} if node.module != "seglab" else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("seglab.")}
    return found


def _layer(module: str) -> int:
    return next(i for i, modules in enumerate(LAYERS.values()) if module in modules)


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set().union(*LAYERS.values())


@pytest.mark.parametrize("module", sorted(set().union(*LAYERS.values())))
def test_modules_import_only_their_own_layer_and_below(module):
    imported = _imports(PACKAGE / f"{module}.py") - {module}
    above = sorted(m for m in imported if _layer(m) > _layer(module))
    assert not above, f"{module} ({list(LAYERS)[_layer(module)]}) imports {above} from a higher layer"
    if module in STEPS:
        assert not imported & STEPS, f"step {module} imports another step: {sorted(imported & STEPS)}"


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m for m in sys.modules if m.startswith('seglab.'))))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return {name.removeprefix("seglab.") for name in out.stdout.split()}


TRAINING_STACK = {"training", "data_loading", "demo_data", "pipeline", "losses", "callbacks", "class_weights",
                  "downloads", "planning"}


@pytest.mark.parametrize("statement", ["import seglab.inference", "import seglab.export",
                                       "from seglab.__main__ import main"])
def test_the_serving_path_stands_alone(statement):
    """``seglab predict`` and ``seglab export``, and notebooks 06 and 07, load no training or preprocessing code."""
    loaded = _loaded_after(statement)
    assert not loaded & TRAINING_STACK, sorted(loaded & TRAINING_STACK)
    if "inference" in statement:
        assert {"predictor", "models", "readers", "geometry"} <= loaded


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = [a for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs if a.arg != "self"]
            yield node.name, node.end_lineno - node.lineno + 1, len(params)


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_modules_and_functions_stay_small(path):
    assert len(path.read_text().splitlines()) <= 400, f"{path.name}: over 400 lines"
    for name, lines, params in _functions(path):
        assert lines <= 60, f"{path.name}: {name} has {lines} lines"
        assert params <= 8, f"{path.name}: {name} takes {params} parameters"


def test_no_run_folder_file_is_read_as_raw_json_outside_the_records_module():
    """Run-folder files are read through their typed records; json.load(s) only for the user's own files."""
    import nbformat

    # records; classes.json, splits.json; TF_CONFIG; locks; the config.json inside a .keras file, Keras' own
    allowed = {"jsonrecord.py", "readers.py", "machine.py", "locks.py", "models.py"}
    sources = {path.relative_to(REPO): path.read_text() for path in [*PACKAGE.glob("*.py"), *(REPO / "bench").glob("*.py")]
               if path.name not in allowed}
    for path in (REPO / "notebooks").glob("*.ipynb"):
        sources[path.relative_to(REPO)] = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                                                    if c.cell_type == "code")
    for where, text in sources.items():
        assert "json.load" not in text and "read_json" not in text, f"{where} reads JSON itself"
