"""The dataset fingerprint and the settings decided from it (seglab.planning)."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from seglab import data_loading, geometry, machine, planning, readers, stats
from seglab.config import load_config
from seglab.jsonrecord import MissingInput
from seglab.records import DatasetRecord, Decision, Fingerprint
from seglab.rundir import RunDir

from conftest import REPO, write_folder_dataset


def draw_masks(root, classes: int, seed: int = 0) -> list[np.ndarray]:
    """Replace the masks of a folder dataset with random ones; the last class only in even images."""
    rng = np.random.default_rng(seed)
    masks = []
    for i, path in enumerate(sorted((root / "masks").glob("*.png"))):
        shape = np.asarray(Image.open(path)).shape
        mask = rng.integers(0, classes if i % 2 == 0 else classes - 1, shape).astype(np.uint8)
        Image.fromarray(mask).save(path)
        masks.append(mask)
    return masks


def measure(root, seed=0):
    pairs = readers.find_pairs(root)
    return stats.measure(pairs, readers.read_classes(root / "classes.json"), len(pairs), seed)


def side(median: float):
    """A fingerprint as far as the rules read it."""
    return SimpleNamespace(size={"short_side": {"median": median}})


def gpu(monkeypatch, gb):
    """The GPU nvidia-smi reports: none, or one of ``gb`` GB."""
    lines = [] if gb is None else [f"Tesla T4, {round(gb * 1024)} MiB, 535.104.05"]
    monkeypatch.setattr(machine, "nvidia_smi", lambda: lines)


def test_intensity_stats_per_channel():
    ramp = np.arange(1000, dtype=np.float64).reshape(10, 100)
    image = np.stack([ramp, np.full_like(ramp, 7), 2 * ramp], axis=-1)
    pooled = np.concatenate([image[:5].reshape(-1, 3), image[5:].reshape(-1, 3)])  # two images make one pool
    found = stats.intensity_stats(pooled)
    np.testing.assert_allclose(found["mean"], [499.5, 7, 999])
    np.testing.assert_allclose(found["std"], [ramp.std(), 0, 2 * ramp.std()])
    np.testing.assert_allclose(found["p0.5"], [4.995, 7, 9.99])
    np.testing.assert_allclose(found["p99.5"], [994.005, 7, 1988.01])
    assert stats.intensity_stats(ramp.reshape(-1, 1))["mean"] == [499.5]  # grey: one channel


def test_fingerprint_of_a_tiny_square_rgb_dataset_counts_what_was_drawn(tmp_path):
    root = write_folder_dataset(tmp_path / "d", n=6, size=(64, 64))
    masks = draw_masks(root, 3)
    fp = measure(root)
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=3)
    np.testing.assert_allclose(fp.classes.pixel_share, counts / counts.sum())
    assert fp.classes.image_share == [1.0, 1.0, 0.5]  # the last class was drawn in even images only
    assert fp.classes.names == ["background", "a", "b"]
    assert fp.images == fp.measured == 6 and fp.channels == {"3": 6}
    assert fp.size["height"]["median"] == fp.size["width"]["max"] == 64
    images = [np.asarray(Image.open(p)) for p in sorted((root / "images").glob("*.png"))]
    pooled = np.concatenate([i.reshape(-1, 3) for i in images]).astype(np.float64)
    np.testing.assert_allclose(fp.intensity["mean"], pooled.mean(0))  # 64² < PIXELS_PER_IMAGE: every pixel


def test_mixed_sizes_give_medians_and_spread(tmp_path):
    root = write_folder_dataset(tmp_path / "d", n=3, size=[(200, 300), (250, 180), (400, 500)])
    size = measure(root).size
    assert (size["height"]["median"], size["width"]["median"], size["short_side"]["median"]) == (250, 300, 200)
    assert (size["height"]["min"], size["height"]["max"], size["width"]["min"], size["width"]["max"]) == (200, 400, 180, 500)


def test_a_sample_is_measured_when_the_dataset_is_large(tmp_path, make_config, monkeypatch):
    monkeypatch.setattr(planning, "FINGERPRINT_IMAGES", 4)
    monkeypatch.setattr(stats, "PIXELS_PER_IMAGE", 100)
    root = write_folder_dataset(tmp_path / "d", n=6, size=(64, 64))
    cfg = make_config("data.source=folder", f"data.root={root}")
    data_loading.prepare_dataset(cfg, RunDir(cfg.run_dir))
    fp = RunDir(cfg.run_dir).read(Fingerprint)
    assert (fp.images, fp.measured) == (6, 4)
    assert all(0 <= v <= 255 for values in fp.intensity.values() for v in values)


@pytest.mark.parametrize("median, architectures, gpu_gb, expected", [
    (96, "[unet, fpn, pspnet, linknet, unetplusplus, deeplabv3plus]", None, (96, "resize", 8)),  # the demo
    (375, "[unet, fpn, pspnet]", 15.0, (288, "resize", 16)),  # Oxford-IIIT Pet on a T4
    (375, "[unet]", 15.0, (352, "resize", 8)),  # no PSPNet: multiples of 32, larger, so fewer per batch
    (375, "[unet]", None, (352, "resize", 2)),  # the same on a CPU
    (80, "[deeplabv3plus]", None, (80, "resize", 16)),
    (40, "[unet, pspnet]", None, (96, "resize", 8)),  # smaller than any size they take: the smallest
    (1100, "[unet]", None, (512, "tile", 2)),  # large images: native-resolution tiles
    (1024, "[unet]", 40.0, (512, "resize", 16)),  # exactly twice the largest side still resizes
])
def test_the_rules(median, architectures, gpu_gb, expected):
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"model.architectures={architectures}", "data.image_size=auto",
                                                       "data.mode=auto", "train.batch_size=auto"])
    decided = planning.decide(side(median), cfg, gpu_gb)
    assert tuple(decided[k].value for k in ("data.image_size", "data.mode", "train.batch_size")) == expected
    assert all(d.reason for d in decided.values())


def test_the_demo_and_colab_configs_resolve_to_their_former_fixed_values():
    """The demo's results stay as published: 96 px, resized, batches of 8 on a CPU; the Colab run keeps
    288 px and 16 on a T4 for Oxford-IIIT Pet, whose photos' median short side is 375 px."""
    for name, median, gpu_gb, expected in (("demo", 96, None, (96, "resize", 8)), ("colab_t4", 375, 15.0, (288, "resize", 16))):
        cfg = planning.resolve(load_config(name), planning.decide(side(median), load_config(name), gpu_gb))
        assert (cfg.data.image_size, cfg.data.mode, cfg.train.batch_size) == expected


def test_values_set_in_the_config_are_kept():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.image_size=192", "data.mode=tile", "train.batch_size=3"])
    decided = planning.decide(side(2000), cfg, None)
    assert decided == {"data.mode": Decision("tile", "set in the config"),
                       "data.image_size": Decision(192, "set in the config")}
    assert planning.resolve(cfg, decided).train.batch_size == 3


def test_auto_epochs_train_until_the_time_budget():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["train.epochs=auto", "train.time_budget_minutes=5"])
    resolved = planning.resolve(cfg, planning.decide(side(96), cfg, None))
    assert resolved.train.epochs == planning.MAX_EPOCHS and resolved.train.time_budget_minutes == 5
    assert cfg.train.epochs == "auto"  # resolve returns a copy


def test_an_auto_setting_without_a_recorded_decision_names_notebook_01():
    """01 ran with a batch size of 8; the config says auto now."""
    decided = planning.decide(side(96), load_config(REPO / "configs" / "demo.yaml", ["train.batch_size=8"]), None)
    with pytest.raises(MissingInput, match=r"01 again: .* no decision for train.batch_size=auto"):
        planning.resolve(load_config(REPO / "configs" / "demo.yaml"), decided)


def test_large_grey_non_square_images_are_tiled_end_to_end(tmp_path, make_config, monkeypatch):
    gpu(monkeypatch, None)  # the batch size as on a CPU
    root = write_folder_dataset(tmp_path / "d", n=3, size=(1100, 1400), grey=True)
    cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=auto", "data.mode=auto",
                      "train.batch_size=auto")
    run = RunDir(cfg.run_dir)
    dataset = data_loading.prepare_dataset(cfg, run)
    assert (dataset.image_size, dataset.mode) == (512, "tile")
    assert {k: d.value for k, d in dataset.decisions.items()} == \
           {"data.mode": "tile", "data.image_size": 512, "train.batch_size": 2}
    starts = len(geometry.tile_starts(1100, 512, cfg.data.tile_overlap)) * len(geometry.tile_starts(1400, 512, cfg.data.tile_overlap))
    assert len(dataset.items) == 3 * starts
    assert run.read(DatasetRecord) == dataset
    entry = run.require("data")
    assert entry.extra["decisions"] == {"data.mode": "tile", "data.image_size": 512, "train.batch_size": 2}
    assert entry.config["data"]["image_size"] == 512  # the run manifest records what 01 ran with
    fp = run.read(Fingerprint)
    assert fp.channels == {"1": 3} and fp.size["short_side"]["median"] == 1100
    assert json.loads((run.path("dataset", "fingerprint.json")).read_text()) == fp.to_dict()
    text = planning.describe(fp, dataset.decisions)
    assert "data.mode = tile: the median short side, 1100 px, is more than 2 x 512 px" in text


def test_a_new_decision_remakes_the_dataset(tmp_path, make_config, monkeypatch):
    """The decisions are part of what the dataset depends on: a GPU that changes the auto batch size
    remakes it, so dataset.json never holds a stale decision."""
    root = write_folder_dataset(tmp_path / "d", n=4, size=(64, 64))
    cfg = make_config("data.source=folder", f"data.root={root}", "train.batch_size=auto")
    said = []
    for gpu_gb in (None, None, 0.25):
        gpu(monkeypatch, gpu_gb)
        dataset = data_loading.prepare_dataset(cfg, RunDir(cfg.run_dir), log=said.append)
    assert said == ["dataset unchanged since the last run of 01; reusing dataset/"]
    assert dataset.decisions["train.batch_size"].value == 8  # 32 on the CPU before
    assert RunDir(cfg.run_dir).read(DatasetRecord).decisions["train.batch_size"].value == 8
