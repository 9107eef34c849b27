"""The committed notebooks read as lessons: short cells, the library calls visible, quiet outputs, exercises at the end."""
import re

import nbformat
import pytest

from seglab import colab
from seglab.runner import series

NOTEBOOKS = series()
NOISE = re.compile(r"WARNING|W0000|retracing|0x[0-9a-f]{6,}|\d+(it/s|s/it)\]|██")


def _cells(path, kind):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == kind]


def prose_problems(nb) -> list[str]:
    """Markdown cells over 200 words (the aim is 150), and a last section that is not "Try this"."""
    problems = [f"cell {i}: {len(c.source.split())} words" for i, c in enumerate(nb.cells)
                if c.cell_type == "markdown" and not c.source.startswith("# ") and len(c.source.split()) > 200]
    last = [c for c in nb.cells if c.cell_type == "markdown"][-1]
    if not last.source.startswith("## Try this"):
        problems.append("the last section is not '## Try this'")
    elif len(re.findall(r"^\d+\. \*\*", last.source, re.M)) < 2:
        problems.append("'Try this' has fewer than two numbered exercises")
    return problems


def output_problems(nb) -> list[str]:
    """TensorFlow warnings, retracing messages, memory addresses or progress-bar fragments in outputs."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "") + "".join(v for k, v in out.get("data", {}).items() if k.startswith("text/"))
            if out.get("name") == "stderr" or NOISE.search(text):
                found.append(f"cell {i}: {text.strip()[:80]!r}")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_teaches_in_short_cells_and_ends_with_exercises(path):
    assert not prose_problems(nbformat.read(path, as_version=4)), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_quiet(path):
    assert not output_problems(nbformat.read(path, as_version=4)), path.name


def test_the_checks_see_what_they_look_for():
    """Each check fails on the defect it guards against (the notebooks above pass them)."""
    long = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("word " * 201),
                                           nbformat.v4.new_markdown_cell("## Try this\n\n1. **One.** x")])
    assert prose_problems(long) == ["cell 0: 201 words", "'Try this' has fewer than two numbered exercises"]
    noisy = nbformat.v4.new_code_cell("fit()")
    noisy.outputs = [nbformat.v4.new_output("stream", name="stdout", text="<Model at 0x7f3a2b1c9d40>\n"),
                     nbformat.v4.new_output("stream", name="stderr", text="a note\n")]
    assert len(output_problems(nbformat.v4.new_notebook(cells=[noisy]))) == 2


def test_the_lessons_show_segmentation_models_and_keras_calls():
    code = {p.name[:2]: "\n".join(c.source for c in _cells(p, "code")) for p in NOTEBOOKS}
    for call in ("sm.Unet(", "sm.FPN(", "sm.PSPNet(", "sm.losses.DiceLoss(class_weights=", "sm.losses.CategoricalFocalLoss()",
                 ".compile(optimizer=keras.optimizers.legacy.Adam("):
        assert call in code["03"], call
    assert "tf.data.TFRecordDataset(" in code["01"] and ".prefetch(tf.data.AUTOTUNE)" in code["01"]
    assert "sm.get_preprocessing(" in code["01"] and "tf.config.list_physical_devices()" in code["00"]


def test_the_set_up_cell_is_a_folded_form_and_shows_what_colab_prints():
    for path in NOTEBOOKS:
        setup = _cells(path, "code")[0]
        assert setup.source == colab.setup_cell() and setup.source.startswith("#@title ")
        assert setup.metadata.get("cellView") == "form" and not setup.outputs, path.name
    assert "Mounted at /content/drive" in colab.SETUP_DOC and len(colab.SETUP_DOC.split()) <= 150


def test_the_readme_shows_the_figures_a_learner_looks_for():
    from seglab import render

    readme = (render.REPO / "README.md").read_text()
    for name in ("01_augmentation", "03_learning_rate", "03_epoch_by_epoch", "06_sliding_windows", "06_zoomed",
                 "05_confusion_matrices", "03_training_curves", "03_class_iou"):
        assert name in render.README_FIGURES
    for name in render.README_FIGURES:
        assert (render.NOTEBOOK_DIR / "figures" / f"{name}.png").stat().st_size > 1000, name
        assert f"(notebooks/figures/{name}.png)" in readme, name
