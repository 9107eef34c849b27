"""Every score from one confusion matrix, accumulated over a whole split.

Scores averaged per batch are biased (a batch with no pixels of a class scores it 0 or 1);
summing the counts first and dividing once is the dataset-level definition used in papers.
"""
from __future__ import annotations

import numpy as np

from seglab.sources import IGNORE


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted ones (scikit-learn's convention).

    Pixels whose truth is the ignore label are left out: they belong to no class.
    """
    truth, prediction = truth.ravel(), prediction.ravel()
    if truth.max(initial=0) == IGNORE:
        keep = truth != IGNORE
        truth, prediction = truth[keep], prediction[keep]
    index = truth.astype(np.int64) * num_classes + prediction.astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(cm: np.ndarray, names: list[str]) -> dict:
    """Per-class IoU, Dice, precision, recall; mean IoU over classes present; fwIoU; pixel accuracy."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    truth, predicted = cm.sum(1), cm.sum(0)
    union = truth + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(truth + predicted > 0, 2 * tp / (truth + predicted), np.nan)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(truth > 0, tp / truth, np.nan)
    present = truth > 0
    freq = truth / truth.sum()
    per_class = lambda values: {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, values)}
    return {
        "mean_iou": float(np.nanmean(iou[present])),
        "mean_dice": float(np.nanmean(dice[present])),
        "frequency_weighted_iou": float(np.nansum(freq[present] * iou[present])),
        "pixel_accuracy": float(tp.sum() / cm.sum()),
        "per_class_iou": per_class(iou),
        "per_class_dice": per_class(dice),
        "per_class_precision": per_class(np.where(present | (predicted > 0), precision, np.nan)),
        "per_class_recall": per_class(recall),
    }


def image_mean_iou(cm: np.ndarray) -> float:
    """One image's mean IoU over the classes in its truth or prediction, so an invented object counts."""
    cm = cm.astype(np.float64)
    tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    seen = union > 0
    return float(np.mean(tp[seen] / union[seen])) if seen.any() else 1.0
