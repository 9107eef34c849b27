"""``make render``: run the series on the demo config and commit-ready copies of the notebooks.

People read the series on GitHub, so ``notebooks/`` holds the outputs of a real demo run:
figures downscaled, TensorFlow's start-up log lines and progress bars dropped, no machine
paths. The README's results section and figures come from the same run.

What every notebook shares is written from one source, :mod:`seglab.colab`, by
:func:`stamp_notebooks` (``python -m seglab render --cells-only``, no run): the set-up cell
and its note, the parameters cell and its note, and the "Open in Colab" badges in each
notebook's title cell and the README.
"""
from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import nbformat
from PIL import Image

from seglab import colab
from seglab.atomic import atomic_file, remove_own_dir, write_text
from seglab.config import Config
from seglab.records import Metrics
from seglab.rundir import RunDir
from seglab.runner import NOTEBOOK_DIR, run_series, series
from seglab.settings import reference_markdown

REPO = NOTEBOOK_DIR.parent
NOISE = re.compile(r"^(WARNING: All log messages before absl|INFO: Created TensorFlow Lite XNNPACK delegate|[IWE]\d{4} \d\d:\d\d:\d\d|.*(\d+|\?)(it/s|s/it)\]|.*\|[█▏▎▍▌▋▊▉ ]*\| )")
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~])/(?!content/)[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
README_FIGURES = ("05_predictions_unet", "05_per_class_iou", "05_confusion_matrices", "03_training_curves",
                  "03_learning_rate", "03_epoch_by_epoch", "03_class_iou", "01_augmentation", "06_sliding_windows", "06_zoomed")
MAX_WIDTH = 900


def downscale_png(data: bytes, max_width: int = MAX_WIDTH) -> bytes:
    image = Image.open(io.BytesIO(data))
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    out = io.BytesIO()
    image.convert("RGB").quantize(256).save(out, format="PNG", optimize=True)  # plots need few colours
    return out.getvalue()


def _strip_paths(text: str) -> str:
    for path, short in ((str(REPO), "."), (sys.prefix, "<venv>"), (str(Path.home()), "~")):
        text = text.replace(path, short)
    return text


def clean_notebook(nb):
    """Drop the injected-parameters cell, log noise and machine paths, and the set-up cell's output (what it prints
    on Colab is in the note above it; here it printed that it had nothing to do); downscale images."""
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source == colab.setup_cell():
            cell.outputs = []
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        outputs = []
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                kept = [line for line in out.text.replace("\r", "\n").splitlines(keepends=True) if not NOISE.match(line)]
                out.text = _strip_paths("".join(kept))
                if not out.text.strip():
                    continue
            if "data" in out:
                if "image/png" in out.data:
                    out.data["image/png"] = base64.b64encode(downscale_png(base64.b64decode(out.data["image/png"]))).decode()
                for key in ("text/plain", "text/markdown"):
                    if key in out.data:
                        out.data[key] = _strip_paths(out.data[key])
            outputs.append(out)
        if cell.cell_type == "code":
            cell.outputs = outputs
            for out in outputs:
                text = out.get("text", "") + "".join(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
                if out.output_type == "error" or ABSOLUTE_PATH.search(text):
                    raise ValueError(f"an output still holds an error or a machine path: {text[:200]!r}")
    return nb


def update_readme(run: RunDir, readme: Path = REPO / "README.md", figure_dir: Path = NOTEBOOK_DIR / "figures") -> None:
    """Replace the README's demo-results section with this run's table and figures."""
    from seglab import evaluation

    report = run.read(Metrics)
    figure_dir.mkdir(exist_ok=True)
    for name in README_FIGURES:
        data = downscale_png(run.path("figures", f"{name}.png").read_bytes(), 800)
        atomic_file(figure_dir / f"{name}.png", lambda tmp: tmp.write_bytes(data))
    timings = run.path("timings.txt").read_text().strip() if run.path("timings.txt").exists() else ""
    images = "\n".join(f"![{n}](notebooks/figures/{n}.png)" for n in README_FIGURES)
    body = f"{evaluation.comparison_markdown(report)}\n\n{timings}\n\n{images}"
    write_text(readme, _replace_section(readme.read_text(), "demo-results", body))


BADGE = re.compile(r"^\[!\[Open In Colab\]\(.*$", re.M)


def _set_source(cell, source: str) -> bool:
    """Replace a cell's source; a changed code cell loses its outputs (they came from the old code)."""
    if cell.source == source:
        return False
    cell.source = source
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    return True


def stamp_notebook(nb, name: str) -> bool:
    """Write the shared cells and the badge into one notebook; True when something changed.

    The set-up cell is the first code cell, its note the cell before; the parameters cell is
    the one tagged ``parameters``, its note the cell before. Cell ids stay as they are.
    """
    title = nb.cells[0]
    heading, _, rest = title.source.partition("\n")
    rest = BADGE.sub("", rest.lstrip("\n"), count=1).lstrip("\n")
    changed = _set_source(title, f"{heading}\n\n{colab.badge(name)}\n\n{rest}")
    setup = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    parameters = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    if nb.cells[setup].metadata.get("cellView") != "form":  # Colab folds the code away, showing the title
        nb.cells[setup].metadata["cellView"] = "form"
        changed = True
    for index, code, doc in ((setup, colab.setup_cell(), colab.SETUP_DOC),
                             (parameters, colab.PARAMETERS, colab.PARAMETERS_DOC)):
        changed |= _set_source(nb.cells[index], code)
        if nb.cells[index - 1].cell_type == "markdown":
            changed |= _set_source(nb.cells[index - 1], doc)
    return changed


def badge_table() -> str:
    rows = [f"| `{p.stem}` | {colab.badge(p.name)} |" for p in series()]
    return "\n".join(["| notebook | |", "|---|---|", *rows])


def _replace_section(text: str, marker: str, body: str) -> str:
    """``text`` with what lies between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` replaced by ``body``."""
    section = f"<!-- {marker}:start -->\n{body}\n<!-- {marker}:end -->"
    return re.sub(f"<!-- {marker}:start -->.*<!-- {marker}:end -->", lambda _: section, text, flags=re.S)


def readme_sections(text: str) -> str:
    """The README with its generated sections: the Colab badges and the configuration reference."""
    text = _replace_section(text, "colab-badges", badge_table())
    return _replace_section(text, "config-reference", reference_markdown(Config()))


def stamp_notebooks(notebook_dir: Path = NOTEBOOK_DIR, readme: Path = REPO / "README.md") -> list[str]:
    """Stamp every notebook of the series and the README's generated sections, without running anything."""
    changed = []
    for path in series(notebook_dir):
        nb = nbformat.read(path, as_version=4)
        if stamp_notebook(nb, path.name):
            atomic_file(path, lambda tmp: nbformat.write(nb, str(tmp)))
            changed.append(path.name)
    text = readme.read_text()
    if readme_sections(text) != text:
        write_text(readme, readme_sections(text))
        changed.append(readme.name)
    return changed


def render(config: str = "demo", run_dir: Path = REPO / "runs" / "render") -> None:
    stamp_notebooks()
    remove_own_dir(run_dir)  # a folder of the user's of that name stops the render instead
    timings = run_series(config, run_dir=run_dir)
    run = RunDir(Path(run_dir).resolve())
    write_text(run.path("timings.txt"), f"Whole series on the demo config: {timings.series / 60:.1f} min on a 2-core "
               f"CPU, two notebooks at a time where neither reads the other's outputs "
               f"({', '.join(f'{k[:2]}: {v:.0f} s' for k, v in timings.notebooks.items())}).")
    publish(run)


def publish(run: RunDir) -> None:
    """Clean copies of the run's executed notebooks into notebooks/, and its results into the README."""
    for executed in sorted(run.path("notebooks").glob("*.ipynb")):
        nb = clean_notebook(nbformat.read(executed, as_version=4))
        atomic_file(NOTEBOOK_DIR / executed.name, lambda tmp: nbformat.write(nb, str(tmp)))
    update_readme(run)
