"""One typed configuration for the whole series, read from YAML with ``key=value`` overrides.

The same notebooks run the CPU demo and a full Colab run; only the YAML file and the
overrides (command line ``--set`` or a notebook's papermill ``parameters`` cell) differ.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

ARCHITECTURES = ("unet", "fpn", "pspnet", "linknet")
WEIGHT_SCHEMES = ("balanced", "median_frequency", "inverse_sqrt", "none")


class ConfigError(ValueError):
    pass


# --- input sizes: pure arithmetic, so the config can be checked before TensorFlow loads ---

PSPNET_MULTIPLE = {4: 24, 8: 48, 16: 96}  # the pyramid pools need these divisors at each downsample factor


def input_multiple(arch: str, downsample_factor: int = 8) -> int:
    if arch == "pspnet":
        if downsample_factor not in PSPNET_MULTIPLE:
            raise ConfigError(f"model.pspnet_downsample_factor={downsample_factor} must be 4, 8 or 16")
        return PSPNET_MULTIPLE[downsample_factor]
    return 32  # five stride-2 stages in every encoder


def check_input_size(architectures: str | list, size: int, downsample_factor: int = 8) -> None:
    """Reject a size that an architecture cannot take, up front, with the nearest sizes that fit them all."""
    archs = [architectures] if isinstance(architectures, str) else list(architectures)
    multiples = {arch: input_multiple(arch, downsample_factor) for arch in archs}
    multiple = math.lcm(*multiples.values())
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


def _join(names: list) -> str:
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]


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
    max_images: Optional[int] = None  # speed knob: use only the first N source images
    demo: DemoData = field(default_factory=DemoData)
    image_size: int = 128  # side of the square model input
    mode: str = "resize"  # resize | tile
    tile_overlap: float = 0.25
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    augment: bool = True


@dataclass
class ClassWeightConfig:
    scheme: str = "balanced"  # balanced | median_frequency | inverse_sqrt | none
    max_ratio: Optional[float] = 10.0  # clip so the largest weight is at most this times the smallest


@dataclass
class ModelConfig:
    architectures: list = field(default_factory=lambda: ["unet", "fpn", "pspnet"])
    backbone: str = "resnet18"
    encoder_weights: Optional[str] = None  # imagenet | null
    pspnet_downsample_factor: int = 8


@dataclass
class TrainConfig:
    batch_size: int = 8  # per replica
    epochs: int = 10
    learning_rate: float = 1e-3
    schedule: str = "plateau"  # plateau | cosine
    loss: str = "dice+focal"  # dice | dice+focal | dice+crossentropy
    early_stopping_patience: int = 5
    strategy: str = "auto"  # auto | default | mirrored
    mixed_precision: str = "auto"  # auto (on GPU) | on | off
    steps_per_epoch: Optional[int] = None  # null: the whole training split each epoch


@dataclass
class EvalConfig:
    tta: bool = True
    postprocess: bool = True
    min_component_sizes: list = field(default_factory=lambda: [0, 16, 64])


@dataclass
class InferenceConfig:
    tile_overlap: float = 0.5
    batch_size: int = 8


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


def validate(cfg: Config) -> Config:
    choices = {
        "data.source": (cfg.data.source, ("demo", "folder", "oxford_pets")),
        "data.mode": (cfg.data.mode, ("resize", "tile")),
        "class_weights.scheme": (cfg.class_weights.scheme, WEIGHT_SCHEMES),
        "train.schedule": (cfg.train.schedule, ("plateau", "cosine")),
        "train.loss": (cfg.train.loss, ("dice", "dice+focal", "dice+crossentropy")),
        "train.strategy": (cfg.train.strategy, ("auto", "default", "mirrored")),
        "train.mixed_precision": (cfg.train.mixed_precision, ("auto", "on", "off")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    if isinstance(cfg.model.architectures, str):
        cfg.model.architectures = [cfg.model.architectures]
    unknown = [a for a in cfg.model.architectures if a not in ARCHITECTURES]
    if unknown or not cfg.model.architectures:
        raise ConfigError(f"model.architectures={cfg.model.architectures} must be a non-empty list of {', '.join(ARCHITECTURES)}")
    if cfg.data.source == "folder" and not cfg.data.root:
        raise ConfigError("data.source=folder needs data.root, the folder holding images/, masks/ and classes.json")
    for key, overlap in (("data.tile_overlap", cfg.data.tile_overlap), ("inference.tile_overlap", cfg.inference.tile_overlap)):
        if not 0 <= overlap < 1:
            raise ConfigError(f"{key}={overlap} must be in [0, 1)")
    if cfg.data.val_fraction <= 0 or cfg.data.test_fraction <= 0 or cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        raise ConfigError("data.val_fraction and data.test_fraction must be positive and sum to less than 1")
    return cfg


PATH_KEYS = ("run_dir", "data.root", "data.download_dir")


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Read ``path`` (or the defaults), apply overrides in order, check the result.

    Relative paths written in the file are relative to the file (as in docker-compose), so
    a config works from any working directory; relative paths in overrides are relative
    to the working directory of whoever typed them. All paths come out absolute.
    """
    tree: dict = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        for key in PATH_KEYS:
            if _get(tree, key):
                _set(tree, key, str((path.parent / _get(tree, key)).resolve()))
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        _set(tree, key, str((base / str(value)).resolve()) if key in PATH_KEYS and value else value)
    for key in PATH_KEYS:
        if not _get(tree, key) and key != "data.root":
            default = {"run_dir": "runs/default", "data.download_dir": "data/downloads"}[key]
            _set(tree, key, str((base / default).resolve()))
    return validate(_build(Config, tree, ""))
