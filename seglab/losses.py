"""The training loss: segmentation_models' Dice loss with the class weights of notebook 02, plus focal or cross-entropy.

In segmentation_models' own words (its losses add up, and take per-class weights)::

    loss = sm.losses.DiceLoss(class_weights=weights) + sm.losses.CategoricalFocalLoss()

The weights are scaled to mean 1 so the Dice term stays in [0, 1]. Ignored pixels arrive as
all-zero one-hot rows; zeroing the prediction there too takes them out of every term (Dice
would otherwise count them as false positives).
"""
from __future__ import annotations

import numpy as np

from seglab.backend import sm, tf

LOSSES = ("dice", "dice+focal", "dice+crossentropy")


def sm_loss(kind: str, class_weights):
    """The segmentation_models loss of ``kind`` (``train.loss``), with ``class_weights`` scaled to mean 1."""
    weights = np.asarray(class_weights, np.float32)
    weights = weights / weights.mean()
    dice = sm.losses.DiceLoss(class_weights=weights)
    if kind == "dice+focal":
        return dice + sm.losses.CategoricalFocalLoss()
    if kind == "dice+crossentropy":
        return dice + sm.losses.CategoricalCELoss(class_weights=weights)
    return dice


def make_loss(kind: str, class_weights):
    """:func:`sm_loss`, blind to ignored pixels."""
    loss = sm_loss(kind, class_weights)

    def masked_loss(y_true, y_pred):
        labelled = tf.reduce_sum(y_true, axis=-1, keepdims=True)
        return loss(y_true, y_pred * tf.cast(labelled, y_pred.dtype))

    masked_loss.__name__ = kind.replace("+", "_")
    return masked_loss
