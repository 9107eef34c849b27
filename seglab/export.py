"""Step 07: a trained model as one file that runs without seglab, as ``python -m seglab export`` does.

Every format holds the same graph, built by :func:`serving_module`:

- input ``images``: shape (N, S, S, C), S the model's input size, C and the type as the
  model was trained on (uint8 RGB, or e.g. uint16 or float32 bands). The batch N
  is free; height and width are fixed at S, as the model was built (use
  ``seglab predict`` or your own sliding windows for other sizes);
- inside: the normalisation (channel order, scale, offset: the encoder's, or the training
  split's statistics; read from the model's card at export time), then the network;
- outputs ``probabilities`` (float32, (N, S, S, classes), softmax) and ``classes``
  (uint8, (N, S, S), the most probable class of each pixel).

SavedModel and TFLite come from TensorFlow itself, ONNX from ``tf2onnx``. A small JSON
beside the export, ``ARCH.export.json`` (:class:`~seglab.records.ExportCard`), names the
classes, colours and this contract; the model does not need it.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from seglab.atomic import NotOurs, atomic_dir, atomic_file
from seglab.backend import tf
from seglab.jsonrecord import MissingInput
from seglab.models import load_model
from seglab.normalization import normalize
from seglab.records import ExportCard, ModelCard, TrainingRecord
from seglab.rundir import RunDir, Step

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("float16", "int8")  # TFLite only: float16 weights, or int8 weights with float activations
ONNX_OPSET = 17
ONNX_PACKAGES = "tf2onnx==1.17.0 onnxruntime==1.32.0"


class Unavailable(RuntimeError):
    """A format that cannot be written here; the message says why and what to install."""


def serving_module(model, normalization, dtype: str = "uint8"):
    """A ``tf.Module`` whose ``serve``: images of ``dtype`` in, normalisation and network inside, probabilities and classes out."""
    size, channels = model.input_shape[1], model.input_shape[-1]
    module = tf.Module()
    # the weights tracked, not the Keras model, which would make tf.saved_model.save trace every layer for Keras'
    # own metadata: the demo U-Net's SavedModel in 0.9 s instead of 5.6, its TFLite in 3.4 s instead of 10.3
    module.model_weights = list(model.weights)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, channels], dtype, name="images")])
    def serve(images):
        probabilities = model(normalize(images, normalization), training=False)
        return {"probabilities": probabilities, "classes": tf.cast(tf.argmax(probabilities, -1), tf.uint8)}

    module.serve = serve
    return module


def file_name(arch: str, fmt: str, quantize: str | None = None) -> str:
    suffix = f"_{quantize}" if quantize else ""
    return {"savedmodel": f"{arch}_savedmodel", "tflite": f"{arch}{suffix}.tflite", "onnx": f"{arch}.onnx"}[fmt]


class Exporter:
    """One trained model (``RUN/models/ARCH.keras`` and its card), loaded and traced once, written in any format."""

    def __init__(self, model_path: str | Path):
        self.model_path = Path(model_path)
        if not self.model_path.exists():
            raise FileNotFoundError(f"{self.model_path}: no such model; notebook 03 writes RUN_DIR/models/ARCH.keras")
        self.model = load_model(self.model_path)  # only .keras files, which cannot run code when loaded
        self.card = ModelCard.beside(self.model_path)
        self.module = serving_module(self.model, self.card.normalization, self.card.input.dtype)
        self.written: list[str] = []  # the files this exporter wrote, which its card lists

    def write(self, fmt: str, output_dir: str | Path | None = None, quantize: str | None = None) -> Path:
        """The export in ``output_dir`` (default ``RUN/export``), a folder for SavedModel, with its card beside it."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        if quantize and (fmt != "tflite" or quantize not in QUANTIZATIONS):
            raise ValueError(f"--quantize {quantize}: only tflite exports are quantized, to {' or '.join(QUANTIZATIONS)}")
        output_dir = Path(output_dir) if output_dir else self.model_path.parent.parent / "export"
        target = output_dir / file_name(self.model_path.stem, fmt, quantize)
        owned = self.owned(output_dir, target)
        serve = self.module.serve
        with _quiet():
            if fmt == "savedmodel":
                with atomic_dir(target) as tmp:
                    tf.saved_model.save(self.module, str(tmp), signatures={"serving_default": serve})
            elif fmt == "tflite":
                atomic_file(target, lambda tmp: tmp.write_bytes(_tflite(self.module, quantize)))
            else:
                convert = _import_tf2onnx().convert
                atomic_file(target, lambda tmp: convert.from_function(serve, input_signature=serve.input_signature,
                                                                      opset=ONNX_OPSET, output_path=str(tmp)))
        self.written = [*dict.fromkeys([*owned, *self.written, target.name])]
        self.export_card(self.written).save(output_dir / ExportCard.where(self.model_path.stem))
        return target

    def owned(self, output_dir: Path, target: Path) -> list[str]:
        """The files of ``output_dir`` an earlier export of this model wrote (its card lists them); stops with
        :class:`NotOurs`, writing nothing, when ``target`` or the card's name is taken by a file of someone else's."""
        card_path = output_dir / ExportCard.where(self.model_path.stem)
        try:
            owned = ExportCard.load(card_path).files if card_path.exists() else []
        except MissingInput:
            raise NotOurs(f"{card_path} is not an export card of seglab's, so it is left as it is: move it away, or "
                          "choose another --output folder.") from None
        if target.exists() and target.name not in owned + self.written:
            raise NotOurs(f"{target} already exists and was not written by seglab export, so it is left as it is: "
                          "move it away, or choose another --output folder.")
        return owned

    def reference(self, images: np.ndarray) -> np.ndarray:
        """The Keras model's probabilities for images as the export takes them, normalised by seglab as in training."""
        return self.model.predict(normalize(images, self.card.normalization), verbose=0)

    def describe_input(self) -> str:
        """What the export takes, in words: ``uint8 images of [N, 96, 96, 3] (RGB)``."""
        card = self.card
        rgb = card.input.dtype == "uint8" and card.input.channels == 3
        return (f"{card.input.dtype} images of [N, {card.input_size}, {card.input_size}, {card.input.channels}]"
                + (" (RGB)" if rgb else " (channels in the training images' order)"))

    def export_card(self, files: list[str]) -> ExportCard:
        card, size = self.card, self.card.input_size
        stretched = {"intensity": "16-bit and float images: first stretch each channel to 0-255 by its own 0.5 and 99.5 "
                                  "percentiles"}
        return ExportCard(
            architecture=card.architecture, backbone=card.backbone, classes=card.classes, colors=card.colors,
            pixel_scale=card.pixel_scale,
            input={"name": "images", "dtype": card.input.dtype, "shape": [None, size, size, card.input.channels],
                   "channels": "RGB" if card.input.dtype == "uint8" and card.input.channels == 3
                   else "in the order of the training images' channels",
                   "normalization": "inside the model", **(stretched if card.input.intensity == "per_image" else {})},
            outputs={"probabilities": {"dtype": "float32", "shape": [None, size, size, len(card.classes)]},
                     "classes": {"dtype": "uint8", "shape": [None, size, size]}},
            files=files)


def load_exported(path: str | Path):
    """The export as ``images -> {"probabilities", "classes"}``, run by its own runtime, as a user without seglab would."""
    path = Path(path)
    if path.is_dir():
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        return lambda images: {name: t.numpy() for name, t in serve(images=tf.constant(images)).items()}
    if path.suffix == ".tflite":
        with warnings.catch_warnings():  # tf.lite.Interpreter works; the warning points to LiteRT, the same API
            warnings.simplefilter("ignore")
            runner = tf.lite.Interpreter(model_path=str(path)).get_signature_runner()
        return lambda images: runner(images=images)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # errors only: tf2onnx's resize attributes draw deprecation warnings
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ["probabilities", "classes"]
    return lambda images: dict(zip(names, session.run(names, {"images": images})))


def agreement(expected: np.ndarray, exported: dict) -> dict:
    """Share of pixels given the same class; mean and largest difference of the probabilities.

    The largest difference sits where two classes nearly tie: there a logit's rounding
    error moves both probabilities. The mean says whether the export computes the same thing.
    """
    difference = np.abs(expected - exported["probabilities"])
    return {"pixel_agreement": float(np.mean(expected.argmax(-1) == exported["classes"])),
            "mean_probability_difference": float(difference.mean()),
            "max_probability_difference": float(difference.max())}


def size_mb(path: Path) -> float:
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def begin(run: RunDir, cfg, arch: str | None = None) -> tuple[Step, Exporter]:
    """Start step 07: the trained model of ``arch`` (the config's first architecture), loaded and traced once."""
    step = run.begin("export", cfg)
    trained = step.read(TrainingRecord)
    return step, Exporter(run.path(trained.models[arch or cfg.model.architectures[0]].model))


def record(step: Step, exporter: Exporter, exports: dict, checks: dict):
    """Register step 07: every exported file, the export card, and the parity figures."""
    for path in exports.values():
        step.wrote(path)
    step.wrote(Path("export") / ExportCard.where(exporter.model_path.stem))
    return step.finish(parity=checks)


def _tflite(module, quantize: str | None) -> bytes:
    """float32, or with ``float16`` weights, or ``int8`` weights (dynamic range: activations stay float)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


@contextmanager
def _quiet():
    """TensorFlow logs each SavedModel it writes, the converters' temporary ones too, at INFO; only warnings here."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("WARNING")
    try:
        yield
    finally:
        logger.setLevel(level)


def _import_tf2onnx():
    try:
        import tf2onnx
    except ImportError as error:
        raise Unavailable(f"ONNX export is unavailable: {error} (pip install {ONNX_PACKAGES})") from None
    return tf2onnx
