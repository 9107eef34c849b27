"""Step 01: read a source, check it, resize or tile it, split it, and write the processed set.

Output in the run folder, a bounded number of files whatever the dataset's size (the run
folder may live on Google Drive, which is slow with many small files):

- ``dataset/{split}-00000-of-000NN.tfrecord`` for ``split`` in train, val, test: the samples at
  the model's input size, each a ``tf.train.Example`` with ``id``, ``image`` (see :func:`encode_image`) and
  ``mask`` (PNG of class indices, ``sources.IGNORE`` = 255 for ignored pixels);
- ``dataset/{split}-originals-00000-of-000NN.tfrecord`` for val and test: each source image at
  its original size with its mask (evaluation scores at the user's resolution); see
  :func:`original_pairs`; for train too with ``data.train_tiles: random_crops`` (training crops them);
- ``dataset/dataset.json``: classes, colours, split membership, shard names, pixel counts
  without the ignored pixels, ``ignore_index`` (255 when the source declares an ignore
  label, else null), ``plan``: the settings left as ``auto``, decided from the data, and ``image``:
  the channels, depth and encoding of the stored images and the training split's per-channel mean,
  standard deviation, minimum and maximum;
- ``dataset/fingerprint.json``: what the source images are (sizes, channels, intensities,
  class frequencies), from which :mod:`seglab.planning` decides them.

A split's shards hold consecutive source images (a few tens of MB each, at most
``MAX_SHARDS``), so reading them in order gives the sorted order; training shuffles files
and a bounded buffer of records. The split is by source image, so tiles of one image never
land on both sides; ``splits[split]["source_ids"]`` lists each split's source images.

``fingerprint`` in dataset.json sums up the inputs; a rerun with the same fingerprint reuses
the dataset and leaves the run folder's records as they are, so later steps stay valid.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from seglab import colab, demo_data, planning, sources
from seglab.artifacts import MissingInput, RunDir, atomic_dir, atomic_file, write_json
from seglab.backend import tf
from seglab.config import Config, check_input_size

SPLITS = ("train", "val", "test")
ORIGINAL_SPLITS = ("val", "test")  # kept at their original size for scoring
LAYOUT_VERSION = 3  # part of the fingerprint: bump it whenever prepare_dataset writes something different
SHARD_BYTES = 64 * 2**20  # aimed size of one shard file, estimated from the source files' sizes
MAX_SHARDS = 32  # per split and kind, however large the dataset
PREPROCESSING_KEYS = ("source", "max_images", "image_size", "mode", "tile_overlap", "val_fraction", "test_fraction",
                      "group_pattern", "train_tiles", "channels", "intensity")
DEFAULT_COLORS = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                  [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]]


def original_splits(data) -> tuple:
    """The splits kept at their original size: val and test, and train when training crops it."""
    return ORIGINAL_SPLITS + (("train",) if data.train_tiles == "random_crops" else ())


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


def resize_image(image: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    """``cv2.resize`` for (H, W, C) of any C: OpenCV drops a single channel's axis and area-averages at most 4."""
    parts = [cv2.resize(image[..., i:i + 4], (width, height), interpolation=interpolation)
             for i in range(0, image.shape[2], 4)]
    return np.concatenate([part.reshape(height, width, -1) for part in parts], axis=2)


def _resize(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image by area or linear, mask by centre-aligned nearest: INTER_NEAREST samples pixel corners
    and would shift the mask by up to half an output pixel against its image."""
    shrink = image.shape[0] * image.shape[1] > size * size
    image = resize_image(image, size, size, cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
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


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_encodable(dtype, channels: int) -> bool:
    return np.dtype(dtype) in (np.uint8, np.uint16) and channels <= 4


def encode_image(image: np.ndarray) -> bytes:
    """PNG where PNG holds the image (1 to 4 channels of 8 or 16 bits, compressed losslessly), else the
    tensor itself (``tf.io.serialize_tensor``: any number of channels, float intensities)."""
    if png_encodable(image.dtype, image.shape[2]):
        return tf.io.encode_png(image).numpy()
    return tf.io.serialize_tensor(image).numpy()


_TENSOR_PROTO = type(tf.make_tensor_proto(0))  # TensorProto, reached without importing TensorFlow's internals


def decode_image(data: bytes) -> np.ndarray:
    """What :func:`encode_image` stored; both encodings say their own depth and shape (PNG's bit depth is byte 24)."""
    if data.startswith(b"\x89PNG"):
        return tf.io.decode_png(data, dtype=tf.uint16 if data[24] == 16 else tf.uint8).numpy()
    return tf.make_ndarray(_TENSOR_PROTO.FromString(data))


def image_spec(paths: list[Path], data) -> dict:
    """What every image is brought to, from the files' headers: ``data.channels`` or the most any image has
    (grey images among RGB ones are repeated), and the widest depth (8-bit, 16-bit, float), or 8-bit when
    ``data.intensity`` is ``per_image``; and how the shards encode it."""
    formats = [sources.image_format(path) for path in paths]
    channels = data.channels or max(c for c, _ in formats)
    dtype = np.dtype(np.uint8) if data.intensity == "per_image" else np.result_type(*(d for _, d in formats))
    return {"channels": channels, "dtype": dtype.name, "intensity": data.intensity,
            "encoding": "png" if png_encodable(dtype, channels) else "tensor"}


def channel_moments(image: np.ndarray) -> np.ndarray:
    """Per channel (columns): pixel count, mean, sum of squared deviations, minimum, maximum (rows)."""
    pixels = image.reshape(-1, image.shape[2])
    mean = pixels.mean(0, dtype=np.float64)
    squares = ((pixels - mean) ** 2).sum(0)
    return np.stack([np.full(mean.shape, len(pixels), np.float64), mean, squares, pixels.min(0), pixels.max(0)])


def merge_moments(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    """The moments of two sets of pixels together (Chan et al.'s pairwise update: exact, no large sums squared)."""
    if a is None:
        return b
    n, delta = a[0] + b[0], b[1] - a[1]
    return np.stack([n, a[1] + delta * b[0] / n, a[2] + b[2] + delta ** 2 * a[0] * b[0] / n,
                     np.minimum(a[3], b[3]), np.maximum(a[4], b[4])])


def _example(item_id: str, image_png: bytes, mask_png: bytes) -> bytes:
    feature = {key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
               for key, value in (("id", item_id.encode()), ("image", image_png), ("mask", mask_png))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _process_pair(pair, classes: sources.ClassInfo, data, keep_original: bool, spec: dict):
    """Read, check and cut one source pair; return its stem, size, pieces (id, origin, record), pixels
    per class, for val and test the original as a record, and its :func:`channel_moments`. Runs in a
    worker thread: what comes back is compressed (PNG), and only a bounded window of pairs is in flight."""
    stem, image_path, mask_path = pair
    image, mask = sources.read_pair(image_path, mask_path, classes, spec["channels"], spec["intensity"])
    image = image.astype(spec["dtype"], copy=False)
    original = _example(stem, encode_image(image), _png(mask)) if keep_original else None
    pieces, pixels = [], np.zeros(len(classes.names), np.int64)
    for origin, img, msk in preprocess(image, mask, data.image_size, data.mode, data.tile_overlap):
        item_id = stem if origin is None else f"{stem}_y{origin[0]}_x{origin[1]}"
        pixels += np.bincount(msk.ravel(), minlength=sources.IGNORE + 1)[: len(classes.names)]
        pieces.append((item_id, None if origin is None else list(origin), _example(item_id, encode_image(img), _png(msk))))
    return stem, list(mask.shape), pieces, pixels, original, channel_moments(image)


def shard_names(kind: str, count: int) -> list[str]:
    """``train-00000-of-00004.tfrecord`` ...: the files of one kind (a split, or ``val-originals``)."""
    return [f"{kind}-{i:05d}-of-{count:05d}.tfrecord" for i in range(count)]


def shard_count(estimated_bytes: int, sources_in_split: int) -> int:
    """Shards of about ``SHARD_BYTES``, at least one, at most ``MAX_SHARDS`` and one per source image."""
    return max(1, min(MAX_SHARDS, sources_in_split, math.ceil(estimated_bytes / SHARD_BYTES)))


class _ShardWriter:
    """Consecutive source images of one kind into ``count`` shards: source ``i`` of ``n`` goes to
    shard ``i * count // n``, so every shard gets at least one and one file is open at a time."""

    def __init__(self, folder: Path, kind: str, count: int, sources_in_split: int):
        self.paths = [folder / name for name in shard_names(kind, count)]
        self.count, self.total, self.seen = count, sources_in_split, 0
        self.index, self.writer = -1, None

    def add(self, records: list[bytes]) -> None:
        index = self.seen * self.count // self.total
        self.seen += 1
        if index != self.index:
            self.close()
            self.index, self.writer = index, tf.io.TFRecordWriter(str(self.paths[index]))
        for record in records:
            self.writer.write(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _fingerprint(cfg: Config, root: Path, pairs: list, decisions: dict) -> str:
    """What the processed dataset depends on: each source file's name, size and modification time
    (reading every pixel again would cost what it saves), classes.json, the data settings that
    shape the dataset, the plan, the seed, and the layout version of this code."""
    files = [[str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns]
             for _, image, mask in pairs for path in (image, mask) for stat in [path.stat()]]
    settings = {key: getattr(cfg.data, key) for key in PREPROCESSING_KEYS}
    split_file = root / "splits.json"
    inputs = [LAYOUT_VERSION, str(root), cfg.seed, settings, decisions, (root / "classes.json").read_text(),
              split_file.read_text() if split_file.is_file() else None, files]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def _unchanged(run: RunDir, fingerprint: str):
    """The recorded dataset's manifest if it was made from the same inputs, else None."""
    try:
        previous = load_manifest(run)
    except MissingInput:
        return None
    return previous if previous.get("fingerprint") == fingerprint else None


def prepare_dataset(cfg: Config, run: RunDir, log=print) -> dict:
    """Run step 01 and record it; the previous dataset stays in place unless every input is good.

    The source is measured first (a sample of it) and the settings left as ``auto`` are decided
    from it (:mod:`seglab.planning`); everything below runs with the decided values. Pairs are
    processed in threads (the image codecs and OpenCV release the GIL; processes would fork a
    kernel that may hold TensorFlow), a bounded window of them at a time, and written into a
    few shard files per split. When no input changed since the recorded run, the dataset is
    reused as it is.
    """
    root = resolve_source(cfg)
    classes = sources.read_classes(root / "classes.json")
    found = sources.find_pairs(root)
    pairs = subset_sources(found, cfg.data.max_images, cfg.seed)
    spec = image_spec([image for _, image, _ in pairs], cfg.data)
    measured = planning.fingerprint(subset_sources(pairs, planning.FINGERPRINT_IMAGES, cfg.seed), classes, len(pairs),
                                    cfg.seed, spec["channels"])
    decisions = planning.plan(measured, cfg, planning.gpu_memory_gb())
    cfg = planning.resolve(cfg, decisions)
    check_input_size(cfg.model.architectures, cfg.data.image_size, cfg.model.pspnet_downsample_factor)
    fingerprint = _fingerprint(cfg, root, found, decisions)
    previous = _unchanged(run, fingerprint)
    if previous is not None:
        log("dataset unchanged since the last run of 01; reusing dataset/")
        return previous
    split_of, split_by = choose_split(root, [stem for stem, _, _ in found], [stem for stem, _, _ in pairs], cfg)
    n = len(classes.names)
    colors = classes.colors or [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(n)]
    items, pixels = [], {s: np.zeros(n, np.int64) for s in SPLITS}
    source_sizes, moments = {}, None
    workers = os.cpu_count() or 1
    with atomic_dir(run.path("dataset")) as out, ThreadPoolExecutor(workers) as pool:
        writers = _writers(out, pairs, split_of, cfg.data)

        def work(pair):
            return _process_pair(pair, classes, cfg.data, split_of[pair[0]] in original_splits(cfg.data), spec)

        try:
            results = _ordered_map(pool, work, pairs, 2 * workers)
            for stem, size, pieces, counts, original, image_moments in tqdm(results, total=len(pairs),
                                                                            desc="preprocessing"):
                split = split_of[stem]
                if split == "train":
                    moments = merge_moments(moments, image_moments)
                source_sizes[stem] = size
                pixels[split] += counts
                writers[split].add([record for _, _, record in pieces])
                if original is not None:
                    writers[f"{split}-originals"].add([original])
                items += [{"id": item_id, "source": stem, "split": split, "origin": origin}
                          for item_id, origin, _ in pieces]
        finally:
            for writer in writers.values():
                writer.close()
        manifest = {
            "classes": classes.names,
            "colors": colors,
            "ignore_index": None if classes.ignore_index is None and classes.ignore_color is None else sources.IGNORE,
            "image_size": cfg.data.image_size,
            "mode": cfg.data.mode,
            "pixel_scale": pixel_scale(source_sizes, cfg.data.image_size, cfg.data.mode),
            "plan": decisions,
            "image": {**spec, "mean": moments[1].tolist(), "std": np.sqrt(moments[2] / moments[0]).tolist(),
                      "min": moments[3].tolist(), "max": moments[4].tolist()},  # of the training split, per channel
            "source": {"kind": cfg.data.source, "root": str(root), "images": len(pairs), "sizes": source_sizes},
            "seed": cfg.seed,
            "split_by": split_by,
            "fingerprint": fingerprint,
            "shards": {kind: [p.name for p in writer.paths] for kind, writer in writers.items()},
            "splits": {s: {"sources": sum(v == s for v in split_of.values()),
                           "source_ids": sorted(stem for stem, v in split_of.items() if v == s),
                           "items": sum(i["split"] == s for i in items),
                           "pixels": pixels[s].tolist()} for s in SPLITS},
            "items": items,
        }
        (out / "dataset.json").write_text(json.dumps(manifest, indent=1))
        write_json(out / "fingerprint.json", measured)
        run.start("data")  # every input was good: the old dataset is replaced next
    run.record("data", {"dataset": "dataset/dataset.json", "fingerprint": "dataset/fingerprint.json"}, config=cfg,
               plan={key: d["value"] for key, d in decisions.items()})
    return manifest


def _writers(out: Path, pairs: list, split_of: dict, data) -> dict:
    """A shard writer per split and per kept originals, sized from the source files' bytes
    (for resized samples, at most four bytes per pixel of the model's input)."""
    writers = {}
    for split in SPLITS:
        members = [(image, mask) for stem, image, mask in pairs if split_of[stem] == split]
        source_bytes = sum(image.stat().st_size + mask.stat().st_size for image, mask in members)
        resized = len(members) * data.image_size ** 2 * 4 if data.mode == "resize" else source_bytes
        writers[split] = _ShardWriter(out, split, shard_count(min(source_bytes, resized), len(members)), len(members))
        if split in original_splits(data):
            kind = f"{split}-originals"
            writers[kind] = _ShardWriter(out, kind, shard_count(source_bytes, len(members)), len(members))
    return writers


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


def split_shards(run: RunDir, manifest: dict, split: str, originals: bool = False) -> list[Path]:
    """The shard files of ``split`` (train, val, test) at the model's size, or of its originals."""
    kind = f"{split}-originals" if originals else split
    if kind not in manifest["shards"]:
        raise ValueError(f"originals are kept for the {' and '.join(ORIGINAL_SPLITS)} splits, not {split!r}")
    return [run.path("dataset", name) for name in manifest["shards"][kind]]


FEATURES = {key: tf.io.FixedLenFeature([], tf.string) for key in ("id", "image", "mask")}


def read_samples(shards, images: bool = True):
    """``(id, image or None, mask)`` as NumPy arrays, one record at a time, in the shards' order."""
    for record in tf.data.TFRecordDataset([str(path) for path in shards]).as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        mask = np.asarray(Image.open(io.BytesIO(feature["mask"].bytes_list.value[0])))
        image = decode_image(feature["image"].bytes_list.value[0]) if images else None
        yield feature["id"].bytes_list.value[0].decode(), image, mask


def original_pairs(run: RunDir, manifest: dict, split: str, stems=None):
    """``(stem, image, mask)`` at the original size for each source image of ``split`` ("val" or
    "test"), in sorted order, streamed one at a time; only the ``stems`` given, when given."""
    wanted = None if stems is None else set(stems)
    shards = local_shards(run, split_shards(run, manifest, split, originals=True), log=lambda _: None)
    for stem, image, mask in read_samples(shards):
        if wanted is None or stem in wanted:
            yield stem, image, mask


def local_shards(run: RunDir, shards: list[Path], log=print) -> list[Path]:
    """The shards on this machine's own disk, for steps that read them again and again.

    A run folder on Google Drive (Colab) is read over the network; the shards are copied once
    per runtime to ``colab.local_cache(run.root)`` (a few large files: quick). A local run
    folder is used as it is.
    """
    cache = colab.local_cache(run.root)
    if cache is None:
        return list(shards)
    copies = []
    for path in shards:
        copy = cache / path.name
        stat = path.stat()
        if not copy.exists() or copy.stat().st_size != stat.st_size or copy.stat().st_mtime_ns != stat.st_mtime_ns:
            atomic_file(copy, lambda tmp: shutil.copy2(path, tmp))
        copies.append(copy)
    log(f"{len(copies)} shard file(s) of dataset/ read from a copy on the local disk, {cache}")
    return copies


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
    from itertools import islice

    from seglab import plots

    samples = islice(read_samples(split_shards(run, manifest, "train")), count)
    rows = [[image, mask] for _, image, mask in samples]
    columns = 2 if len(rows) > 1 else 1
    pairs = [sum(rows[i:i + columns], []) for i in range(0, len(rows) - columns + 1, columns)]
    return plots.image_grid(pairs, ["image", "mask"] * columns, manifest["classes"], manifest["colors"])


def frequency_figure(manifest: dict):
    from seglab import plots

    table = class_frequency_table(manifest)
    series = {s: [row[s] * 100 for row in table] for s in SPLITS}
    return plots.grouped_bars(series, manifest["classes"], "% of pixels (log scale)", "Pixel share per class and split", log=True)
