"""Figures shared by several notebooks: colour masks, legends, image grids, bar charts, training curves.

Every function returns a matplotlib Figure; :func:`save` writes it into the run folder's
``figures/`` atomically, under a name that says what it shows.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from seglab.atomic import save_figure
from seglab.readers import IGNORE, stretch
from seglab.records import class_key

IGNORE_COLOR = [128, 128, 128]  # neutral grey for pixels the labels leave out


def colorize(mask: np.ndarray, colors: list) -> np.ndarray:
    """Class colours; the ignore label (and any value beyond the classes) in neutral grey."""
    lut = np.tile(np.asarray(IGNORE_COLOR, np.uint8), (IGNORE + 1, 1))
    lut[: len(colors)] = colors
    return lut[mask]


def display(image: np.ndarray) -> np.ndarray:
    """A uint8 RGB view of any (H, W, C) image: the first three channels, or the first as grey when
    there are fewer; stretched per channel (:func:`readers.stretch`) unless 8-bit."""
    view = image[..., :3] if image.shape[2] >= 3 else image[..., :1]
    view = view if view.dtype == np.uint8 else stretch(view)
    return np.repeat(view, 3 // view.shape[2], axis=2)


def overlay(image: np.ndarray, mask: np.ndarray, colors: list, alpha: float = 0.45) -> np.ndarray:
    """The colour mask over the image (as :func:`display` shows it); background (class 0) left clear."""
    image = display(image)
    colored = colorize(mask, colors).astype(np.float32)
    return np.where(mask[..., None] > 0, (1 - alpha) * image + alpha * colored, image).astype(np.uint8)


def add_legend(fig, classes: list, colors: list) -> None:
    handles = [Patch(facecolor=np.array(c) / 255, edgecolor="grey", label=n) for n, c in zip(classes, colors)]
    fig.legend(handles=handles, loc="lower center", ncol=len(classes), frameon=False, bbox_to_anchor=(0.5, -0.02))


def image_grid(rows: list[list[np.ndarray]], titles: list[str], classes: list, colors: list, size: float = 2.4):
    """A grid whose columns are titled; integer 2-D arrays are drawn as class colours, images as :func:`display` shows them."""
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(size * len(titles), size * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            ax = axes[r, c]
            if panel.ndim == 2 and panel.dtype.kind in "ui":
                panel = colorize(panel, colors)
            elif panel.ndim == 3:
                panel = display(panel)
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
    add_legend(fig, classes, colors)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def grouped_bars(values: dict[str, list[float]], labels: list[str], ylabel: str, title: str, log: bool = False):
    """One group per label, one bar per series (e.g. per-class IoU by model)."""
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(labels) * max(1, len(values) / 2)), 3.6))
    width = 0.8 / len(values)
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(values.items()):
        bars = ax.bar(x + (i - (len(values) - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves_figure(histories: dict):
    """Per architecture (``{arch: History}``), one column: mean IoU above, loss below; solid training, dashed
    validation; the epoch kept by the checkpoint marked."""
    fig, axes = plt.subplots(2, len(histories), figsize=(3.2 * len(histories), 5), squeeze=False, sharex="col")
    for (iou_ax, loss_ax), (arch, history) in zip(axes.T, histories.items()):
        x = [int(e["epoch"]) + 1 for e in history.epochs]
        for ax, key, label in ((iou_ax, "mean_iou", "mean IoU"), (loss_ax, "loss", "loss")):
            ax.plot(x, [e[key] for e in history.epochs], color="C0", label="training")
            ax.plot(x, [e[f"val_{key}"] for e in history.epochs], "--", color="C1", label="validation")
            ax.set_ylabel(label)
        best = max(history.epochs, key=lambda e: e["val_mean_iou"])
        iou_ax.plot(int(best["epoch"]) + 1, best["val_mean_iou"], "o", color="C1")
        iou_ax.set(title=arch, ylim=(0, 1))
        loss_ax.set_xlabel("epoch")
    axes[0, 0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def class_iou_figure(histories: dict, classes: list):
    """Per architecture, each class's validation IoU after every epoch and the mean (black, dashed): a class whose
    line stays near 0 is not being learned. ``classes`` names them as the histories' keys do (``metrics.class_key``)."""
    fig, axes = plt.subplots(1, len(histories), figsize=(3.2 * len(histories), 2.9), squeeze=False, sharey=True)
    for ax, (arch, history) in zip(axes[0], histories.items()):
        x = [int(e["epoch"]) + 1 for e in history.epochs]
        for i, name in enumerate(classes):
            key = f"val_{class_key(name)}"
            if all(key in e for e in history.epochs):  # a history from before per-class logging has none
                ax.plot(x, [e[key] for e in history.epochs], color=f"C{i % 10}", label=name)
        ax.plot(x, [e["val_mean_iou"] for e in history.epochs], "--", color="black", label="mean")
        ax.set(title=arch, xlabel="epoch", ylim=(0, 1))
    axes[0, 0].set_ylabel("validation IoU")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def learning_rate_figure(histories: dict):
    """The learning rate of every epoch (Keras logs it as ``lr``), for each architecture."""
    fig, ax = plt.subplots(figsize=(5, 2.8))
    for arch, history in histories.items():
        ax.plot([int(e["epoch"]) + 1 for e in history.epochs], [e["lr"] for e in history.epochs], marker=".",
                label=arch)
    ax.set(xlabel="epoch", ylabel="learning rate", title="The cosine decay, epoch by epoch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def epoch_strip(image: np.ndarray, truth: np.ndarray, predictions: dict, classes: list, colors: list, shown: int = 8):
    """One validation image, its true mask, and each architecture's prediction after every epoch (``{arch: [labels,
    ...]}``; at most ``shown`` epochs, evenly spaced), a row per architecture."""
    epochs = max(len(labels) for labels in predictions.values())
    picked = np.unique(np.linspace(0, epochs - 1, min(shown, epochs)).round().astype(int)).tolist()
    blank = np.full(truth.shape, IGNORE, np.uint8)  # an epoch a resumed training did not watch
    rows = [[image, truth] + [labels[i] if i < len(labels) else blank for i in picked]
            for labels in predictions.values()]
    fig = image_grid(rows, ["image", "truth"] + [f"epoch {i + 1}" for i in picked], classes, colors, size=1.6)
    for axis, arch in zip(fig.axes[:: len(picked) + 2], predictions):
        axis.set_ylabel(arch, fontsize=9)
    return fig


def save(fig, run, name: str, dpi: int = 100):
    """Write ``figures/NAME.png`` in the run folder (a :class:`~seglab.rundir.RunDir`) and return the figure."""
    save_figure(fig, run.path("figures", f"{name}.png"), dpi=dpi)
    return fig
