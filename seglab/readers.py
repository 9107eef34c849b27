"""Reading the user's files: images, masks, ``classes.json``, and the folder layout.

Every source ends as the folder layout ``ROOT/images/*``, ``ROOT/masks/*`` (matched by file
stem) and ``ROOT/classes.json``, so one reader and one set of checks serve them all.
Each problem found in the input is raised as :class:`DataError` naming the file.

``classes.json``: ``{"classes": [names], "colors": [[r, g, b] per class] (RGB masks only),
"ignore_index": 255 (a value in grey or palette masks that is no class), "ignore_color": [r, g, b]
(the same for RGB masks)}``. Pixels marked so (object borders in Pascal VOC, a void class)
are read as :data:`IGNORE` and left out of pixel counts.
"""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import tifffile
from PIL import Image, ImageOps

IGNORE = 255  # ignored pixels in every class-index mask this package writes
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy"}
TIFF_SUFFIXES = {".tif", ".tiff"}
SPLITS = ("train", "val", "test")
MAX_PIXELS = 256 * 10**6  # the default of data.max_image_megapixels: a file that decodes to more is refused
_PILLOW = threading.Lock()


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""


@dataclass
class ClassInfo:
    names: list
    colors: Optional[list]  # RGB per class; required only for RGB masks
    ignore_index: Optional[int] = None  # value in index masks read as IGNORE
    ignore_color: Optional[list] = None  # colour in RGB masks read as IGNORE


def _is_rgb(value) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value)


def read_user_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def read_classes(path: str | Path) -> ClassInfo:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; it must list the classes, e.g. {{\"classes\": [\"background\", \"object\"]}}")
    spec = read_user_json(path)
    names = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{path}: 'classes' must be a list of at least two class names")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: class names must be unique")
    if len(names) > IGNORE:
        raise DataError(f"{path}: {len(names)} classes; at most {IGNORE} fit, as mask value {IGNORE} marks ignored pixels")
    colors = spec.get("colors")
    if colors is not None:
        if not (isinstance(colors, list) and len(colors) == len(names) and all(_is_rgb(c) for c in colors)):
            raise DataError(f"{path}: 'colors' must hold one [r, g, b] triple of 0-255 integers per class ({len(names)})")
        if len({tuple(c) for c in colors}) != len(colors):
            raise DataError(f"{path}: two classes share a colour")
    ignore_index = spec.get("ignore_index")
    if ignore_index is not None and not (isinstance(ignore_index, int) and len(names) <= ignore_index <= 255):
        raise DataError(f"{path}: 'ignore_index' must be an integer from {len(names)} to 255, not a class index")
    ignore_color = spec.get("ignore_color")
    if ignore_color is not None:
        if not _is_rgb(ignore_color):
            raise DataError(f"{path}: 'ignore_color' must be one [r, g, b] triple of 0-255 integers")
        if colors is None:
            raise DataError(f"{path}: 'ignore_color' is for RGB colour masks, which need 'colors' too")
        if ignore_color in colors:
            raise DataError(f"{path}: 'ignore_color' is also the colour of class '{names[colors.index(ignore_color)]}'")
    return ClassInfo(names, colors, ignore_index, ignore_color)


# --- images ---------------------------------------------------------------------------


def _shown(path: Path) -> str:
    """A path as text that any terminal prints, whatever bytes its name holds."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def check_size(path: Path, height: int, width: int, max_pixels: int) -> None:
    """Refuse, from its header, an image that would decode to more than ``max_pixels`` pixels."""
    if height * width > max_pixels:
        raise DataError(f"{path}: {width} x {height} px is {height * width / 1e6:,.0f} megapixels, more than "
                        f"data.max_image_megapixels ({max_pixels / 1e6:g}); raise it if the file is meant to be that "
                        "large and the machine has the memory")


@contextmanager
def _header(path: Path, max_pixels: int):
    """``Image.open`` (the header only) without Pillow's own process-wide size limit, which stays as it is for
    the rest of the process; the size is checked against ``max_pixels`` before anything is decoded."""
    with _PILLOW:  # Pillow reads its limit at open time: lifted only around this open, one thread at a time
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    try:
        check_size(path, image.height, image.width, max_pixels)
        yield image
    finally:
        image.close()


def _open(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    try:
        with _header(path, max_pixels) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            return image.copy()  # the file is closed on leaving: keep the pixels
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable or truncated image ({e})") from None


def _pillow_mode(mode: str) -> str:
    """The mode a Pillow image is read in: grey stays one channel at its depth, anything else becomes RGB (alpha dropped)."""
    if mode in ("L", "I", "F") or mode.startswith("I;16"):
        return mode
    return "L" if mode in ("1", "LA", "La") else "RGB"


def _depth(dtype) -> np.dtype:
    """8- and 16-bit unsigned stay as they are; any other type becomes float32, what the network computes in."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ub" and dtype.itemsize <= 2:
        return np.dtype(np.uint8 if dtype.itemsize == 1 else np.uint16)
    return np.dtype(np.float32)


def _channels_last(array: np.ndarray, axes: str) -> np.ndarray:
    """(H, W, C) from a TIFF series: every axis besides Y and X (pages, samples, channels) becomes a channel."""
    array = np.moveaxis(array, [axes.index("Y"), axes.index("X")], [0, 1])
    return array.reshape(*array.shape[:2], -1)


def _tiff_series(tif: tifffile.TiffFile):
    """The first series of a TIFF that tifffile should read: not a palette image (Pillow maps those to RGB)."""
    return None if tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE else tif.series[0]


def _series_size(series) -> tuple[int, int]:
    return series.shape[series.axes.index("Y")], series.shape[series.axes.index("X")]


def image_format(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[int, np.dtype]:
    """Channels and depth of an image as :func:`read_image` returns it by default, from the file's header alone;
    an image over ``max_pixels`` is refused here, before anything is decoded."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            check_size(path, *(array.shape[:2] if array.ndim >= 2 else (1, array.size)), max_pixels)
            return (array.shape[2] if array.ndim == 3 else 1), _depth(array.dtype)
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                series = _tiff_series(tif)
                if series is not None:
                    height, width = _series_size(series)
                    check_size(path, height, width, max_pixels)
                    return int(np.prod(series.shape) // (height * width)), _depth(series.dtype)
        with _header(path, max_pixels) as image:
            mode = _pillow_mode(image.mode)
    except (OSError, ValueError, SyntaxError, tifffile.TiffFileError) as e:
        raise DataError(f"{path}: unreadable or truncated image ({e})") from None
    depth = np.uint16 if mode.startswith("I;16") else np.float32 if mode in ("I", "F") else np.uint8
    return (3 if mode == "RGB" else 1), _depth(depth)


def _npy(path: Path, max_pixels: int) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable .npy file ({e})") from None
    if array.ndim not in (2, 3) or min(array.shape[:2]) == 0:
        raise DataError(f"{path}: a .npy array must be (height, width) or (height, width, channels), not {array.shape}")
    check_size(path, *array.shape[:2], max_pixels)
    return np.array(array)


def _pixels(path: Path, max_pixels: int) -> np.ndarray:
    """The file's pixels as (H, W, C) at its own depth; tifffile for TIFFs (every page and sample), Pillow for
    photos (with their EXIF rotation) and for TIFFs whose compression tifffile cannot decode alone."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = _npy(path, max_pixels)
        return array.reshape(*array.shape[:2], -1)
    if suffix in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(path) as tif:
                series = _tiff_series(tif)
                if series is not None:
                    check_size(path, *_series_size(series), max_pixels)
                    return _channels_last(series.asarray(), series.axes)
        except DataError:
            raise
        except Exception:  # LZW or JPEG without imagecodecs, or a broken file: Pillow decodes or names the problem
            pass
    image = ImageOps.exif_transpose(_open(path, max_pixels))  # phone photos are stored sideways with a rotation tag
    array = np.asarray(image.convert(_pillow_mode(image.mode)) if _pillow_mode(image.mode) != image.mode else image)
    return array.reshape(*array.shape[:2], -1)


def stretch(image: np.ndarray) -> np.ndarray:
    """uint8 with each channel stretched to 0-255 between its own 0.5 and 99.5 percentiles."""
    values = image.astype(np.float64)
    low, high = np.percentile(values.reshape(-1, values.shape[-1]), (0.5, 99.5), axis=0)
    return (np.clip((values - low) / np.maximum(high - low, 1e-9), 0, 1) * 255).astype(np.uint8)


def read_image(path: str | Path, channels: int | None = None, intensity: str = "dataset",
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """(H, W, C) pixels: uint8, uint16, or float32 for any other type; grey, RGB and palette images by Pillow,
    multi-page and multi-sample TIFFs (each page and sample a channel) by tifffile, ``.npy`` as (H, W) or (H, W, C).

    ``channels``: that many, a single channel repeated (grey in an RGB dataset), extra ones dropped.
    ``intensity="per_image"`` stretches an image that is not 8-bit per channel (:func:`stretch`);
    ``"dataset"`` keeps its values, for normalisation by the training split's statistics.
    An image over ``max_pixels`` is refused from its header; one with NaN or infinite values is refused too.
    """
    path = Path(path)
    array = _pixels(path, max_pixels)
    array = array.astype(_depth(array.dtype), copy=False)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise DataError(f"{path}: {bad} pixel value(s) are NaN or infinite; they would make the dataset's mean and "
                        "the training loss NaN, so fix or drop the file")
    have = array.shape[2]
    if channels is not None and have != channels:
        if have != 1 and have < channels:
            raise DataError(f"{path}: {have} channels, but data.channels is {channels}; a grey image is repeated to "
                            f"any number and extra channels are dropped, but {have} cannot become {channels}")
        array = np.repeat(array, channels, axis=2) if have == 1 else array[..., :channels]
    if intensity == "per_image" and array.dtype != np.uint8:
        array = stretch(array)
    return np.ascontiguousarray(array)


# --- masks ----------------------------------------------------------------------------


def _color_codes(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]


def _map_colors(path: Path, rgb: np.ndarray, classes: ClassInfo, ignored: np.ndarray | None) -> np.ndarray:
    """Class indices of an RGB colour mask, by ``classes.json``'s colours; an unknown colour is named."""
    codes = _color_codes(rgb)
    palette = {int(code): i for i, code in enumerate(_color_codes(np.array(classes.colors)))}
    if classes.ignore_color is not None:
        palette[int(_color_codes(np.array(classes.ignore_color)))] = IGNORE
    if ignored is not None:
        codes[ignored] = -1  # no colour has this code
        palette[-1] = IGNORE
    unknown = [c for c in np.unique(codes) if c not in palette]
    if unknown:
        c = int(unknown[0])
        raise DataError(f"{path}: colour {[c >> 16, (c >> 8) & 255, c & 255]} is not in classes.json 'colors' "
                        f"({len(unknown)} unknown colour(s))")
    keys = np.array(sorted(palette))
    return np.array([palette[k] for k in keys], np.uint8)[np.searchsorted(keys, codes)]


def _whole_numbers(path: Path, values: np.ndarray) -> np.ndarray:
    """A mask's values as int64, once each is checked to be a whole number (a class index)."""
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            raise DataError(f"{path}: {int(bad.sum())} mask value(s) are not whole numbers (for example "
                            f"{values[bad].flat[0]}); a mask holds class indices")
    elif values.dtype.kind not in "uib":
        raise DataError(f"{path}: a mask of {values.dtype} values; it must hold class indices")
    return values.astype(np.int64)


def _check_indices(path: Path, values: np.ndarray, classes: ClassInfo) -> np.ndarray:
    n = len(classes.names)
    values = _whole_numbers(path, values)
    ignored = values == classes.ignore_index if classes.ignore_index is not None else np.zeros(values.shape, bool)
    if (values[~ignored] < 0).any():
        raise DataError(f"{path}: mask value {int(values[~ignored].min())} is negative; class indices run from 0 to "
                        f"{n - 1}")
    bad = (values >= n) & ~ignored
    if bad.any():
        also = f" and is not the ignore_index {classes.ignore_index}" if classes.ignore_index is not None else ""
        raise DataError(f"{path}: mask value {int(values[bad].max())} is at or above the class count {n}{also}")
    values[ignored] = IGNORE
    return values.astype(np.uint8)


def read_mask(path: str | Path, classes: ClassInfo, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Class indices (uint8, :data:`IGNORE` for ignored pixels) from an index mask (grey or palette
    PNG) or an RGB colour mask.

    The EXIF rotation is applied as for images: a mask drawn over an upright photo is saved
    either upright without a tag or with the photo's tag copied, and both then line up.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":  # an array of class indices
        array = _npy(path, max_pixels)
        if array.ndim != 2:
            raise DataError(f"{path}: a .npy mask must be (height, width) of class indices, not {array.shape}")
        return _check_indices(path, array, classes)
    image = ImageOps.exif_transpose(_open(path, max_pixels))
    if image.mode == "LA":
        image = image.getchannel("L")
    ignored_by_index = None
    if image.mode in ("P", "PA") and classes.colors is not None:
        if classes.ignore_index is not None:  # Pascal VOC: index 255 is the border, whatever its colour
            ignored_by_index = np.asarray(image.getchannel("P")) == classes.ignore_index
        image = image.convert("RGB")  # the palette's order need not be the class order: map by colour
    if image.mode not in ("RGB", "RGBA"):
        return _check_indices(path, np.asarray(image), classes)
    rgb = np.asarray(image.convert("RGB"))
    if classes.colors is not None:
        return _map_colors(path, rgb, classes, ignored_by_index)
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise DataError(f"{path}: an RGB colour mask, but classes.json has no 'colors' to map it")
    return _check_indices(path, rgb[..., 0], classes)


def read_labels(path: str | Path) -> np.ndarray:
    """A class-index PNG this package wrote (a prediction, a kept true mask), as uint8."""
    return np.asarray(_open(Path(path)), np.uint8)


def read_pair(image_path: Path, mask_path: Path, classes: ClassInfo, channels: int | None = None,
              intensity: str = "dataset", max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(image_path, channels, intensity, max_pixels)
    mask = read_mask(mask_path, classes, max_pixels)
    if image.shape[:2] != mask.shape:
        raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{image.shape[1]}x{image.shape[0]}")
    return image, mask


# --- the folder layout ----------------------------------------------------------------


def image_files(folder: Path) -> dict[str, Path]:
    """Image files in ``folder`` by stem; two files with one stem would be ambiguous."""
    files = {}
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() not in IMAGE_SUFFIXES or f.name.startswith("."):
            continue
        try:
            f.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{_shown(f)}: the file name is not valid UTF-8 (the bytes shown escaped), which the "
                            "dataset's records cannot hold; rename the file") from None
        if f.stem in files:
            raise DataError(f"{f}: two files share the stem '{f.stem}' in {folder}")
        files[f.stem] = f
    if not files:
        raise DataError(f"{folder}: no images (png, jpg, tif, bmp or npy) in it")
    return files


def find_pairs(root: str | Path) -> list[tuple[str, Path, Path]]:
    """(stem, image, mask) for every image in ``root/images`` matched with ``root/masks``."""
    root = Path(root)
    listing = {}
    for sub in ("images", "masks"):
        folder = root / sub
        if not folder.is_dir():
            raise DataError(f"{folder}: folder missing; expected {root}/images and {root}/masks")
        listing[sub] = image_files(folder)
    images, masks = listing["images"], listing["masks"]
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise DataError(f"{images[no_mask[0]]}: no mask with the same name in {root / 'masks'} ({len(no_mask)} such image(s))")
    no_image = sorted(set(masks) - set(images))
    if no_image:
        raise DataError(f"{masks[no_image[0]]}: no image with the same name in {root / 'images'} ({len(no_image)} such mask(s))")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]
