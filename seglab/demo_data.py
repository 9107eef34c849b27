"""A generated multi-class dataset that ships as code, so the series runs offline.

Not a toy: textured, noisy backgrounds of varying colour; discs and bars of many sizes that
touch and overlap (the one drawn last wins, as in a real occlusion); and small specks that
cover under 3% of the pixels, so the rare-class problem that class weights address is real.
Deterministic from the seed. Beside the training images, a large scene of the same objects
(``scene/``) shows notebook 06 predicting an image many windows wide.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from seglab.atomic import atomic_dir

VERSION = 3  # part of the cache folder's name: bump it whenever the generated images change
CLASSES = ["background", "disc", "bar", "speck"]
COLORS = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25]]


def _texture(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Smooth random field in [-1, 1]: upsampled noise, the kind of clutter real scenes have."""
    coarse = rng.normal(size=(max(2, size // scale), max(2, size // scale))).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return field / (np.abs(field).max() + 1e-6)


def _hsv_color(rng: np.random.Generator, hue: float, sat: tuple, val: tuple) -> np.ndarray:
    hsv = np.uint8([[[int(hue) % 180, rng.integers(*sat), rng.integers(*val)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def make_sample(rng: np.random.Generator, size: int, object_scale: int | None = None,
                speck_chance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One RGB image (uint8) and its class-index mask.

    Objects are sized relative to ``object_scale`` (default: ``size``); a larger ``size`` with
    the training ``object_scale`` gives a large scene with objects at the training scale.
    ``speck_chance`` below 1 leaves the specks out of the other images, making them rare in
    images as well as in pixels (``bench/sparse_specks.py``).
    """
    unit = object_scale or size
    crowd = max(1, round((size / unit) ** 2))
    base = _hsv_color(rng, rng.uniform(0, 180), (10, 90), (70, 170))
    image = base + 45 * _texture(rng, size, 16)[..., None] + 20 * _texture(rng, size, 4)[..., None]
    mask = np.zeros((size, size), np.uint8)
    shapes = [1] * int(rng.integers(1, 4) * crowd) + [2] * int(rng.integers(1, 4) * crowd)
    rng.shuffle(shapes)
    for cls in shapes:
        layer = np.zeros((size, size), np.uint8)
        cx, cy = rng.integers(0, size, 2)
        if cls == 1:  # disc: a filled ellipse, warm colours, mottled surface
            axes = tuple(int(a) for a in rng.uniform(0.06, 0.22, 2) * unit)
            cv2.ellipse(layer, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            color = _hsv_color(rng, rng.normal(5, 8), (120, 230), (140, 240))
            surface = color + 35 * _texture(rng, size, 6)[..., None]
        else:  # bar: a rotated rectangle, cool colours, striped surface
            w, h = rng.uniform(0.05, 0.12) * unit, rng.uniform(0.25, 0.6) * unit
            box = cv2.boxPoints(((float(cx), float(cy)), (float(w), float(h)), float(rng.uniform(0, 180))))
            cv2.fillPoly(layer, [np.int32(box)], 1)
            color = _hsv_color(rng, rng.normal(100, 12), (100, 220), (110, 230))
            stripes = np.sin(np.arange(size) * rng.uniform(0.6, 1.2))[None, :, None]
            surface = np.broadcast_to(color + 30 * stripes, (size, size, 3))
        on = layer.astype(bool)
        image[on] = surface[on]
        mask[on] = cls
    specks = int(rng.integers(2, 7) * crowd) if speck_chance >= 1 or rng.random() < speck_chance else 0  # the demo's draws unchanged
    for _ in range(specks):  # specks: the rare class
        cx, cy = rng.integers(0, size, 2)
        radius = int(rng.integers(1, max(2, unit // 40) + 1))
        layer = np.zeros((size, size), np.uint8)
        cv2.circle(layer, (int(cx), int(cy)), radius, 1, -1)
        on = layer.astype(bool)
        mask[on] = 3
        image[on] = _hsv_color(rng, rng.normal(28, 4), (150, 255), (200, 255))
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


SCENE = ("scene/large_scene.png", "scene/large_scene_truth.png")  # image and mask, in the dataset's root
SCENE_FACTOR = 8  # the scene's side, in training images' sides


def generate_demo_dataset(root: str | Path, num_images: int, size: int, seed: int) -> Path:
    """Write ``root/images``, ``root/masks``, ``root/classes.json`` (the folder layout) and the large scene
    (:data:`SCENE`); reuse them if present."""
    root = Path(root)
    if (root / "classes.json").exists():
        return root
    rng = np.random.default_rng(seed)
    with atomic_dir(root) as tmp:
        for sub in ("images", "masks", "scene"):
            (tmp / sub).mkdir()
        for i in range(num_images):
            image, mask = make_sample(rng, size)
            Image.fromarray(image).save(tmp / "images" / f"demo_{i:04d}.png")
            Image.fromarray(mask).save(tmp / "masks" / f"demo_{i:04d}.png")
        scene, truth = make_sample(np.random.default_rng(seed + 7), size * SCENE_FACTOR, object_scale=size)
        for array, rel in zip((scene, truth), SCENE):
            Image.fromarray(array).save(tmp / rel)
        (tmp / "classes.json").write_text(json.dumps({"classes": CLASSES, "colors": COLORS}))
    return root
