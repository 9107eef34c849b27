"""Keras callbacks of the series' own: the cosine learning rate and the time budget.

Keras' own (``BackupAndRestore``, ``ModelCheckpoint``, ``CSVLogger``, ``TensorBoard``) do the
rest; :func:`seglab.training.callbacks` lists them all in the order they run.
"""
from __future__ import annotations

import math
import time

from seglab.backend import keras


class CosineDecay(keras.callbacks.Callback):
    """Cosine decay from ``base`` to 0 over whichever ends training first: the epochs or the time budget.

    With a time budget the decay follows the training wall time, batch by batch, so the last
    minutes run at a small learning rate however many epochs the machine manages.
    """

    def __init__(self, base: float, epochs: int, minutes: float | None = None):
        super().__init__()
        self.base, self.epochs, self.seconds = base, epochs, minutes * 60 if minutes else None
        self.epoch = 0

    def progress(self) -> float:
        by_epoch = self.epoch / self.epochs
        by_time = (time.perf_counter() - self.start) / self.seconds if self.seconds else 0.0
        return min(1.0, max(by_epoch, by_time))

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        keras.backend.set_value(self.model.optimizer.learning_rate,
                                self.base * 0.5 * (1 + math.cos(math.pi * self.progress())))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(keras.backend.get_value(self.model.optimizer.learning_rate))


class TimeBudget(keras.callbacks.Callback):
    """Stop after ``minutes`` of training wall time, mid-epoch if need be.

    Keras still validates the cut epoch, so checkpointing and the history see it like any
    other; comparing recipes "at the same budget" means this budget.
    """

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.start > self.seconds:
            self.model.stop_training = True
