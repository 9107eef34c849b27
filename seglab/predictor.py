"""Per-pixel class probabilities for an image of any size, the one code path of notebooks 04 and 06 and ``seglab predict``.

Images larger than the model input are predicted in overlapping windows whose softmax
outputs are blended with a Gaussian weight (highest at a window's centre, where the
network sees the most context), as nnU-Net does, so no seams show at window borders.
Windows go through the model in batches. Images smaller than a window are padded
(``geometry.pad_to``, as in training) and cropped back. A model trained on resized images
sees new images resized by the same factor first (``pixel_scale``), so objects have the
size it learned them at.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from seglab import geometry, readers
from seglab.models import load_model
from seglab.normalization import normalize
from seglab.records import ModelCard


@dataclass
class Predictor:
    """A trained model and its card: what it reads, how it normalises, which classes it knows."""
    model: object
    card: ModelCard
    max_pixels: int = readers.MAX_PIXELS  # an image over this is refused from its header (data.max_image_megapixels)

    @classmethod
    def load(cls, model_path: str | Path, tile: int | None = None) -> "Predictor":
        """``RUN/models/ARCH.keras`` and, from the card written beside it in training, its classes and normalisation."""
        model_path = Path(model_path)
        if not model_path.exists():
            raise FileNotFoundError(f"{model_path}: no such model; notebook 03 writes RUN_DIR/models/ARCH.keras")
        model = load_model(model_path)  # only .keras files, which cannot run code when loaded
        card = ModelCard.beside(model_path)
        if tile and tile != card.input_size:
            raise ValueError(f"{model_path.name} takes {card.input_size} px windows; --tile {tile} does not fit it")
        return cls(model, card)

    @property
    def classes(self) -> list[str]:
        return self.card.classes

    @property
    def colors(self) -> list:
        return self.card.colors

    @property
    def tile(self) -> int:
        return self.card.input_size

    def read_image(self, path: str | Path) -> np.ndarray:
        """An image read as the model's training images were: its channels, and its intensities if stretched."""
        return readers.read_image(path, self.card.input.channels, self.card.input.intensity, self.max_pixels)


def gaussian_weight(tile: int, sigma_scale: float = 1 / 8) -> np.ndarray:
    """A 2-D Gaussian over the window, never zero, so every pixel has some weight."""
    axis = np.arange(tile) - (tile - 1) / 2
    g = np.exp(-(axis ** 2) / (2 * (tile * sigma_scale) ** 2))
    weight = np.outer(g, g)
    return np.maximum(weight / weight.max(), 1e-3).astype(np.float32)


FLIPS = [(), (2,), (1,), (1, 2)]  # test-time flips of a batch; the first is the image itself, (2,) left-right


def flips_for(mirror_axes) -> list[tuple]:
    """The test-time flips of a model trained with the mirrors ``mirror_axes`` (its card's): only those it has
    seen, as nnU-Net mirrors only along its training mirrors. Left-right alone: the image and its mirror."""
    return [axes for axes in FLIPS if set(axes) <= set(mirror_axes)]


def predict_views(model, batch, views=(False,), flips=FLIPS) -> dict:
    """Softmax for a batch under each of ``views``: ``False`` plain, ``True`` the mean over ``flips``, each
    flipped back. One call to the model whatever the views: the flips go through as one batch, and the plain
    prediction is its first part (per-call overhead dominates small windows on a CPU)."""
    if True not in views:
        return {False: np.asarray(model.predict_on_batch(batch))}
    stacked = np.concatenate([np.flip(batch, axes) for axes in flips])
    p = np.asarray(model.predict_on_batch(stacked)).reshape(len(flips), *batch.shape[:3], -1)
    flipped = {True: np.mean([np.flip(part, axes) for part, axes in zip(p, flips)], axis=0)}
    return {**flipped, False: p[0]} if False in views else flipped


def window_views_of_images(predictor: Predictor, images: list, overlap: float = 0.5, batch_size: int = 8,
                           views=(False,), blend: bool = True) -> list[dict]:
    """Window predictions of several images at their own scale under each of ``views``, blended by
    :func:`gaussian_weight` (evenly when not ``blend``). The windows of all the images share the model's batches:
    on a CPU one window per call costs twice per window what a batch of 16 does."""
    tile = predictor.tile
    padded = [normalize(geometry.pad_to(image, tile, tile), predictor.card.normalization).numpy() for image in images]
    weight = (gaussian_weight(tile) if blend else np.ones((tile, tile), np.float32))[..., None]
    totals = [{view: np.zeros(x.shape[:2] + (len(predictor.classes),), np.float32) for view in views} for x in padded]
    weights = [np.zeros(x.shape[:2] + (1,), np.float32) for x in padded]
    windows = [(i, y, x0) for i, x in enumerate(padded) for y, x0 in geometry.window_corners(*x.shape[:2], tile, overlap)]
    flips = flips_for(predictor.card.mirror_axes)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        batch = np.stack([padded[i][y:y + tile, x0:x0 + tile] for i, y, x0 in chunk])
        predicted = predict_views(predictor.model, batch, views, flips)
        for k, (i, y, x0) in enumerate(chunk):
            for view, total in totals[i].items():
                total[y:y + tile, x0:x0 + tile] += predicted[view][k] * weight
            weights[i][y:y + tile, x0:x0 + tile] += weight
    return [{view: (total / w)[:image.shape[0], :image.shape[1]] for view, total in image_totals.items()}
            for image, image_totals, w in zip(images, totals, weights)]


def sliding_windows(predictor: Predictor, image: np.ndarray, overlap: float = 0.5, batch_size: int = 8,
                    tta: bool = False, blend: bool = True) -> np.ndarray:
    """Window predictions of one image at its own scale (:func:`window_views_of_images`, one view)."""
    return window_views_of_images(predictor, [image], overlap, batch_size, (tta,), blend)[0][tta]


def predict_views_of_images(predictor: Predictor, images: list, overlap: float = 0.5, batch_size: int = 8,
                            views=(False,)) -> list[dict]:
    """Per-pixel class probabilities (H, W, classes) under each of ``views`` (plain ``False``, flipped ``True``)
    for images (H, W, channels) of any size, as read by the predictor; the windows are predicted once."""
    sy, sx = predictor.card.pixel_scale
    if (sy, sx) == (1.0, 1.0):
        return window_views_of_images(predictor, images, overlap, batch_size, views)
    scaled = [geometry.resize_image(image, max(1, round(image.shape[1] * sx)), max(1, round(image.shape[0] * sy)))
              for image in images]
    return [{view: cv2.resize(p, image.shape[1::-1], interpolation=cv2.INTER_LINEAR).reshape(*image.shape[:2], -1)
             for view, p in predicted.items()}
            for image, predicted in zip(images, window_views_of_images(predictor, scaled, overlap, batch_size, views))]


def predict_views_of_image(predictor: Predictor, image: np.ndarray, overlap: float = 0.5, batch_size: int = 8,
                           views=(False,)) -> dict:
    """:func:`predict_views_of_images` of one image."""
    return predict_views_of_images(predictor, [image], overlap, batch_size, views)[0]


def predict_image(predictor: Predictor, image: np.ndarray, overlap: float = 0.5, batch_size: int = 8,
                  tta: bool = False) -> np.ndarray:
    """Per-pixel class probabilities (H, W, classes) for an image (H, W, channels) of any size, as read by the predictor."""
    return predict_views_of_image(predictor, image, overlap, batch_size, (tta,))[tta]
