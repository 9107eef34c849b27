"""One typed configuration for the whole series, read from YAML with ``key=value`` overrides.

The same notebooks run the CPU demo and a full Colab run; only the YAML file and the
overrides (command line ``--set`` or a notebook's papermill ``parameters`` cell) differ.
Every setting is declared once below (:func:`seglab.settings.setting`: default, accepted
values, description); :func:`load_config` checks every value before any notebook starts or
any file is written and stops at the first wrong one with a sentence naming the key. The
README's configuration reference is generated from these declarations.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from seglab.geometry import common_multiple, input_multiple
from seglab.settings import (AUTO, FRACTION, OVERLAP, POSITIVE, Auto, Check, ConfigError, at_least, check_leaves,
                             one_of, section, setting)

ARCHITECTURES = ("unet", "fpn", "pspnet", "linknet", "unetplusplus", "deeplabv3plus")
WEIGHT_SCHEMES = ("balanced", "median_frequency", "inverse_sqrt", "none")
BACKBONES = (  # sorted(sm.Backbones.models_names()) of segmentation_models 1.0.1, kept equal by a test
    "densenet121", "densenet169", "densenet201", "efficientnetb0", "efficientnetb1", "efficientnetb2",
    "efficientnetb3", "efficientnetb4", "efficientnetb5", "efficientnetb6", "efficientnetb7", "inceptionresnetv2",
    "inceptionv3", "mobilenet", "mobilenetv2", "resnet101", "resnet152", "resnet18", "resnet34", "resnet50",
    "resnext101", "resnext50", "senet154", "seresnet101", "seresnet152", "seresnet18", "seresnet34", "seresnet50",
    "seresnext101", "seresnext50", "vgg16", "vgg19",
)


def _join(names: list, word: str = "and") -> str:
    return f" {word} ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]


def _close_backbones(value) -> str:
    """The words for a wrong backbone: the close names, or all of them (None: for the reference table)."""
    if value is None:
        return "a segmentation_models backbone: `sm.Backbones.models_names()`"
    close = difflib.get_close_matches(str(value), BACKBONES, n=4, cutoff=0.5)
    return ("a segmentation_models backbone such as " + _join(close, "or") if close
            else "one of the segmentation_models backbones " + ", ".join(BACKBONES))


def _is_group_pattern(value) -> bool:
    try:
        return re.compile(value).groups >= 1
    except re.error:
        return False


_URL = Check(lambda v: urllib.parse.urlsplit(v).scheme in ("http", "https", "ftp", "file"),
             "an address such as https://example.org/pets/, or null for the dataset's own")
_GROUPS = Check(_is_group_pattern, r"a regular expression with a group that names the image's group, such as '^(case\d+)_'")
_ARCHS = Check(lambda v: v and len(set(v)) == len(v) and set(v) <= set(ARCHITECTURES),
               f"a non-empty list of distinct names from {', '.join(ARCHITECTURES)}")


@dataclass
class DemoData:
    num_images: int = setting(60, "images the demo source generates", POSITIVE, preprocessing=True)
    image_size: int = setting(160, "side of each generated demo image, px", POSITIVE, preprocessing=True)


@dataclass
class DataConfig:
    source: str = setting("demo", "where images and masks come from: generated, your folder, or a public dataset",
                          one_of("demo", "folder", "oxford_pets"), preprocessing=True)
    root: Optional[str] = setting(None, "folder source: the folder holding images/, masks/ and classes.json")
    download_dir: str = setting("data/downloads", "where public datasets are downloaded and unpacked, once")
    base_url: Optional[str] = setting(None, "a mirror of the public dataset's files", _URL)
    max_images: Optional[int] = setting(None, "a seeded random N of the source images (a speed knob)",
                                        Check(lambda v: v > 0, "a positive integer, or null for every image"),
                                        preprocessing=True)
    demo: DemoData = section(DemoData)
    image_size: int | Auto = setting(96, "side of the square model input, px; auto: from the images' sizes", POSITIVE,
                                     preprocessing=True)
    mode: str = setting("resize", "resize each image to the input size, or cut it into tiles at its own scale",
                        one_of("resize", "tile", AUTO), preprocessing=True)
    tile_overlap: float = setting(0.25, "tile mode: the overlap between neighbouring tiles", OVERLAP, preprocessing=True)
    train_tiles: str = setting("precomputed", "tile mode: train on 01's tiles, or on random windows of the full images",
                               one_of("precomputed", "random_crops"), preprocessing=True)
    val_fraction: float = setting(0.15, "share of the source images (or groups) for validation", FRACTION,
                                  preprocessing=True)
    test_fraction: float = setting(0.15, "share of the source images (or groups) for the test", FRACTION,
                                   preprocessing=True)
    group_pattern: Optional[str] = setting(None, "regex whose first group names an image's group (patient, scan, "
                                                 "video), kept on one side of the split", _GROUPS, preprocessing=True)
    channels: Optional[int] = setting(None, "channels of the model input; null: the most any image has",
                                      Check(lambda v: v >= 1, "a positive integer, or null for as many as the images "
                                                              "have"), preprocessing=True)
    max_image_megapixels: float = setting(256.0, "an image whose header says it decodes to more megapixels is "
                                                 "refused before it is read (a guard for the memory)",
                                          Check(lambda v: v > 0, "a positive number of megapixels"))
    intensity: str = setting("dataset", "16-bit and float images: normalised by the training split's statistics, or "
                                        "stretched per image to 8 bits", one_of("dataset", "per_image"),
                             preprocessing=True)
    augment: str = setting("flip", "training augmentation: none, a left-right mirror, or all mirrors, quarter turns "
                                   "and intensity jitter", one_of("none", "flip", "strong"))


@dataclass
class ClassWeightConfig:
    scheme: str = setting("balanced", "how rarer classes weigh more in the loss", one_of(*WEIGHT_SCHEMES))
    max_ratio: Optional[float] = setting(10.0, "clip so the largest weight is at most this times the smallest",
                                         at_least(1, "at least 1, or null for no clipping"))


@dataclass
class ModelConfig:
    architectures: list[str] = setting(["unet", "fpn", "pspnet"], "the models notebook 03 trains, in order", _ARCHS)
    backbone: str = setting("resnet18", "the encoder of every architecture", Check(lambda v: v in BACKBONES,
                                                                                   _close_backbones))
    encoder_weights: Optional[str] = setting(None, "imagenet: pretrained encoder (downloaded); null: random init")
    pspnet_downsample_factor: int = setting(8, "PSPNet's encoder stride: 4, 8 or 16", one_of(4, 8, 16))
    fpn_pyramid_filters: int = setting(256, "FPN's pyramid width (segmentation_models' pyramid_block_filters; the "
                                            "head at half the input's side has half as many); 128 trains as fast as "
                                            "U-Net", one_of(64, 128, 256, 512))
    batchnorm_momentum: float = setting(0.9, "how fast batch normalisation's statistics follow the batches (Keras' "
                                             "own 0.99 predicts one class for the first hundred steps)",
                                        Check(lambda v: 0 <= v < 1, "a number in [0, 1), such as 0.9"))


@dataclass
class TrainConfig:
    batch_size: int | Auto = setting(8, "samples per batch on each replica; auto: from the input size and the "
                                        "memory", POSITIVE)
    epochs: int | Auto = setting(10, "passes over the training split; auto: until the time budget runs out", POSITIVE)
    learning_rate: float = setting(1e-3, "Adam's starting rate; a cosine takes it to 0 by the end of training",
                                   Check(lambda v: v > 0, "a positive number such as 0.001"))
    loss: str = setting("dice+focal", "Dice loss alone, or with focal or cross-entropy loss",
                        one_of("dice", "dice+focal", "dice+crossentropy"))
    strategy: str = setting("auto", "tf.distribute strategy: auto, one device, all GPUs (or CPUs), or a cluster "
                                    "named by TF_CONFIG", one_of("auto", "default", "mirrored", "multi_worker"))
    mixed_precision: str = setting("auto", "16-bit compute, float32 weights; auto: float16 on a GPU, bfloat16 on a "
                                           "CPU that computes it natively (AMX or AVX512-BF16), else float32", one_of("auto", "float16", "bfloat16", "float32"))
    steps_per_epoch: Optional[int] = setting(None, "batches per epoch; null: the whole training split",
                                             Check(lambda v: v > 0, "a positive integer, or null for the whole "
                                                                    "training split"))
    backup_minutes: float = setting(2.0, "write the training state for resuming after the first epoch that ends this "
                                         "long after the last write; 0: after every epoch",
                                    Check(lambda v: v >= 0, "a number of minutes, 0 or more"))
    time_budget_minutes: Optional[float] = setting(None, "stop training after this much wall time, per architecture",
                                                   Check(lambda v: v > 0, "a positive number of minutes, or null for "
                                                                          "no limit"))
    sampling: str = setting("rare", "rare: a share of every batch drawn to hold a rare class; none: batches as "
                                    "they come", one_of("none", "rare"))
    rare_share: float = setting(0.33, "sampling: the share of each batch that holds a rare class", FRACTION)
    rare_threshold: float = setting(0.05, "sampling: a class is rare below this share of the training pixels",
                                    FRACTION)


@dataclass
class EvalConfig:
    tta: bool = setting(True, "try test-time flips, kept when they win on validation")
    postprocess: bool = setting(True, "try removing small components and an opening, kept when they win on "
                                      "validation")
    min_component_sizes: list[int] = setting([0, 16, 64], "post-processing: component sizes (px) to try removing",
                                             Check(lambda v: v and min(v) >= 0, "a non-empty list of non-negative "
                                                                                "integers (0: remove nothing)"))
    saved_predictions: int = setting(8, "prediction PNGs per model: the first N test images, plus the best and "
                                        "worst two", at_least(0, "a non-negative integer (0: only the best and "
                                                                 "worst two)"))


@dataclass
class InferenceConfig:
    tile_overlap: float = setting(0.5, "overlap of the sliding windows", OVERLAP)
    batch_size: int = setting(8, "windows per forward pass", POSITIVE)
    input: Optional[str] = setting(None, "an image or a folder of your own images for notebook 06")


@dataclass
class Config:
    name: str = setting("demo", "the config's name; on Colab the run folder is MyDrive/seglab/runs/NAME")
    run_dir: str = setting("runs/default", "the run folder, where every notebook reads and writes")
    seed: int = setting(42, "the seed of the split, the shuffles and the weights' initialisation",
                        Check(lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32 - 1"), preprocessing=True)
    data: DataConfig = section(DataConfig)
    class_weights: ClassWeightConfig = section(ClassWeightConfig)
    model: ModelConfig = section(ModelConfig)
    train: TrainConfig = section(TrainConfig)
    evaluation: EvalConfig = section(EvalConfig)
    inference: InferenceConfig = section(InferenceConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_input_size(architectures: str | list, size: int, downsample_factor: int = 8) -> None:
    """Reject a size that an architecture cannot take, up front, with the nearest sizes that fit them all."""
    archs = [architectures] if isinstance(architectures, str) else list(architectures)
    multiples = {arch: input_multiple(arch, downsample_factor) for arch in archs}
    multiple = common_multiple(archs, downsample_factor)
    if size % multiple == 0:
        return
    at = lambda names: f" at downsample factor {downsample_factor}" if "pspnet" in names else ""
    by_multiple = {m: [a for a in archs if multiples[a] == m] for m in sorted(set(multiples.values()))}
    if len(by_multiple) == 1:
        why = f"{multiple}{at(archs)}"
    else:
        why = f"{multiple} ({', '.join(f'{m} for {_join(names)}{at(names)}' for m, names in by_multiple.items())})"
    lower = size // multiple * multiple
    use = " or ".join(str(s) for s in (lower, lower + multiple) if s)
    raise ConfigError(f"{_join(archs)} need{'s' if len(archs) == 1 else ''} an input size that is a multiple of {why}; "
                      f"data.image_size={size}: use {use}")


def validate(cfg: Config) -> Config:
    """Every value: its declared type and range (:func:`settings.check_leaves`), then how values fit together."""
    if isinstance(cfg.model.architectures, str):
        cfg.model.architectures = [cfg.model.architectures]  # a single name is a list of one
    check_leaves(cfg)
    data, train = cfg.data, cfg.train
    if data.val_fraction + data.test_fraction >= 1:
        raise ConfigError(f"data.val_fraction={data.val_fraction} and data.test_fraction={data.test_fraction} "
                          "leave no images to train on: their sum must be below 1")
    if data.train_tiles == "random_crops" and data.mode != "tile":
        raise ConfigError(f"data.train_tiles=random_crops needs data.mode=tile, not {data.mode}: resized images are "
                          "already the model's input, with nothing to crop")
    if data.image_size != AUTO:  # an auto size is checked when notebook 01 has chosen it
        check_input_size(cfg.model.architectures, data.image_size, cfg.model.pspnet_downsample_factor)
    if train.epochs == AUTO and not train.time_budget_minutes:
        raise ConfigError("train.epochs=auto trains until train.time_budget_minutes runs out, "
                          "so it needs one: set train.time_budget_minutes or a number of epochs")
    if train.time_budget_minutes and train.strategy == "multi_worker":
        raise ConfigError("train.time_budget_minutes cannot end training on a cluster (train.strategy=multi_worker): "
                          "each worker reads its own clock, so they would stop, and decay the learning rate, at "
                          "different steps; set a number of epochs instead")
    if data.source == "folder":
        _check_folder_source(data.root)
    if cfg.inference.input and not Path(cfg.inference.input).exists():
        raise ConfigError(f"inference.input={cfg.inference.input}: no such file or folder; "
                          "it must name an image or a folder of images")
    return cfg


def _check_folder_source(root: Optional[str]) -> None:
    """The folder layout, checked now rather than in notebook 01."""
    expected = "images/, masks/ and classes.json"
    if not root:
        raise ConfigError(f"data.source=folder needs data.root, the folder holding {expected}")
    path = Path(root)
    if not path.is_dir():
        raise ConfigError(f"data.root={root}: {'it is a file' if path.exists() else 'the folder does not exist'}; "
                          f"it must be a folder holding {expected}")
    missing = [f"no {sub} folder" for sub in ("images/", "masks/") if not (path / sub).is_dir()]
    missing += [] if (path / "classes.json").is_file() else ["no classes.json"]
    if missing:
        raise ConfigError(f"data.root={root}: it has {_join(missing)} (expected {expected})")


# --- reading: files, names, overrides ---------------------------------------------------

PATH_KEYS = ("run_dir", "data.root", "data.download_dir", "inference.input")
DEFAULT_PATHS = {"run_dir": "runs/default", "data.download_dir": "data/downloads"}
CHECKOUT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # a source checkout: the files to edit
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"  # an installed wheel: the same files, copied in


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{where}{key}' (known: {', '.join(fields)})")
        if fields[key].metadata.get("section"):
            value = _build(fields[key].default_factory, value, f"{where}{key}.")
        kwargs[key] = value
    return cls(**kwargs)


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"cannot set '{dotted}': '{key}' is not a section")
    tree[keys[-1]] = value


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """``train.epochs=3`` -> ("train.epochs", 3); values are read as YAML scalars or lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' must look like section.key=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def is_path_setting(key: str, value) -> bool:
    """A relative path to resolve; any other value is left for the type check to judge."""
    return key in PATH_KEYS and isinstance(value, str) and bool(value)


def config_names() -> list[str]:
    return sorted({p.stem for folder in (CHECKOUT_CONFIGS, PACKAGED_CONFIGS) for p in folder.glob("*.yaml")})


def find_config(path_or_name: str | Path) -> Path:
    """A config file by path, or by name (``demo``, ``colab_t4``) from any working directory.

    A name is looked up in the checkout's ``configs/``, else in the copy shipped inside the
    installed package (``pip install`` of the project, as on Colab).
    """
    text = str(path_or_name)
    if "/" in text or "\\" in text or text.endswith((".yaml", ".yml")):
        path = Path(path_or_name)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    for folder in (CHECKOUT_CONFIGS, PACKAGED_CONFIGS):
        if (folder / f"{text}.yaml").is_file():
            return folder / f"{text}.yaml"
    raise ConfigError(f"no config named {text!r}; known: {', '.join(config_names())}, or give a path to a YAML file")


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Read ``path`` (a file, or a config name; or the defaults), apply overrides in order, check the result.

    Relative paths written in the file are relative to the file (as in docker-compose), so
    a config works from any working directory; relative paths in overrides are relative
    to the working directory of whoever typed them. A config shipped inside the installed
    package has no project folder around it: it is read as if it lay in ``configs/`` of the
    working directory (``../runs/demo`` is ``./runs/demo``). All paths come out absolute.
    """
    tree: dict = {}
    base = Path.cwd()
    if path is not None:
        path = find_config(path)
        tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        folder = base / "configs" if path.resolve().parent == PACKAGED_CONFIGS else path.parent
        for key in PATH_KEYS:
            if is_path_setting(key, _get(tree, key)):
                _set(tree, key, str((folder / _get(tree, key)).resolve()))
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        _set(tree, key, str((base / value).resolve()) if is_path_setting(key, value) else value)
    for key, default in DEFAULT_PATHS.items():
        if not _get(tree, key):
            _set(tree, key, str((base / default).resolve()))
    return validate(_build(Config, tree, ""))
