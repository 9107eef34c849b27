"""Step 05: the pictures people want, each also saved as a PNG named for what it shows."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from seglab import data_loading, plots
from seglab.artifacts import RunDir
from seglab.sources import IGNORE

ERROR_COLORS = [[40, 40, 40], [255, 0, 60], plots.IGNORE_COLOR]  # correct pixel, wrong pixel, ignored pixel


def _load(run: RunDir, arch: str, stem: str, originals: dict):
    """A test image and its mask at their original size (notebook 01), and the prediction notebook 04 saved."""
    image, truth = (np.asarray(Image.open(p)) for p in originals[stem])
    prediction = np.asarray(Image.open(run.path("predictions", arch, f"{stem}.png")))
    return image, truth, prediction


def comparison_figure(run: RunDir, manifest: dict, arch: str, ids: list[str], labels: list[str] | None = None):
    """Image, ground truth, prediction and error map (red: wrong, grey: ignored) side by side."""
    rows, titles = [], ["image", "ground truth", f"{arch} prediction", "errors (red)"]
    originals = {stem: (image, mask) for stem, image, mask in data_loading.original_pairs(run, manifest, "test")}
    for stem in ids:
        image, truth, prediction = _load(run, arch, stem, originals)
        errors = np.where(truth == IGNORE, 2, truth != prediction).astype(np.uint8)
        rows.append([image, truth, prediction, np.asarray(ERROR_COLORS, np.uint8)[errors]])
    fig = plots.image_grid(rows, titles, manifest["classes"], manifest["colors"])
    for row, text in zip(fig.axes[:: len(titles)], labels or []):
        row.set_ylabel(text, fontsize=9)
    return fig


def best_and_worst(per_image_iou: dict, count: int = 2) -> tuple[list[str], list[str]]:
    ranked = sorted(per_image_iou, key=lambda i: per_image_iou[i])
    return ranked[::-1][:count], ranked[:count]


def confusion_figure(report: dict):
    """Row-normalised confusion matrices: each row shows where the pixels of one true class went."""
    names, classes = list(report["models"]), report["classes"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        cm = np.array(report["models"][name]["confusion_matrix"], np.float64)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(norm):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set(title=name, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    return fig


def per_class_iou_figure(report: dict):
    classes = report["classes"]
    series = {name: [m["per_class_iou"][c] or 0.0 for c in classes] for name, m in report["models"].items()}
    fig = plots.grouped_bars(series, classes, "IoU", "Per-class IoU on the test split")
    fig.axes[0].set_ylim(0, 1.1)
    return fig


def load_inputs(run: RunDir) -> tuple[dict, dict]:
    """The dataset manifest and the metrics, as notebooks 01 and 04 wrote them."""
    from seglab import evaluation

    return data_loading.load_manifest(run), evaluation.load_metrics(run)
