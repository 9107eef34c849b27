"""tf.data input pipelines that stream the processed dataset from its shard files.

Records are read from several shards at once, shuffled in a bounded buffer, decoded in
parallel, augmented inside the graph (image and mask move together), normalised (as the
encoder expects for 8-bit RGB, else by the training split's statistics), batched and
prefetched; memory does not grow with the dataset.
"""
from __future__ import annotations

import numpy as np

from seglab.backend import sm, tf
from seglab.data_loading import FEATURES
from seglab.sources import IGNORE

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 1024  # records (compressed samples) held for shuffling: bounded, whatever the dataset
RGB8 = {"channels": 3, "dtype": "uint8", "encoding": "png"}  # dataset.json's "image" for 8-bit RGB


def encoder_normalization(backbone: str) -> dict:
    """segmentation_models' preprocessing for ``backbone`` as a per-channel affine map.

    sm's functions are NumPy code; probing one with unit images gives the channel order,
    scale and offset, which the graph then applies, and which travel with the model.
    """
    fn = sm.get_preprocessing(backbone)
    offset = fn(np.zeros((1, 1, 1, 3), np.float32))[0, 0, 0]
    order, scale = [0, 1, 2], [1.0, 1.0, 1.0]
    for channel in range(3):
        probe = np.zeros((1, 1, 1, 3), np.float32)
        probe[..., channel] = 1.0
        delta = fn(probe)[0, 0, 0] - offset
        out = int(np.argmax(np.abs(delta)))
        order[out], scale[out] = channel, float(delta[out])
    return {"order": order, "scale": scale, "offset": [float(v) for v in offset]}


def input_normalization(image: dict, backbone: str) -> dict:
    """How the network's inputs are scaled, as the same per-channel affine map (order, scale, offset).

    8-bit RGB: the encoder's own (ImageNet statistics, which pretrained weights expect). Anything
    else: the training split's mean and standard deviation per channel (``image`` is dataset.json's),
    so one value means the same in every image, unlike a stretch of each image by its own range.
    """
    if image["dtype"] == "uint8" and image["channels"] == 3:
        return encoder_normalization(backbone)
    std = np.maximum(np.asarray(image["std"]), 1e-6)  # a constant channel stays finite
    return {"order": list(range(image["channels"])), "scale": (1 / std).tolist(),
            "offset": (-np.asarray(image["mean"]) / std).tolist()}


def normalize(images, norm: dict):
    images = tf.cast(images, tf.float32)
    if norm["order"] != sorted(norm["order"]):  # TFLite would gather before the cast, and gathers no uint16
        images = tf.gather(images, norm["order"], axis=-1)
    return images * tf.constant(norm["scale"]) + tf.constant(norm["offset"])


def denormalize(images, norm: dict, dtype: str = "uint8") -> np.ndarray:
    """Back to the stored pixels (``dtype``, as dataset.json's ``image`` says), for looking at what the model was fed."""
    pixels = ((np.asarray(images) - np.array(norm["offset"])) / np.array(norm["scale"]))[..., np.argsort(norm["order"])]
    if np.dtype(dtype).kind == "f":
        return pixels.astype(dtype)
    limits = np.iinfo(dtype)
    return np.clip(np.rint(pixels), limits.min, limits.max).astype(dtype)


def labels(one_hot) -> np.ndarray:
    """Class indices back from one-hot masks; ignored pixels (all-zero rows) become ``sources.IGNORE``."""
    one_hot = np.asarray(one_hot)
    return np.where(one_hot.sum(-1) > 0, one_hot.argmax(-1), IGNORE).astype(np.uint8)


def _parse(record, image: dict):
    """Image and mask of one record; ``image`` (dataset.json's) fixes the decoder and the channels."""
    example = tf.io.parse_single_example(record, FEATURES)
    dtype = tf.as_dtype(image["dtype"])
    if image["encoding"] == "png":
        pixels = tf.io.decode_png(example["image"], channels=image["channels"], dtype=dtype)
    else:
        pixels = tf.io.parse_tensor(example["image"], dtype)
    return tf.ensure_shape(pixels, [None, None, image["channels"]]), tf.io.decode_png(example["mask"], channels=1)


def value_range(image: dict) -> tuple[list, list]:
    """Per channel, the lowest and highest value: 0 and 255 for 8-bit, else those of the training split."""
    if image["dtype"] == "uint8":
        return [0.0] * image["channels"], [255.0] * image["channels"]
    return image["min"], image["max"]


def _augment(image, mask, low, high, kind: str):
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


def _holds(record, rare):
    """Whether a record's mask holds one of the ``rare`` classes; decodes the mask alone, so the
    records passed over cost no image decoding."""
    mask = tf.io.decode_png(tf.io.parse_single_example(record, FEATURES)["mask"], channels=1)
    return tf.reduce_any(tf.equal(mask, rare))


def _below(limits, count: int):
    """``count`` random (row, column) pairs, each coordinate in ``[0, limit)``."""
    limits = tf.cast(limits, tf.float32)
    return tf.cast(tf.minimum(tf.floor(tf.random.uniform([count, 2]) * limits), limits - 1), tf.int32)


def _mirrored(length, size: int):
    """Indices that extend a side shorter than ``size`` by mirroring, as ``np.pad(mode="symmetric")``
    extends step 01's tiles; a side long enough is kept as it is."""
    k = tf.range(tf.maximum(length, size)) % (2 * length)
    return tf.where(k < length, k, 2 * length - 1 - k)


def _crops(image, mask, size: int, count: int, rare=None):
    """``count`` random windows of ``size`` from one full-size sample.

    With ``rare``, each window holds a random pixel of a rare class, at a random place in the
    window: nnU-Net's forced foreground patch (which first draws the class, then the pixel).
    """
    rows, cols = _mirrored(tf.shape(mask)[0], size), _mirrored(tf.shape(mask)[1], size)
    image, mask = (tf.gather(tf.gather(x, rows), cols, axis=1) for x in (image, mask))
    limit = tf.shape(mask)[:2] - size + 1  # starts in [0, limit)
    if rare is None:
        starts = _below(limit, count)
    else:
        hits = tf.cast(tf.where(tf.reduce_any(tf.equal(mask, rare), axis=-1)), tf.int32)
        points = tf.gather(hits, tf.random.uniform([count], 0, tf.shape(hits)[0], tf.int32))
        low, high = tf.maximum(points - size + 1, 0), tf.minimum(points + 1, limit)
        starts = low + _below(high - low, count)
    return tf.map_fn(lambda s: (image[s[0]:s[0] + size, s[1]:s[1] + size], mask[s[0]:s[0] + size, s[1]:s[1] + size]),
                     starts, fn_output_signature=(image.dtype, mask.dtype))


def _forced(share: float):
    """Choices 0 (any sample), 1 (a rare one), the ones spread evenly at the rate ``share``: every
    batch, and each replica's slice of it, holds its share to within one sample."""
    at = lambda i: tf.floor(tf.cast(i, tf.float64) * share)
    return tf.data.Dataset.counter().map(lambda i: tf.cast(at(i + 1) - at(i), tf.int64))


def _records(files, training: bool, seed: int, items, shuffle_buffer: int, keep=None):
    """The serialised samples: from several shards at once, shuffled in a bounded buffer when training."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 4)), num_parallel_calls=AUTOTUNE)
    if items is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(items))
    if keep is not None:
        ds = ds.filter(keep)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds


def make_dataset(shards, num_classes: int, norm: dict, batch_size: int, training: bool = False,
                 augment: str = "none", seed: int = 0, repeat: bool = False, shuffle_buffer: int = SHUFFLE_BUFFER,
                 items: int | None = None, size: int | None = None, pad_to: int | None = None, image: dict = RGB8,
                 crop: int | None = None, crops_per_image: int = 1, rare=(), rare_share: float = 0.0):
    """Batches of (normalised image, one-hot mask) from TFRecord shard files (notebook 01's ``dataset/``).

    For training, the shard order and the records (in a buffer of ``shuffle_buffer``) are
    shuffled anew each epoch, from ``seed``; otherwise the records come in the shards' order.
    ``items`` (the number of records) and ``size`` (their side), both in dataset.json, tell Keras
    and ``tf.distribute`` what a TFRecord file does not: the length, and the static shape with
    which a last partial batch is split over replicas (an empty replica's share would otherwise
    come as 0 x 0 images, which the encoder's layers reject).

    ``pad_to`` (evaluation on several replicas) appends fully ignored samples (mask 255) up to a
    multiple of the global batch: ``tf.distribute`` hands a file-based dataset's last partial
    batch to the first replica alone and an empty batch to the others, on which batch
    normalisation fails. Ignored pixels count in no score and no Dice term.

    ``crop`` (training on full-size images, ``data.train_tiles: random_crops``): ``crops_per_image``
    random windows of ``crop`` pixels from each image read, shuffled among those of a few images.
    ``rare`` (class indices) and ``rare_share``: that share of the samples, spread evenly over
    every batch, is drawn from those holding a rare class (crops: windows around a rare pixel),
    the rest from all samples as usual, as nnU-Net oversamples foreground. Both read the shards
    as endless streams; an epoch is then ``items * crops_per_image`` samples.

    On a ``multi_worker`` cluster every worker reads all records and keeps its share of the
    batches (``DATA`` sharding): sharding by file would leave a worker without data when a split
    has fewer shard files than there are workers.

    ``image``: dataset.json's description of the stored images (channels, depth, encoding, range).
    """
    files = [str(path) for path in shards]
    endless = bool(crop or len(rare))

    def samples(seed: int, holding=None):
        """All samples, or with ``holding`` (rare classes) those holding one."""
        keep = None if holding is None else (lambda record: _holds(record, holding))
        ds = _records(files, training, seed, items, shuffle_buffer, keep)
        if repeat or endless:
            ds = ds.repeat()
        ds = ds.map(lambda record: _parse(record, image), num_parallel_calls=AUTOTUNE)
        if crop:
            ds = ds.map(lambda x, mask: _crops(x, mask, crop, crops_per_image, holding),
                        num_parallel_calls=AUTOTUNE)
            ds = ds.unbatch().shuffle(4 * crops_per_image, seed=seed)
        return ds

    channels = image["channels"]
    ds = samples(seed)
    if len(rare):
        rare = tf.constant(rare, tf.uint8)
        ds = tf.data.Dataset.choose_from_datasets([ds, samples(seed + 1, rare)], _forced(rare_share))
    if endless and not repeat:
        ds = ds.take(items * crops_per_image)
    if size is not None:
        ds = ds.map(lambda x, mask: (tf.ensure_shape(x, [size, size, channels]), tf.ensure_shape(mask, [size, size, 1])))
    if pad_to and items and items % pad_to:
        blank = (tf.zeros([size, size, channels], image["dtype"]), tf.fill([size, size, 1], tf.constant(IGNORE, tf.uint8)))
        ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(-items % pad_to))
    if augment != "none":
        low, high = value_range(image)
        ds = ds.map(lambda x, mask: _augment(x, mask, low, high, augment), num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda x, mask: (normalize(x, norm), tf.one_hot(mask[..., 0], num_classes)),
                num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE).with_options(options)
