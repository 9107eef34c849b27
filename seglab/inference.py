"""Step 06: masks for new images of any size, as ``python -m seglab predict`` does.

The serving path: it needs a trained model and its card (:mod:`seglab.predictor`), the
readers and the figures, and nothing of training or preprocessing, so ``seglab predict``
starts without them.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from tqdm import tqdm

from seglab import metrics, plots, readers
from seglab.atomic import atomic_file, write_bytes, write_text
from seglab.predictor import Predictor, predict_image
from seglab.records import DatasetRecord, TrainingRecord
from seglab.rundir import RunDir, Step
from seglab.shards import original_pairs


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def begin(run: RunDir, cfg, arch: str | None = None) -> tuple[Step, DatasetRecord, Predictor]:
    """Start step 06: the dataset record and the model of ``arch`` (the config's first architecture)."""
    step = run.begin("inference", cfg)
    dataset, trained = step.read(DatasetRecord), step.read(TrainingRecord)
    return step, dataset, Predictor.load(run.path(trained.models[arch or cfg.model.architectures[0]].model))


def save_png(path: Path, array: np.ndarray) -> Path:
    return write_bytes(path, _png(array))


def save_image(folder: Path, stem: str, image: np.ndarray) -> Path:
    """``image`` in a file that :func:`readers.read_image` reads back unchanged: PNG for 8-bit grey or RGB,
    else TIFF (any depth, any number of channels)."""
    if image.dtype == np.uint8 and image.shape[2] in (1, 3):
        return save_png(folder / f"{stem}.png", image[..., 0] if image.shape[2] == 1 else image)
    return atomic_file(folder / f"{stem}.tif",
                       lambda tmp: tifffile.imwrite(tmp, image, photometric="minisblack", planarconfig="contig"))


def list_inputs(path: str | Path | list) -> list[Path]:
    """The images named by a file, a folder or a list of files."""
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path]
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return list(readers.image_files(path).values())  # one output name per stem: a.png and a.jpg would clash


def example_inputs(cfg, run: RunDir, dataset: DatasetRecord, count: int = 3) -> list[tuple[Path, Path | None]]:
    """(image, true mask or None) to show notebook 06 on: the user's own images first.

    ``inference.input`` when set (no masks); otherwise the ``count`` largest held-out test
    images at their original size, with their masks, taken out of notebook 01's shards into
    ``inference/test_images/``; and for the demo source, notebook 01's large scene, to show
    tiling on a large image.
    """
    if cfg.inference.input:
        return [(path, None) for path in list_inputs(cfg.inference.input)]
    sizes = dataset.source.sizes
    largest = sorted(dataset.splits["test"].source_ids, key=lambda stem: -np.prod(sizes[stem]))[:count]
    folder = run.path("inference", "test_images")
    saved = {}
    for stem, image, mask in original_pairs(run.root, dataset, "test", stems=largest):
        save_png(folder / f"{stem}_truth.png", mask)
        saved[stem] = save_image(folder, stem, image)
    examples = [(saved[stem], folder / f"{stem}_truth.png") for stem in largest]
    if dataset.demo_scene is not None:
        examples.append((run.path(dataset.demo_scene.image), run.path(dataset.demo_scene.truth)))
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
        except readers.DataError as error:
            failed[path.name] = str(error)
            log(f"skipped {error}")
            continue
        mask = np.argmax(predict_image(predictor, image, overlap, batch_size, tta), -1).astype(np.uint8)
        save_png(output / f"{path.stem}_mask.png", mask)
        save_png(output / f"{path.stem}_color.png", plots.colorize(mask, predictor.colors))
        if overlays:
            save_png(output / f"{path.stem}_overlay.png", plots.overlay(image, mask, predictor.colors))
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
        prediction = readers.read_labels(Path(output) / f"{Path(image_path).stem}_mask.png")
        truth = readers.read_labels(truth_path) if truth_path else None
        yield Path(image_path).stem, image, truth, prediction


def examples_figure(predictor: Predictor, examples, output: str | Path):
    """Each example as image, true mask (when known), prediction and overlay, at its own size."""
    rows, known = [], any(truth for _, truth in examples)
    for _, image, truth, prediction in _read_examples(predictor, examples, output):
        truth_panel = [truth if truth is not None else np.full(prediction.shape, readers.IGNORE, np.uint8)] if known else []
        rows.append([image, *truth_panel, prediction, plots.overlay(image, prediction, predictor.colors)])
    titles = ["image", *(["true mask"] if known else []), "prediction", "overlay"]
    return plots.image_grid(rows, titles, predictor.classes, predictor.colors, size=3.2)


def example_scores(predictor: Predictor, examples, output: str | Path) -> dict:
    """Mean IoU of each example whose true mask is known, from its confusion matrix."""
    n = len(predictor.classes)
    return {stem: metrics.scores(metrics.confusion_matrix(truth, prediction, n), predictor.classes)["mean_iou"]
            for stem, _, truth, prediction in _read_examples(predictor, examples, output) if truth is not None}
