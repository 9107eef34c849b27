import base64
import io

import nbformat
import nbformat.v4
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output
from PIL import Image

from seglab import colab, render


def _png(width, height):
    out = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _notebook(stdout="done\n"):
    injected = new_code_cell("run_dir = '../runs/x'")
    injected.metadata["tags"] = ["injected-parameters"]
    cell = new_code_cell("train()")
    cell.outputs = [
        new_output("stream", name="stderr", text="I0000 00:00:17.5 port.cc:153] oneDNN custom operations\n"
                                                 "preprocessing: 100%|██████████| 60/60 [00:00<00:00, 437.68it/s]\n"
                                                 "validation: 0it [00:00, ?it/s]\rvalidation: 60it [00:05, 11.20it/s]\n"),
        new_output("stream", name="stdout", text=stdout),
        new_output("display_data", data={"image/png": _png(2000, 500), "text/plain": "<Figure>"}),
    ]
    return new_notebook(cells=[injected, cell])


def test_clean_notebook_drops_noise_and_the_injected_cell_and_downscales():
    nb = render.clean_notebook(_notebook(f"model saved in {render.REPO}/runs/x\n"))
    assert len(nb.cells) == 1
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["stream", "display_data"]
    assert outputs[0].text == "model saved in ./runs/x\n"
    image = Image.open(io.BytesIO(base64.b64decode(outputs[1].data["image/png"])))
    assert image.size == (render.MAX_WIDTH, 225)


def test_clean_notebook_refuses_a_remaining_machine_path():
    with pytest.raises(ValueError, match="machine path"):
        render.clean_notebook(_notebook("cache in /var/cache/thing\n"))


def test_committed_notebooks_are_clean():
    for path in sorted(render.NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        assert nb.metadata.kernelspec.name == "python3"
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
        setup = next(c for c in nb.cells if c.cell_type == "code")
        for cell in nb.cells:
            assert not any(o.output_type == "error" for o in cell.get("outputs", [])), path.name
            assert "injected-parameters" not in cell.metadata.get("tags", [])
            if cell.cell_type == "code" and cell is not setup:
                assert cell.source.count("\n") < 25, f"{path.name}: a long cell; move logic into seglab"


def test_committed_notebooks_share_the_stamped_set_up_cell_parameters_and_badge():
    """Every notebook's first code cell is the one colab.setup_cell() writes, and its badge links to itself."""
    for path in sorted(render.NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code[0].source == colab.setup_cell(), f"{path.name}: run python -m seglab render --cells-only"
        assert code[1].source == colab.PARAMETERS and "parameters" in code[1].metadata.tags
        assert colab.badge(path.name) in nb.cells[0].source.splitlines()[2]
        assert not render.stamp_notebook(nb, path.name)  # stamping again changes nothing
    readme = (render.REPO / "README.md").read_text()
    assert all(colab.badge(p.name) in readme for p in render.series())
    assert render.readme_sections(readme) == readme, "README's generated sections: run python -m seglab render --cells-only"


def test_stamping_replaces_the_shared_cells_keeps_ids_and_clears_only_changed_outputs():
    title = nbformat.v4.new_markdown_cell("# 07 · Title\n\nWhat it does.", id="t")
    doc, setup = nbformat.v4.new_markdown_cell("old note", id="d"), new_code_cell("!git clone x", id="s")
    params = new_code_cell("config_path = 'x'", id="p", metadata={"tags": ["parameters"]})
    work = new_code_cell("train()", id="w")
    setup.outputs = work.outputs = [new_output("stream", name="stdout", text="hi\n")]
    nb = new_notebook(cells=[title, doc, setup, nbformat.v4.new_markdown_cell("p"), params, work])
    assert render.stamp_notebook(nb, "07_x.ipynb")
    assert [c.id for c in nb.cells] == ["t", "d", "s", nb.cells[3].id, "p", "w"]
    assert nb.cells[0].source == f"# 07 · Title\n\n{colab.badge('07_x.ipynb')}\n\nWhat it does."
    assert nb.cells[2].source == colab.setup_cell() and nb.cells[2].outputs == []
    assert nb.cells[4].source == colab.PARAMETERS and nb.cells[5].outputs  # an unchanged cell keeps its output
