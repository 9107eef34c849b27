"""tf.data input pipelines that stream the processed dataset from disk.

Files are decoded in parallel, augmented inside the graph (image and mask move together),
normalised as the encoder expects, batched and prefetched; memory does not grow with the
dataset.
"""
from __future__ import annotations

import numpy as np

from seglab.backend import sm, tf
from seglab.sources import IGNORE

AUTOTUNE = tf.data.AUTOTUNE


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


def normalize(images, norm: dict):
    images = tf.gather(tf.cast(images, tf.float32), norm["order"], axis=-1)
    return images * tf.constant(norm["scale"]) + tf.constant(norm["offset"])


def denormalize(images, norm: dict) -> np.ndarray:
    """Back to uint8 RGB, for looking at what the model was fed."""
    pixels = (np.asarray(images) - np.array(norm["offset"])) / np.array(norm["scale"])
    return np.clip(np.rint(pixels[..., np.argsort(norm["order"])]), 0, 255).astype(np.uint8)


def labels(one_hot) -> np.ndarray:
    """Class indices back from one-hot masks; ignored pixels (all-zero rows) become ``sources.IGNORE``."""
    one_hot = np.asarray(one_hot)
    return np.where(one_hot.sum(-1) > 0, one_hot.argmax(-1), IGNORE).astype(np.uint8)


def _load(image_path, mask_path):
    image = tf.io.decode_png(tf.io.read_file(image_path), channels=3)
    mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
    return image, mask


def _augment(image, mask):
    """Random flips and quarter turns applied to both, then a brightness/contrast jitter on the image."""
    both = tf.concat([tf.cast(image, tf.float32), tf.cast(mask, tf.float32)], axis=-1)
    both = tf.image.random_flip_left_right(both)
    both = tf.image.random_flip_up_down(both)
    both = tf.image.rot90(both, tf.random.uniform([], 0, 4, tf.int32))
    image, mask = both[..., :3], both[..., 3:]
    image = tf.image.random_brightness(image, 20.0)
    image = tf.image.random_contrast(image, 0.8, 1.2)
    return tf.clip_by_value(image, 0, 255), tf.cast(mask, tf.uint8)


def make_dataset(image_paths, mask_paths, num_classes: int, norm: dict, batch_size: int,
                 training: bool = False, augment: bool = False, seed: int = 0, repeat: bool = False):
    """Batches of (normalised image, one-hot mask)."""
    ds = tf.data.Dataset.from_tensor_slices((list(image_paths), list(mask_paths)))
    if training:
        ds = ds.shuffle(len(image_paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(_load, num_parallel_calls=AUTOTUNE)
    if augment:
        ds = ds.map(_augment, num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda image, mask: (normalize(image, norm), tf.one_hot(mask[..., 0], num_classes)),
                num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)
