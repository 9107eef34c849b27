"""Step 06: masks for new images of any size, as ``python -m seglab predict`` does.

Images larger than the model input are predicted in overlapping windows whose softmax
outputs are blended with a Gaussian weight (highest at a window's centre, where the
network sees the most context), as nnU-Net does, so no seams show at window borders.
Windows go through the model in batches. Images smaller than a window are padded and
cropped back. A model trained on resized images sees new images resized by the same
factor first (``pixel_scale``), so objects have the size it learned them at.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image
from tqdm import tqdm

from seglab import metrics, pipeline, plots, sources
from seglab.artifacts import atomic_file, write_text
from seglab.data_loading import original_pairs, resize_image, tile_starts
from seglab.demo_data import make_sample


@dataclass
class Predictor:
    model: object
    classes: list
    colors: list
    normalization: dict
    tile: int
    scale: tuple = (1.0, 1.0)  # model pixels per source pixel, per axis, as in training
    channels: int = 3  # what the model reads, as in training (sources.read_image)
    intensity: str = "dataset"

    @classmethod
    def load(cls, model_path: str | Path, tile: int | None = None) -> "Predictor":
        """The model and, from the JSON written beside it in training, its classes, colours and normalisation."""
        from seglab.training import load_model

        info = model_info(model_path)
        if tile and tile != info["input_size"]:
            raise ValueError(f"{Path(model_path).name} takes {info['input_size']} px windows; --tile {tile} does not fit it")
        image = info.get("image", RGB8_INPUT)
        return cls(load_model(model_path), info["classes"], info["colors"], info["normalization"], info["input_size"],
                   tuple(info.get("pixel_scale", (1.0, 1.0))), image["channels"], image["intensity"])

    def read_image(self, path: str | Path) -> np.ndarray:
        """An image read as the model's training images were: its channels, and its intensities if stretched."""
        return sources.read_image(path, self.channels, self.intensity)


RGB8_INPUT = {"channels": 3, "dtype": "uint8", "intensity": "dataset"}  # models whose sidecar predates "image"


def model_info(model_path: str | Path) -> dict:
    """The ``.json`` that notebook 03 writes beside a model, after checking that both files are there."""
    model_path = Path(model_path)
    info_path = model_path.with_suffix(".json")
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model; notebook 03 writes RUN_DIR/models/ARCH.keras")
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: missing; it is written beside the model by notebook 03")
    return json.loads(info_path.read_text())


def gaussian_weight(tile: int, sigma_scale: float = 1 / 8) -> np.ndarray:
    """A 2-D Gaussian over the window, never zero, so every pixel has some weight."""
    axis = np.arange(tile) - (tile - 1) / 2
    g = np.exp(-(axis ** 2) / (2 * (tile * sigma_scale) ** 2))
    weight = np.outer(g, g)
    return np.maximum(weight / weight.max(), 1e-3).astype(np.float32)


def predict_batch(model, batch, tta: bool = False) -> np.ndarray:
    """Softmax for a batch; with ``tta`` the mean over the four flips, each flipped back."""
    flips = [(), (2,), (1,), (1, 2)] if tta else [()]
    total = 0
    for axes in flips:
        p = np.asarray(model.predict_on_batch(np.flip(batch, axes) if axes else batch))
        total = total + (np.flip(p, axes) if axes else p)
    return total / len(flips)


def predict_image(predictor: Predictor, image: np.ndarray, overlap: float = 0.5, batch_size: int = 8,
                  tta: bool = False) -> np.ndarray:
    """Per-pixel class probabilities (H, W, classes) for an image (H, W, channels) of any size, as read by the predictor."""
    height, width = image.shape[:2]
    sy, sx = predictor.scale
    if (sy, sx) == (1.0, 1.0):
        return sliding_windows(predictor, image, overlap, batch_size, tta)
    scaled = resize_image(image, max(1, round(width * sx)), max(1, round(height * sy)),
                          cv2.INTER_AREA if sx * sy < 1 else cv2.INTER_LINEAR)
    probabilities = sliding_windows(predictor, scaled, overlap, batch_size, tta)
    return cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)


def sliding_windows(predictor: Predictor, image: np.ndarray, overlap: float, batch_size: int, tta: bool) -> np.ndarray:
    """Gaussian-blended window predictions at the image's own scale."""
    tile = predictor.tile
    height, width = image.shape[:2]
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect" if min(height, width) > 1 else "edge")
    x = pipeline.normalize(image, predictor.normalization).numpy()
    corners = [(y, x0) for y in tile_starts(x.shape[0], tile, overlap) for x0 in tile_starts(x.shape[1], tile, overlap)]
    weight = gaussian_weight(tile)[..., None]
    total = np.zeros(x.shape[:2] + (len(predictor.classes),), np.float32)
    weights = np.zeros(x.shape[:2] + (1,), np.float32)
    for start in range(0, len(corners), batch_size):
        chunk = corners[start:start + batch_size]
        windows = np.stack([x[y:y + tile, x0:x0 + tile] for y, x0 in chunk])
        for (y, x0), p in zip(chunk, predict_batch(predictor.model, windows, tta)):
            total[y:y + tile, x0:x0 + tile] += p * weight
            weights[y:y + tile, x0:x0 + tile] += weight
    return (total / weights)[:height, :width]


def overlay(image: np.ndarray, mask: np.ndarray, colors: list, alpha: float = 0.45) -> np.ndarray:
    """The colour mask over the image (as :func:`plots.display` shows it); background (class 0) left clear."""
    image = plots.display(image)
    colored = plots.colorize(mask, colors).astype(np.float32)
    blend = np.where(mask[..., None] > 0, (1 - alpha) * image + alpha * colored, image)
    return blend.astype(np.uint8)


def _save_png(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_file(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _save_image(folder: Path, stem: str, image: np.ndarray) -> Path:
    """``image`` in a file that :func:`sources.read_image` reads back unchanged: PNG for 8-bit grey or RGB,
    else TIFF (any depth, any number of channels)."""
    if image.dtype == np.uint8 and image.shape[2] in (1, 3):
        path = folder / f"{stem}.png"
        _save_png(path, image[..., 0] if image.shape[2] == 1 else image)
    else:
        path = folder / f"{stem}.tif"
        atomic_file(path, lambda tmp: tifffile.imwrite(tmp, image, photometric="minisblack", planarconfig="contig"))
    return path


def list_inputs(path: str | Path | list) -> list[Path]:
    """The images named by a file, a folder or a list of files."""
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path]
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return list(sources.image_files(path).values())  # one output name per stem: a.png and a.jpg would clash


def example_inputs(cfg, run, manifest: dict, count: int = 3) -> list[tuple[Path, Path | None]]:
    """(image, true mask or None) to show notebook 06 on: the user's own images first.

    ``inference.input`` when set (no masks); otherwise the ``count`` largest held-out test
    images at their original size, with their masks, taken out of notebook 01's shards into
    ``inference/test_images/``. For the demo source only, a generated scene eight times a
    training image's side is added, to show tiling on a large image.
    """
    if cfg.inference.input:
        return [(path, None) for path in list_inputs(cfg.inference.input)]
    sizes = manifest["source"]["sizes"]
    largest = sorted(manifest["splits"]["test"]["source_ids"], key=lambda stem: -np.prod(sizes[stem]))[:count]
    folder = run.path("inference", "test_images")
    folder.mkdir(parents=True, exist_ok=True)
    saved = {}
    for stem, image, mask in original_pairs(run, manifest, "test", stems=largest):
        _save_png(folder / f"{stem}_truth.png", mask)
        saved[stem] = _save_image(folder, stem, image)
    examples = [(saved[stem], folder / f"{stem}_truth.png") for stem in largest]
    if manifest["source"]["kind"] == "demo":
        tile = manifest["image_size"]
        scene, truth = make_sample(np.random.default_rng(7), tile * 8, object_scale=tile)
        folder = run.path("inference", "demo_scene")
        folder.mkdir(parents=True, exist_ok=True)
        _save_png(folder / "large_scene.png", scene)
        _save_png(folder / "large_scene_truth.png", truth)
        examples.append((folder / "large_scene.png", folder / "large_scene_truth.png"))
    return examples


def predict_folder(predictor: Predictor, inputs: str | Path | list, output: str | Path, overlap: float = 0.5,
                   batch_size: int = 8, tta: bool = False, overlays: bool = True, log=print) -> dict:
    """Write ``NAME_mask.png`` (class indices), ``NAME_color.png``, ``NAME_overlay.png`` and ``class_areas.csv``.

    An unreadable image is reported by name and skipped; the others are still processed.
    """
    output = Path(output)
    files = list_inputs(inputs)
    output.mkdir(parents=True, exist_ok=True)
    rows, failed = [], {}
    for path in tqdm(files, desc="predicting"):
        try:
            image = predictor.read_image(path)
        except sources.DataError as error:
            failed[path.name] = str(error)
            log(f"skipped {error}")
            continue
        mask = np.argmax(predict_image(predictor, image, overlap, batch_size, tta), -1).astype(np.uint8)
        _save_png(output / f"{path.stem}_mask.png", mask)
        _save_png(output / f"{path.stem}_color.png", plots.colorize(mask, predictor.colors))
        if overlays:
            _save_png(output / f"{path.stem}_overlay.png", overlay(image, mask, predictor.colors))
        counts = np.bincount(mask.ravel(), minlength=len(predictor.classes))
        rows.append({"image": path.name, "width": image.shape[1], "height": image.shape[0],
                     **{f"pixels_{c}": int(n) for c, n in zip(predictor.classes, counts)},
                     **{f"share_{c}": round(float(n) / mask.size, 6) for c, n in zip(predictor.classes, counts)}})
    if rows:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_text(output / "class_areas.csv", buffer.getvalue())
    return {"predicted": [r["image"] for r in rows], "failed": failed, "areas": rows}


def _read_examples(predictor: Predictor, examples, output: Path):
    for image_path, truth_path in examples:
        image = predictor.read_image(image_path)
        prediction = np.asarray(Image.open(Path(output) / f"{Path(image_path).stem}_mask.png"))
        truth = np.asarray(Image.open(truth_path)) if truth_path else None
        yield Path(image_path).stem, image, truth, prediction


def examples_figure(predictor: Predictor, examples, output: str | Path):
    """Each example as image, true mask (when known), prediction and overlay, at its own size."""
    rows, known = [], any(truth for _, truth in examples)
    for _, image, truth, prediction in _read_examples(predictor, examples, output):
        truth_panel = [truth if truth is not None else np.full(prediction.shape, sources.IGNORE, np.uint8)] if known else []
        rows.append([image, *truth_panel, prediction, overlay(image, prediction, predictor.colors)])
    titles = ["image", *(["true mask"] if known else []), "prediction", "overlay"]
    return plots.image_grid(rows, titles, predictor.classes, predictor.colors, size=3.2)


def example_scores(predictor: Predictor, examples, output: str | Path) -> dict:
    """Mean IoU of each example whose true mask is known, from its confusion matrix."""
    n = len(predictor.classes)
    return {stem: metrics.scores(metrics.confusion_matrix(truth, prediction, n), predictor.classes)["mean_iou"]
            for stem, _, truth, prediction in _read_examples(predictor, examples, output) if truth is not None}
