import base64
import io

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output
from PIL import Image

from seglab import render


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
                                                 "preprocessing: 100%|██████████| 60/60 [00:00<00:00, 437.68it/s]\n"),
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
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
        for cell in nb.cells:
            assert not any(o.output_type == "error" for o in cell.get("outputs", [])), path.name
            assert "injected-parameters" not in cell.metadata.get("tags", [])
            if cell.cell_type == "code":
                assert cell.source.count("\n") < 25, f"{path.name}: a long cell; move logic into seglab"
