"""Step 01: read a source, check it, resize or tile it, split it, and write the processed set.

Output in the run folder: ``dataset/images/*.png``, ``dataset/masks/*.png`` (class indices,
``sources.IGNORE`` = 255 for ignored pixels) and ``dataset/dataset.json`` (classes, colours,
split membership, pixel counts without the ignored pixels, and ``ignore_index``: 255 when the
source declares an ignore label, else null). The split is by source image, so tiles of one
image never land on both sides; ``splits[split]["source_ids"]`` lists each split's source
images (sorted stems).

Evaluation scores at the user's resolution, so each val and test source image is also kept
at its original size: ``dataset/originals/images/{stem}.png`` (RGB as ``sources.read_image``
returns it) and ``dataset/originals/masks/{stem}.png`` (class indices, 255 = ignore); see
:func:`original_pairs`.

``fingerprint`` in dataset.json sums up the inputs; a rerun with the same fingerprint reuses
the dataset and leaves the run folder's records as they are, so later steps stay valid.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from seglab import sources
from seglab.artifacts import MissingInput, RunDir, atomic_dir
from seglab.config import Config
from seglab import demo_data

SPLITS = ("train", "val", "test")
ORIGINAL_SPLITS = ("val", "test")  # kept at their original size for scoring
LAYOUT_VERSION = 1  # part of the fingerprint: bump it whenever prepare_dataset writes something different
PREPROCESSING_KEYS = ("source", "max_images", "image_size", "mode", "tile_overlap", "val_fraction", "test_fraction",
                      "group_pattern")
DEFAULT_COLORS = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                  [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]]


def resolve_source(cfg: Config) -> Path:
    """The folder-layout root for the configured source, generating or downloading it if needed."""
    data = cfg.data
    if data.source == "demo":
        name = f"demo_v{demo_data.VERSION}_n{data.demo.num_images}_s{data.demo.image_size}_seed{cfg.seed}"
        return demo_data.generate_demo_dataset(Path(data.download_dir).parent / "generated" / name,
                                     data.demo.num_images, data.demo.image_size, cfg.seed)
    if data.source == "oxford_pets":
        return sources.prepare_oxford_pets(data.download_dir, data.base_url)
    return Path(data.root)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Window starts covering ``length`` with at least ``overlap`` between neighbours; the last is flush."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _resize(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image by area or linear, mask by centre-aligned nearest: INTER_NEAREST samples pixel corners
    and would shift the mask by up to half an output pixel against its image."""
    shrink = image.shape[0] * image.shape[1] > size * size
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return image, cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


def preprocess(image: np.ndarray, mask: np.ndarray, size: int, mode: str, overlap: float):
    """Yield ``(origin, image, mask)`` pieces of ``size`` x ``size``; masks only ever by nearest neighbour.

    In tile mode a side shorter than a tile is mirror-padded (image and mask alike), so the
    scale is never changed; a mirrored object is still correctly labelled.
    """
    if mode == "resize":
        yield None, *_resize(image, mask, size)
        return
    pad = ((0, max(0, size - mask.shape[0])), (0, max(0, size - mask.shape[1])))
    if any(p for _, p in pad):
        image, mask = np.pad(image, pad + ((0, 0),), mode="symmetric"), np.pad(mask, pad, mode="symmetric")
    height, width = mask.shape
    for y in tile_starts(height, size, overlap):
        for x in tile_starts(width, size, overlap):
            yield (y, x), image[y:y + size, x:x + size], mask[y:y + size, x:x + size]


def subset_sources(pairs: list, max_images, seed: int) -> list:
    """A seeded random ``max_images`` of the pairs, in their sorted order: the first N sorted
    files would be a biased sample (on Oxford-IIIT Pet, only the first breeds)."""
    if max_images is None or max_images >= len(pairs):
        return pairs
    keep = np.random.default_rng(seed).choice(len(pairs), max_images, replace=False)
    return [pairs[i] for i in sorted(keep)]


def split_sources(stems: list[str], val: float, test: float, seed: int, groups: dict | None = None) -> dict[str, str]:
    """Map each source image to train, val or test, reproducibly from ``seed``.

    With ``groups`` (stem -> group name) whole groups go to one split, so near-duplicates
    (slices of one scan, frames of one video) never sit on both sides; the fractions then
    count groups. Without, every image is its own group.
    """
    groups = groups or {stem: stem for stem in stems}
    names = sorted(set(groups.values()))
    if len(names) < 3:
        what = "group(s)" if len(names) < len(stems) else "source image(s)"
        raise sources.DataError(f"only {len(names)} {what}; a train/val/test split needs at least 3")
    n_test = max(1, round(len(names) * test))
    n_val = max(1, round(len(names) * val))
    rest, test_ids = train_test_split(names, test_size=n_test, random_state=seed)
    train_ids, val_ids = train_test_split(rest, test_size=n_val, random_state=seed)
    split_of = {**{g: "train" for g in train_ids}, **{g: "val" for g in val_ids}, **{g: "test" for g in test_ids}}
    return {stem: split_of[groups[stem]] for stem in stems}


def group_of(stems: list[str], pattern: str) -> dict[str, str]:
    """The group of every image: the first group of ``pattern`` found in its name (stem)."""
    regex = re.compile(pattern)
    matches = {stem: regex.search(stem) for stem in stems}
    unmatched = sorted(stem for stem, m in matches.items() if not m or m.group(1) is None)
    if unmatched:
        raise sources.DataError(f"data.group_pattern={pattern!r} does not match the image name '{unmatched[0]}' "
                                f"({len(unmatched)} of {len(stems)} do not match); every image needs a group")
    return {stem: m.group(1) for stem, m in matches.items()}


def read_split_file(path: Path, stems: list[str]) -> dict[str, str]:
    """A split fixed by the user (nnU-Net's ``splits_final.json`` idea): ``{"train": [stems], "val": [...], "test": [...]}``.

    Every image must be in exactly one split, and every stem must name an image.
    """
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise sources.DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or set(spec) != set(SPLITS) or not all(
            isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in spec.values()):
        raise sources.DataError(f"{path}: must map each of train, val and test to a non-empty list of image names")
    split_of = {}
    for split in SPLITS:
        for stem in spec[split]:
            if stem in split_of:
                raise sources.DataError(f"{path}: '{stem}' is in both {split_of[stem]} and {split}")
            split_of[stem] = split
    unknown = sorted(set(split_of) - set(stems))
    if unknown:
        raise sources.DataError(f"{path}: '{unknown[0]}' names no image in {path.parent / 'images'} "
                                f"({len(unknown)} such name(s))")
    missing = sorted(set(stems) - set(split_of))
    if missing:
        raise sources.DataError(f"{path}: the image '{missing[0]}' is in no split ({len(missing)} such image(s))")
    return split_of


def choose_split(root: Path, stems: list[str], chosen: list[str], cfg: Config) -> tuple[dict[str, str], str]:
    """The split of the ``chosen`` stems, and what decided it: ROOT/splits.json, else
    ``data.group_pattern``, else one image at a time."""
    path = root / "splits.json"
    if path.is_file():
        split_of = read_split_file(path, stems)
        return {stem: split_of[stem] for stem in chosen}, "splits.json"
    data = cfg.data
    if data.group_pattern:
        groups = group_of(chosen, data.group_pattern)
        return (split_sources(chosen, data.val_fraction, data.test_fraction, cfg.seed, groups),
                f"groups of data.group_pattern {data.group_pattern!r}")
    return split_sources(chosen, data.val_fraction, data.test_fraction, cfg.seed), "image"


def pixel_scale(sizes: dict, size: int, mode: str) -> list[float]:
    """How much the model's pixels are magnified against the source's, per axis (median over images).

    Prediction on new images applies the same scale, so objects appear at the size the model
    learned them: 1 for tiles, ``size / side`` for resized images.
    """
    if mode == "tile" or not sizes:
        return [1.0, 1.0]
    heights, widths = np.array(list(sizes.values()), np.float64).T
    return [float(np.median(size / heights)), float(np.median(size / widths))]


def _ordered_map(pool: ThreadPoolExecutor, fn, items, window: int):
    """``fn`` over ``items`` on ``pool``, results in input order, at most ``window`` tasks queued or
    running: memory stays flat however large the dataset. Stopping early cancels the queued tasks."""
    pending = deque()
    try:
        for item in items:
            if len(pending) >= window:
                yield pending.popleft().result()
            pending.append(pool.submit(fn, item))
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _process_pair(pair, classes: sources.ClassInfo, data, keep_original: bool, out: Path):
    """Read, check, cut and write one source pair; return its stem, size, pieces (id, origin) and
    pixels per class. Runs in a worker thread: only this summary comes back, never the pixels."""
    stem, image_path, mask_path = pair
    image, mask = sources.read_pair(image_path, mask_path, classes)
    if keep_original:
        Image.fromarray(image).save(out / "originals" / "images" / f"{stem}.png")
        Image.fromarray(mask).save(out / "originals" / "masks" / f"{stem}.png")
    pieces, pixels = [], np.zeros(len(classes.names), np.int64)
    for origin, img, msk in preprocess(image, mask, data.image_size, data.mode, data.tile_overlap):
        item_id = stem if origin is None else f"{stem}_y{origin[0]}_x{origin[1]}"
        Image.fromarray(img).save(out / "images" / f"{item_id}.png")
        Image.fromarray(msk).save(out / "masks" / f"{item_id}.png")
        pixels += np.bincount(msk.ravel(), minlength=sources.IGNORE + 1)[: len(classes.names)]
        pieces.append((item_id, None if origin is None else list(origin)))
    return stem, list(mask.shape), pieces, pixels


def _fingerprint(cfg: Config, root: Path, pairs: list) -> str:
    """What the processed dataset depends on: each source file's name, size and modification time
    (reading every pixel again would cost what it saves), classes.json, the data settings that
    shape the dataset, the seed, and the layout version of this code."""
    files = [[str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns]
             for _, image, mask in pairs for path in (image, mask) for stat in [path.stat()]]
    settings = {key: getattr(cfg.data, key) for key in PREPROCESSING_KEYS}
    split_file = root / "splits.json"
    inputs = [LAYOUT_VERSION, str(root), cfg.seed, settings, (root / "classes.json").read_text(),
              split_file.read_text() if split_file.is_file() else None, files]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def _unchanged(run: RunDir, fingerprint: str):
    """The recorded dataset's manifest if it was made from the same inputs, else None."""
    try:
        previous = load_manifest(run)
    except MissingInput:
        return None
    return previous if previous.get("fingerprint") == fingerprint else None


def prepare_dataset(cfg: Config, run: RunDir) -> dict:
    """Run step 01 and record it; the previous dataset stays in place unless every input is good.

    Pairs are processed in threads (the image codecs and OpenCV release the GIL; processes
    would fork a kernel that may hold TensorFlow), a bounded window of them at a time. When
    no input changed since the recorded run, the dataset is reused as it is.
    """
    root = resolve_source(cfg)
    classes = sources.read_classes(root / "classes.json")
    found = sources.find_pairs(root)
    fingerprint = _fingerprint(cfg, root, found)
    previous = _unchanged(run, fingerprint)
    if previous is not None:
        print("dataset unchanged since the last run of 01; reusing dataset/")
        return previous
    pairs = subset_sources(found, cfg.data.max_images, cfg.seed)
    split_of, split_by = choose_split(root, [stem for stem, _, _ in found], [stem for stem, _, _ in pairs], cfg)
    n = len(classes.names)
    colors = classes.colors or [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(n)]
    items, pixels = [], {s: np.zeros(n, np.int64) for s in SPLITS}
    source_sizes = {}
    workers = os.cpu_count() or 1
    with atomic_dir(run.path("dataset")) as out, ThreadPoolExecutor(workers) as pool:
        for folder in ("images", "masks", "originals/images", "originals/masks"):
            (out / folder).mkdir(parents=True)

        def work(pair):
            return _process_pair(pair, classes, cfg.data, split_of[pair[0]] in ORIGINAL_SPLITS, out)

        results = _ordered_map(pool, work, pairs, 2 * workers)
        for stem, size, pieces, counts in tqdm(results, total=len(pairs), desc="preprocessing"):
            split = split_of[stem]
            source_sizes[stem] = size
            pixels[split] += counts
            items += [{"id": item_id, "source": stem, "split": split, "origin": origin} for item_id, origin in pieces]
        manifest = {
            "classes": classes.names,
            "colors": colors,
            "ignore_index": None if classes.ignore_index is None and classes.ignore_color is None else sources.IGNORE,
            "image_size": cfg.data.image_size,
            "mode": cfg.data.mode,
            "pixel_scale": pixel_scale(source_sizes, cfg.data.image_size, cfg.data.mode),
            "source": {"kind": cfg.data.source, "root": str(root), "images": len(pairs), "sizes": source_sizes},
            "seed": cfg.seed,
            "split_by": split_by,
            "fingerprint": fingerprint,
            "splits": {s: {"sources": sum(v == s for v in split_of.values()),
                           "source_ids": sorted(stem for stem, v in split_of.items() if v == s),
                           "items": sum(i["split"] == s for i in items),
                           "pixels": pixels[s].tolist()} for s in SPLITS},
            "items": items,
        }
        (out / "dataset.json").write_text(json.dumps(manifest, indent=1))
        run.start("data")  # every input was good: the old dataset is replaced next
    run.record("data", {"dataset": "dataset/dataset.json"}, config=cfg)
    return manifest


def fit_batch_size(train_items: int, batch_size: int, replicas: int = 1, log=print) -> int:
    """The per-replica batch size, capped so that one global batch fits in the training split.

    Training batches drop the remainder, so a batch larger than a small training split would
    yield no batch at all; one line says when the size is lowered.
    """
    if train_items < replicas:
        raise sources.DataError(f"{train_items} training sample(s) cannot give each of the {replicas} replica(s) "
                                f"one sample per batch; add images or train on one device (train.strategy=default)")
    fitted = min(batch_size, train_items // replicas)
    if fitted < batch_size:
        each = f" per replica x {replicas} replicas" if replicas > 1 else ""
        log(f"batch size {batch_size}{each} is larger than the {train_items} training samples; using {fitted}"
            + (" per replica" if replicas > 1 else ""))
    return fitted


def load_manifest(run: RunDir) -> dict:
    """The processed dataset's manifest, as notebook 01 last wrote it."""
    return json.loads(run.output("data", "dataset").read_text())


def split_ids(manifest: dict, split: str) -> list[str]:
    return [i["id"] for i in manifest["items"] if i["split"] == split]


def split_paths(run: RunDir, manifest: dict, split: str) -> tuple[list[str], list[str]]:
    base = run.path("dataset")
    ids = split_ids(manifest, split)
    return [str(base / "images" / f"{i}.png") for i in ids], [str(base / "masks" / f"{i}.png") for i in ids]


def original_pairs(run: RunDir, manifest: dict, split: str) -> list[tuple[str, Path, Path]]:
    """(stem, image, mask) at the original size for each source image of ``split`` ("val" or "test"), by stem."""
    if split not in ORIGINAL_SPLITS:
        raise ValueError(f"originals are kept for the {' and '.join(ORIGINAL_SPLITS)} splits, not {split!r}")
    base = run.path("dataset", "originals")
    return [(stem, base / "images" / f"{stem}.png", base / "masks" / f"{stem}.png")
            for stem in manifest["splits"][split]["source_ids"]]


def class_frequency_table(manifest: dict) -> list[dict]:
    """Per class and split, the share of pixels: the first sign of imbalance."""
    rows = []
    for c, name in enumerate(manifest["classes"]):
        row = {"class": name}
        for s in SPLITS:
            total = sum(manifest["splits"][s]["pixels"]) or 1
            row[s] = manifest["splits"][s]["pixels"][c] / total
        rows.append(row)
    return rows


def sample_figure(run: RunDir, manifest: dict, count: int = 6):
    """Training images beside their masks, in the class colours."""
    from seglab import plots

    images, masks = split_paths(run, manifest, "train")
    rows = [[np.asarray(Image.open(images[i])), np.asarray(Image.open(masks[i]))] for i in range(min(count, len(images)))]
    columns = 2 if len(rows) > 1 else 1
    pairs = [sum(rows[i:i + columns], []) for i in range(0, len(rows) - columns + 1, columns)]
    return plots.image_grid(pairs, ["image", "mask"] * columns, manifest["classes"], manifest["colors"])


def frequency_figure(manifest: dict):
    from seglab import plots

    table = class_frequency_table(manifest)
    series = {s: [row[s] * 100 for row in table] for s in SPLITS}
    return plots.grouped_bars(series, manifest["classes"], "% of pixels (log scale)", "Pixel share per class and split", log=True)
