"""The shard files of the processed dataset: one codec, used eagerly and inside tf.data graphs alike.

A shard is a TFRecord file of ``tf.train.Example`` records, each with ``id``, ``image`` and
``mask``. The image is PNG where PNG holds it (1 to 4 channels of 8 or 16 bits, compressed
losslessly), else the tensor itself (``tf.io.serialize_tensor``: any number of channels,
float intensities); the mask is a PNG of class indices (``readers.IGNORE`` for ignored
pixels). Which of the two an image is, and its channels and type, the dataset record's
:class:`~seglab.records.ImageSpec` says, so decoding needs nothing from the record itself.

A split's shards hold consecutive source images (a few tens of MB each, at most
``MAX_SHARDS``), so a run folder on Google Drive holds a few large files, not many small ones.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from seglab import colab
from seglab.atomic import atomic_file
from seglab.backend import tf
from seglab.jsonrecord import MissingInput
from seglab.records import DatasetRecord, ImageSpec

SHARD_BYTES = 64 * 2**20  # aimed size of one shard file, estimated from the source files' sizes
MAX_SHARDS = 32  # per split and kind, however large the dataset
FEATURES = {key: tf.io.FixedLenFeature([], tf.string) for key in ("id", "image", "mask")}


def png_encodable(dtype, channels: int) -> bool:
    return np.dtype(dtype) in (np.uint8, np.uint16) and channels <= 4


def example(item_id: str, image: np.ndarray, mask: np.ndarray) -> bytes:
    """One serialised record: ``image`` (H, W, C) and its ``mask`` (H, W) of class indices."""
    data = (tf.io.encode_png(image) if png_encodable(image.dtype, image.shape[2]) else tf.io.serialize_tensor(image))
    values = {"id": item_id.encode(), "image": data.numpy(), "mask": tf.io.encode_png(mask[..., None]).numpy()}
    feature = {key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value])) for key, value in values.items()}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse(record, images: ImageSpec):
    """``(id, image (H, W, C), mask (H, W, 1))`` of one serialised record, as tensors (in a graph or eagerly)."""
    parsed = tf.io.parse_single_example(record, FEATURES)
    dtype = tf.as_dtype(images.dtype)
    if images.encoding == "png":
        pixels = tf.io.decode_png(parsed["image"], dtype=dtype)  # as stored: decode_png cannot ask for 2 channels
    else:
        pixels = tf.io.parse_tensor(parsed["image"], dtype)
    mask = tf.io.decode_png(parsed["mask"], channels=1)
    return parsed["id"], tf.ensure_shape(pixels, [None, None, images.channels]), mask


def mask_holds(record, classes):
    """Whether a record's mask holds one of ``classes``; decodes the mask alone (graph code)."""
    mask = tf.io.decode_png(tf.io.parse_single_example(record, FEATURES)["mask"], channels=1)
    return tf.reduce_any(tf.equal(mask, classes))


def read_samples(files: list[Path], images: ImageSpec):
    """``(id, image, mask)`` as NumPy arrays (mask (H, W)), one record at a time, in the files' order.

    A damaged file (cut off, or half synced) stops with its name and the notebook that rebuilds it.
    """
    for path in files:
        ds = tf.data.TFRecordDataset(str(path)).map(lambda r: parse(r, images))
        try:
            for item_id, image, mask in ds.as_numpy_iterator():
                yield item_id.decode(), image, mask[..., 0]
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
            raise MissingInput(f"{path} is damaged ({str(error).splitlines()[0][:120]}); run notebook "
                               "01_data_loading_and_preprocessing.ipynb again, it rebuilds dataset/.") from None


def shard_names(kind: str, count: int) -> list[str]:
    """``train-00000-of-00004.tfrecord`` ...: the files of one kind (a split, or ``val-originals``)."""
    return [f"{kind}-{i:05d}-of-{count:05d}.tfrecord" for i in range(count)]


def shard_count(estimated_bytes: int, sources_in_split: int) -> int:
    """Shards of about ``SHARD_BYTES``, at least one, at most ``MAX_SHARDS`` and one per source image."""
    return max(1, min(MAX_SHARDS, sources_in_split, math.ceil(estimated_bytes / SHARD_BYTES)))


class ShardWriter:
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


def local_copies(run_root: Path, files: list[Path], log=print) -> list[Path]:
    """The shard files on this machine's own disk, for steps that read them again and again.

    A run folder on Google Drive (Colab) is read over the network; the shards are copied once
    per runtime to ``colab.local_cache(run_root)`` (a few large files: quick). A local run
    folder is used as it is.
    """
    cache = colab.local_cache(run_root)
    if cache is None:
        return list(files)
    copies = []
    for path in files:
        copy = cache / path.name
        stat = path.stat()
        if not copy.exists() or copy.stat().st_size != stat.st_size or copy.stat().st_mtime_ns != stat.st_mtime_ns:
            atomic_file(copy, lambda tmp: shutil.copy2(path, tmp))
        copies.append(copy)
    log(f"{len(copies)} shard file(s) of dataset/ read from a copy on the local disk, {cache}")
    return copies


def split_files(run, dataset: DatasetRecord, split: str, originals: bool = False, log=print) -> list[Path]:
    """The shard files of ``split`` (of the run folder ``run``'s dataset), checked to be the ones notebook 01 wrote,
    on the local disk (:func:`local_copies`)."""
    return local_copies(run.root, run.verify("data", dataset.shard_files(run.root, split, originals)), log)


def original_pairs(run, dataset: DatasetRecord, split: str, stems=None):
    """``(stem, image, mask)`` at the original size for each source image of ``split`` (of the dataset record
    ``dataset`` in the run folder ``run``), in sorted order, streamed one at a time; only the ``stems`` given,
    when given."""
    wanted = None if stems is None else set(stems)
    for stem, image, mask in read_samples(split_files(run, dataset, split, originals=True, log=lambda _: None),
                                          dataset.images):
        if wanted is None or stem in wanted:
            yield stem, image, mask
