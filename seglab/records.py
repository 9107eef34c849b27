"""The typed files of the run folder: what one notebook writes and a later one (or a later run) reads.

Each file is one dataclass with ``load`` and ``save``; its fields are named once, here.
Every file carries a ``format_version``. A file that is missing, is not JSON, lacks a field
or comes from another version stops the reader with one sentence that names the file, the
problem and the notebook that writes it, the one to run again.

Each record names its file in the run folder (``FILE``) and the step that writes it (``STEP``):
``manifest.json`` (every step, when it finishes), ``env.json`` (00), ``dataset/dataset.json`` and
``dataset/fingerprint.json`` (01), ``class_weights.json`` (02), ``models/ARCH.json`` (the model card,
beside ``ARCH.keras``), ``history/ARCH.json``, ``training.json`` and ``train_state/ARCH.json`` (03),
``metrics.json`` (04), and ``ARCH.export.json`` beside an export (07).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from seglab.jsonrecord import STEPS, FileStamp, Record, RecordError


@dataclass
class Environment(Record):
    """What the machine offers: the accelerator, the GPUs, the libraries."""
    STEP: ClassVar[str] = "gpu_check"
    FILE: ClassVar[str] = "env.json"
    accelerator: str
    gpus: list[dict]
    nvidia_smi: list[str]
    tensorflow: str
    keras: str
    segmentation_models: str
    built_with_cuda: bool
    cuda_build_version: Optional[str]
    cudnn_build_version: Optional[str]
    cpu_count: int
    versions: dict[str, Optional[str]]


@dataclass
class Decision:
    """A setting left as ``auto``, decided from the fingerprint by a rule of :mod:`seglab.planning`."""
    value: Any
    reason: str


@dataclass
class ImageSpec:
    """What the stored images are: every image of the dataset is brought to these channels and this type."""
    channels: int
    dtype: str  # uint8, uint16 or float32
    encoding: str  # png, or tensor (tf.io.serialize_tensor) for what PNG cannot hold
    intensity: str  # dataset: values kept; per_image: 16-bit and float images stretched to 8 bits
    mean: list[float] = field(default_factory=list)  # of the training split, per channel
    std: list[float] = field(default_factory=list)
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)


@dataclass
class SplitInfo:
    sources: int  # source images
    source_ids: list[str]
    items: int  # samples at the model's size (tiles, or one per resized image)
    pixels: list[int]  # labelled pixels per class over the samples
    present_in: list[int]  # per class, the labelled pixels of the samples it appears in (SegNet's weights)


@dataclass
class Item:
    id: str
    source: str
    split: str
    origin: Optional[list[int]]  # a tile's top-left corner in its source image; null when resized


@dataclass
class SourceInfo:
    kind: str
    root: str
    images: int
    sizes: dict[str, list[int]]  # source image -> [height, width]


@dataclass
class DemoScene:
    """For the demo source: a scene eight times a training image's side, for notebook 06."""
    image: str  # relative to the run folder
    truth: str


@dataclass
class DatasetRecord(Record):
    """The processed dataset: classes, the split, the shard files, per-class pixel counts, decided settings."""
    STEP: ClassVar[str] = "data"
    FILE: ClassVar[str] = "dataset/dataset.json"
    classes: list[str]
    colors: list[list[int]]
    ignore_index: Optional[int]  # 255 when the source marks pixels to leave out, else null
    image_size: int
    mode: str
    pixel_scale: list[float]  # model pixels per source pixel, per axis (1 for tiles)
    decisions: dict[str, Decision]
    images: ImageSpec
    source: SourceInfo
    seed: int
    split_by: str
    cache_key: str  # what the dataset was made from: a rerun with the same key reuses it
    shards: dict[str, list[str]]  # kind (train, val, test, val-originals, ...) -> file names in dataset/
    splits: dict[str, SplitInfo]
    items: list[Item]
    demo_scene: Optional[DemoScene] = None

    def split_ids(self, split: str) -> list[str]:
        return [item.id for item in self.items if item.split == split]

    def shard_files(self, run_root: Path, split: str, originals: bool = False) -> list[Path]:
        """The shard files of ``split`` at the model's size, or of its images at their original size."""
        kind = f"{split}-originals" if originals else split
        if kind not in self.shards:
            kept = [k.removesuffix("-originals") for k in self.shards if k.endswith("-originals")]
            names = " and ".join([", ".join(kept[:-1]), kept[-1]]) if len(kept) > 1 else "".join(kept)
            raise ValueError(f"original-size images are kept for {names}, not for {split!r}")
        return [Path(run_root) / "dataset" / name for name in self.shards[kind]]


@dataclass
class ClassShares:
    names: list[str]
    pixel_share: list[float]
    image_share: list[float]


@dataclass
class Fingerprint(Record):
    """What the source images are, measured on a sample: the facts :mod:`seglab.planning` decides from."""
    STEP: ClassVar[str] = "data"
    FILE: ClassVar[str] = "dataset/fingerprint.json"
    images: int
    measured: int
    size: dict[str, dict[str, float]]  # height, width, short_side -> min, p10, median, p90, max
    channels: dict[str, int]  # channels as stored -> images
    intensity: dict[str, list[float]]  # mean, std, p0.5, p99.5 per channel
    classes: ClassShares


@dataclass
class ClassWeights(Record):
    STEP: ClassVar[str] = "class_weights"
    FILE: ClassVar[str] = "class_weights.json"
    scheme: str
    max_ratio: Optional[float]
    classes: list[str]
    counts: list[int]
    share: list[float]
    weights: list[float]


@dataclass
class ResumeKey(Record):
    """What a saved training state belongs to; training resumes only a state with an equal key."""
    STEP: ClassVar[str] = "training"
    FILE: ClassVar[str] = "train_state/{arch}.json"
    arch: str
    dataset: Optional[str]  # the manifest id of the dataset it trained on
    class_weights: Optional[str]
    model: dict
    train: dict
    augment: str
    seed: int


@dataclass
class Normalization:
    """A per-channel affine map applied to the stored pixels: ``x[..., order] * scale + offset``."""
    order: list[int]
    scale: list[float]
    offset: list[float]


@dataclass
class ModelInput:
    """What a model reads: images of this many channels and this type, intensities as in training."""
    channels: int = 3
    dtype: str = "uint8"
    intensity: str = "dataset"


@dataclass
class ModelCard(Record):
    """Written beside ``models/ARCH.keras``: everything prediction needs besides the weights.

    ``model`` stamps the ``.keras`` file the card belongs to: the model is saved first and the
    card second, so a save cut off between the two leaves a pair that :meth:`beside` refuses.
    """
    VERSION: ClassVar[int] = 2
    STEP: ClassVar[str] = "training"
    FILE: ClassVar[str] = "models/{arch}.json"
    architecture: str
    backbone: str
    classes: list[str]
    colors: list[list[int]]
    normalization: Normalization
    input_size: int
    pixel_scale: list[float]
    input: ModelInput
    model: Optional[FileStamp] = None
    mirror_axes: list[int] = field(default_factory=lambda: [1, 2])  # the mirrors it was trained with: test-time flips

    @classmethod
    def beside(cls, model_path: str | Path) -> "ModelCard":
        """The card of ``RUN/models/ARCH.keras``, once it is checked to belong to that very file."""
        model_path = Path(model_path)
        card = cls.load(model_path.with_suffix(".json"))
        if card.model != FileStamp.of(model_path):
            raise RecordError(f"{model_path} and its card {model_path.with_suffix('.json').name} are not from the same "
                              f"save (one was cut off, or replaced by hand); {cls.rerun()}.")
        return card


@dataclass
class TrainingSummary:
    architecture: str
    backbone: str
    model: str  # models/ARCH.keras, relative to the run folder
    epochs: int
    resumed: bool
    seconds: float
    replicas: int
    global_batch_size: int
    precision: str
    best_val_mean_iou: Optional[float]


def class_key(name: str) -> str:
    """The key of a class's IoU in a history's epochs (``val_`` before it for validation): ``iou_`` and the class
    name with every run of non-word characters as ``_``."""
    return "iou_" + re.sub(r"\W+", "_", name).strip("_")


@dataclass
class History(Record):
    STEP: ClassVar[str] = "training"
    FILE: ClassVar[str] = "history/{arch}.json"
    summary: TrainingSummary
    epochs: list[dict[str, float]]  # Keras' logs of each epoch


@dataclass
class TrainingRecord(Record):
    STEP: ClassVar[str] = "training"
    FILE: ClassVar[str] = "training.json"
    models: dict[str, TrainingSummary]


@dataclass
class Scores:
    """Scores from one confusion matrix over a split (:func:`seglab.metrics.scores`)."""
    mean_iou: float
    mean_dice: float
    frequency_weighted_iou: float
    pixel_accuracy: float
    per_class_iou: dict[str, Optional[float]]
    per_class_dice: dict[str, Optional[float]]
    per_class_precision: dict[str, Optional[float]]
    per_class_recall: dict[str, Optional[float]]
    confusion_matrix: list[list[int]]


@dataclass
class ModelScores(Scores):
    per_image_iou: dict[str, float] = field(default_factory=dict)  # of the option chosen on validation
    saved_predictions: list[str] = field(default_factory=list)  # predictions/ARCH/STEM.png
    selected_on_val: dict = field(default_factory=dict)  # the option: tta, min_component_size, opening, name
    variants: dict[str, dict[str, float]] = field(default_factory=dict)  # option -> val and test mean IoU
    with_selected: dict = field(default_factory=dict)  # test scores with the chosen option


@dataclass
class Metrics(Record):
    STEP: ClassVar[str] = "evaluation"
    FILE: ClassVar[str] = "metrics.json"
    split: str
    resolution: str
    classes: list[str]
    models: dict[str, ModelScores]


@dataclass
class ExportCard(Record):
    """Beside an export: the classes, colours and the input/output contract. The export does not need it."""
    STEP: ClassVar[str] = "export"
    FILE: ClassVar[str] = "{arch}.export.json"  # in the export folder
    architecture: str
    backbone: str
    classes: list[str]
    colors: list[list[int]]
    pixel_scale: list[float]
    input: dict
    outputs: dict
    files: list[str]  # what this export wrote in its folder; only these may be replaced by the next one


@dataclass
class StepEntry:
    id: str
    notebook: str
    finished: str
    outputs: dict[str, Optional[FileStamp]]  # file (relative to the run folder) -> its stamp; null for a folder
    inputs: dict[str, str]  # step -> the id of its record this step read
    config: dict
    versions: dict[str, Optional[str]]
    extra: dict = field(default_factory=dict)


@dataclass
class RunManifest(Record):
    """Which step finished when, with what, and which record of each earlier step it read."""
    VERSION: ClassVar[int] = 2
    FILE: ClassVar[str] = "manifest.json"
    steps: dict[str, StepEntry] = field(default_factory=dict)

    @classmethod
    def rerun(cls) -> str:
        return (f"every notebook rewrites it when it finishes, so run the series again from {STEPS['gpu_check']} "
                "(notebook 01 reuses an unchanged dataset)")


@dataclass
class PredictionFiles(Record):
    """In a folder ``seglab predict`` (or notebook 06) wrote into: the files it wrote, which the next run may replace."""
    STEP: ClassVar[str] = "inference"
    FILE: ClassVar[str] = ".seglab-predict.json"
    files: list[str]
