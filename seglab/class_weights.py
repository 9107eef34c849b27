"""Step 02: class weights from the training split's pixel counts, which notebook 01 counted.

Weights reach training through the loss (Dice and cross-entropy take per-class weights);
Keras' ``fit(class_weight=)`` weighs whole samples and does not apply to per-pixel targets.
"""
from __future__ import annotations

import warnings

import numpy as np

from seglab import plots
from seglab.config import WEIGHT_SCHEMES
from seglab.records import ClassWeights, DatasetRecord
from seglab.rundir import RunDir


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


def write_class_weights(run: RunDir, cfg) -> ClassWeights:
    """Run step 02: weights from the dataset record's training pixel counts; ``class_weights.json``."""
    with run.begin("class_weights", cfg) as step:
        dataset = step.read(DatasetRecord)
        train = dataset.splits["train"]
        counts = np.asarray(train.pixels)
        weights = compute_weights(counts, cfg.class_weights.scheme, cfg.class_weights.max_ratio, train.present_in,
                                  dataset.classes)
        result = ClassWeights(cfg.class_weights.scheme, cfg.class_weights.max_ratio, dataset.classes, counts.tolist(),
                              (counts / counts.sum()).tolist(), weights.tolist())
        step.save(result)
        step.finish()
    return result


def weights_figure(result: ClassWeights):
    share = np.array(result.share) * 100
    return plots.grouped_bars({"% of training pixels": share.tolist(), "weight": list(result.weights)},
                              result.classes, "value (log scale)",
                              f"Class frequency against weight ({result.scheme})", log=True)
