"""tf.data input pipelines that stream the processed dataset from its shard files.

Records are read from several shards at once, shuffled in a bounded buffer, decoded in
parallel (:func:`seglab.shards.parse`), augmented inside the graph (image and mask move
together), normalised (:mod:`seglab.normalization`), batched and prefetched; memory does
not grow with the dataset. The plain version of this, as one would write it by hand, is
``TFRecordDataset(files).map(parse).map(augment).batch(n).prefetch(AUTOTUNE)``; what this
module adds is listed in :func:`make_dataset`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seglab import shards
from seglab.backend import tf
from seglab.normalization import normalize, value_range
from seglab.readers import IGNORE, DataError
from seglab.records import ImageSpec, Normalization

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 1024  # records (compressed samples) held for shuffling: bounded, whatever the dataset


@dataclass
class SplitData:
    """What a pipeline reads: shard files of one split and what their records are."""
    files: list[Path]
    images: ImageSpec
    num_classes: int
    items: int | None = None  # records in the files, which a TFRecord file does not say
    size: int | None = None  # the records' side; None for full-size images (cropped in training)


@dataclass
class Batching:
    """How the records become batches."""
    batch_size: int
    training: bool = False  # shuffle files and records anew each epoch; drop a last partial batch
    augment: str = "none"  # none | flip | strong
    seed: int = 0
    repeat: bool = False
    pad_to: int | None = None  # append fully ignored samples up to a multiple of this (validation)
    crop: int | None = None  # random windows of this side from each full-size record
    crops_per_image: int = 1
    rare: tuple = field(default_factory=tuple)  # class indices forced into ``rare_share`` of the samples
    rare_share: float = 0.0
    shuffle_buffer: int = SHUFFLE_BUFFER


def labels(one_hot) -> np.ndarray:
    """Class indices back from one-hot masks; ignored pixels (all-zero rows) become ``readers.IGNORE``."""
    one_hot = np.asarray(one_hot)
    return np.where(one_hot.sum(-1) > 0, one_hot.argmax(-1), IGNORE).astype(np.uint8)


MIRROR_AXES = {"none": [], "flip": [2], "strong": [1, 2]}  # the batch axes each augmentation mirrors (2: left-right)


def augment(image, mask, low, high, kind: str):
    """``flip``: a random left-right mirror of both. ``strong`` adds up-down mirrors and quarter turns of both,
    then a brightness (up to 20/255 of each channel's range ``low``-``high``, one draw for all) and contrast
    jitter of the image: for images with no natural orientation (aerial, microscopy)."""
    both = tf.concat([tf.cast(image, tf.float32), tf.cast(mask, tf.float32)], axis=-1)
    both = tf.image.random_flip_left_right(both)
    if kind == "strong":
        both = tf.image.random_flip_up_down(both)
        both = tf.image.rot90(both, tf.random.uniform([], 0, 4, tf.int32))
    image, mask = both[..., :-1], both[..., -1:]
    if kind == "strong":
        low, high = tf.constant(low, tf.float32), tf.constant(high, tf.float32)
        image = image + tf.random.uniform([], -1.0, 1.0) * (high - low) * (20 / 255)
        image = tf.clip_by_value(tf.image.random_contrast(image, 0.8, 1.2), low, high)
    return image, tf.cast(mask, tf.uint8)


def _below(limits, count: int):
    """``count`` random (row, column) pairs, each coordinate in ``[0, limit)``."""
    limits = tf.cast(limits, tf.float32)
    return tf.cast(tf.minimum(tf.floor(tf.random.uniform([count, 2]) * limits), limits - 1), tf.int32)


def mirrored(length, size: int):
    """Indices that extend a side shorter than ``size`` by mirroring, as ``geometry.pad_to`` does with
    ``np.pad(mode="symmetric")``; a side long enough is kept as it is."""
    k = tf.range(tf.maximum(length, size)) % (2 * length)
    return tf.where(k < length, k, 2 * length - 1 - k)


def crops(image, mask, size: int, count: int, rare=None):
    """``count`` random windows of ``size`` from one full-size sample.

    With ``rare``, each window holds a random pixel of a rare class, at a random place in the
    window: nnU-Net's forced foreground patch (which first draws the class, then the pixel).
    """
    rows, cols = mirrored(tf.shape(mask)[0], size), mirrored(tf.shape(mask)[1], size)
    image, mask = (tf.gather(tf.gather(x, rows), cols, axis=1) for x in (image, mask))
    limit = tf.shape(mask)[:2] - size + 1  # starts in [0, limit)
    if rare is None:
        starts = _below(limit, count)
    else:
        hits = tf.cast(tf.where(tf.reduce_any(tf.equal(mask, rare), axis=-1)), tf.int32)
        points = tf.gather(hits, tf.random.uniform([count], 0, tf.shape(hits)[0], tf.int32))
        low, high = tf.maximum(points - size + 1, 0), tf.minimum(points + 1, limit)
        starts = low + _below(high - low, count)
    window = lambda s: (image[s[0]:s[0] + size, s[1]:s[1] + size], mask[s[0]:s[0] + size, s[1]:s[1] + size])
    return tf.map_fn(window, starts, fn_output_signature=(image.dtype, mask.dtype))


def _forced(share: float):
    """Choices 0 (any sample), 1 (a rare one), the ones spread evenly at the rate ``share``: every
    batch, and each replica's slice of it, holds its share to within one sample."""
    at = lambda i: tf.floor(tf.cast(i, tf.float64) * share)
    return tf.data.Dataset.counter().map(lambda i: tf.cast(at(i + 1) - at(i), tf.int64))


def _records(data: SplitData, batching: Batching, seed: int, keep=None):
    """The serialised samples: from several shards at once, shuffled in a bounded buffer when training."""
    files = [str(path) for path in data.files]
    ds = tf.data.Dataset.from_tensor_slices(files)
    if batching.training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 4)), num_parallel_calls=AUTOTUNE)
    if data.items is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(data.items))
    if keep is not None:
        ds = ds.filter(keep)
    if batching.training:
        ds = ds.shuffle(batching.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds


def _samples(data: SplitData, batching: Batching, seed: int, holding=None):
    """(image, mask) of every record, or with ``holding`` (rare classes) of those holding one; cropped if asked."""
    endless = bool(batching.crop or len(batching.rare))
    keep = None if holding is None else (lambda record: shards.mask_holds(record, holding))
    ds = _records(data, batching, seed, keep)
    if batching.repeat or endless:
        ds = ds.repeat()
    ds = ds.map(lambda record: shards.parse(record, data.images)[1:], num_parallel_calls=AUTOTUNE)
    if batching.crop:
        ds = ds.map(lambda x, mask: crops(x, mask, batching.crop, batching.crops_per_image, holding),
                    num_parallel_calls=AUTOTUNE)
        ds = ds.unbatch().shuffle(4 * batching.crops_per_image, seed=seed)
    return ds


def _padding(data: SplitData, multiple: int):
    """Fully ignored samples (mask 255) that bring the split up to a multiple of ``multiple``."""
    size, channels = data.size, data.images.channels
    blank = (tf.zeros([size, size, channels], data.images.dtype), tf.fill([size, size, 1], tf.constant(IGNORE, tf.uint8)))
    return tf.data.Dataset.from_tensors(blank).repeat(-data.items % multiple)


def make_dataset(data: SplitData, norm: Normalization, batching: Batching):
    """Batches of (normalised image, one-hot mask) from notebook 01's shard files.

    For training, the shard order and the records (in a bounded buffer) are shuffled anew each
    epoch, from the seed; otherwise the records come in the shards' order. ``data.items`` and
    ``data.size`` tell Keras and ``tf.distribute`` the length and the static shape, with which a
    last partial batch is split over replicas.

    ``batching.pad_to`` (validation) appends fully ignored samples up to a multiple of the global
    batch, so every batch has one shape (Keras traces its test step once) and, on several replicas,
    none is empty: ``tf.distribute`` hands a file-based dataset's last partial batch to the first
    replica alone and an empty batch to the others, on which batch normalisation fails. Ignored
    pixels count in no score and no Dice term.

    ``batching.crop``: random windows of the full-size images (``data.train_tiles: random_crops``).
    ``batching.rare`` and ``rare_share``: that share of the samples, spread evenly over every
    batch, is drawn from those holding a rare class, as nnU-Net oversamples foreground. Both
    read the shards as endless streams; an epoch is then ``items * crops_per_image`` samples.

    On a ``multi_worker`` cluster every worker reads all records and keeps its share of the
    batches (``DATA`` sharding): sharding by file would leave a worker without data when a split
    has fewer shard files than there are workers.
    """
    endless = bool(batching.crop or len(batching.rare))
    ds = _samples(data, batching, batching.seed)
    if len(batching.rare):
        rare = tf.constant(batching.rare, tf.uint8)
        ds = tf.data.Dataset.choose_from_datasets([ds, _samples(data, batching, batching.seed + 1, rare)],
                                                  _forced(batching.rare_share))
    if endless and not batching.repeat:
        ds = ds.take(data.items * batching.crops_per_image)
    if data.size is not None:
        size, channels = data.size, data.images.channels
        ds = ds.map(lambda x, mask: (tf.ensure_shape(x, [size, size, channels]), tf.ensure_shape(mask, [size, size, 1])))
    if batching.pad_to and data.items and data.items % batching.pad_to:
        ds = ds.concatenate(_padding(data, batching.pad_to))
    if batching.augment != "none":
        low, high = value_range(data.images)
        ds = ds.map(lambda x, mask: augment(x, mask, low, high, batching.augment), num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda x, mask: (normalize(x, norm), tf.one_hot(mask[..., 0], data.num_classes)),
                num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.batch(batching.batch_size, drop_remainder=batching.training).prefetch(AUTOTUNE).with_options(options)


def fit_batch_size(train_items: int, batch_size: int, replicas: int = 1, log=print) -> int:
    """The per-replica batch size, capped so that one global batch fits in the training split.

    Training batches drop the remainder, so a batch larger than a small training split would
    yield no batch at all; one line says when the size is lowered.
    """
    if train_items < replicas:
        raise DataError(f"{train_items} training sample(s) cannot give each of the {replicas} replica(s) one sample "
                         "per batch; add images or train on one device (train.strategy=default)")
    fitted = min(batch_size, train_items // replicas)
    if fitted < batch_size:
        each = f" per replica x {replicas} replicas" if replicas > 1 else ""
        log(f"batch size {batch_size}{each} is larger than the {train_items} training samples; using {fitted}"
            + (" per replica" if replicas > 1 else ""))
    return fitted
