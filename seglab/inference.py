"""Step 06: masks for new images of any size, as ``python -m seglab predict`` does.

The serving path: it needs a trained model and its card (:mod:`seglab.predictor`), the
readers and the figures, and nothing of training or preprocessing, so ``seglab predict``
starts without them.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import tifffile
from matplotlib.patches import Rectangle
from PIL import Image
from tqdm import tqdm

from seglab import geometry, metrics, plots, readers
from seglab.atomic import NotOurs, atomic_file, write_bytes, write_text
from seglab.predictor import Predictor, gaussian_weight, predict_image, sliding_windows
from seglab.jsonrecord import MissingInput
from seglab.records import DatasetRecord, PredictionFiles, TrainingRecord
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
    predictor = Predictor.load(run.path(trained.models[arch or cfg.model.architectures[0]].model))
    predictor.max_pixels = int(cfg.data.max_image_megapixels * 1e6)
    return step, dataset, predictor


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
    for stem, image, mask in original_pairs(run, dataset, "test", stems=largest):
        save_png(folder / f"{stem}_truth.png", mask)
        saved[stem] = save_image(folder, stem, image)
    examples = [(saved[stem], folder / f"{stem}_truth.png") for stem in largest]
    if dataset.demo_scene is not None:
        examples.append((run.path(dataset.demo_scene.image), run.path(dataset.demo_scene.truth)))
    return examples


OUTPUTS = ("_mask.png", "_color.png", "_overlay.png")  # what predict_folder writes per image, after its stem


def _check_output(inputs, files: list[Path], output: Path, previous: list[str], overlays: bool) -> None:
    """Stop before anything is written when the output folder is, or is inside, the input folder, or is the folder
    of an input image, or when a file there with one of the names about to be written is not from an earlier run."""
    out = output.resolve()
    given = Path(inputs).resolve() if not isinstance(inputs, (list, tuple)) and Path(inputs).is_dir() else None
    inside = [given] if given is not None and (out == given or given in out.parents) else []
    for folder in inside + [folder for folder in {path.parent.resolve() for path in files} if folder == out]:
        raise ValueError(f"--output {output} is inside the input folder {folder}: the masks would be read as "
                         "images next time, and could replace files of yours; choose a folder outside it")
    names = [f"{path.stem}{end}" for path in files for end in OUTPUTS[: 3 if overlays else 2]] + ["class_areas.csv"]
    taken = [name for name in names if (output / name).exists() and name not in previous]
    if taken:
        raise NotOurs(f"{output / taken[0]} already exists and was not written by seglab predict, so it is left as "
                      f"it is ({len(taken)} such file(s)): move it away, or choose another --output folder.")


def _previous_outputs(output: Path) -> list[str]:
    """What an earlier run of ``predict_folder`` wrote in ``output`` (none when its list is absent or unreadable)."""
    try:
        return PredictionFiles.load(output / PredictionFiles.FILE).files
    except MissingInput:
        return []


def predict_folder(predictor: Predictor, inputs: str | Path | list, output: str | Path, overlap: float = 0.5,
                   batch_size: int = 8, tta: bool = False, overlays: bool = True, log=print) -> dict:
    """Write ``NAME_mask.png`` (class indices), ``NAME_color.png``, ``NAME_overlay.png`` and ``class_areas.csv``.

    An unreadable image is reported by name and skipped; the others are still processed. Files an
    earlier run wrote in ``output`` are replaced, or removed when this run does not write them again
    (no stale mask beside a new table), and one line says so; nothing else there is touched.
    """
    output, files = Path(output), list_inputs(inputs)
    previous = _previous_outputs(output)
    _check_output(inputs, files, output, previous, overlays)
    rows, failed, written = [], {}, []
    for path in tqdm(files, desc="predicting"):
        try:
            image = predictor.read_image(path)
        except readers.DataError as error:
            failed[path.name] = str(error)
            log(f"skipped {error}")
            continue
        mask = np.argmax(predict_image(predictor, image, overlap, batch_size, tta), -1).astype(np.uint8)
        pictures = [mask, plots.colorize(mask, predictor.colors)]
        pictures += [plots.overlay(image, mask, predictor.colors)] if overlays else []
        for end, picture in zip(OUTPUTS, pictures):
            written.append(save_png(output / f"{path.stem}{end}", picture).name)
        counts = np.bincount(mask.ravel(), minlength=len(predictor.classes))
        rows.append({"image": path.name, "width": image.shape[1], "height": image.shape[0],
                     **{f"pixels_{c}": int(n) for c, n in zip(predictor.classes, counts)},
                     **{f"share_{c}": round(float(n) / mask.size, 6) for c, n in zip(predictor.classes, counts)}})
    if rows:
        written.append(write_text(output / "class_areas.csv", _table(rows)).name)
    _forget_previous(output, previous, written, log)
    return {"predicted": [r["image"] for r in rows], "failed": failed, "areas": rows}


def _table(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _forget_previous(output: Path, previous: list[str], written: list[str], log=print) -> None:
    """Remove what an earlier run wrote and this one did not write again; record what this one wrote."""
    stale = [name for name in previous if name not in written and (output / name).is_file()]
    for name in stale:
        (output / name).unlink()
    replaced = len(set(previous) & set(written))
    if replaced or stale:
        log(f"{output}: {replaced} file(s) of an earlier run replaced, {len(stale)} it wrote for other images removed")
    PredictionFiles(written).save(output / PredictionFiles.FILE)


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


def windows_figure(predictor: Predictor, image: np.ndarray, overlap: float = 0.5, batch_size: int = 8):
    """How a large image is predicted: the windows (every other one outlined), the Gaussian weight of one
    window, the blended prediction, and the same windows cut edge to edge without blending, whose seams show."""
    tile = predictor.tile
    corners = geometry.window_corners(*image.shape[:2], tile, overlap)
    blended = sliding_windows(predictor, image, overlap, batch_size).argmax(-1).astype(np.uint8)
    hard = sliding_windows(predictor, image, 0.0, batch_size, blend=False).argmax(-1).astype(np.uint8)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    axes[0].imshow(plots.display(image))
    for i, (y, x) in enumerate(corners[::2]):
        axes[0].add_patch(Rectangle((x, y), tile, tile, fill=False, color=f"C{i % 10}", lw=1))
    axes[1].imshow(gaussian_weight(tile), cmap="viridis")
    axes[2].imshow(plots.colorize(blended, predictor.colors))
    axes[3].imshow(plots.colorize(hard, predictor.colors))
    titles = [f"{len(corners)} windows of {tile} px, overlap {overlap:g}", "the weight of one window",
              "blended", "edge to edge, not blended"]
    for ax, title in zip(axes, titles):
        ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    return fig


def zoom_figure(predictor: Predictor, image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None,
                size: int | None = None):
    """A crop of ``size`` px (two windows) from the centre of a large image: image, truth, prediction, overlay."""
    size = size or 2 * predictor.tile
    y, x = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
    crop = lambda a: a[y:y + size, x:x + size]
    panels = [crop(image), *([crop(truth)] if truth is not None else []), crop(prediction),
              plots.overlay(crop(image), crop(prediction), predictor.colors)]
    titles = ["image", *(["true mask"] if truth is not None else []), "prediction", "overlay"]
    return plots.image_grid([panels], [f"{t} (zoomed)" for t in titles], predictor.classes, predictor.colors, size=3.2)
