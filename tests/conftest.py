import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from seglab.rundir import RunDir
from seglab.config import load_config

REPO = Path(__file__).resolve().parents[1]


def write_folder_dataset(root: Path, n: int = 6, size=(40, 48), classes=("background", "a", "b"), rgb_masks=False,
                         colors=None, seed=0, grey=False, ignore=None, bands=None) -> Path:
    """A small dataset in the folder layout; masks hold each class in a band so counts are known.

    ``size`` is one (height, width) or a list of them cycled over the images (mixed sizes);
    ``grey`` writes single-channel (L) images, ``bands`` 16-bit multi-sample TIFFs of that many channels
    (values in 12 bits, each band with its own offset), ``rgb_masks`` colour masks with ``colors``.
    ``ignore`` marks the column at ``w // 2`` as left out: a value for index masks (declared as
    ``ignore_index``) or, with ``rgb_masks``, an [r, g, b] colour (declared as ``ignore_color``).
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    colors = colors or [[0, 0, 0], [255, 0, 0], [0, 0, 255], [0, 255, 0]][: len(classes)]
    sizes = [size] if isinstance(size[0], int) else list(size)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        image = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
        if bands:
            image = (rng.integers(0, 2048, (h, w, bands)) + 512 * np.arange(bands)).astype(np.uint16)
        mask = np.zeros((h, w), np.uint8)
        mask[:, w // 2:] = 1
        mask[: h // 4, :] = len(classes) - 1
        if ignore is not None:
            mask[:, w // 2] = 255 if rgb_masks else ignore
        if bands:
            tifffile.imwrite(root / "images" / f"img{i}.tif", image, photometric="minisblack", planarconfig="contig")
        else:
            Image.fromarray(image).save(root / "images" / f"img{i}.png")
        if rgb_masks:
            lut = np.zeros((256, 3), np.uint8)
            lut[: len(colors)] = colors
            lut[255] = ignore or 0
            Image.fromarray(lut[mask]).save(root / "masks" / f"img{i}.png")
        else:
            Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    spec = {"classes": list(classes)}
    if rgb_masks:
        spec["colors"] = colors
    if ignore is not None:
        spec["ignore_color" if rgb_masks else "ignore_index"] = ignore
    (root / "classes.json").write_text(json.dumps(spec))
    return root


@pytest.fixture
def folder_dataset(tmp_path):
    return write_folder_dataset(tmp_path / "src")


def tiny_config(tmp_path, *overrides):
    return load_config(REPO / "configs" / "demo.yaml", [f"run_dir={tmp_path / 'run'}",
                                                         f"data.download_dir={tmp_path / 'downloads'}",
                                                         "data.demo.num_images=8", "data.demo.image_size=64",
                                                         "data.image_size=64", "model.architectures=[unet]",
                                                         *overrides])  # pspnet would need a multiple of 48


@pytest.fixture
def make_config(tmp_path):
    return lambda *overrides: tiny_config(tmp_path, *overrides)


@pytest.fixture
def run_for(tmp_path):
    return lambda cfg: RunDir(cfg.run_dir)
