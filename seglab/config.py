"""One typed configuration for the whole series, read from YAML with ``key=value`` overrides.

The same notebooks run the CPU demo and a full Colab run; only the YAML file and the
overrides (command line ``--set`` or a notebook's papermill ``parameters`` cell) differ.
:func:`load_config` checks every value before any notebook starts or any file is written,
and stops at the first wrong one with a sentence naming the key. No TensorFlow here: the
command line loads this module before any kernel starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

ARCHITECTURES = ("unet", "fpn", "pspnet", "linknet", "unetplusplus", "deeplabv3plus")
WEIGHT_SCHEMES = ("balanced", "median_frequency", "inverse_sqrt", "none")
BACKBONES = (  # sorted(sm.Backbones.models_names()) of segmentation_models 1.0.1, kept equal by a test
    "densenet121", "densenet169", "densenet201", "efficientnetb0", "efficientnetb1", "efficientnetb2",
    "efficientnetb3", "efficientnetb4", "efficientnetb5", "efficientnetb6", "efficientnetb7", "inceptionresnetv2",
    "inceptionv3", "mobilenet", "mobilenetv2", "resnet101", "resnet152", "resnet18", "resnet34", "resnet50",
    "resnext101", "resnext50", "senet154", "seresnet101", "seresnet152", "seresnet18", "seresnet34", "seresnet50",
    "seresnext101", "seresnext50", "vgg16", "vgg19",
)


class ConfigError(ValueError):
    pass


AUTO = "auto"
Auto = Literal["auto"]  # a setting that notebook 01 derives from the dataset by written rules (seglab.planning)


# --- input sizes: pure arithmetic, so the config can be checked before TensorFlow loads ---

PSPNET_MULTIPLE = {4: 24, 8: 48, 16: 96}  # the pyramid pools need these divisors at each downsample factor


def input_multiple(arch: str, downsample_factor: int = 8) -> int:
    if arch == "pspnet":
        if downsample_factor not in PSPNET_MULTIPLE:
            raise ConfigError(f"model.pspnet_downsample_factor={downsample_factor} must be 4, 8 or 16")
        return PSPNET_MULTIPLE[downsample_factor]
    if arch == "deeplabv3plus":
        return 16  # the encoder is cut at stride 16 (seglab.architectures)
    return 32  # five stride-2 stages in every encoder


def common_multiple(architectures: list, downsample_factor: int = 8) -> int:
    """The step of the input sizes that every one of ``architectures`` takes: the lcm of their multiples."""
    return math.lcm(*(input_multiple(arch, downsample_factor) for arch in architectures))


def check_input_size(architectures: str | list, size: int, downsample_factor: int = 8) -> None:
    """Reject a size that an architecture cannot take, up front, with the nearest sizes that fit them all."""
    archs = [architectures] if isinstance(architectures, str) else list(architectures)
    multiples = {arch: input_multiple(arch, downsample_factor) for arch in archs}
    multiple = common_multiple(archs, downsample_factor)
    if size % multiple == 0:
        return

    def at(names: list) -> str:
        return f" at downsample factor {downsample_factor}" if "pspnet" in names else ""

    by_multiple = {m: [a for a in archs if multiples[a] == m] for m in sorted(set(multiples.values()))}
    if len(by_multiple) == 1:
        why = f"{multiple}{at(archs)}"
    else:
        why = f"{multiple} ({', '.join(f'{m} for {_join(names)}{at(names)}' for m, names in by_multiple.items())})"
    lower = size // multiple * multiple
    use = " or ".join(str(s) for s in (lower, lower + multiple) if s)
    raise ConfigError(f"{_join(archs)} need{'s' if len(archs) == 1 else ''} an input size that is a multiple of {why}; "
                      f"data.image_size={size}: use {use}")


def _join(names: list, word: str = "and") -> str:
    return f" {word} ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]


@dataclass
class DemoData:
    num_images: int = 60
    image_size: int = 160


@dataclass
class DataConfig:
    source: str = "demo"  # demo | folder | oxford_pets
    root: Optional[str] = None  # folder source: ROOT/images, ROOT/masks, ROOT/classes.json
    download_dir: str = "data/downloads"  # where public datasets are cached
    base_url: Optional[str] = None  # mirror for a public dataset (tests serve one on 127.0.0.1)
    max_images: Optional[int] = None  # speed knob: a seeded random N of the source images
    demo: DemoData = field(default_factory=DemoData)
    image_size: int | Auto = 96  # side of the square model input; a multiple of 32 (unet, fpn) and 48 (pspnet)
    mode: str = "resize"  # resize | tile | auto
    tile_overlap: float = 0.25
    train_tiles: str = "precomputed"  # tile mode: precomputed | random_crops (of the full-size training images)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    group_pattern: Optional[str] = None  # regex whose first group names an image's group (patient, scan, video)
    channels: Optional[int] = None  # null: the most any image has (grey 1, RGB 3, a TIFF's pages x samples, .npy)
    intensity: str = "dataset"  # 16-bit and float images: dataset (train-split statistics) | per_image (stretch)
    augment: str = "flip"  # none | flip (left-right mirror) | strong (all mirrors, quarter turns, intensity jitter)


@dataclass
class ClassWeightConfig:
    scheme: str = "balanced"  # balanced | median_frequency | inverse_sqrt | none
    max_ratio: Optional[float] = 10.0  # clip so the largest weight is at most this times the smallest


@dataclass
class ModelConfig:
    architectures: list[str] = field(default_factory=lambda: ["unet", "fpn", "pspnet"])
    backbone: str = "resnet18"
    encoder_weights: Optional[str] = None  # imagenet | null
    pspnet_downsample_factor: int = 8
    batchnorm_momentum: float = 0.9  # Keras' own 0.99 predicts one class for the first few hundred steps


@dataclass
class TrainConfig:
    batch_size: int | Auto = 8  # per replica
    epochs: int | Auto = 10  # auto: until time_budget_minutes runs out
    learning_rate: float = 1e-3
    schedule: str = "cosine"  # cosine (to 0 over the epochs or the time budget) | plateau (halve when stalled)
    loss: str = "dice+focal"  # dice | dice+focal | dice+crossentropy
    early_stopping_patience: Optional[int] = None  # epochs; null: none (it would cut a cosine decay short)
    strategy: str = "auto"  # auto | default | mirrored | multi_worker (a cluster named by TF_CONFIG)
    mixed_precision: str = "auto"  # auto (on GPU) | on | off
    steps_per_epoch: Optional[int] = None  # null: the whole training split each epoch
    time_budget_minutes: Optional[float] = None  # stop after this much training wall time (null: no limit)
    sampling: str = "none"  # none | rare: rare_share of the samples drawn to hold a rare class (nnU-Net's oversampling)
    rare_share: float = 0.33  # nnU-Net's oversample_foreground_percent
    rare_threshold: float = 0.05  # a class is rare below this share of the training pixels (class_weights.rare_classes)


@dataclass
class EvalConfig:
    tta: bool = True
    postprocess: bool = True
    min_component_sizes: list[int] = field(default_factory=lambda: [0, 16, 64])
    saved_predictions: int = 8  # per model, prediction PNGs of the first N test images (plus the best and worst two)


@dataclass
class InferenceConfig:
    tile_overlap: float = 0.5
    batch_size: int = 8
    input: Optional[str] = None  # an image or a folder of your own images for notebook 06


@dataclass
class Config:
    name: str = "demo"
    run_dir: str = "runs/default"  # relative paths: see load_config
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    class_weights: ClassWeightConfig = field(default_factory=ClassWeightConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{where}{key}' (known: {', '.join(fields)})")
        default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, f"{where}{key}.")
        kwargs[key] = value
    return cls(**kwargs)


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"cannot set '{dotted}': '{key}' is not a section")
    tree[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``train.epochs=3`` -> ("train.epochs", 3); values are read as YAML scalars or lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' must look like section.key=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


# --- checks -------------------------------------------------------------------------

_TYPE_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
               str: ("a string", "strings"), list: ("a list", "lists")}
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # PyYAML reads 1e-3 as text, YAML 1.2 as a number


class _WrongType(Exception):
    pass


def _leaves(section, where: str = ""):
    """(dotted key, section, field name, declared type) of every setting, read from the annotations."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaves(getattr(section, f.name), f"{where}{f.name}.")
        else:
            yield f"{where}{f.name}", section, f.name, hints[f.name]


def _union_with(hint, member):
    """X for the union of X and ``member`` (X | None, X | Auto), else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and member in args:
        (inner,) = [a for a in args if a != member]
        return inner
    return None


def _optional(hint):
    return _union_with(hint, type(None))


def _auto_or(hint):
    return _union_with(hint, Auto)


def _typed(value, hint):
    """``value`` as the declared type, allowing YAML's own readings only: an int is a float, a bool is no int."""
    if _optional(hint) is not None:
        return None if value is None else _typed(value, _optional(hint))
    if _auto_or(hint) is not None:
        return value if value == AUTO else _typed(value, _auto_or(hint))
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise _WrongType
        return [_typed(v, typing.get_args(hint)[0]) for v in value]
    if hint is float and not isinstance(value, bool) and (
            isinstance(value, int) or isinstance(value, str) and _SCIENTIFIC.fullmatch(value)):
        return float(value)
    if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
        return value
    raise _WrongType


def _describe(hint, plural: bool = False) -> str:
    if _optional(hint) is not None:
        return f"{_describe(_optional(hint))} or null"
    if _auto_or(hint) is not None:
        return f"{_describe(_auto_or(hint))} or auto"
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0], plural=True)}"
    return _TYPE_NAMES[hint][plural]


def _show(value) -> str:
    """A value as YAML spells it: null, true, 'text'."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _one_of(*allowed):
    return (lambda v: v in allowed), "one of " + ", ".join(map(str, allowed))


def _close_backbones(value) -> str:
    close = difflib.get_close_matches(str(value), BACKBONES, n=4, cutoff=0.5)
    return ("a segmentation_models backbone such as " + _join(close, "or") if close
            else "one of the segmentation_models backbones " + ", ".join(BACKBONES))


def _is_group_pattern(value) -> bool:
    try:
        return re.compile(value).groups >= 1
    except re.error:
        return False


_POSITIVE = (lambda v: v > 0), "a positive integer"
_OVERLAP = (lambda v: 0 <= v < 1), "a number in [0, 1)"
_FRACTION = (lambda v: 0 < v < 1), "a fraction in (0, 1)"

# key: (test, what is accepted); a null in an Optional field and an auto in an Auto one are not tested
RULES = {
    "seed": ((lambda v: 0 <= v < 2**32), "an integer from 0 to 2**32 - 1"),
    "data.source": _one_of("demo", "folder", "oxford_pets"),
    "data.base_url": ((lambda v: urllib.parse.urlsplit(v).scheme in ("http", "https", "ftp", "file")),
                      "an address such as https://example.org/pets/, or null for the dataset's own"),
    "data.max_images": ((lambda v: v > 0), "a positive integer, or null for every image"),
    "data.demo.num_images": _POSITIVE,
    "data.demo.image_size": _POSITIVE,
    "data.image_size": _POSITIVE,
    "data.mode": _one_of("resize", "tile", AUTO),
    "data.tile_overlap": _OVERLAP,
    "data.train_tiles": _one_of("precomputed", "random_crops"),
    "data.val_fraction": _FRACTION,
    "data.test_fraction": _FRACTION,
    "data.augment": _one_of("none", "flip", "strong"),
    "data.group_pattern": (_is_group_pattern, "a regular expression with a group that names the image's group, "
                                              r"such as '^(case\d+)_'"),
    "data.channels": ((lambda v: v >= 1), "a positive integer, or null for as many as the images have"),
    "data.intensity": _one_of("dataset", "per_image"),
    "class_weights.scheme": _one_of(*WEIGHT_SCHEMES),
    "class_weights.max_ratio": ((lambda v: v >= 1), "at least 1, or null for no clipping"),
    "model.architectures": ((lambda v: v and len(set(v)) == len(v) and set(v) <= set(ARCHITECTURES)),
                            f"a non-empty list of distinct names from {', '.join(ARCHITECTURES)}"),
    "model.backbone": ((lambda v: v in BACKBONES), _close_backbones),
    "model.pspnet_downsample_factor": _one_of(4, 8, 16),
    "model.batchnorm_momentum": ((lambda v: 0 <= v < 1), "a number in [0, 1), such as 0.9"),
    "train.batch_size": _POSITIVE,
    "train.epochs": _POSITIVE,
    "train.learning_rate": ((lambda v: v > 0), "a positive number such as 0.001"),
    "train.schedule": _one_of("cosine", "plateau"),
    "train.loss": _one_of("dice", "dice+focal", "dice+crossentropy"),
    "train.early_stopping_patience": ((lambda v: v >= 1), "at least 1 (epochs without improvement before "
                                      "stopping), or null for no early stopping"),
    "train.strategy": _one_of("auto", "default", "mirrored", "multi_worker"),
    "train.mixed_precision": _one_of("auto", "on", "off"),
    "train.steps_per_epoch": ((lambda v: v > 0), "a positive integer, or null for the whole training split"),
    "train.time_budget_minutes": ((lambda v: v > 0), "a positive number of minutes, or null for no limit"),
    "train.sampling": _one_of("none", "rare"),
    "train.rare_share": _FRACTION,
    "train.rare_threshold": _FRACTION,
    "evaluation.min_component_sizes": ((lambda v: v and min(v) >= 0),
                                       "a non-empty list of non-negative integers (0: remove nothing)"),
    "evaluation.saved_predictions": ((lambda v: v >= 0), "a non-negative integer (0: only the best and worst two)"),
    "inference.tile_overlap": _OVERLAP,
    "inference.batch_size": _POSITIVE,
}


def validate(cfg: Config) -> Config:
    """Check every value: its declared type, then its range, then how values fit together and the paths."""
    if isinstance(cfg.model.architectures, str):
        cfg.model.architectures = [cfg.model.architectures]  # a single name is a list of one
    leaves = list(_leaves(cfg))
    for key, section, name, hint in leaves:
        value = getattr(section, name)
        try:
            setattr(section, name, _typed(value, hint))
        except _WrongType:
            choices = RULES.get(key, (None, ""))[1]  # a choice names its values: clearer than "a string"
            what = choices if isinstance(choices, str) and choices.startswith("one of") else _describe(hint)
            raise ConfigError(f"{key}={_show(value)} must be {what}") from None
    for key, section, name, hint in leaves:
        value = getattr(section, name)
        test, accepted = RULES.get(key, (None, None))
        if test and value is not None and not (value == AUTO and _auto_or(hint)) and not test(value):
            raise ConfigError(f"{key}={_show(value)} must be {accepted(value) if callable(accepted) else accepted}")
    data = cfg.data
    if data.val_fraction + data.test_fraction >= 1:
        raise ConfigError(f"data.val_fraction={data.val_fraction} and data.test_fraction={data.test_fraction} "
                          "leave no images to train on: their sum must be below 1")
    if data.train_tiles == "random_crops" and data.mode != "tile":
        raise ConfigError(f"data.train_tiles=random_crops needs data.mode=tile, not {data.mode}: resized images are "
                          "already the model's input, with nothing to crop")
    if data.image_size != AUTO:  # an auto size is checked when notebook 01 has chosen it
        check_input_size(cfg.model.architectures, data.image_size, cfg.model.pspnet_downsample_factor)
    if cfg.train.epochs == AUTO and not cfg.train.time_budget_minutes:
        raise ConfigError("train.epochs=auto trains until train.time_budget_minutes runs out, "
                          "so it needs one: set train.time_budget_minutes or a number of epochs")
    if cfg.train.time_budget_minutes and cfg.train.strategy == "multi_worker":
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


PATH_KEYS = ("run_dir", "data.root", "data.download_dir", "inference.input")
DEFAULT_PATHS = {"run_dir": "runs/default", "data.download_dir": "data/downloads"}


def is_path_setting(key: str, value) -> bool:
    """A relative path to resolve; any other value is left for the type check to judge."""
    return key in PATH_KEYS and isinstance(value, str) and bool(value)


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


CHECKOUT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # a source checkout: the files to edit
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"  # an installed wheel: the same files, copied in


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
