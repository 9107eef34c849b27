"""Sizes, windows, resizing and padding, one policy for training tiles and inference windows alike.

Pure NumPy and OpenCV arithmetic, so the config can check sizes before TensorFlow loads.
A side shorter than a window is padded by mirroring (``np.pad(mode="symmetric")``: the edge
pixel repeated, then the image mirrored), in notebook 01's tiles, in training's random crops
(:func:`seglab.pipeline`'s graph version matches it) and in prediction's windows.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from seglab.settings import ConfigError

PSPNET_MULTIPLE = {4: 24, 8: 48, 16: 96}  # the pyramid pools need these divisors at each downsample factor
PAD_MODE = "symmetric"


def input_multiple(arch: str, downsample_factor: int = 8) -> int:
    """The step of the input sides ``arch`` takes."""
    if arch == "pspnet":
        if downsample_factor not in PSPNET_MULTIPLE:
            raise ConfigError(f"model.pspnet_downsample_factor={downsample_factor} must be 4, 8 or 16")
        return PSPNET_MULTIPLE[downsample_factor]
    if arch == "deeplabv3plus":
        return 16  # the encoder is cut at stride 16 (seglab.architectures)
    return 32  # five stride-2 stages in every encoder


def common_multiple(architectures: list, downsample_factor: int = 8) -> int:
    """The step of the input sides that every one of ``architectures`` takes: the lcm of their multiples."""
    return math.lcm(*(input_multiple(arch, downsample_factor) for arch in architectures))


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Window starts covering ``length`` with at least ``overlap`` between neighbours; the last is flush."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    return list(range(0, length - tile, stride)) + [length - tile]


def window_corners(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners of the windows that cover a ``height`` x ``width`` image, row by row."""
    return [(y, x) for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]


def pad_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """``array`` (H, W, ...) mirrored at its bottom and right up to at least ``height`` x ``width``."""
    pad = [(0, max(0, height - array.shape[0])), (0, max(0, width - array.shape[1]))] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode=PAD_MODE) if any(after for _, after in pad) else array


def resize_image(image: np.ndarray, width: int, height: int, interpolation: int | None = None) -> np.ndarray:
    """(H, W, C) of any C to ``height`` x ``width``: by area when shrinking, linearly when enlarging.

    OpenCV drops a single channel's axis and area-averages at most 4 channels at once, so the
    channels go through in groups of four.
    """
    if interpolation is None:
        interpolation = cv2.INTER_AREA if width * height < image.shape[0] * image.shape[1] else cv2.INTER_LINEAR
    parts = [cv2.resize(image[..., i:i + 4], (width, height), interpolation=interpolation)
             for i in range(0, image.shape[2], 4)]
    return np.concatenate([part.reshape(height, width, -1) for part in parts], axis=2)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Class indices by centre-aligned nearest neighbour, never an invented class: ``INTER_NEAREST`` samples
    pixel corners and would shift the mask by up to half an output pixel against its image."""
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def pieces(image: np.ndarray, mask: np.ndarray, size: int, mode: str, overlap: float):
    """Yield ``(origin, image, mask)`` samples of ``size`` x ``size``: the whole pair resized (origin None),
    or tiles at the native scale (origin: the tile's top-left corner), a short side padded first."""
    if mode == "resize":
        yield None, resize_image(image, size, size), resize_mask(mask, size, size)
        return
    image, mask = pad_to(image, size, size), pad_to(mask, size, size)
    for y, x in window_corners(*mask.shape, size, overlap):
        yield (y, x), image[y:y + size, x:x + size], mask[y:y + size, x:x + size]


def pixel_scale(sizes: list, size: int, mode: str) -> list[float]:
    """Model pixels per source pixel, per axis (median over the images' ``(height, width)``).

    Prediction on new images applies the same scale, so objects appear at the size the model
    learned them: 1 for tiles, ``size / side`` for resized images.
    """
    if mode == "tile" or not sizes:
        return [1.0, 1.0]
    heights, widths = np.array(sizes, np.float64).T
    return [float(np.median(size / heights)), float(np.median(size / widths))]
