"""Step 05: the pictures people want, each also saved as a PNG named for what it shows."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from seglab import plots
from seglab.readers import IGNORE, read_labels
from seglab.records import DatasetRecord, History, Metrics
from seglab.rundir import RunDir, Step
from seglab.shards import original_pairs

ERROR_COLORS = [[40, 40, 40], [255, 0, 60], plots.IGNORE_COLOR]  # correct pixel, wrong pixel, ignored pixel


def begin(run: RunDir, cfg) -> tuple[Step, DatasetRecord, Metrics]:
    """Start step 05: the dataset record and notebook 04's metrics, read through the step."""
    step = run.begin("visualization", cfg)
    return step, step.read(DatasetRecord), step.read(Metrics)


def comparison_figure(run: RunDir, dataset: DatasetRecord, arch: str, ids: list[str], labels: list[str] | None = None):
    """Image, ground truth, prediction and error map (red: wrong, grey: ignored) side by side.

    The test images and masks at their original size come from notebook 01's shards (only
    ``ids`` are kept in memory), the predictions from the PNGs notebook 04 saved.
    """
    titles = ["image", "ground truth", f"{arch} prediction", "errors (red)"]
    found = {}
    for stem, image, truth in original_pairs(run, dataset, "test", stems=ids):
        prediction = read_labels(run.path("predictions", arch, f"{stem}.png"))
        errors = np.where(truth == IGNORE, 2, truth != prediction).astype(np.uint8)
        found[stem] = [image, truth, prediction, np.asarray(ERROR_COLORS, np.uint8)[errors]]
    fig = plots.image_grid([found[stem] for stem in ids], titles, dataset.classes, dataset.colors)
    for row, text in zip(fig.axes[:: len(titles)], labels or []):
        row.set_ylabel(text, fontsize=9)
    return fig


def confusion_figure(report: Metrics, columns: int = 3):
    """Row-normalised confusion matrices, at most ``columns`` a row: each row of a matrix shows where the pixels
    of one true class went."""
    names, classes = list(report.models), report.classes
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, min(columns, len(names)), figsize=(4.2 * min(columns, len(names)), 4 * rows),
                             squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        cm = np.array(report.models[name].confusion_matrix, np.float64)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(norm):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=10, color="white" if v > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=9)
        ax.set_yticks(range(len(classes)), classes, fontsize=9)
        ax.set(title=name, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    return fig


def per_class_iou_figure(report: Metrics):
    classes = report.classes
    series = {name: [m.per_class_iou[c] or 0.0 for c in classes] for name, m in report.models.items()}
    fig = plots.grouped_bars(series, classes, "IoU", "Per-class IoU on the test split")
    fig.axes[0].set_ylim(0, 1.1)
    return fig


def curves_figure(step: Step, report: Metrics):
    """The training curves of every model scored, from notebook 03's histories."""
    return plots.curves_figure({arch: step.read(History, arch) for arch in report.models})


def record(step: Step):
    """Register step 05: every figure it saved."""
    for path in sorted(step.run.path("figures").glob("05_*.png")):
        step.wrote(path)
    return step.finish()
