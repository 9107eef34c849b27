import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from seglab import data_loading, geometry, pipeline, readers, shards
from seglab.jsonrecord import FileStamp
from seglab.records import DatasetRecord
from seglab.rundir import RunDir

from conftest import write_folder_dataset


@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 0.25), (64, 64, 0.5), (65, 64, 0.0), (300, 96, 0.5)])
def test_tiles_cover_the_image_with_at_least_the_overlap(length, tile, overlap):
    starts = geometry.tile_starts(length, tile, overlap)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + tile] = True
        assert 0 <= s <= length - tile
    assert covered.all()
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= int(tile * overlap) - 1


def test_resizing_never_invents_classes():
    mask = np.zeros((101, 77), np.uint8)
    mask[:, 30:] = 2
    mask[50:, :] = 5  # neighbouring 2 and 5 would average to 3 or 4 under linear interpolation
    image = np.zeros((101, 77, 3), np.uint8)
    for _, img, msk in geometry.pieces(image, mask, 48, "resize", 0):
        assert img.shape == (48, 48, 3) and msk.shape == (48, 48)
        assert set(np.unique(msk)) <= {0, 2, 5}


def test_resized_masks_stay_centred_on_their_images():
    """9 -> 3 px: the image averages around columns 1, 4, 7, so the mask must sample those."""
    mask = np.zeros((9, 9), np.uint8)
    mask[:, [1, 4, 7]] = 2
    image = np.zeros((9, 9, 3), np.uint8)
    [(_, _, small)] = geometry.pieces(image, mask, 3, "resize", 0)
    np.testing.assert_array_equal(small, np.full((3, 3), 2))


def test_tiling_split_by_source_image_and_reproducible(tmp_path, make_config):
    root = write_folder_dataset(tmp_path / "d", n=10, size=(80, 100))
    cfg = make_config("data.source=folder", f"data.root={root}", "data.mode=tile", "data.image_size=32",
                      "data.tile_overlap=0.5")
    dataset = data_loading.prepare_dataset(cfg, RunDir(cfg.run_dir))
    per_source = {}
    for item in dataset.items:
        per_source.setdefault(item.source, set()).add(item.split)
    assert all(len(splits) == 1 for splits in per_source.values())  # no image on both sides
    assert len(dataset.items) == 10 * len(geometry.tile_starts(80, 32, 0.5)) * len(geometry.tile_starts(100, 32, 0.5))
    assert sum(dataset.splits[s].sources for s in data_loading.SPLITS) == 10
    first = {i.id: i.split for i in dataset.items}
    again = data_loading.prepare_dataset(cfg, RunDir(cfg.run_dir))
    assert {i.id: i.split for i in again.items} == first
    pixels = sum(np.array(dataset.splits[s].pixels) for s in data_loading.SPLITS)
    assert pixels.sum() == len(dataset.items) * 32 * 32


def test_demo_source_end_to_end_writes_the_manifest(make_config):
    cfg = make_config()
    run = RunDir(cfg.run_dir)
    dataset = data_loading.prepare_dataset(cfg, run)
    assert dataset.classes[0] == "background" and len(dataset.classes) == 4
    outputs = run.require("data").outputs  # every file of dataset/, stamped with its size and checksum
    files = sorted(str(p.relative_to(run.root)) for p in run.path("dataset").rglob("*") if p.is_file() and p.name != ".seglab")
    assert sorted(outputs) == files and len(files) == 2 + 5 + 2  # the records, the shards, the demo scene
    assert all(outputs[rel] == FileStamp.of(run.path(rel)) for rel in files)
    assert run.read(DatasetRecord).items == dataset.items
    assert set(dataset.splits) == {"train", "val", "test"}
    samples = list(shards.read_samples(dataset.shard_files(run.root, "train"), dataset.images))
    assert [i for i, _, _ in samples] == dataset.split_ids("train")
    assert all(image.shape == (64, 64, 3) and mask.shape == (64, 64) for _, image, mask in samples)
    scene = [run.path(rel) for rel in (dataset.demo_scene.image, dataset.demo_scene.truth)]  # for notebook 06
    assert all(path.is_file() and path.parent == run.path("dataset", "demo_scene") for path in scene)


def test_too_few_images_to_split(tmp_path, make_config):
    root = write_folder_dataset(tmp_path / "d", n=2)
    cfg = make_config("data.source=folder", f"data.root={root}")
    with pytest.raises(readers.DataError, match="at least 3"):
        data_loading.prepare_dataset(cfg, RunDir(cfg.run_dir))


def test_tile_mode_pads_short_sides_instead_of_squashing():
    image = np.arange(20 * 100 * 3, dtype=np.uint32).reshape(20, 100, 3).astype(np.uint8)
    mask = (np.arange(100)[None, :].repeat(20, 0) // 34).astype(np.uint8)
    pieces = list(geometry.pieces(image, mask, 32, "tile", 0.0))
    assert [origin for origin, _, _ in pieces] == [(0, 0), (0, 32), (0, 64), (0, 68)]
    _, first_image, first_mask = pieces[0]
    np.testing.assert_array_equal(first_image[:20], image[:, :32])  # the real pixels, at their own scale
    np.testing.assert_array_equal(first_mask[20:], first_mask[19::-1][:12])  # mirrored below


def test_pixel_scale_records_how_resizing_magnified_the_sources():
    assert geometry.pixel_scale([[200, 400], [200, 400]], 100, "resize") == [0.5, 0.25]
    assert geometry.pixel_scale([[200, 400]], 100, "tile") == [1.0, 1.0]


def test_the_sample_figure_copes_with_a_single_training_image(tmp_path, make_config):
    root = write_folder_dataset(tmp_path / "d", n=3)
    cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=32")
    run = RunDir(cfg.run_dir)
    dataset = data_loading.prepare_dataset(cfg, run)
    assert dataset.splits["train"].items == 1
    assert len(data_loading.sample_figure(run, dataset).axes) == 2


@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_grey_odd_and_mixed_size_images_with_colour_masks(tmp_path, make_config, mode):
    sizes = [(37, 53), (29, 41), (64, 50)]  # odd, non-square, one side shorter than a tile
    root = write_folder_dataset(tmp_path / "d", n=6, size=sizes, grey=True, rgb_masks=True)
    cfg = make_config("data.source=folder", f"data.root={root}", f"data.mode={mode}", "data.image_size=32")
    run = RunDir(cfg.run_dir)
    dataset = data_loading.prepare_dataset(cfg, run)
    per_source = [len(geometry.tile_starts(max(h, 32), 32, cfg.data.tile_overlap)) *
                  len(geometry.tile_starts(max(w, 32), 32, cfg.data.tile_overlap)) for h, w in sizes]
    assert len(dataset.items) == (6 if mode == "resize" else 2 * sum(per_source))
    assert {tuple(s) for s in dataset.source.sizes.values()} == set(sizes)
    for _, image, mask in shards.read_samples(dataset.shard_files(run.root, "train"), dataset.images):
        assert image.shape == (32, 32, 1) and image.dtype == np.uint8  # grey stays one channel
        assert set(np.unique(mask)) <= {0, 1, 2}
    pixels = sum(np.array(dataset.splits[s].pixels) for s in data_loading.SPLITS)
    assert pixels.sum() == len(dataset.items) * 32 * 32 and (pixels > 0).all()


@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_ignored_pixels_survive_resizing_and_mirror_padding(mode):
    mask = np.zeros((20, 50), np.uint8)
    mask[:, 10:] = 1
    mask[:, 8:10] = 255  # a border left out, as in Pascal VOC
    pieces = [piece for _, _, piece in geometry.pieces(np.zeros((20, 50, 3), np.uint8), mask, 25, mode, 0.0)]
    assert all(set(np.unique(piece)) <= {0, 1, 255} for piece in pieces)
    if mode == "resize":
        assert (pieces[0][:, 4] == 255).all()  # columns 8 and 9 become column 4
    else:
        assert (pieces[0][:, 8:10] == 255).all()  # rows 20-24 mirrored, the border with them


@pytest.mark.parametrize("rgb_masks, ignore", [(False, 255), (False, 200), (True, [255, 255, 255]), (False, None)])
def test_ignored_pixels_are_kept_as_255_and_left_out_of_the_counts(tmp_path, make_config, rgb_masks, ignore):
    root = write_folder_dataset(tmp_path / "d", n=5, size=(40, 64), rgb_masks=rgb_masks, ignore=ignore)
    cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=64", "data.mode=tile")
    run = RunDir(cfg.run_dir)
    dataset = data_loading.prepare_dataset(cfg, run)
    assert dataset.ignore_index == (None if ignore is None else 255)
    ignored = 0 if ignore is None else 64  # one column of the 40 x 64 image, mirrored to 64 rows
    pixels = sum(np.array(dataset.splits[s].pixels) for s in data_loading.SPLITS)
    assert pixels.sum() == 5 * (64 * 64 - ignored)
    _, _, mask = next(shards.read_samples(dataset.shard_files(run.root, "train"), dataset.images))
    assert (mask[:, 32] == 255).all() == (ignore is not None)


def test_max_images_takes_a_seeded_random_subset_in_sorted_order(tmp_path, make_config):
    root = write_folder_dataset(tmp_path / "d", n=20, size=(32, 32))
    chosen = {}
    for attempt, seed in enumerate((1, 1, 2)):
        cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=32", "data.max_images=6",
                          f"seed={seed}", f"run_dir={tmp_path / f'run{attempt}'}")
        stems = list(data_loading.prepare_dataset(cfg, RunDir(cfg.run_dir)).source.sizes)
        assert len(stems) == 6 and stems == sorted(stems)
        chosen.setdefault(seed, []).append(stems)
    assert chosen[1][0] == chosen[1][1] != chosen[2][0]
    assert chosen[1][0] != sorted(f"img{i}" for i in range(20))[:6]  # not the first six files


@pytest.mark.parametrize("items, batch, replicas, expected, line", [
    (4, 8, 1, 4, "batch size 8 is larger than the 4 training samples; using 4"),
    (10, 8, 1, 8, None),
    (10, 8, 2, 5, "batch size 8 per replica x 2 replicas is larger than the 10 training samples; using 5 per replica"),
    (10, 4, 2, 4, None),
    (3, 8, 2, 1, "batch size 8 per replica x 2 replicas is larger than the 3 training samples; using 1 per replica"),
])
def test_batch_size_is_capped_to_the_training_split(items, batch, replicas, expected, line):
    said = []
    assert pipeline.fit_batch_size(items, batch, replicas, log=said.append) == expected
    assert said == ([line] if line else [])


@pytest.mark.parametrize("items, replicas", [(0, 1), (1, 2)])
def test_batch_size_cannot_fit_fewer_samples_than_replicas(items, replicas):
    with pytest.raises(readers.DataError, match=f"{items} training sample\\(s\\) cannot give each of the {replicas}"):
        pipeline.fit_batch_size(items, 8, replicas, log=print)


@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_val_and_test_images_are_kept_at_their_original_size(tmp_path, make_config, mode):
    sizes = [(64, 50), (37, 53), (29, 41)]
    root = write_folder_dataset(tmp_path / "d", n=9, size=sizes, grey=True, rgb_masks=True, ignore=[255, 255, 255])
    cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=32", f"data.mode={mode}")
    run = RunDir(cfg.run_dir)
    dataset = data_loading.prepare_dataset(cfg, run)
    classes = readers.read_classes(root / "classes.json")
    kept = set()
    for split in ("val", "test"):
        pairs = list(shards.original_pairs(run, dataset, split))
        stems = [stem for stem, _, _ in pairs]
        assert stems == sorted(stems) == dataset.splits[split].source_ids and stems
        assert stems == sorted({i.source for i in dataset.items if i.split == split})
        for stem, kept_image, kept_mask in pairs:
            image, mask = readers.read_pair(root / "images" / f"{stem}.png", root / "masks" / f"{stem}.png", classes)
            np.testing.assert_array_equal(kept_image, image)  # e.g. 37 x 53, grey as RGB
            np.testing.assert_array_equal(kept_mask, mask)
            assert (mask == 255).any()
            kept.add(stem)
        assert [s for s, _, _ in shards.original_pairs(run, dataset, split, stems=stems[-1:])] == stems[-1:]
    originals = dataset.shard_files(run.root, "val", originals=True) + dataset.shard_files(run.root, "test", originals=True)
    assert kept == {s for s, _, _ in shards.read_samples(originals, dataset.images)}  # no training image
    assert (37, 53) in {tuple(dataset.source.sizes[stem]) for stem in kept}  # odd, non-square, kept as is
    assert {s for s in dataset.source.sizes if s not in kept} == set(dataset.splits["train"].source_ids)
    with pytest.raises(ValueError, match="original-size images are kept for val and test, not for 'train'"):
        list(shards.original_pairs(run, dataset, "train"))


def test_random_crops_keep_the_training_images_at_their_original_size(tmp_path, make_config):
    root = write_folder_dataset(tmp_path / "d", n=6, size=[(64, 50), (37, 53)])
    cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=32", "data.mode=tile",
                      "data.train_tiles=random_crops")
    run = RunDir(cfg.run_dir)
    dataset = data_loading.prepare_dataset(cfg, run)
    classes = readers.read_classes(root / "classes.json")
    pairs = list(shards.original_pairs(run, dataset, "train"))
    assert [stem for stem, _, _ in pairs] == dataset.splits["train"].source_ids
    for stem, kept_image, kept_mask in pairs:
        image, mask = readers.read_pair(root / "images" / f"{stem}.png", root / "masks" / f"{stem}.png", classes)
        np.testing.assert_array_equal(kept_image, image)
        np.testing.assert_array_equal(kept_mask, mask)
    tiles = shards.read_samples(dataset.shard_files(run.root, "train"), dataset.images)
    assert sum(1 for _ in tiles) == dataset.splits["train"].items > len(pairs)  # the tiles too, for 02


def test_pairs_stream_through_a_bounded_window_in_input_order():
    pulled = []

    def items():
        for i in range(100):
            pulled.append(i)
            yield i

    with ThreadPoolExecutor(4) as pool:
        results = data_loading._ordered_map(pool, lambda i: (time.sleep(0.002 * (i % 3)), i * i)[1], items(), 5)
        first = next(results)
        assert len(pulled) <= 6  # not the whole dataset at once
        assert [first, *results] == [i * i for i in range(100)]


def test_a_failing_pair_stops_the_stream_and_cancels_what_is_queued():
    started = []

    def work(i):
        started.append(i)
        if i == 3:
            raise readers.DataError(f"img{i}.png: broken")
        time.sleep(0.2 if i > 3 else 0)  # the one running when 3 fails is still busy while the rest are cancelled
        return i

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(readers.DataError, match="img3.png: broken"):
            list(data_loading._ordered_map(pool, work, range(100), 4))
    assert started in ([0, 1, 2, 3], [0, 1, 2, 3, 4])  # 5 and 6 were queued, then cancelled


def test_unchanged_inputs_reuse_the_dataset_and_any_change_redoes_it(tmp_path, make_config, capsys):
    root = write_folder_dataset(tmp_path / "d", n=5)
    cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=32")
    run = RunDir(cfg.run_dir)
    first = data_loading.prepare_dataset(cfg, run)
    written, step = run.path("dataset", "dataset.json").stat().st_mtime_ns, run.require("data").id
    later_step = run.begin("class_weights", cfg)
    later_step.require("data")
    run.path("class_weights.json").write_text("{}")
    later_step.wrote("class_weights.json")
    later_step.finish()
    capsys.readouterr()

    assert data_loading.prepare_dataset(cfg, run) == first
    assert capsys.readouterr().out == "dataset unchanged since the last run of 01; reusing dataset/\n"
    assert run.path("dataset", "dataset.json").stat().st_mtime_ns == written and run.require("data").id == step
    run.require("class_weights")  # a later step's record is still valid

    mask = root / "masks" / "img0.png"
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(mask)
    later = mask.stat().st_mtime_ns + 10**9  # an edit a second later, whatever the clock's resolution
    os.utime(mask, ns=(later, later))
    data_loading.prepare_dataset(cfg, run)
    assert run.require("data").id != step
    recorded = run.read(DatasetRecord)
    masks = {i: m for i, _, m in shards.read_samples(
        [run.path("dataset", name) for names in recorded.shards.values() for name in names], recorded.images)}
    assert not masks["img0"].any()

    step = run.require("data").id
    (root / "classes.json").write_text(json.dumps({"classes": ["background", "a", "c"]}))
    assert data_loading.prepare_dataset(cfg, run).classes == ["background", "a", "c"]
    assert run.require("data").id != step

    step = run.require("data").id
    larger = make_config("data.source=folder", f"data.root={root}", "data.image_size=64")
    assert data_loading.prepare_dataset(larger, run).image_size == 64
    assert run.require("data").id != step


def test_the_dataset_is_a_few_shard_files_whatever_its_size(tmp_path, make_config, monkeypatch):
    """Drive is slow with many small files: 40 images make one shard per split and kind, and with a tiny
    shard size the count grows to the cap, never to a file per image; every sample is in exactly one shard."""
    root = write_folder_dataset(tmp_path / "d", n=40, size=(40, 48))
    cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=32")
    run = RunDir(cfg.run_dir)
    data_loading.prepare_dataset(cfg, run)
    names = sorted(p.name for p in run.path("dataset").iterdir())
    assert names == [".seglab", "dataset.json", "fingerprint.json", "test-00000-of-00001.tfrecord",
                     "test-originals-00000-of-00001.tfrecord",
                     "train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord",
                     "val-originals-00000-of-00001.tfrecord"]
    monkeypatch.setattr(shards, "SHARD_BYTES", 1)
    monkeypatch.setattr(shards, "MAX_SHARDS", 3)
    dataset = data_loading.prepare_dataset(make_config("data.source=folder", f"data.root={root}",
                                                       "data.image_size=32", "seed=1"), run)
    assert dataset.shards["train"] == shards.shard_names("train", 3)
    assert len(list(run.path("dataset").iterdir())) == 1 + 2 + 3 * 5  # the marker, two records, the shards
    for split in data_loading.SPLITS:
        ids = [i for i, _, _ in shards.read_samples(dataset.shard_files(run.root, split), dataset.images)]
        assert ids == dataset.split_ids(split)  # consecutive sources per shard: the sorted order


def test_a_run_folder_on_drive_is_read_from_a_local_copy(tmp_path, make_config, monkeypatch):
    from seglab import colab

    monkeypatch.setattr(colab, "COLAB_ROOT", tmp_path / "content")
    monkeypatch.setattr(colab, "DRIVE", tmp_path / "content" / "drive")
    cfg = make_config(f"run_dir={tmp_path / 'content' / 'drive' / 'MyDrive' / 'seglab' / 'runs' / 'x'}")
    run = RunDir(cfg.run_dir)
    dataset = data_loading.prepare_dataset(cfg, run)
    files = dataset.shard_files(run.root, "train")
    copies = shards.local_copies(run.root, files, log=lambda line: None)
    assert all(c.parent.parent == tmp_path / "content" / "seglab_cache" for c in copies)
    assert [c.read_bytes() for c in copies] == [s.read_bytes() for s in files]
    local = make_config(f"run_dir={tmp_path / 'elsewhere'}")
    assert shards.local_copies(RunDir(local.run_dir).root, files) == files


@pytest.mark.parametrize("case, overrides, expected", [
    ("grey among RGB", (), (3, "uint8", "png")),
    ("16-bit bands", (), (4, "uint16", "png")),
    ("16-bit bands, two asked for", ("data.channels=2",), (2, "uint16", "png")),
    ("16-bit bands, stretched", ("data.intensity=per_image",), (4, "uint8", "png")),
    ("float bands", (), (5, "float32", "tensor")),
])
def test_channels_and_depth_are_detected_and_the_shards_keep_them(tmp_path, make_config, case, overrides, expected):
    """Every image reaches the shards with the dataset's channels and depth; originals come back as read."""
    root = write_folder_dataset(tmp_path / "d", n=8, size=[(40, 56), (70, 50)], bands=4 if "16" in case else None)
    if case == "grey among RGB":
        Image.open(root / "images" / "img0.png").convert("L").save(root / "images" / "img0.png")
    if case == "float bands":
        for i in range(8):
            (root / "images" / f"img{i}.png").unlink()
            h, w = [(40, 56), (70, 50)][i % 2]
            np.save(root / "images" / f"img{i}.npy", np.random.default_rng(i).normal(0, 1, (h, w, 5)).astype(np.float32))
    cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=32", *overrides)
    run = RunDir(cfg.run_dir)
    dataset = data_loading.prepare_dataset(cfg, run)
    spec = dataset.images
    assert (spec.channels, spec.dtype, spec.encoding) == expected
    for _, image, _ in shards.read_samples(dataset.shard_files(run.root, "train"), spec):
        assert image.shape == (32, 32, expected[0]) and image.dtype == expected[1]
    for stem, image, _ in shards.original_pairs(run, dataset, "test"):
        path = next((root / "images").glob(f"{stem}.*"))
        read = readers.read_image(path, spec.channels, spec.intensity)
        np.testing.assert_array_equal(image, read)  # lossless, at the original size


def test_training_split_statistics_equal_numpys_over_the_training_images(tmp_path, make_config):
    root = write_folder_dataset(tmp_path / "d", n=8, size=[(40, 56), (70, 50)], bands=4)
    cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=32")
    dataset = data_loading.prepare_dataset(cfg, RunDir(cfg.run_dir))
    train = dataset.splits["train"].source_ids
    pixels = np.concatenate([readers.read_image(root / "images" / f"{stem}.tif").reshape(-1, 4) for stem in train])
    spec = dataset.images
    np.testing.assert_allclose(spec.mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(spec.std, pixels.std(0), rtol=1e-12)
    np.testing.assert_array_equal(spec.min, pixels.min(0))
    np.testing.assert_array_equal(spec.max, pixels.max(0))
    assert len(train) < 8  # only the training split counts
