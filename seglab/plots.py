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
    """Loss and validation IoU per epoch of every architecture (``{arch: History}``), on one figure."""
    fig, (loss_ax, iou_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for arch, history in histories.items():
        epochs = history.epochs
        x = [int(e["epoch"]) + 1 for e in epochs]
        line, = loss_ax.plot(x, [e["loss"] for e in epochs], label=f"{arch} train")
        loss_ax.plot(x, [e["val_loss"] for e in epochs], "--", color=line.get_color(), label=f"{arch} val")
        iou_ax.plot(x, [e["mean_iou"] for e in epochs], color=line.get_color(), label=f"{arch} train")
        iou_ax.plot(x, [e["val_mean_iou"] for e in epochs], "--", color=line.get_color(), label=f"{arch} val")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss (solid: train, dashed: validation)")
    iou_ax.set(xlabel="epoch", ylabel="mean IoU", title="Mean IoU (solid: train, dashed: validation)", ylim=(0, 1))
    iou_ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def save(fig, run, name: str, dpi: int = 100):
    """Write ``figures/NAME.png`` in the run folder (a :class:`~seglab.rundir.RunDir`) and return the figure."""
    save_figure(fig, run.path("figures", f"{name}.png"), dpi=dpi)
    return fig
