"""Every score from one confusion matrix, accumulated over a whole split; in NumPy for notebook 04, in Keras for training.

Scores averaged per batch are biased (a batch with no pixels of a class scores it 0 or 1);
summing the counts first and dividing once is the dataset-level definition used in papers.
The Keras metric :class:`MeanIoU` computes the same mean IoU during training, so the epoch
kept by the checkpoint is the one notebook 04 would rank best.
"""
from __future__ import annotations

import numpy as np

from seglab.backend import keras, tf
from seglab.readers import IGNORE
from seglab.records import class_key


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


def best_and_worst(per_image_iou: dict, count: int = 2) -> tuple[list[str], list[str]]:
    """The ``count`` images with the highest and with the lowest IoU; on a tie, the later image ranks higher."""
    ranked = sorted(per_image_iou, key=lambda i: per_image_iou[i])
    return ranked[::-1][:count], ranked[:count]


class MeanIoU(keras.metrics.Metric):
    """Dataset-level mean IoU of the argmax, from one confusion matrix per epoch, as notebook 04 scores.

    segmentation_models' ``IOUScore`` thresholds each class's probability, averages over
    batches and scores a class absent from a batch as about 1; choosing checkpoints by it
    need not choose the model with the best reported score. Ignored pixels (all-zero
    one-hot rows) are left out; the mean is over classes present in the truth.

    With ``class_names`` the result is a dict that Keras logs key by key: ``mean_iou`` and each
    class's IoU (:func:`class_key`; 0 for a class absent from the epoch's truth), so the history
    shows a class that is never learned.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None, name: str = "mean_iou", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.class_names = num_classes, list(class_names) if class_names else None
        self.confusion = self.add_weight("confusion", shape=(num_classes, num_classes), initializer="zeros",
                                         dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labelled = tf.reduce_sum(y_true, axis=-1) > 0
        truth = tf.boolean_mask(tf.argmax(y_true, axis=-1), labelled)
        predicted = tf.boolean_mask(tf.argmax(y_pred, axis=-1), labelled)
        self.confusion.assign_add(tf.math.confusion_matrix(truth, predicted, self.num_classes, dtype=tf.float64))

    def result(self):
        tp = tf.linalg.diag_part(self.confusion)
        truth, predicted = tf.reduce_sum(self.confusion, 1), tf.reduce_sum(self.confusion, 0)
        iou = tf.math.divide_no_nan(tp, truth + predicted - tp)
        present = truth > 0
        mean = tf.math.divide_no_nan(tf.reduce_sum(tf.boolean_mask(iou, present)),
                                     tf.cast(tf.math.count_nonzero(present), tf.float64))
        if not self.class_names:
            return mean
        return {self.name: mean, **{class_key(n): iou[i] for i, n in enumerate(self.class_names)}}

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "class_names": self.class_names}
