import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seglab.backend import sm, tf
from seglab import normalization, pipeline, shards
from seglab.records import ImageSpec, Normalization

RGB8 = ImageSpec(channels=3, dtype="uint8", encoding="png", intensity="dataset")  # 8-bit RGB, as the demo stores it
IDENTITY = Normalization(order=[0, 1, 2], scale=[1.0, 1.0, 1.0], offset=[0.0, 0.0, 0.0])


def write_shards(folder, samples, count=1):
    """``samples`` = [(image, mask)] into ``count`` TFRecord shards, as notebook 01 writes them."""
    paths = [folder / name for name in shards.shard_names("train", count)]
    writers = [tf.io.TFRecordWriter(str(p)) for p in paths]
    for i, (image, mask) in enumerate(samples):
        writers[i * count // len(samples)].write(shards.example(f"s{i}", image, mask))
    for writer in writers:
        writer.close()
    return paths


def make(files, num_classes, norm, batch_size, image=RGB8, items=None, size=None, **batching):
    """``pipeline.make_dataset`` over ``files`` holding records of ``image``, batched as ``batching`` says."""
    return pipeline.make_dataset(pipeline.SplitData(files, image, num_classes, items, size), norm,
                                 pipeline.Batching(batch_size, **batching))


@pytest.mark.parametrize("backbone", ["resnet34", "efficientnetb0", "mobilenetv2", "vgg16"])
def test_normalisation_matches_segmentation_models(backbone):
    norm = normalization.encoder_normalization(backbone)
    x = np.random.default_rng(0).integers(0, 256, (2, 6, 6, 3)).astype(np.float32)
    expected = sm.get_preprocessing(backbone)(x.copy())
    np.testing.assert_allclose(normalization.normalize(x, norm).numpy(), expected, atol=1e-3)
    np.testing.assert_array_equal(normalization.denormalize(normalization.normalize(x, norm), norm), x.astype(np.uint8))


def test_augmentation_moves_image_and_mask_together(tmp_path):
    """The mask is a function of the image's red channel; it must stay so after augmentation,
    and augmentation must really turn, flip and jitter (a no-op would pass the first check)."""
    rng = np.random.default_rng(0)
    samples, originals = [], set()
    for i in range(6):
        mask = rng.integers(0, 3, (16, 16)).astype(np.uint8)
        mask[0, 0], mask[-1, -1] = 0, 2  # no sample is symmetric, so every turn or flip shows
        image = np.stack([mask * 100, np.zeros_like(mask), np.zeros_like(mask)], -1).astype(np.uint8)
        samples.append((image, mask))
        originals.add(mask.tobytes())
    tf.random.set_seed(1)
    ds = make(write_shards(tmp_path, samples, 2), 3, IDENTITY, 3, training=True, augment="strong", repeat=True)
    seen, moved, jittered = 0, 0, 0
    for x, y in ds.take(8):
        labels = np.argmax(y.numpy(), -1)
        red = x.numpy()[..., 0]
        # brightness/contrast jitter keeps the order of red levels: each class's pixels stay separable
        for b in range(len(labels)):
            lows, mids, highs = red[b][labels[b] == 0], red[b][labels[b] == 1], red[b][labels[b] == 2]
            assert lows.max(initial=-1e9) < mids.min(initial=1e9) and mids.max(initial=-1e9) < highs.min(initial=1e9)
            moved += labels[b].astype(np.uint8).tobytes() not in originals
            jittered += not np.allclose(red[b], labels[b] * 100.0)
        seen += y.shape[0]
    assert seen == 24 and y.shape == (3, 16, 16, 3)
    assert moved >= 12 and jittered >= 20  # 3 of 4 turns x 4 flips move a sample; the jitter is on every one


def test_flip_augmentation_only_mirrors_left_right(tmp_path):
    """The plain recipe's augmentation: each sample as it is or mirrored left-right, both seen, pixels untouched."""
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, (8, 8)).astype(np.uint8) for _ in range(4)]
    samples = [(np.stack([m * 100] * 3, -1).astype(np.uint8), m) for m in masks]
    ds = make(write_shards(tmp_path, samples, 1), 3, IDENTITY, 4, training=True, augment="flip", repeat=True)
    kept, mirrored = 0, 0
    for x, y in ds.take(10):
        for image, labels in zip(x.numpy(), pipeline.labels(y)):
            np.testing.assert_array_equal(image[..., 0], labels * 100.0)  # no intensity jitter
            kept += any(np.array_equal(labels, m) for m in masks)
            mirrored += any(np.array_equal(labels, m[:, ::-1]) for m in masks)
    assert kept + mirrored == 40 and kept >= 10 and mirrored >= 10


def test_ignored_pixels_become_empty_one_hot_rows_and_come_back(tmp_path):
    mask = np.array([[0, 1], [255, 2]], np.uint8)
    norm = normalization.encoder_normalization("mobilenetv2")
    _, y = next(iter(make(write_shards(tmp_path, [(np.zeros((2, 2, 3), np.uint8), mask)]), 3, norm, 1)))
    assert y.numpy()[0, 1, 0].sum() == 0
    np.testing.assert_array_equal(pipeline.labels(y[0]), mask)


def test_streaming_dataset_shapes_and_one_hot(tmp_path):
    files = write_shards(tmp_path, [(np.full((8, 8, 3), i, np.uint8), np.full((8, 8), i % 2, np.uint8)) for i in range(5)], 2)
    norm = normalization.encoder_normalization("mobilenetv2")
    batches = list(make(files, 2, norm, 2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]  # evaluation keeps every sample
    assert np.allclose(batches[0][1].numpy().sum(-1), 1)
    assert np.isclose(batches[0][0].numpy()[0, 0, 0, 0], -1.0)  # pixel 0 -> -1 for mobilenet
    train = list(make(files, 2, norm, 2, training=True))
    assert [b[0].shape[0] for b in train] == [2, 2]  # whole batches for training (replicas split them)


def test_training_order_is_shuffled_across_shards_and_epochs(tmp_path):
    samples = [(np.full((4, 4, 3), i, np.uint8), np.zeros((4, 4), np.uint8)) for i in range(40)]
    ds = make(write_shards(tmp_path, samples, 4), 1, IDENTITY, 40, training=True, seed=3)
    first, second = ([int(v) for v in x.numpy()[:, 0, 0, 0]] for x, _ in (next(iter(ds)), next(iter(ds))))
    assert sorted(first) == sorted(second) == list(range(40))  # every sample once per epoch
    assert first != list(range(40)) and first != second


def rare_share(batches, rare: int = 2) -> float:
    held = np.concatenate([y.numpy()[..., rare].any(axis=(1, 2)) for _, y in batches])
    return held.mean()


@pytest.mark.parametrize("share, expected", [(0.0, 0.1), (0.5, 0.55), (0.33, 0.397)])
def test_rare_sampling_forces_a_share_of_every_batch_to_hold_a_rare_class(tmp_path, share, expected):
    """10% of the images hold the rare class 2; sampling draws ``share`` of each batch from those,
    the rest from all images (nnU-Net's forced foreground): share + (1 - share) * 10% hold it."""
    samples = []
    for i in range(100):
        mask = np.zeros((8, 8), np.uint8)
        mask[:, 4:] = 1
        mask[1, 1] = 2 if i % 10 == 0 else 0
        samples.append((np.full((8, 8, 3), i, np.uint8), mask))
    rare = [2] if share else []
    ds = make(write_shards(tmp_path, samples, 4), 3, IDENTITY, 10, training=True, items=100, size=8, rare=rare,
              rare_share=share)
    epochs = [list(ds) for _ in range(4)]
    assert all(len(batches) == 10 for batches in epochs)  # an epoch is still the training split's length
    assert rare_share(sum(epochs, [])) == pytest.approx(expected, abs=0.05)
    per_batch = [y.numpy()[..., 2].any(axis=(1, 2)).sum() for _, y in epochs[0]]
    assert min(per_batch) >= int(10 * share)  # the share holds in every batch, not only on average


def full_images(count: int = 10):
    """Full-size images whose pixels say where they are (red: row, green: column, blue: image);
    only image 0 holds the rare class 1, in a 2 x 2 blob."""
    images = []
    for k in range(count):
        h, w = [(40, 56), (24, 30), (64, 48)][k % 3]  # one shorter than a crop on both sides
        rows, cols = np.mgrid[:h, :w]
        image = np.stack([rows, cols, np.full_like(rows, k)], -1).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        if k == 0:
            mask[30:32, 45:47] = 1
        images.append((image, mask))
    return images


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_random_crops_are_tiles_of_the_full_images_and_keep_the_rare_share(tmp_path, share):
    images = full_images()
    ds = make(write_shards(tmp_path, images, 3), 2, IDENTITY, 8, training=True, items=10, size=32, crop=32,
              crops_per_image=4, rare=[1] if share else [], rare_share=share)
    batches = sum((list(ds) for _ in range(3)), [])
    assert len(batches) == 3 * 5 and all(x.shape == (8, 32, 32, 3) for x, _ in batches)  # 10 images x 4 crops
    windows = set()
    for x, y in batches:
        for crop, labels in zip(x.numpy().astype(np.uint8), pipeline.labels(y)):
            image, mask = images[crop[0, 0, 2]]
            pad = ((0, max(0, 32 - mask.shape[0])), (0, max(0, 32 - mask.shape[1])))
            image, mask = np.pad(image, pad + ((0, 0),), mode="symmetric"), np.pad(mask, pad, mode="symmetric")
            y0, x0 = crop[0, 0, :2]  # a window's first pixel says where it starts
            np.testing.assert_array_equal(crop, image[y0:y0 + 32, x0:x0 + 32])
            np.testing.assert_array_equal(labels, mask[y0:y0 + 32, x0:x0 + 32])
            windows.add((crop[0, 0, 2], y0, x0))
    assert len(windows) > 40  # random places, not a fixed grid
    held = rare_share(batches, rare=1)
    assert held >= share and held <= share + 0.1  # only 1 image in 10 holds it: no more than 10% without sampling
    if not share:
        assert held < 0.1


TWO_REPLICAS = """
import sys
import numpy as np
from seglab.backend import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from test_pipeline import IDENTITY, full_images, make, write_shards
from pathlib import Path
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
ds = make(write_shards(Path(sys.argv[1]), full_images(), 3), 2, IDENTITY, 8, training=True, items=10, size=32, crop=32,
          crops_per_image=4, rare=[1], rare_share=0.5)
held = [int(y.numpy()[..., 1].any(axis=(1, 2)).sum()) for batch in strategy.experimental_distribute_dataset(ds)
        for y in strategy.experimental_local_results(batch[1])]
print("HELD", held)
"""


def test_each_replica_gets_the_rare_share_of_its_batch(tmp_path):
    tests = Path(__file__).parent
    path = os.pathsep.join([str(tests), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS, str(tmp_path)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 0, result.stderr[-3000:]
    held = json.loads(result.stdout.split("HELD")[-1])
    assert len(held) == 10 and min(held) >= 2  # 5 global batches of 8: each replica's 4 hold 2 forced crops


def test_inputs_other_than_8bit_rgb_are_normalised_by_the_training_split():
    """8-bit RGB keeps the encoder's normalisation; anything else maps the training mean to 0 and std to 1."""
    assert normalization.input_normalization(RGB8, "vgg16") == normalization.encoder_normalization("vgg16")
    pixels = np.random.default_rng(0).normal([100, 2000, 30000, 7], [5, 300, 1000, 1], (500, 4)).astype(np.float32)
    image = ImageSpec(4, "uint16", "png", "dataset", mean=pixels.mean(0).tolist(), std=pixels.std(0).tolist())
    norm = normalization.input_normalization(image, "vgg16")
    x = normalization.normalize(pixels, norm).numpy()
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(x.std(0), 1, atol=1e-3)
    np.testing.assert_allclose(normalization.denormalize(x, norm, "float32"), pixels, rtol=1e-5)


def test_multiband_float_shards_decode_and_augment_within_the_training_range(tmp_path):
    """Serialised float tensors of 5 bands come through shards.parse; the jitter stays inside each band's range."""
    rng = np.random.default_rng(0)
    samples = [((rng.normal(0, 1, (8, 8, 5)) * [1, 2, 3, 4, 5]).astype(np.float32), np.zeros((8, 8), np.uint8))
               for _ in range(4)]
    low, high = np.min([s[0] for s in samples], (0, 1, 2)), np.max([s[0] for s in samples], (0, 1, 2))
    image = ImageSpec(5, "float32", "tensor", "dataset", min=low.tolist(), max=high.tolist())
    paths = write_shards(tmp_path, samples)
    identity = Normalization(list(range(5)), [1.0] * 5, [0.0] * 5)
    plain = np.concatenate([x for x, _ in make(paths, 2, identity, 4, image=image)])
    np.testing.assert_array_equal(plain, np.stack([x for x, _ in samples]))
    for _ in range(5):
        x, _ = next(iter(make(paths, 2, identity, 4, image=image, training=True, augment="strong")))
        assert (x.numpy() >= low - 1e-5).all() and (x.numpy() <= high + 1e-5).all()


def test_display_shows_any_image_as_8bit_rgb():
    from seglab import plots

    rgb = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(plots.display(rgb), rgb)
    np.testing.assert_array_equal(plots.display(rgb[..., :1]), np.repeat(rgb[..., :1], 3, 2))
    bands = (rgb.astype(np.uint16) * 200)[..., [0, 1, 2, 0]]
    view = plots.display(bands)
    assert view.dtype == np.uint8 and view.shape == (6, 6, 3) and view.min() == 0 and view.max() == 255
