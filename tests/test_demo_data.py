import json

import numpy as np
from PIL import Image

from seglab.demo_data import CLASSES, SCENE, SCENE_FACTOR, generate_demo_dataset, make_sample


def _masks(seed, n=30, size=96):
    rng = np.random.default_rng(seed)
    return [make_sample(rng, size) for _ in range(n)]


def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path):
    a = generate_demo_dataset(tmp_path / "a", 3, 64, seed=1)
    b = generate_demo_dataset(tmp_path / "b", 3, 64, seed=1)
    c = generate_demo_dataset(tmp_path / "c", 3, 64, seed=2)
    read = lambda root: np.asarray(Image.open(root / "images" / "demo_0001.png"))
    assert np.array_equal(read(a), read(b)) and not np.array_equal(read(a), read(c))
    assert json.loads((a / "classes.json").read_text())["classes"] == CLASSES
    scene, truth = (np.asarray(Image.open(a / rel)) for rel in SCENE)  # the large scene notebook 06 shows
    assert scene.shape == (64 * SCENE_FACTOR, 64 * SCENE_FACTOR, 3) and truth.shape == scene.shape[:2]
    assert set(np.unique(truth)) <= set(range(len(CLASSES)))


def test_four_classes_with_a_rare_one_under_three_percent():
    counts = sum(np.bincount(m.ravel(), minlength=len(CLASSES)) for _, m in _masks(0))
    share = counts / counts.sum()
    assert len(CLASSES) >= 4 and (share > 0).all()
    assert share[3] < 0.03
    assert share[0] > 0.5


def test_objects_touch_or_overlap_and_backgrounds_are_textured():
    touching = 0
    for image, mask in _masks(3):
        disc, bar = mask == 1, mask == 2
        grown = np.zeros_like(disc)
        grown[1:] |= disc[:-1]; grown[:-1] |= disc[1:]; grown[:, 1:] |= disc[:, :-1]; grown[:, :-1] |= disc[:, 1:]
        touching += bool((grown & bar).any())
        assert image[mask == 0].std() > 8  # noise and texture, not a flat colour
    assert touching >= 3


def test_speck_chance_thins_the_specks_to_few_images():
    rng = np.random.default_rng(0)
    masks = [make_sample(rng, 96, speck_chance=0.25)[1] for _ in range(40)]
    with_specks = sum((m == 3).any() for m in masks)
    assert 3 <= with_specks <= 20
    assert np.mean([(m == 3).mean() for m in masks]) < 0.01
