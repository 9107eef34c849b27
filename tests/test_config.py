from pathlib import Path

import pytest

from seglab.config import ConfigError, load_config, parse_override

from conftest import REPO


def test_demo_and_colab_configs_load_with_typed_sections():
    demo = load_config(REPO / "configs" / "demo.yaml")
    colab = load_config(REPO / "configs" / "colab_t4.yaml")
    assert demo.data.source == "demo" and demo.model.encoder_weights is None
    assert colab.model.encoder_weights == "imagenet" and colab.data.image_size > demo.data.image_size
    assert isinstance(demo.train.epochs, int) and isinstance(demo.train.learning_rate, float)


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert Path(cfg.run_dir) == REPO / "runs" / "demo"


def test_overrides_are_applied_in_order_with_yaml_types(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "demo.yaml", ["train.epochs=3", "data.source=folder", "data.root=mydata",
                                                       "model.architectures=[unet, fpn]", "train.epochs=4"])
    assert cfg.train.epochs == 4
    assert cfg.model.architectures == ["unet", "fpn"]
    assert Path(cfg.data.root) == tmp_path / "mydata"  # relative to where it was typed


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("data.source=s3", "data.source='s3' is not one of"),
    ("model.architectures=[unet, segformer]", "model.architectures"),
    ("data.source=folder", "needs data.root"),
    ("data.tile_overlap=1.5", "data.tile_overlap=1.5 must be in"),
    ("inference.tile_overlap=-0.5", "inference.tile_overlap=-0.5 must be in"),
    ("train=3", "train must be a mapping"),
    ("nonsense", "must look like section.key=value"),
])
def test_bad_values_are_rejected_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(REPO / "configs" / "demo.yaml", [override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_parse_override_reads_scalars():
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("a.b=true") == ("a.b", True)
