"""Figures shared by several notebooks: colour masks, legends, sample grids, bar charts.

Every function returns a matplotlib Figure; :func:`save` writes it into the run folder's
``figures/`` atomically, under a name that says what it shows.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from seglab.artifacts import RunDir, save_figure
from seglab.sources import IGNORE, stretch

IGNORE_COLOR = [128, 128, 128]  # neutral grey for pixels the labels leave out


def colorize(mask: np.ndarray, colors: list) -> np.ndarray:
    """Class colours; the ignore label (and any value beyond the classes) in neutral grey."""
    lut = np.tile(np.asarray(IGNORE_COLOR, np.uint8), (IGNORE + 1, 1))
    lut[: len(colors)] = colors
    return lut[mask]


def display(image: np.ndarray) -> np.ndarray:
    """A uint8 RGB view of any (H, W, C) image: the first three channels, or the first as grey when
    there are fewer; stretched per channel (:func:`sources.stretch`) unless 8-bit."""
    view = image[..., :3] if image.shape[2] >= 3 else image[..., :1]
    view = view if view.dtype == np.uint8 else stretch(view)
    return np.repeat(view, 3 // view.shape[2], axis=2)


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


def save(fig, run: RunDir, name: str, dpi: int = 100):
    """Write ``figures/NAME.png`` in the run folder and return the figure for display."""
    save_figure(fig, run.path("figures", f"{name}.png"), dpi=dpi)
    return fig
