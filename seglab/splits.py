"""Which source images train, validate and test: seeded, by image or by group, or fixed by ``splits.json``."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from seglab.readers import SPLITS, DataError, read_user_json


def read_split_file(path: Path, stems: list[str]) -> dict[str, str]:
    """A split fixed by the user (nnU-Net's ``splits_final.json`` idea): ``{"train": [stems], "val": [...], "test": [...]}``.

    Every image must be in exactly one split, and every stem must name an image.
    """
    spec = read_user_json(path)
    if not isinstance(spec, dict) or set(spec) != set(SPLITS) or not all(
            isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in spec.values()):
        raise DataError(f"{path}: must map each of train, val and test to a non-empty list of image names")
    split_of = {}
    for split in SPLITS:
        for stem in spec[split]:
            if stem in split_of:
                raise DataError(f"{path}: '{stem}' is in both {split_of[stem]} and {split}")
            split_of[stem] = split
    unknown = sorted(set(split_of) - set(stems))
    if unknown:
        raise DataError(f"{path}: '{unknown[0]}' names no image in {path.parent / 'images'} ({len(unknown)} such name(s))")
    missing = sorted(set(stems) - set(split_of))
    if missing:
        raise DataError(f"{path}: the image '{missing[0]}' is in no split ({len(missing)} such image(s))")
    return split_of


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
        raise DataError(f"only {len(names)} {what}; a train/val/test split needs at least 3")
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
        raise DataError(f"data.group_pattern={pattern!r} does not match the image name '{unmatched[0]}' "
                        f"({len(unmatched)} of {len(stems)} do not match); every image needs a group")
    return {stem: m.group(1) for stem, m in matches.items()}


def choose_split(root: Path, stems: list[str], chosen: list[str], data, seed: int) -> tuple[dict[str, str], str]:
    """The split of the ``chosen`` stems (of all ``stems``), and what decided it: ROOT/splits.json, else
    ``data.group_pattern``, else one image at a time."""
    path = root / "splits.json"
    if path.is_file():
        split_of = read_split_file(path, stems)
        return {stem: split_of[stem] for stem in chosen}, "splits.json"
    if data.group_pattern:
        groups = group_of(chosen, data.group_pattern)
        return (split_sources(chosen, data.val_fraction, data.test_fraction, seed, groups),
                f"groups of data.group_pattern {data.group_pattern!r}")
    return split_sources(chosen, data.val_fraction, data.test_fraction, seed), "image"
