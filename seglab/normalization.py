"""How stored pixels become the network's input: one per-channel affine map, in training, prediction and export.

8-bit RGB is scaled as the encoder expects (segmentation_models' ``get_preprocessing``:
ImageNet statistics, which pretrained weights were trained with); any other image by the
training split's mean and standard deviation per channel, so one value means the same in
every image. Either way the map is ``x[..., order] * scale + offset`` and travels with the
model in its card.
"""
from __future__ import annotations

import numpy as np

from seglab.backend import sm, tf
from seglab.records import ImageSpec, Normalization


def encoder_normalization(backbone: str) -> Normalization:
    """segmentation_models' preprocessing for ``backbone`` as a per-channel affine map.

    sm's functions are NumPy code; probing one with unit images gives the channel order,
    scale and offset, which the graph then applies.
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
    return Normalization(order, scale, [float(v) for v in offset])


def input_normalization(images: ImageSpec, backbone: str) -> Normalization:
    """The encoder's own map for 8-bit RGB; the training split's statistics for anything else."""
    if images.dtype == "uint8" and images.channels == 3:
        return encoder_normalization(backbone)
    std = np.maximum(np.asarray(images.std), 1e-6)  # a constant channel stays finite
    return Normalization(list(range(images.channels)), (1 / std).tolist(), (-np.asarray(images.mean) / std).tolist())


def normalize(images, norm: Normalization):
    """Stored pixels (any type) to the network's float32 input, in the graph."""
    images = tf.cast(images, tf.float32)
    if norm.order != sorted(norm.order):  # TFLite would gather before the cast, and gathers no uint16
        images = tf.gather(images, norm.order, axis=-1)
    return images * tf.constant(norm.scale) + tf.constant(norm.offset)


def denormalize(images, norm: Normalization, dtype: str = "uint8") -> np.ndarray:
    """Back to the stored pixels, for looking at what the model was fed."""
    pixels = ((np.asarray(images) - np.array(norm.offset)) / np.array(norm.scale))[..., np.argsort(norm.order)]
    if np.dtype(dtype).kind == "f":
        return pixels.astype(dtype)
    limits = np.iinfo(dtype)
    return np.clip(np.rint(pixels), limits.min, limits.max).astype(dtype)


def value_range(images: ImageSpec) -> tuple[list, list]:
    """Per channel, the lowest and highest value: 0 and 255 for 8-bit, else those of the training split."""
    if images.dtype == "uint8":
        return [0.0] * images.channels, [255.0] * images.channels
    return images.min, images.max
