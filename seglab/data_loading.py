"""Step 01: read a source, check it, resize or tile it, split it, and write the processed dataset.

Output in the run folder, a bounded number of files whatever the dataset's size (the run
folder may live on Google Drive, which is slow with many small files):

- ``dataset/{kind}-00000-of-000NN.tfrecord`` (:mod:`seglab.shards`): for each split the samples
  at the model's input size; for val and test (and train with ``data.train_tiles: random_crops``)
  also each source image at its original size, ``{split}-originals``, which notebook 04 scores;
- ``dataset/dataset.json``, the dataset record (:class:`~seglab.records.DatasetRecord`): classes,
  split, shard files, per-class pixel counts, the images' channels, type and training-split
  statistics, and the settings left as ``auto``, decided from the data;
- ``dataset/fingerprint.json`` (:class:`~seglab.records.Fingerprint`): what the source images are.

The split is by source image (or group), so tiles of one image never land on both sides.
The dataset's cache key sums up what it was made from; a rerun with the same key reuses it
and leaves the run folder's records as they are, so later steps stay valid.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seglab import demo_data, downloads, geometry, pipeline, planning, plots, readers, shards, splits, stats
from seglab.atomic import atomic_dir
from seglab.backend import tf
from seglab.config import Config, check_input_size
from seglab.machine import gpu_memory_gb
from seglab.normalization import value_range
from seglab.jsonrecord import MissingInput
from seglab.records import DatasetRecord, DemoScene, Fingerprint, ImageSpec, Item, SourceInfo, SplitInfo
from seglab.rundir import RunDir
from seglab.settings import preprocessing_settings

SPLITS = readers.SPLITS
LAYOUT_VERSION = 4  # part of the cache key: bump it whenever prepare_dataset writes something different
DEFAULT_COLORS = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                  [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]]


def original_splits(data) -> tuple:
    """The splits kept at their original size: val and test, and train when training crops it."""
    return ("val", "test") + (("train",) if data.train_tiles == "random_crops" else ())


def resolve_source(cfg: Config) -> Path:
    """The folder-layout root for the configured source, generating or downloading it if needed."""
    data = cfg.data
    if data.source == "demo":
        name = f"demo_v{demo_data.VERSION}_n{data.demo.num_images}_s{data.demo.image_size}_seed{cfg.seed}"
        return demo_data.generate_demo_dataset(Path(data.download_dir).parent / "generated" / name,
                                               data.demo.num_images, data.demo.image_size, cfg.seed)
    if data.source == "oxford_pets":
        return downloads.prepare_oxford_pets(data.download_dir, data.base_url)
    return Path(data.root)


def max_pixels(data) -> int:
    return int(data.max_image_megapixels * 1e6)


def image_spec(paths: list[Path], data) -> ImageSpec:
    """What every image is brought to, from the files' headers: ``data.channels`` or the most any image has
    (grey images among RGB ones are repeated), and the widest depth (8-bit, 16-bit, float), or 8-bit when
    ``data.intensity`` is ``per_image``; and how the shards encode it."""
    formats = [readers.image_format(path, max_pixels(data)) for path in paths]
    channels = data.channels or max(c for c, _ in formats)
    dtype = np.dtype(np.uint8) if data.intensity == "per_image" else np.result_type(*(d for _, d in formats))
    return ImageSpec(channels, dtype.name, "png" if shards.png_encodable(dtype, channels) else "tensor",
                     data.intensity)


@dataclass
class Source:
    """The source, read and measured: everything 01 decides before it processes a pixel."""
    root: Path
    classes: readers.ClassInfo
    found: list  # (stem, image path, mask path) of every pair
    pairs: list  # those processed (data.max_images)
    images: ImageSpec
    fingerprint: Fingerprint
    decisions: dict


def read_source(cfg: Config) -> tuple[Source, Config]:
    """The source and its fingerprint; ``cfg`` with the settings left as ``auto`` decided from it."""
    root = resolve_source(cfg)
    classes = readers.read_classes(root / "classes.json")
    found = readers.find_pairs(root)
    pairs = splits.subset_sources(found, cfg.data.max_images, cfg.seed)
    spec = image_spec([image for _, image, _ in pairs], cfg.data)
    sample = splits.subset_sources(pairs, planning.FINGERPRINT_IMAGES, cfg.seed)
    fingerprint = stats.measure(sample, classes, len(pairs), cfg.seed, spec.channels, max_pixels(cfg.data))
    decisions = planning.decide(fingerprint, cfg, gpu_memory_gb())
    cfg = planning.resolve(cfg, decisions)
    check_input_size(cfg.model.architectures, cfg.data.image_size, cfg.model.pspnet_downsample_factor)
    return Source(root, classes, found, pairs, spec, fingerprint, decisions), cfg


def cache_key(cfg: Config, source: Source) -> str:
    """What the processed dataset depends on: each source file's name, size and modification time
    (reading every pixel again would cost what it saves), classes.json, splits.json, the settings
    marked ``preprocessing``, the decisions, and the layout version of this code."""
    root = source.root
    files = [[str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns]
             for _, image, mask in source.found for path in (image, mask) for stat in [path.stat()]]
    split_file = root / "splits.json"
    decisions = {key: d.value for key, d in source.decisions.items()}
    inputs = [LAYOUT_VERSION, str(root), preprocessing_settings(cfg), decisions, (root / "classes.json").read_text(),
              split_file.read_text() if split_file.is_file() else None, files]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


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


@dataclass
class Processed:
    """One source pair, read, checked and cut: what a worker thread hands back (compressed records)."""
    stem: str
    size: list  # [height, width]
    items: list  # (id, origin) of each sample
    records: list  # serialised samples
    pixels: np.ndarray  # per class, over the samples
    present_in: np.ndarray
    original: bytes | None  # the pair at its original size, when its split keeps originals
    moments: stats.ChannelMoments


def process_pair(pair, source: Source, data, keep_original: bool) -> Processed:
    stem, image_path, mask_path = pair
    spec = source.images
    image, mask = readers.read_pair(image_path, mask_path, source.classes, spec.channels, spec.intensity,
                                    max_pixels(data))
    image = image.astype(spec.dtype, copy=False)
    n = len(source.classes.names)
    done = Processed(stem, list(mask.shape), [], [], np.zeros(n, np.int64), np.zeros(n, np.int64),
                     shards.example(stem, image, mask) if keep_original else None, stats.ChannelMoments(image))
    for origin, img, msk in geometry.pieces(image, mask, data.image_size, data.mode, data.tile_overlap):
        item_id = stem if origin is None else f"{stem}_y{origin[0]}_x{origin[1]}"
        counts, present_in = stats.class_pixels(msk, n)
        done.pixels += counts
        done.present_in += present_in
        done.items.append((item_id, None if origin is None else list(origin)))
        done.records.append(shards.example(item_id, img, msk))
    return done


def _writers(out: Path, pairs: list, split_of: dict, data) -> dict:
    """A shard writer per split and per kept originals, sized from the source files' bytes
    (for resized samples, at most four bytes per pixel of the model's input)."""
    writers = {}
    for split in SPLITS:
        members = [(image, mask) for stem, image, mask in pairs if split_of[stem] == split]
        source_bytes = sum(image.stat().st_size + mask.stat().st_size for image, mask in members)
        resized = len(members) * data.image_size ** 2 * 4 if data.mode == "resize" else source_bytes
        writers[split] = shards.ShardWriter(out, split, shards.shard_count(min(source_bytes, resized), len(members)),
                                            len(members))
        if split in original_splits(data):
            kind = f"{split}-originals"
            writers[kind] = shards.ShardWriter(out, kind, shards.shard_count(source_bytes, len(members)), len(members))
    return writers


class _Tally:
    """What 01 sums up over the pairs as they stream in, for the dataset record."""

    def __init__(self, split_of: dict, num_classes: int):
        self.split_of, self.items, self.sizes = split_of, [], {}
        self.pixels = {s: np.zeros(num_classes, np.int64) for s in SPLITS}
        self.present_in = {s: np.zeros(num_classes, np.int64) for s in SPLITS}
        self.moments = stats.ChannelMoments()  # of the training split

    def add(self, done: Processed) -> None:
        split = self.split_of[done.stem]
        if split == "train":
            self.moments.add(done.moments)
        self.sizes[done.stem] = done.size
        self.pixels[split] += done.pixels
        self.present_in[split] += done.present_in
        self.items += [Item(item_id, done.stem, split, origin) for item_id, origin in done.items]

    def splits(self) -> dict[str, SplitInfo]:
        ids = {s: sorted(stem for stem, v in self.split_of.items() if v == s) for s in SPLITS}
        return {s: SplitInfo(len(ids[s]), ids[s], sum(i.split == s for i in self.items), self.pixels[s].tolist(),
                             self.present_in[s].tolist()) for s in SPLITS}


def _write_shards(out: Path, source: Source, split_of: dict, cfg: Config) -> tuple[_Tally, dict]:
    """Every pair read, checked, cut and written into the shards, in threads (the image codecs and OpenCV
    release the GIL; processes would fork a kernel that may hold TensorFlow), a bounded window at a time."""
    tally = _Tally(split_of, len(source.classes.names))
    workers = os.cpu_count() or 1
    writers = _writers(out, source.pairs, split_of, cfg.data)
    keep = original_splits(cfg.data)
    with ThreadPoolExecutor(workers) as pool:
        work = lambda pair: process_pair(pair, source, cfg.data, split_of[pair[0]] in keep)
        try:
            for done in tqdm(_ordered_map(pool, work, source.pairs, 2 * workers), total=len(source.pairs),
                             desc="preprocessing"):
                tally.add(done)
                writers[split_of[done.stem]].add(done.records)
                if done.original is not None:
                    writers[f"{split_of[done.stem]}-originals"].add([done.original])
        finally:
            for writer in writers.values():
                writer.close()
    return tally, {kind: [p.name for p in writer.paths] for kind, writer in writers.items()}


def _demo_scene(source: Source, out: Path) -> DemoScene | None:
    """The demo source's large scene, copied into the dataset (another Colab runtime has no source folder)."""
    if not (source.root / demo_data.SCENE[0]).is_file():
        return None
    (out / "demo_scene").mkdir()
    for rel in demo_data.SCENE:
        shutil.copy2(source.root / rel, out / "demo_scene" / Path(rel).name)
    return DemoScene(*(f"dataset/demo_scene/{Path(rel).name}" for rel in demo_data.SCENE))


def _unchanged(run: RunDir, key: str) -> DatasetRecord | None:
    """The recorded dataset if it was made from the same inputs, else None."""
    try:
        previous = run.read(DatasetRecord)
    except MissingInput:
        return None
    return previous if previous.cache_key == key else None


def _dataset_record(source: Source, cfg: Config, key: str, split_by: str, tally: _Tally, shard_files: dict,
                    scene: DemoScene | None) -> DatasetRecord:
    n = len(source.classes.names)
    ignored = source.classes.ignore_index is not None or source.classes.ignore_color is not None
    return DatasetRecord(
        classes=source.classes.names,
        colors=source.classes.colors or [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(n)],
        ignore_index=readers.IGNORE if ignored else None, image_size=cfg.data.image_size, mode=cfg.data.mode,
        pixel_scale=geometry.pixel_scale(list(tally.sizes.values()), cfg.data.image_size, cfg.data.mode),
        decisions=source.decisions, images=ImageSpec(**{**vars(source.images), **tally.moments.summary()}),
        source=SourceInfo(cfg.data.source, str(source.root), len(source.pairs), tally.sizes),
        seed=cfg.seed, split_by=split_by, cache_key=key, shards=shard_files, splits=tally.splits(),
        items=tally.items, demo_scene=scene)


def dataset_files(dataset: DatasetRecord) -> list[str]:
    """Every file of ``dataset/`` (relative to the run folder), each recorded with its size and checksum."""
    files = [DatasetRecord.FILE, Fingerprint.FILE]
    files += [f"dataset/{name}" for names in dataset.shards.values() for name in names]
    return files + ([dataset.demo_scene.image, dataset.demo_scene.truth] if dataset.demo_scene else [])


def prepare_dataset(cfg: Config, run: RunDir, log=print) -> DatasetRecord:
    """Run step 01 and record it; the previous dataset and its record stay in place unless every input is good.

    The source is measured first (a sample of it) and the settings left as ``auto`` are decided
    from it (:mod:`seglab.planning`); everything below runs with the decided values. When no
    input changed since the recorded run, the dataset is reused as it is.
    """
    with run.begin("data", cfg, forget=False) as step:
        source, cfg = read_source(cfg)
        step.cfg = cfg  # recorded with the settings decided from the data
        key = cache_key(cfg, source)
        previous = _unchanged(run, key)
        if previous is not None:
            log("dataset unchanged since the last run of 01; reusing dataset/")
            return previous
        stems = [stem for stem, _, _ in source.pairs]
        split_of, split_by = splits.choose_split(source.root, [s for s, _, _ in source.found], stems, cfg.data,
                                                 cfg.seed)
        with atomic_dir(run.path("dataset")) as out:
            tally, shard_files = _write_shards(out, source, split_of, cfg)
            dataset = _dataset_record(source, cfg, key, split_by, tally, shard_files, _demo_scene(source, out))
            dataset.save(out / "dataset.json")
            source.fingerprint.save(out / "fingerprint.json")
            step.forget()  # every input was good: the old dataset is replaced next
        for rel in dataset_files(dataset):
            step.wrote(rel)
        step.finish(decisions={name: d.value for name, d in source.decisions.items()})
    return dataset


def sample_figure(run: RunDir, dataset: DatasetRecord, count: int = 6):
    """Training images beside their masks, in the class colours."""
    samples = islice(shards.read_samples(dataset.shard_files(run.root, "train"), dataset.images), count)
    rows = [[image, mask] for _, image, mask in samples]
    columns = 2 if len(rows) > 1 else 1
    pairs = [sum(rows[i:i + columns], []) for i in range(0, len(rows) - columns + 1, columns)]
    return plots.image_grid(pairs, ["image", "mask"] * columns, dataset.classes, dataset.colors)


def frequency_figure(dataset: DatasetRecord):
    shares = stats.pixel_shares(dataset.splits)
    series = {s: [v * 100 for v in shares[s]] for s in SPLITS}
    return plots.grouped_bars(series, dataset.classes, "% of pixels (log scale)", "Pixel share per class and split",
                              log=True)


def augmentation_figure(run: RunDir, dataset: DatasetRecord, kinds=("flip", "strong"), count: int = 4, seed: int = 0):
    """One training sample as stored, then ``count`` random augmentations of each kind: the mask drawn over its
    image shows that both moved together."""
    _, image, mask = next(shards.read_samples(dataset.shard_files(run.root, "train")[:1], dataset.images))
    low, high = value_range(dataset.images)
    tf.random.set_seed(seed)
    rows = []
    for kind in kinds:
        row = [plots.overlay(image, mask, dataset.colors)]
        for _ in range(count):
            x, m = pipeline.augment(image, mask[..., None], low, high, kind)
            x = np.clip(x.numpy(), low, high).astype(image.dtype)
            row.append(plots.overlay(x, m.numpy()[..., 0], dataset.colors))
        rows.append(row)
    fig = plots.image_grid(rows, ["as stored"] + [f"augmented {i + 1}" for i in range(count)], dataset.classes,
                           dataset.colors)
    for axis, kind in zip(fig.axes[:: count + 1], kinds):
        axis.set_ylabel(f"data.augment={kind}", fontsize=9)
    return fig
