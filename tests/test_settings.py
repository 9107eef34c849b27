"""Each setting is declared once; the README's reference and notebook 01's cache key are made from the declarations."""
import re

import pytest

from seglab import data_loading, settings
from seglab.config import Config, load_config

from conftest import REPO, write_folder_dataset

DEMO = REPO / "configs" / "demo.yaml"
# data settings that do not change what notebook 01 writes: where files are, augmentation, the size guard
NOT_PREPROCESSING = {"data.root", "data.download_dir", "data.base_url", "data.augment", "data.max_image_megapixels"}


def test_every_setting_has_a_description():
    for leaf in settings.leaves(Config()):
        assert len(leaf.meta.get("doc", "")) > 10, leaf.key


def test_the_readme_reference_is_the_one_the_declarations_give():
    readme = (REPO / "README.md").read_text()
    section = re.search(r"<!-- config-reference:start -->\n(.*)\n<!-- config-reference:end -->", readme, re.S)
    assert section and section.group(1) == settings.reference_markdown(Config()), \
        "run python -m seglab render --cells-only"
    for leaf in settings.leaves(Config()):
        assert f"| `{leaf.key}` |" in section.group(1)


def test_every_data_setting_that_shapes_the_dataset_marks_itself():
    """A data.* setting added without the mark would let 01 reuse a stale dataset; this names it."""
    for leaf in settings.leaves(Config()):
        if leaf.key.startswith("data.") and leaf.key not in NOT_PREPROCESSING:
            assert leaf.meta["preprocessing"], f"{leaf.key} changes dataset/ but is not marked preprocessing"
    assert not set(settings.preprocessing_settings(Config())) & NOT_PREPROCESSING


@pytest.fixture
def source_of(tmp_path):
    root = write_folder_dataset(tmp_path / "d", n=4, size=(40, 48))
    base = [f"run_dir={tmp_path / 'run'}", "data.source=folder", f"data.root={root}", "data.image_size=32",
            "model.architectures=[unet]"]

    def read(*overrides):
        source, cfg = data_loading.read_source(load_config(DEMO, base + list(overrides)))
        return data_loading.cache_key(cfg, source)
    return read


@pytest.mark.parametrize("override, changes", [
    ("data.tile_overlap=0.5", True), ("data.val_fraction=0.3", True), ("seed=7", True), ("data.mode=tile", True),
    ("data.augment=strong", False), ("train.epochs=3", False), ("class_weights.scheme=none", False),
])
def test_the_cache_key_follows_exactly_the_marked_settings(source_of, override, changes):
    assert (source_of(override) != source_of()) is changes
