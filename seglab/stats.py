"""Statistics of the data, each computed in one place: pixel counts, channel moments, the dataset fingerprint.

Notebook 01 computes them while it reads the source; notebook 02 and training read the
results from the dataset record instead of counting again.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from seglab.readers import IGNORE, MAX_PIXELS, ClassInfo, image_format, read_pair
from seglab.records import ClassShares, Fingerprint

PIXELS_PER_IMAGE = 10_000  # pixels of each measured image kept for the fingerprint's intensity statistics


def class_pixels(mask: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: its labelled pixels in ``mask``, and the mask's labelled pixels where the class appears
    (SegNet's median-frequency weights divide the one by the other). Ignored pixels count for neither."""
    counts = np.bincount(mask.ravel(), minlength=IGNORE + 1)[:num_classes].astype(np.int64)
    return counts, np.where(counts > 0, counts.sum(), 0)


class ChannelMoments:
    """Per channel: pixel count, mean, sum of squared deviations, minimum and maximum, merged image by
    image with Chan et al.'s pairwise update (exact, no large sums squared)."""

    def __init__(self, image: np.ndarray | None = None):
        self.values = None if image is None else self._of(image)

    @staticmethod
    def _of(image: np.ndarray) -> np.ndarray:
        pixels = image.reshape(-1, image.shape[2])
        mean = pixels.mean(0, dtype=np.float64)
        squares = ((pixels - mean) ** 2).sum(0)
        return np.stack([np.full(mean.shape, len(pixels), np.float64), mean, squares, pixels.min(0), pixels.max(0)])

    def add(self, other: "ChannelMoments") -> None:
        a, b = self.values, other.values
        if a is None:
            self.values = b
            return
        n, delta = a[0] + b[0], b[1] - a[1]
        self.values = np.stack([n, a[1] + delta * b[0] / n, a[2] + b[2] + delta ** 2 * a[0] * b[0] / n,
                                np.minimum(a[3], b[3]), np.maximum(a[4], b[4])])

    def summary(self) -> dict:
        n, mean, squares, low, high = self.values
        return {"mean": mean.tolist(), "std": np.sqrt(squares / n).tolist(), "min": low.tolist(), "max": high.tolist()}


def rare_classes(counts, threshold: float) -> list[int]:
    """The classes ``train.sampling: rare`` forces into a share of each batch.

    Rule: every class present in the training split with less than ``threshold`` of its
    labelled pixels; when none is that rare, the least frequent present class (with a single
    foreground class, that is nnU-Net's foreground oversampling). An absent class cannot be drawn.
    """
    counts = np.asarray(counts, np.float64)
    present = np.flatnonzero(counts > 0)
    rare = [int(c) for c in present if counts[c] < threshold * counts.sum()]
    return rare or [int(present[np.argmin(counts[present])])]


def pixel_shares(splits: dict) -> dict[str, list[float]]:
    """Per split (the dataset record's), each class's share of the labelled pixels: the first sign of imbalance."""
    return {name: (np.asarray(info.pixels) / max(1, sum(info.pixels))).tolist() for name, info in splits.items()}


def _spread(values) -> dict:
    low, p10, median, p90, high = np.percentile(values, (0, 10, 50, 90, 100))
    return {"min": float(low), "p10": float(p10), "median": float(median), "p90": float(p90), "max": float(high)}


def intensity_stats(pixels: np.ndarray) -> dict:
    """Per channel mean, standard deviation and 0.5 / 99.5 percentiles of ``pixels`` (N x C)."""
    low, high = np.percentile(pixels, (0.5, 99.5), axis=0)
    return {"mean": pixels.mean(0, dtype=np.float64).tolist(), "std": pixels.std(0, dtype=np.float64).tolist(),
            "p0.5": low.tolist(), "p99.5": high.tolist()}


def measure(sample: list, classes: ClassInfo, images: int, seed: int = 0, channels: int | None = None,
            max_pixels: int = MAX_PIXELS) -> Fingerprint:
    """What the data is, measured on ``sample`` (stem, image, mask) of the ``images`` source pairs:
    image sizes, channels as stored, intensities as read (over ``PIXELS_PER_IMAGE`` random pixels
    of each image, read with ``channels`` as the shards will hold them), and per class the share of
    labelled pixels and of images it appears in."""
    rng = np.random.default_rng(seed)
    shapes, stored, kept = [], Counter(), []
    pixels, present = np.zeros(len(classes.names), np.int64), np.zeros(len(classes.names), np.int64)
    for _, image_path, mask_path in sample:
        image, mask = read_pair(image_path, mask_path, classes, channels, max_pixels=max_pixels)
        shapes.append(mask.shape)
        stored[image_format(image_path, max_pixels)[0]] += 1
        flat = image.reshape(-1, image.shape[2])
        kept.append(flat[rng.choice(len(flat), min(len(flat), PIXELS_PER_IMAGE), replace=False)])
        counts, _ = class_pixels(mask, len(classes.names))
        pixels += counts
        present += counts > 0
    heights, widths = np.array(shapes).T
    return Fingerprint(
        images=images, measured=len(sample),
        size={"height": _spread(heights), "width": _spread(widths), "short_side": _spread(np.minimum(heights, widths))},
        channels={str(c): n for c, n in sorted(stored.items())},
        intensity=intensity_stats(np.concatenate(kept)),
        classes=ClassShares(classes.names, (pixels / max(1, pixels.sum())).tolist(), (present / len(sample)).tolist()))
