"""Keras callbacks of the series' own: the best weights, the cosine learning rate, the time budget, a backup
every few minutes, one line per epoch and the predictions epoch by epoch.

Keras' own (``CSVLogger``, ``TensorBoard``) do the rest; :func:`seglab.training.callbacks` lists them
all in the order they run.
"""
from __future__ import annotations

import math
import time

import numpy as np


from seglab.backend import keras, tf


class BestWeights(keras.callbacks.Callback):
    """The weights of the epoch with the best ``monitor`` so far, kept in memory: Keras' ``ModelCheckpoint`` writes
    them to disk at every improvement, 0.6-1.1 s of the demo's 8.5 s epoch (bench/overhead.py). They reach the disk
    with the training state (:class:`PeriodicBackup`), and training ends by setting them. A resumed training starts
    from the ``best`` and ``weights`` written with its state."""

    def __init__(self, monitor: str, best: float | None = None, weights: list | None = None):
        super().__init__()
        self.monitor, self.best, self.weights = monitor, best, weights

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get(self.monitor)
        if score is not None and np.isfinite(score) and (self.best is None or score > self.best):
            self.best, self.weights = float(score), self.model.get_weights()


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


class PeriodicBackup(keras.callbacks.BackupAndRestore):
    """Keras' ``BackupAndRestore``, written after the first epoch that ends ``minutes`` after the last write instead
    of after every epoch (``minutes=0``: every epoch). The state is the model and Adam's two moments, three times the
    model's size: written after every epoch of the demo it took 0.3-0.5 s of 8.5 (bench/overhead.py). A resumed
    training repeats the epochs since the last write. ``before_backup(epoch)`` runs first, to keep with the state
    what must agree with it (the best weights: :func:`seglab.training.write_best`)."""

    def __init__(self, backup_dir: str, minutes: float, before_backup=lambda epoch: None, clock=time.monotonic):
        super().__init__(backup_dir)
        self.seconds, self.before_backup, self.clock = minutes * 60, before_backup, clock

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.last = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        if self.clock() - self.last >= self.seconds:
            self.before_backup(epoch)
            super().on_epoch_end(epoch, logs)
            self.last = self.clock()


class EpochLine(keras.callbacks.Callback):
    """One line per epoch instead of Keras' progress bars: the losses, the mean IoUs, the learning rate, the time."""

    def __init__(self, name: str, epochs: int, log=print):
        super().__init__()
        self.name, self.epochs, self.log = name, epochs, log

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"{key} {logs[key]:.3f}" for key in ("loss", "val_loss", "mean_iou", "val_mean_iou") if key in logs]
        rate = f"lr {logs['lr']:.1e}" if "lr" in logs else ""
        total = f"/{self.epochs}" if self.epochs < 1000 else ""  # train.epochs=auto: the budget decides
        self.log(f"{self.name} epoch {epoch + 1:>3}{total}  " + "  ".join(parts + [rate]).strip()
                 + f"  {time.perf_counter() - self.start:.0f} s")


class EpochPredictions(keras.callbacks.Callback):
    """The model's prediction for one validation image after every epoch, to watch it learn (TensorFlow's
    segmentation tutorial's ``DisplayCallback``); ``predictions`` holds the label maps.

    On a training cluster it watches nothing: reading the model there is a collective step (its batch-norm
    statistics are summed over the workers) that the other workers, which do not run this callback, never join."""

    def __init__(self, image):
        super().__init__()
        self.image, self.predictions = image, []

    def on_epoch_end(self, epoch, logs=None):
        if isinstance(self.model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return
        self.predictions.append(self.model.predict_on_batch(self.image[None])[0].argmax(-1).astype("uint8"))
