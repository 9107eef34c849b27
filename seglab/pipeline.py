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


def _augment(image, mask, low, high):
    """Random flips and quarter turns applied to both, then a brightness (up to 20/255 of each channel's range
    ``low``-``high``, one draw for all) and contrast jitter on the image."""
    both = tf.concat([tf.cast(image, tf.float32), tf.cast(mask, tf.float32)], axis=-1)
    both = tf.image.random_flip_left_right(both)
    both = tf.image.random_flip_up_down(both)
    both = tf.image.rot90(both, tf.random.uniform([], 0, 4, tf.int32))
    image, mask = both[..., :-1], both[..., -1:]
    low, high = tf.constant(low, tf.float32), tf.constant(high, tf.float32)
    image = image + tf.random.uniform([], -1.0, 1.0) * (high - low) * (20 / 255)
    image = tf.image.random_contrast(image, 0.8, 1.2)
    return tf.clip_by_value(image, low, high), tf.cast(mask, tf.uint8)


def make_dataset(shards, num_classes: int, norm: dict, batch_size: int, training: bool = False,
                 augment: bool = False, seed: int = 0, repeat: bool = False, shuffle_buffer: int = SHUFFLE_BUFFER,
                 items: int | None = None, size: int | None = None, pad_to: int | None = None, image: dict = RGB8):
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

    ``image``: dataset.json's description of the stored images (channels, depth, encoding, range).
    """
    files = [str(path) for path in shards]
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 4)), num_parallel_calls=AUTOTUNE)
    if items is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(items))
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    channels = image["channels"]
    ds = ds.map(lambda record: _parse(record, image), num_parallel_calls=AUTOTUNE)
    if size is not None:
        ds = ds.map(lambda x, mask: (tf.ensure_shape(x, [size, size, channels]), tf.ensure_shape(mask, [size, size, 1])))
    if pad_to and items and items % pad_to:
        blank = (tf.zeros([size, size, channels], image["dtype"]), tf.fill([size, size, 1], tf.constant(IGNORE, tf.uint8)))
        ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(-items % pad_to))
    if augment:
        low, high = value_range(image)
        ds = ds.map(lambda x, mask: _augment(x, mask, low, high), num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda x, mask: (normalize(x, norm), tf.one_hot(mask[..., 0], num_classes)),
                num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)
