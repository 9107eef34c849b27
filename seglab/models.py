"""The networks: one builder for every architecture, the float32 copy that is saved, and the loader.

U-Net, FPN, PSPNet and LinkNet are segmentation_models' own (``sm.Unet`` and so on), UNet++
and DeepLabV3+ come from :mod:`seglab.architectures` on the same encoders. Every model ends
in a separate float32 softmax layer, so that under mixed precision the probabilities (and
the loss) stay in float32.
"""
from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from seglab import architectures
from seglab.atomic import atomic_file
from seglab.backend import keras, sm
from seglab.config import check_input_size
from seglab.records import ModelCard, ModelInput

SM_MODELS = {"unet": sm.Unet, "fpn": sm.FPN, "pspnet": sm.PSPNet, "linknet": sm.Linknet}
MODEL_SUFFIX = ".keras"
WEIGHTS_IN_ARCHIVE = "model.weights.h5"  # where Keras keeps the weights inside a .keras file
# FPN merges its pyramid by summing: segmentation_models' default concatenation makes a 512-channel head at
# stride 2 that cost 2.7x U-Net's training step against 1.95x (bench/architecture_cost.py, 96 px, CPU)
FPN_AGGREGATION = "sum"


@dataclass
class ModelSpec:
    """Everything a network is built from."""
    arch: str
    backbone: str
    classes: int
    input_size: int
    channels: int = 3
    encoder_weights: str | None = None  # "imagenet" downloads the encoder's pretrained weights
    pspnet_downsample_factor: int = 8
    fpn_pyramid_filters: int = 256
    batchnorm_momentum: float = 0.9
    adapter: bool | None = None  # a learned 1x1 convolution to 3 channels; None: when pretrained weights need it

    @classmethod
    def of(cls, arch: str, cfg, dataset) -> "ModelSpec":
        """The spec of ``arch`` under ``cfg`` for the dataset record ``dataset``."""
        return cls(arch, cfg.model.backbone, len(dataset.classes), dataset.image_size, dataset.images.channels,
                   cfg.model.encoder_weights, cfg.model.pspnet_downsample_factor, cfg.model.fpn_pyramid_filters,
                   cfg.model.batchnorm_momentum)


def needs_adapter(channels: int, encoder_weights) -> bool:
    """Pretrained encoder weights expect 3 channels: other counts are mapped to 3 by a learned 1x1 convolution."""
    return bool(encoder_weights) and channels != 3


def _download_failed(error: Exception) -> bool:
    """No network, an HTTP error, or a file that failed its checksum (a proxy's error page)."""
    return isinstance(error, OSError) or any(s in str(error).lower() for s in ("fetch failure", "corrupted file"))


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__


def _base(spec: ModelSpec, shape: tuple, weights):
    """The network without its softmax: logits at the input's size."""
    if spec.arch in architectures.BUILDERS:
        return architectures.BUILDERS[spec.arch](spec.backbone, shape, spec.classes, weights)
    extra = {"fpn": {"pyramid_aggregation": FPN_AGGREGATION, "pyramid_block_filters": spec.fpn_pyramid_filters},
             "pspnet": {"downsample_factor": spec.pspnet_downsample_factor}}.get(spec.arch, {})
    return SM_MODELS[spec.arch](spec.backbone, input_shape=shape, classes=spec.classes, activation=None,
                                encoder_weights=weights, **extra)


def build_model(spec: ModelSpec, seed: int | None = None, log=print):
    """Any architecture of ``config.ARCHITECTURES`` on any backbone, ending in a float32 softmax.

    With a ``seed`` its random initial weights are the same on every run (``keras.utils.set_random_seed``
    also seeds Python's and NumPy's generators). A rerun still differs a little: the augmentations are drawn
    by a parallel ``map``, in whatever order its threads run.

    If the ImageNet encoder weights cannot be downloaded, one line says so and the model starts
    from random initialisation. Channels other than 3 go through ``channel_adapter`` when
    ``spec.adapter`` (default: :func:`needs_adapter`); the structure follows the spec, not the
    download, so a model trained offline has the layers of one trained on Colab.

    Batch normalisation's moving statistics, which predictions use, follow the batches with
    ``batchnorm_momentum``: Keras' 0.99 leaves them far from the batches' for the first few
    hundred steps, so a model that trains well predicts one class on validation; 0.9 is
    PyTorch's default (its ``momentum=0.1``), which segmentation_models.pytorch trains with.
    """
    check_input_size(spec.arch, spec.input_size, spec.pspnet_downsample_factor)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    adapter = needs_adapter(spec.channels, spec.encoder_weights) if spec.adapter is None else spec.adapter
    shape = (spec.input_size, spec.input_size, 3 if adapter else spec.channels)
    try:
        base = _base(spec, shape, spec.encoder_weights)
    except Exception as error:  # keras' get_file raises plain Exceptions
        if not (spec.encoder_weights and _download_failed(error)):
            raise
        log(f"{spec.encoder_weights} weights for {spec.backbone} could not be downloaded ({_first_line(error)}); "
            f"training {spec.arch} from random initialisation.")
        base = _base(spec, shape, None)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = spec.batchnorm_momentum
    inputs, outputs = base.input, base.output
    if adapter:
        inputs = keras.Input((spec.input_size, spec.input_size, spec.channels), name="images")
        outputs = base(keras.layers.Conv2D(3, 1, name="channel_adapter")(inputs))
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(outputs)
    return keras.Model(inputs, probabilities, name=f"{spec.arch}_{spec.backbone}")


def float32_copy(model, spec: ModelSpec):
    """The trained weights in a float32 model without optimizer state, whatever policy trained them.

    A model trained under ``mixed_float16`` would otherwise be saved with float16 layers and
    predict slowly in float16 on a laptop CPU.
    """
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        adapter = any(layer.name == "channel_adapter" for layer in model.layers)
        copy = build_model(replace(spec, encoder_weights=None, adapter=adapter))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def load_model(path: str | Path):
    """A model notebook 03 saved (``models/ARCH.keras``), ready to predict (not compiled: sm's losses need not
    be found).

    Loading a model file can run the code it carries: a legacy ``.h5`` file or a SavedModel folder
    restores Python functions of ``Lambda`` layers whatever ``safe_mode`` says. So only ``.keras``
    files are loaded, with ``safe_mode=True``, which refuses such code.

    The archive is read as ``keras.models.load_model`` reads it (its ``config.json``, then its
    ``model.weights.h5``), except that the weights file is unpacked first: h5py reading it inside the zip
    seeks backwards, which Python 3.11's ``zipfile`` does by reading the member again from its start, and a
    demo model took 5-7 s to load instead of 0.8.
    """
    path = Path(path)
    if path.suffix != MODEL_SUFFIX or not path.is_file():
        raise ValueError(f"{path}: seglab loads only the .keras model files notebook 03 writes (an .h5 file or a "
                         "SavedModel folder can run code when it is loaded)")
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as unpacked:
        config = json.loads(archive.read("config.json"))
        config["compile_config"] = None
        try:
            model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        except ValueError as error:
            if "lambda" not in str(error).lower():
                raise
            raise ValueError(f"{path}: the model holds Python code (a Lambda layer), which seglab will not run from "
                             "a file; load it yourself with safe_mode=False only if you trust where it came from") from None
        model.load_weights(archive.extract(WEIGHTS_IN_ARCHIVE, unpacked))
    return model


def card_for(spec: ModelSpec, dataset, norm, mirror_axes: list[int]) -> ModelCard:
    """What prediction needs to know about a model of ``spec`` trained on the dataset record ``dataset`` with the
    mirrors ``mirror_axes`` among its augmentations."""
    images = dataset.images
    return ModelCard(architecture=spec.arch, backbone=spec.backbone, classes=dataset.classes, colors=dataset.colors,
                     normalization=norm, input_size=spec.input_size, pixel_scale=dataset.pixel_scale,
                     input=ModelInput(images.channels, images.dtype, images.intensity), mirror_axes=list(mirror_axes))


def save_model(model, path: Path) -> Path:
    """``model`` as ``path`` (``.keras``), atomically."""
    return atomic_file(path, lambda tmp: model.save(str(tmp)))  # tmp ends in .keras, as Keras requires
