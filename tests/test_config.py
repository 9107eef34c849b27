import re
import subprocess
import sys
from pathlib import Path

import pytest

from seglab import settings
from seglab.config import BACKBONES, Config, ConfigError, load_config, parse_override
from seglab.notebook import open_run
from seglab.runner import run_series

from conftest import REPO, write_folder_dataset

DEMO = REPO / "configs" / "demo.yaml"


def test_demo_and_colab_configs_load_with_typed_sections():
    demo = load_config(REPO / "configs" / "demo.yaml")
    colab = load_config(REPO / "configs" / "colab_t4.yaml")
    assert demo.data.source == "demo" and demo.model.encoder_weights is None
    assert colab.model.encoder_weights == "imagenet" and colab.model.backbone != demo.model.backbone
    assert isinstance(demo.train.epochs, int) and isinstance(demo.train.learning_rate, float)


def test_the_demo_is_the_three_architectures_and_colab_ends_in_a_stated_time():
    demo = load_config(REPO / "configs" / "demo.yaml")
    colab = load_config(REPO / "configs" / "colab_t4.yaml")
    assert demo.model.architectures == ["unet", "fpn", "pspnet"] == colab.model.architectures
    assert colab.train.time_budget_minutes == 15 and colab.train.epochs == 40  # the budget first, the epochs a bound
    assert "time_budget_minutes: 15" in (REPO / "README.md").read_text()


def test_the_defaults_alone_are_a_valid_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config().data.image_size % 96 == 0


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert Path(cfg.run_dir) == REPO / "runs" / "demo"


def test_overrides_are_applied_in_order_with_yaml_types(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_folder_dataset(tmp_path / "mydata")
    cfg = load_config(REPO / "configs" / "demo.yaml", ["train.epochs=3", "data.source=folder", "data.root=mydata",
                                                       "model.architectures=[unet, fpn]", "train.epochs=4"])
    assert cfg.train.epochs == 4
    assert cfg.model.architectures == ["unet", "fpn"]
    assert Path(cfg.data.root) == tmp_path / "mydata"  # relative to where it was typed


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("data.source=s3", "data.source='s3' must be one of demo, folder, oxford_pets"),
    ("model.architectures=[unet, segformer]", "model.architectures"),
    ("data.source=folder", "needs data.root"),
    ("data.tile_overlap=1.5", "data.tile_overlap=1.5 must be a number in [0, 1)"),
    ("inference.tile_overlap=-0.5", "inference.tile_overlap=-0.5 must be a number in [0, 1)"),
    ("train=3", "train must be a mapping"),
    ("nonsense", "must look like section.key=value"),
])
def test_bad_values_are_rejected_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(REPO / "configs" / "demo.yaml", [override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_parse_override_reads_scalars():
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("a.b=true") == ("a.b", True)


# overrides on demo.yaml, and the start of the one sentence expected; {tmp} is the test's folder
WRONG = {
    "epochs not a number": (["train.epochs=abc"], "train.epochs='abc' must be an integer"),
    "negative batch size": (["train.batch_size=-3"], "train.batch_size=-3 must be a positive integer"),
    "unknown backbone": (["model.backbone=resnet999"],
                         "model.backbone='resnet999' must be a segmentation_models backbone such as resnet50, "),
    "size unfit for pspnet": (["data.image_size=100"], "unet, fpn and pspnet need an input size that is a multiple "
                              "of 96 (32 for unet and fpn, 48 for pspnet at downsample factor 8); data.image_size=100: "
                              "use 96 or 192"),
    "size unfit for unetplusplus": (["model.architectures=[unetplusplus, deeplabv3plus]", "data.image_size=80"],
                                    "unetplusplus and deeplabv3plus need an input size that is a multiple of 32 (16 for "
                                    "deeplabv3plus, 32 for unetplusplus); data.image_size=80: use 64 or 96"),
    "no such root": (["data.source=folder", "data.root=/no/such/folder"],
                     "data.root=/no/such/folder: the folder does not exist; it must be a folder holding images/, "
                     "masks/ and classes.json"),
    "root without masks": (["data.source=folder", "data.root={tmp}/data"],
                           "data.root={tmp}/data: it has no masks/ folder (expected images/, masks/ and classes.json)"),
    "root is a file": (["data.source=folder", "data.root={tmp}/data/classes.json"],
                       "data.root={tmp}/data/classes.json: it is a file"),
    "float epochs": (["train.epochs=2.5"], "train.epochs=2.5 must be an integer"),
    "bool for an int": (["train.epochs=true"], "train.epochs=true must be an integer"),
    "int for a bool": (["evaluation.tta=1"], "evaluation.tta=1 must be true or false"),
    "augment as a bool": (["data.augment=true"], "data.augment=true must be one of none, flip, strong"),
    "null for an int": (["data.image_size=null"], "data.image_size=null must be an integer"),
    "text learning rate": (["train.learning_rate=fast"], "train.learning_rate='fast' must be a number"),
    "zero learning rate": (["train.learning_rate=0"], "train.learning_rate=0.0 must be a positive number"),
    "empty architectures": (["model.architectures=[]"], "model.architectures=[] must be a non-empty list"),
    "repeated architecture": (["model.architectures=[unet, unet]"], "model.architectures=['unet', 'unet'] must be"),
    "architecture not a string": (["model.architectures=[unet, 3]"],
                                  "model.architectures=['unet', 3] must be a list of strings"),
    "negative overlap": (["data.tile_overlap=-0.25"], "data.tile_overlap=-0.25 must be a number in [0, 1)"),
    "overlap of 1": (["inference.tile_overlap=1"], "inference.tile_overlap=1.0 must be a number in [0, 1)"),
    "zero max_images": (["data.max_images=0"], "data.max_images=0 must be a positive integer, or null"),
    "demo size not a number": (["data.demo.image_size=big"], "data.demo.image_size='big' must be an integer"),
    "zero demo images": (["data.demo.num_images=0"], "data.demo.num_images=0 must be a positive integer"),
    "fractions leave nothing": (["data.val_fraction=0.5", "data.test_fraction=0.5"],
                                "data.val_fraction=0.5 and data.test_fraction=0.5 leave no images to train on"),
    "fraction of 0": (["data.test_fraction=0"], "data.test_fraction=0.0 must be a fraction in (0, 1)"),
    "base_url without scheme": (["data.base_url=mirror.example.org"], "data.base_url='mirror.example.org' must be"),
    "scheme not a string": (["class_weights.scheme=[balanced]"], "class_weights.scheme=['balanced'] must be one of balanced, median_frequency"),
    "max_ratio below 1": (["class_weights.max_ratio=0.5"], "class_weights.max_ratio=0.5 must be at least 1"),
    "downsample factor": (["model.pspnet_downsample_factor=3"], "model.pspnet_downsample_factor=3 must be one of 4"),
    "encoder weights not a string": (["model.encoder_weights=1"], "model.encoder_weights=1 must be a string or null"),
    "zero steps": (["train.steps_per_epoch=0"], "train.steps_per_epoch=0 must be a positive integer, or null"),
    "tta not a bool": (["evaluation.tta=maybe"], "evaluation.tta='maybe' must be true or false"),
    "negative component size": (["evaluation.min_component_sizes=[0, -16]"],
                                "evaluation.min_component_sizes=[0, -16] must be a non-empty list of non-negative"),
    "zero inference batch": (["inference.batch_size=0"], "inference.batch_size=0 must be a positive integer"),
    "no such inference input": (["inference.input=/no/such/photo.png"], "inference.input=/no/such/photo.png: no such"),
    "negative seed": (["seed=-1"], "seed=-1 must be an integer from 0"),
    "random crops of resized images": (["data.train_tiles=random_crops", "data.mode=resize"],
                                       "data.train_tiles=random_crops needs data.mode=tile, not resize"),
    "unknown sampling": (["train.sampling=oversample"], "train.sampling='oversample' must be one of none, rare"),
    "rare share of 1": (["train.rare_share=1"], "train.rare_share=1.0 must be a fraction in (0, 1)"),
    "size neither a number nor auto": (["data.image_size=big"], "data.image_size='big' must be an integer or auto"),
    "auto misspelt": (["train.batch_size=Auto"], "train.batch_size='Auto' must be an integer or auto"),
    "unknown mode": (["data.mode=crop"], "data.mode='crop' must be one of resize, tile, auto"),
    "auto epochs without a budget": (["train.epochs=auto"], "train.epochs=auto trains until "
                                     "train.time_budget_minutes runs out, so it needs one"),
    "time budget on a cluster": (["train.time_budget_minutes=5", "train.strategy=multi_worker"],
                                 "train.time_budget_minutes cannot end training on a cluster"),
    "auto where no rule decides": (["data.source=auto"], "data.source='auto' must be one of demo, folder, oxford_pets"),
    "auto for a number": (["train.learning_rate=auto"], "train.learning_rate='auto' must be a number"),
    "name not a string": (["name=[a]"], "name=['a'] must be a string"),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_a_wrong_setting_stops_before_anything_is_written(case, tmp_path):
    """One sentence naming the key, raised by load_config, by the runner and by a notebook's open_run."""
    write_folder_dataset(tmp_path / "data")
    (tmp_path / "data" / "masks").rename(tmp_path / "data" / "labels")
    overrides, expected = WRONG[case]
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    expected = expected.format(tmp=tmp_path)
    with pytest.raises(ConfigError) as raised:
        load_config(DEMO, overrides)
    message = str(raised.value)
    assert message.startswith(expected)
    assert "\n" not in message and not re.search(r"\.\s", message), "one sentence"
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_series(str(DEMO), overrides, run_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=re.escape(message)):
        open_run(DEMO, overrides, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, attribute, value", [
    ("train.learning_rate=1", "train.learning_rate", 1.0),  # an int where a float is declared
    ("train.learning_rate=3e-4", "train.learning_rate", 3e-4),  # PyYAML reads 3e-4 as text
    ("model.architectures=unet", "model.architectures", ["unet"]),
    ("model.architectures=[unet, fpn, pspnet, linknet]", "model.architectures", ["unet", "fpn", "pspnet", "linknet"]),
    ("data.image_size=192", "data.image_size", 192),
    ("data.max_images=null", "data.max_images", None),
    ("class_weights.max_ratio=null", "class_weights.max_ratio", None),
    ("class_weights.max_ratio=1", "class_weights.max_ratio", 1.0),
    ("model.backbone=efficientnetb0", "model.backbone", "efficientnetb0"),
    ("data.tile_overlap=0", "data.tile_overlap", 0.0),
    ("data.image_size=auto", "data.image_size", "auto"),
    ("data.mode=auto", "data.mode", "auto"),
    ("train.batch_size=auto", "train.batch_size", "auto"),
    ("train.batch_size=3", "train.batch_size", 3),
])
def test_good_settings_load_in_their_declared_types(override, attribute, value):
    section, name = attribute.split(".")
    loaded = getattr(getattr(load_config(DEMO, [override]), section), name)
    assert loaded == value and type(loaded) is type(value)


def test_auto_epochs_load_with_a_time_budget():
    cfg = load_config(DEMO, ["train.epochs=auto", "train.time_budget_minutes=30"])
    assert cfg.train.epochs == "auto" and cfg.train.time_budget_minutes == 30.0


def test_deeplab_alone_takes_a_multiple_of_16():
    """Its encoder stops at stride 16; a size the others reject (80) loads for it alone."""
    assert load_config(DEMO, ["model.architectures=[deeplabv3plus]", "data.image_size=80"]).data.image_size == 80


def test_a_good_folder_root_and_inference_input_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_folder_dataset(tmp_path / "mine")
    cfg = load_config(DEMO, ["data.source=folder", "data.root=mine", "inference.input=mine/images"])
    assert Path(cfg.inference.input) == tmp_path / "mine" / "images"  # resolved like the other paths


def test_every_setting_is_declared_with_a_description():
    def keys(tree, where=""):
        for key, value in tree.items():
            yield from keys(value, f"{where}{key}.") if isinstance(value, dict) else [f"{where}{key}"]

    leaves = list(settings.leaves(Config()))
    assert [leaf.key for leaf in leaves] == list(keys(Config().to_dict()))  # every field of the config, once
    undocumented = [leaf.key for leaf in leaves if not (isinstance(leaf.meta.get("doc"), str) and leaf.meta["doc"].strip())]
    assert not undocumented, f"settings without a description: {undocumented}"


def test_the_backbone_list_is_the_one_segmentation_models_knows():
    from seglab.backend import sm

    assert list(BACKBONES) == sorted(sm.Backbones.models_names())


def test_the_config_loads_without_tensorflow():
    """The command line checks a config before any kernel starts; importing TensorFlow would take seconds."""
    code = "import sys, seglab.config, seglab.runner; print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
