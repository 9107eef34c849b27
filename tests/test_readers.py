import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from seglab import data_loading, readers, shards
from seglab.readers import DataError
from seglab.rundir import RunDir

from conftest import write_folder_dataset


def test_index_masks_grey_and_palette_and_various_image_formats(tmp_path):
    root = write_folder_dataset(tmp_path / "d", n=3)
    # a 16-bit grey TIFF image, a JPEG, and a palette (mode P) mask
    Image.fromarray((np.arange(40 * 48).reshape(40, 48) * 20).astype(np.uint16)).save(root / "images" / "img0.tif")
    (root / "images" / "img0.png").unlink()
    Image.open(root / "images" / "img1.png").convert("L").save(root / "images" / "img1.jpg")
    (root / "images" / "img1.png").unlink()
    palette = Image.open(root / "masks" / "img2.png").convert("P")
    palette.putpalette([0, 0, 0, 9, 9, 9, 200, 0, 0] + [0] * 759)
    palette.save(root / "masks" / "img2.png")
    classes = readers.read_classes(root / "classes.json")
    for stem, image_path, mask_path in readers.find_pairs(root):  # as RGB, the 16-bit image stretched: the old reading
        image, mask = readers.read_pair(image_path, mask_path, classes, channels=3, intensity="per_image")
        assert image.dtype == np.uint8 and image.shape == (40, 48, 3)
        assert set(np.unique(mask)) == {0, 1, 2}
    stretched = readers.read_image(root / "images" / "img0.tif", intensity="per_image")
    assert stretched.min() == 0 and stretched.max() == 255 and stretched.shape == (40, 48, 1)
    assert readers.read_image(root / "images" / "img0.tif").max() == 47 * 20 + 39 * 48 * 20  # its own values


def test_rgb_colour_masks_map_to_class_indices(tmp_path):
    root = write_folder_dataset(tmp_path / "d", n=1, rgb_masks=True)
    classes = readers.read_classes(root / "classes.json")
    mask = readers.read_mask(root / "masks" / "img0.png", classes)
    assert mask[0, 0] == 2 and mask[-1, -1] == 1 and mask[-1, 0] == 0


def test_images_of_different_sizes_in_one_folder(tmp_path, make_config):
    root = write_folder_dataset(tmp_path / "d", n=3, size=(40, 48))
    write_folder_dataset(tmp_path / "e", n=3, size=(70, 90))
    for i in range(3):
        for sub in ("images", "masks"):
            (tmp_path / "e" / sub / f"img{i}.png").rename(root / sub / f"big{i}.png")
    cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=32")
    run = RunDir(cfg.run_dir)
    dataset = data_loading.prepare_dataset(cfg, run)
    assert len(dataset.items) == 6
    assert {tuple(s) for s in dataset.source.sizes.values()} == {(40, 48), (70, 90)}
    samples = [s for split in data_loading.SPLITS
               for s in shards.read_samples(dataset.shard_files(run.root, split), dataset.images)]
    assert len(samples) == 6 and all(image.shape == (32, 32, 3) for _, image, _ in samples)


def _bad(root, problem):
    if problem == "empty":
        for f in (root / "images").iterdir():
            f.unlink()
    elif problem == "missing folder":
        for f in (root / "masks").iterdir():
            f.unlink()
        (root / "masks").rmdir()
    elif problem == "image without mask":
        (root / "masks" / "img3.png").unlink()
    elif problem == "mask without image":
        (root / "images" / "img3.png").unlink()
    elif problem == "size mismatch":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "img3.png")
    elif problem == "value out of range":
        Image.fromarray(np.full((40, 48), 7, np.uint8)).save(root / "masks" / "img3.png")
    elif problem == "unknown colour":
        Image.fromarray(np.full((40, 48, 3), 77, np.uint8)).save(root / "masks" / "img3.png")
    elif problem == "truncated":
        data = (root / "images" / "img3.png").read_bytes()
        (root / "images" / "img3.png").write_bytes(data[: len(data) // 2])
    elif problem == "not an image":
        (root / "images" / "img3.png").write_text("hello")
    elif problem == "malformed classes.json":
        (root / "classes.json").write_text('{"classes": ["background", ')
    elif problem == "classes.json without classes":
        (root / "classes.json").write_text(json.dumps({"names": ["a", "b"]}))
    elif problem == "colors of the wrong length":
        (root / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"], "colors": [[0, 0, 0]]}))


BAD = {
    "empty": r"images: no images",
    "missing folder": r"masks: folder missing",
    "image without mask": r"img3.png: no mask with the same name",
    "mask without image": r"img3.png: no image with the same name",
    "size mismatch": r"img3.png: mask is 10x10 but its image is 48x40",
    "value out of range": r"img3.png: mask value 7 is at or above the class count 3",
    "unknown colour": r"img3.png: colour \[77, 77, 77\] is not in classes.json",
    "truncated": r"img3.png: unreadable or truncated image",
    "not an image": r"img3.png: unreadable or truncated image",
    "malformed classes.json": r"classes.json: not valid JSON",
    "classes.json without classes": r"classes.json: 'classes' must be a list",
    "colors of the wrong length": r"classes.json: 'colors' must hold one",
}


@pytest.mark.parametrize("problem", list(BAD))
def test_bad_input_names_the_file_and_keeps_the_previous_output(tmp_path, make_config, problem):
    root = write_folder_dataset(tmp_path / "d", n=5, rgb_masks=problem == "unknown colour")
    cfg = make_config("data.source=folder", f"data.root={root}")
    run = RunDir(cfg.run_dir)
    data_loading.prepare_dataset(cfg, run)
    before = {p.relative_to(run.root): p.read_bytes() for p in run.root.rglob("*") if p.is_file()}
    _bad(root, problem)
    with pytest.raises(DataError, match=BAD[problem]):
        data_loading.prepare_dataset(cfg, run)
    after = {p.relative_to(run.root): p.read_bytes() for p in run.root.rglob("*") if p.is_file()}
    assert after == before
    run.require("data")


def test_palette_masks_are_mapped_by_colour_when_colours_are_given(tmp_path):
    root = write_folder_dataset(tmp_path / "d", n=1, rgb_masks=True)  # colours: bg black, a red, b blue
    classes = readers.read_classes(root / "classes.json")
    palette = Image.new("P", (4, 1))
    palette.putpalette([0, 0, 255, 255, 0, 0, 0, 0, 0] + [0] * 759)  # palette order: blue, red, black
    palette.putdata([0, 1, 2, 2])
    palette.save(root / "masks" / "p.png")
    np.testing.assert_array_equal(readers.read_mask(root / "masks" / "p.png", classes), [[2, 1, 0, 0]])


def test_grey_with_alpha_masks_use_the_grey_channel(tmp_path):
    classes = readers.ClassInfo(["background", "a", "b"], None)
    Image.fromarray(np.stack([np.array([[0, 1], [2, 1]], np.uint8), np.full((2, 2), 255, np.uint8)], -1), "LA").save(tmp_path / "m.png")
    np.testing.assert_array_equal(readers.read_mask(tmp_path / "m.png", classes), [[0, 1], [2, 1]])


def test_exif_rotation_is_applied_to_images(tmp_path):
    image = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90": stored landscape, shown portrait
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert readers.read_image(tmp_path / "phone.jpg").shape == (30, 10, 3)


@pytest.mark.parametrize("mask_kind", ["same EXIF tag", "saved upright without a tag"])
def test_exif_rotation_keeps_masks_aligned_with_their_images(tmp_path, mask_kind):
    stored = np.random.default_rng(0).integers(0, 256, (10, 30, 3), dtype=np.uint8)  # as the camera wrote it
    labels = (stored[..., 0] > 127).astype(np.uint8)  # mask derived from the pixels: alignment is checkable
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 3  # "rotate 180": shown upside down relative to storage
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif)  # PNG: no JPEG loss
    if mask_kind == "same EXIF tag":
        Image.fromarray(labels).save(tmp_path / "mask.png", exif=exif)
    else:
        Image.fromarray(np.rot90(labels, 2)).save(tmp_path / "mask.png")
    image, mask = readers.read_pair(tmp_path / "photo.png", tmp_path / "mask.png",
                                    readers.ClassInfo(["background", "bright"], None))
    np.testing.assert_array_equal(image, np.rot90(stored, 2))
    np.testing.assert_array_equal(mask, (image[..., 0] > 127).astype(np.uint8))


def test_ignore_index_in_index_masks_reads_as_255(tmp_path):
    classes = readers.ClassInfo(["background", "a", "b"], None, ignore_index=100)
    Image.fromarray(np.array([[0, 1, 100], [2, 100, 0]], np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(readers.read_mask(tmp_path / "m.png", classes), [[0, 1, 255], [2, 255, 0]])
    Image.fromarray(np.array([[0, 7, 100]], np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad.png: mask value 7 is at or above the class count 3 and is not the ignore_index 100"):
        readers.read_mask(tmp_path / "bad.png", classes)


def test_voc_style_palette_masks_with_255_borders(tmp_path):
    root = write_folder_dataset(tmp_path / "d", n=1, ignore=255)
    palette = Image.open(root / "masks" / "img0.png").convert("P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 756 + [224, 224, 192])  # VOC: 255 is cream
    palette.save(root / "masks" / "img0.png")
    classes = readers.read_classes(root / "classes.json")
    assert classes.ignore_index == 255 and classes.ignore_color is None
    mask = readers.read_mask(root / "masks" / "img0.png", classes)
    assert (mask[:, 24] == readers.IGNORE).all() and set(np.unique(mask)) == {0, 1, 2, 255}


def test_ignore_color_in_rgb_masks_reads_as_255(tmp_path):
    root = write_folder_dataset(tmp_path / "d", n=1, rgb_masks=True, ignore=[255, 255, 255])
    classes = readers.read_classes(root / "classes.json")
    assert classes.ignore_color == [255, 255, 255] and classes.ignore_index is None
    mask = readers.read_mask(root / "masks" / "img0.png", classes)
    assert (mask[:, 24] == readers.IGNORE).all() and set(np.unique(mask)) == {0, 1, 2, 255}


@pytest.mark.parametrize("spec, message", [
    ({"classes": ["a", "b", "c"], "ignore_index": 2}, "'ignore_index' must be an integer from 3 to 255, not a class index"),
    ({"classes": ["a", "b"], "ignore_index": 256}, "'ignore_index' must be an integer from 2 to 255"),
    ({"classes": ["a", "b"], "ignore_color": [1, 2, 3]}, "'ignore_color' is for RGB colour masks, which need 'colors' too"),
    ({"classes": ["a", "b"], "colors": [[0, 0, 0], [9, 9, 9]], "ignore_color": [9, 9, 9]},
     "'ignore_color' is also the colour of class 'b'"),
    ({"classes": ["a", "b"], "colors": [[0, 0, 0], [9, 9, 9]], "ignore_color": [9, 9]}, "'ignore_color' must be one"),
    ({"classes": [f"c{i}" for i in range(256)]}, "256 classes; at most 255 fit, as mask value 255 marks ignored pixels"),
])
def test_classes_json_ignore_settings_are_checked(tmp_path, spec, message):
    (tmp_path / "classes.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="classes.json: " + message.replace("[", r"\[")):
        readers.read_classes(tmp_path / "classes.json")


def test_palette_masks_mapped_by_colour_still_honour_ignore_index(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["background", "cat"], "colors": [[0, 0, 0], [64, 0, 0]],
                                                       "ignore_index": 255}))
    palette = Image.new("P", (3, 1))
    palette.putpalette([64, 0, 0, 0, 0, 0] + [0] * 759 + [224, 224, 192])  # VOC's border colour at index 255
    palette.putdata([0, 1, 255])
    palette.save(tmp_path / "m.png")
    classes = readers.read_classes(tmp_path / "classes.json")
    np.testing.assert_array_equal(readers.read_mask(tmp_path / "m.png", classes), [[1, 0, 255]])


def test_each_format_is_read_channels_last_at_its_own_depth(tmp_path):
    """What the header says (image_format) is what read_image returns, for every way of storing bands."""
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 4096, (20, 30, 4)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "samples.tif", bands, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "planar.tif", bands.transpose(2, 0, 1), photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(tmp_path / "pages.tif", bands.transpose(2, 0, 1), photometric="minisblack")
    np.save(tmp_path / "float.npy", bands[..., :2].astype(np.float64) / 7)
    np.save(tmp_path / "grey.npy", bands[..., 0])
    Image.fromarray(bands[..., 0]).save(tmp_path / "grey16.png")
    Image.fromarray(bands[..., :3].astype(np.uint8)).save(tmp_path / "rgb.png")
    expected = {"samples.tif": bands, "planar.tif": bands, "pages.tif": bands, "float.npy": (bands[..., :2] / 7).astype(np.float32),
                "grey.npy": bands[..., :1], "grey16.png": bands[..., :1], "rgb.png": bands[..., :3].astype(np.uint8)}
    for name, want in expected.items():
        image = readers.read_image(tmp_path / name)
        assert image.dtype == want.dtype and image.shape == want.shape, name
        np.testing.assert_array_equal(image, want)
        assert readers.image_format(tmp_path / name) == (want.shape[2], want.dtype), name


def test_channels_setting_repeats_grey_drops_extra_bands_and_refuses_the_rest(tmp_path):
    bands = np.random.default_rng(0).integers(0, 4096, (10, 12, 4)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "four.tif", bands, photometric="minisblack", planarconfig="contig")
    np.save(tmp_path / "grey.npy", bands[..., 0])
    np.testing.assert_array_equal(readers.read_image(tmp_path / "four.tif", channels=3), bands[..., :3])
    np.testing.assert_array_equal(readers.read_image(tmp_path / "grey.npy", channels=3), np.repeat(bands[..., :1], 3, 2))
    np.save(tmp_path / "two.npy", bands[..., :2])
    with pytest.raises(DataError, match="two.npy: 2 channels, but data.channels is 3"):
        readers.read_image(tmp_path / "two.npy", channels=3)


def test_per_image_stretch_maps_each_channel_by_its_own_percentiles(tmp_path):
    rng = np.random.default_rng(1)
    bands = (rng.normal(1000, 50, (40, 40, 3)) * [1, 4, 20]).astype(np.float32)
    np.save(tmp_path / "b.npy", bands)
    stretched = readers.read_image(tmp_path / "b.npy", intensity="per_image")
    assert stretched.dtype == np.uint8
    for c in range(3):
        low, high = np.percentile(bands[..., c], (0.5, 99.5))
        want = (np.clip((bands[..., c] - low) / (high - low), 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(stretched[..., c], want)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(readers.read_image(tmp_path / "rgb.png", intensity="per_image"), rgb)  # 8-bit as is
