"""Step 02: class weights from the training split's pixel counts.

Counts are streamed one mask at a time (a bincount each), so memory does not depend on the
dataset size. Weights reach training through the loss (Dice and cross-entropy take
per-class weights); Keras' ``fit(class_weight=)`` does not apply to per-pixel targets.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from seglab import data_loading
from seglab.artifacts import RunDir, read_json, write_json
from seglab.config import WEIGHT_SCHEMES
from seglab.sources import IGNORE


def pixel_counts(masks, num_classes: int, total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of each class, and labelled pixels of the images in which each class appears (for
    SegNet's scheme), from class-index masks (arrays, or paths to PNGs) streamed one at a time;
    ignored pixels (value 255) belong to no class and count for neither."""
    counts = np.zeros(num_classes, np.int64)
    present_in = np.zeros(num_classes, np.int64)
    for mask in tqdm(masks, total=total, desc="counting pixels"):
        mask = np.asarray(Image.open(mask)) if isinstance(mask, (str, Path)) else mask
        per_class = np.bincount(mask.ravel(), minlength=IGNORE + 1)[:num_classes]
        counts += per_class
        present_in[per_class > 0] += per_class.sum()
    return counts, present_in


def compute_weights(counts, scheme: str, max_ratio: float | None = None, present_in=None,
                    names=None) -> np.ndarray:
    """Per-class weights.

    - ``balanced``: ``n_pixels / (n_classes * count_c)``, scikit-learn's ``compute_class_weight("balanced")``.
    - ``median_frequency``: ``median(f) / f_c`` with ``f_c = count_c / pixels of images containing c``
      (Eigen and Fergus 2015, used by SegNet).
    - ``inverse_sqrt``: ``1 / sqrt(share_c)``, a milder correction, normalised to mean 1.
    - ``none``: all ones.

    A class with no training pixels gets the largest weight of the others, with a warning.
    ``max_ratio`` clips every weight to at most ``max_ratio`` times the smallest.
    """
    counts = np.asarray(counts, np.float64)
    names = names or [str(i) for i in range(len(counts))]
    present = counts > 0
    if not present.any():
        raise ValueError("no labelled pixels in the training split")
    weights = np.ones_like(counts)
    if scheme == "balanced":
        weights[present] = counts.sum() / (len(counts) * counts[present])
    elif scheme == "median_frequency":
        freq = counts[present] / np.asarray(present_in, np.float64)[present]
        weights[present] = np.median(freq) / freq
    elif scheme == "inverse_sqrt":
        share = counts[present] / counts.sum()
        weights[present] = 1 / np.sqrt(share)
        weights[present] /= weights[present].mean()
    elif scheme != "none":
        raise ValueError(f"unknown class weight scheme {scheme!r}; use one of {', '.join(WEIGHT_SCHEMES)}")
    if not present.all():
        missing = [names[i] for i in np.flatnonzero(~present)]
        warnings.warn(f"class(es) {', '.join(missing)} have no pixels in the training split; "
                      f"they get the largest weight of the others ({weights[present].max():.3g})", stacklevel=2)
        weights[~present] = weights[present].max()
    if max_ratio:
        weights = np.minimum(weights, weights.min() * max_ratio)
    return weights


def rare_classes(counts, threshold: float) -> list[int]:
    """The classes that ``train.sampling: rare`` forces into a share of each batch.

    Rule: every class present in the training split with less than ``threshold`` of its
    labelled pixels; when none is that rare, the least frequent present class (with a single
    foreground class, that is nnU-Net's foreground oversampling). An absent class cannot be drawn.
    """
    counts = np.asarray(counts, np.float64)
    present = np.flatnonzero(counts > 0)
    rare = [int(c) for c in present if counts[c] < threshold * counts.sum()]
    return rare or [int(present[np.argmin(counts[present])])]


def write_class_weights(run: RunDir, cfg) -> dict:
    manifest = data_loading.load_manifest(run)
    masks = (mask for _, _, mask in data_loading.read_samples(data_loading.split_shards(run, manifest, "train"), images=False))
    counts, present_in = pixel_counts(masks, len(manifest["classes"]), manifest["splits"]["train"]["items"])
    scheme = cfg.class_weights
    weights = compute_weights(counts, scheme.scheme, scheme.max_ratio, present_in, manifest["classes"])
    result = {"scheme": scheme.scheme, "max_ratio": scheme.max_ratio, "classes": manifest["classes"],
              "counts": counts.tolist(), "share": (counts / counts.sum()).tolist(), "weights": weights.tolist()}
    run.start("class_weights")
    write_json(run.path("class_weights.json"), result)
    run.record("class_weights", {"class_weights": "class_weights.json"}, config=cfg, inputs=("data",))
    return result


def load_class_weights(run: RunDir) -> dict:
    return read_json(run.output("class_weights", "class_weights"))


def weights_figure(result: dict):
    from seglab import plots

    share = np.array(result["share"]) * 100
    weights = np.array(result["weights"])
    return plots.grouped_bars({"% of training pixels": share.tolist(), "weight": weights.tolist()},
                              result["classes"], "value (log scale)",
                              f"Class frequency against weight ({result['scheme']})", log=True)
