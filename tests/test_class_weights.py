import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from seglab.class_weights import compute_weights
from seglab.stats import class_pixels, rare_classes


def pixel_counts(masks, num_classes):
    """Per class over ``masks``, as notebook 01 sums them: labelled pixels, and labelled pixels of the masks holding it."""
    counts, present_in = zip(*(class_pixels(mask, num_classes) for mask in masks))
    return sum(counts), sum(present_in)


def test_balanced_equals_scikit_learn_on_the_same_pixels():
    rng = np.random.default_rng(0)
    masks = [rng.choice(4, size=(20, 30), p=[0.8, 0.15, 0.04, 0.01]).astype(np.uint8) for _ in range(5)]
    counts, _ = pixel_counts(masks, 4)
    pixels = np.concatenate([m.ravel() for m in masks])
    np.testing.assert_array_equal(counts, np.bincount(pixels, minlength=4))
    expected = compute_class_weight("balanced", classes=np.arange(4), y=pixels)
    np.testing.assert_allclose(compute_weights(counts, "balanced"), expected, rtol=1e-12)


def test_median_frequency_follows_segnet():
    counts = np.array([900, 90, 10])
    present_in = np.array([1000, 500, 100])  # class 2 appears in one small image only
    freq = counts / present_in  # 0.9, 0.18, 0.1
    np.testing.assert_allclose(compute_weights(counts, "median_frequency", present_in=present_in), np.median(freq) / freq)


def test_inverse_sqrt_has_mean_one_and_orders_by_rarity():
    w = compute_weights([800, 150, 50], "inverse_sqrt")
    assert np.isclose(w.mean(), 1) and w[0] < w[1] < w[2]
    np.testing.assert_array_equal(compute_weights([800, 150, 50], "none"), [1, 1, 1])


def test_clipping_bounds_the_ratio():
    w = compute_weights([10**6, 10], "balanced", max_ratio=10)
    assert np.isclose(w.max() / w.min(), 10)


def test_a_class_absent_from_training_warns_and_gets_a_finite_weight():
    with pytest.warns(UserWarning, match="speck have no pixels in the training split"):
        w = compute_weights([900, 100, 0], "balanced", names=["bg", "disc", "speck"])
    assert np.isfinite(w).all() and w[2] == w[:2].max()


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="unknown class weight scheme"):
        compute_weights([1, 2], "focal")


def test_ignored_pixels_count_for_no_class():
    masks = [np.array([[0, 0, 255, 1], [255, 255, 1, 1]], np.uint8), np.array([[0, 255], [0, 0]], np.uint8)]
    counts, present_in = pixel_counts(masks, 3)
    np.testing.assert_array_equal(counts, [5, 3, 0])
    np.testing.assert_array_equal(present_in, [5 + 3, 5, 0])  # labelled pixels of the images holding the class


def test_weights_count_the_training_split_only(tmp_path, make_config):
    """Validation and test pixels must not leak into training through the weights."""
    from conftest import write_folder_dataset

    from seglab import class_weights, data_loading, shards
    from seglab.records import ClassWeights
    from seglab.rundir import RunDir

    root = write_folder_dataset(tmp_path / "d", n=12, size=[(64, 64), (64, 96), (96, 64)])
    cfg = make_config("data.source=folder", f"data.root={root}", "data.mode=tile", "data.tile_overlap=0")
    run = RunDir(cfg.run_dir)
    dataset = data_loading.prepare_dataset(cfg, run)
    result = class_weights.write_class_weights(run, cfg)
    train = dataset.splits["train"]
    assert result.counts == train.pixels and sum(result.counts) == train.items * 64 * 64
    assert sum(result.counts) < sum(sum(dataset.splits[s].pixels) for s in data_loading.SPLITS)
    assert run.read(ClassWeights) == result  # what notebook 03 reads back
    masks = (mask for _, _, mask in shards.read_samples(dataset.shard_files(run.root, "train"), dataset.images))
    counts, present_in = pixel_counts(masks, len(dataset.classes))  # 01's counts are those of its training shards
    assert counts.tolist() == train.pixels and present_in.tolist() == train.present_in
    np.testing.assert_allclose(result.weights, compute_weights(train.pixels, cfg.class_weights.scheme,
                                                               cfg.class_weights.max_ratio, train.present_in))


def test_rare_classes_are_those_under_the_threshold_else_the_rarest_present():
    assert rare_classes([900, 60, 38, 2], 0.05) == [2, 3]  # 3.8% and 0.2% of the pixels
    assert rare_classes([800, 200], 0.05) == [1]  # none that rare: the rarest, nnU-Net's foreground
    assert rare_classes([950, 50, 0], 0.05) == [1]  # an absent class cannot be drawn
