"""Settings derived from the dataset, nnU-Net's idea: measure the data (a fingerprint), then decide by written rules.

Notebook 01 measures the source images and writes ``dataset/fingerprint.json``; every
setting left as ``auto`` in the config is then decided by :func:`plan` and recorded, with
its reason, under ``plan`` in ``dataset.json``, so that 02, 03 and 04 use the decided value
(:func:`resolve`). The rules, with ``L`` the lcm of the input multiples of the chosen
architectures (``config.common_multiple``: 32; 96 with PSPNet) and ``side`` the median of
the images' shorter sides:

=================  ===========================================================================
setting            rule
=================  ===========================================================================
data.mode          ``tile`` when ``side > TILE_FACTOR * MAX_SIDE`` (resizing would shrink the
                   median image more than twofold below the largest input), else ``resize``
data.image_size    the largest multiple of ``L`` not above ``min(side, MAX_SIDE)``, at least ``L``:
                   most images are shrunk rather than enlarged, and one sample stays affordable
train.batch_size   pixels per batch ``GPU_PIXELS_PER_GB`` x the GPU's GB (``CPU_PIXELS`` without
                   a GPU) over ``image_size``², rounded down to a power of two in ``BATCH_RANGE``
train.epochs       ``MAX_EPOCHS``, a cap: ``train.time_budget_minutes`` (required) stops training
=================  ===========================================================================

The rules read nothing but the fingerprint, the config and the GPU's memory, so the same
data on the same device always gives the same plan.
"""
from __future__ import annotations

import copy
import re
from collections import Counter

import numpy as np

from seglab import sources
from seglab.artifacts import MissingInput, RunDir, read_json
from seglab.config import AUTO, Config, common_multiple

FINGERPRINT_IMAGES = 300  # a seeded sample of this many source images is measured (all of them when fewer)
PIXELS_PER_IMAGE = 10_000  # pixels of each measured image kept for the intensity statistics
MAX_SIDE = 512  # px: the largest automatic input side; larger samples leave room for batches of 2 or fewer
TILE_FACTOR = 2  # tile rather than resize when resizing would shrink the median image more than this
CPU_PIXELS = 2**17  # pixels per batch without a GPU: 96² px samples give 14, so 8; a step of about a second on 2 cores
GPU_PIXELS_PER_GB = 2**17  # per GB of GPU memory: a ResNet-34 U-Net in mixed precision fits with room to spare
BATCH_RANGE = (2, 32)  # at least 2 for batch normalisation; beyond 32, more steps per epoch help more
MAX_EPOCHS = 1000  # the cap of train.epochs=auto; the time budget ends training long before
AUTO_KEYS = ("data.mode", "data.image_size", "train.batch_size", "train.epochs")


def intensity_stats(images) -> dict:
    """Per channel mean, standard deviation and 0.5 / 99.5 percentiles over every pixel of
    ``images`` (arrays H x W or H x W x C, one channel count for all); plain NumPy."""
    pixels = np.concatenate([np.reshape(image, (-1, image.shape[2] if image.ndim == 3 else 1)) for image in images])
    low, high = np.percentile(pixels, (0.5, 99.5), axis=0)
    return {"mean": pixels.mean(0, dtype=np.float64).tolist(), "std": pixels.std(0, dtype=np.float64).tolist(),
            "p0.5": low.tolist(), "p99.5": high.tolist()}


def _spread(values) -> dict:
    low, p10, median, p90, high = np.percentile(values, (0, 10, 50, 90, 100))
    return {"min": float(low), "p10": float(p10), "median": float(median), "p90": float(p90), "max": float(high)}


def fingerprint(sample: list, classes: sources.ClassInfo, images: int, seed: int = 0, channels: int | None = None) -> dict:
    """What the data is, measured on ``sample`` (stem, image, mask) of the ``images`` source pairs:
    image sizes, channels as stored, intensities as read (over ``PIXELS_PER_IMAGE`` random pixels
    of each image, read with ``channels`` as the shards will hold them), and per class the share of
    labelled pixels and of images it appears in."""
    rng = np.random.default_rng(seed)
    shapes, stored, kept = [], Counter(), []
    pixels, present = np.zeros(len(classes.names), np.int64), np.zeros(len(classes.names), np.int64)
    for _, image_path, mask_path in sample:
        image, mask = sources.read_pair(image_path, mask_path, classes, channels)
        shapes.append(mask.shape)
        stored[sources.image_format(image_path)[0]] += 1
        flat = image.reshape(-1, image.shape[2])
        kept.append(flat[rng.choice(len(flat), min(len(flat), PIXELS_PER_IMAGE), replace=False)][None])
        counts = np.bincount(mask.ravel(), minlength=sources.IGNORE + 1)[: len(classes.names)]
        pixels += counts
        present += counts > 0
    heights, widths = np.array(shapes).T
    return {
        "images": images,
        "measured": len(sample),
        "size": {"height": _spread(heights), "width": _spread(widths), "short_side": _spread(np.minimum(heights, widths))},
        "channels": {str(c): n for c, n in sorted(stored.items())},
        "intensity": intensity_stats(kept),
        "classes": {"names": classes.names, "pixel_share": (pixels / max(1, pixels.sum())).tolist(),
                    "image_share": (present / len(sample)).tolist()},
    }


def gpu_memory_gb() -> float | None:
    """Memory of the smallest GPU in GB, as nvidia-smi reports it; None without a GPU."""
    from seglab.gpu_check import nvidia_smi

    sizes = [int(m.group(1)) for line in nvidia_smi() if (m := re.search(r"(\d+) MiB", line))]
    return min(sizes) / 1024 if sizes else None


def plan(fingerprint: dict, cfg: Config, gpu_gb: float | None) -> dict:
    """``{key: {"value", "reason"}}`` for the data settings, and for the training settings left as auto.

    Explicit values are kept ("set in the config"); see the module docstring for the rules.
    """
    data, train = cfg.data, cfg.train
    side = fingerprint["size"]["short_side"]["median"]
    decided = {}
    if data.mode == AUTO:
        tile = side > TILE_FACTOR * MAX_SIDE
        decided["data.mode"] = ("tile" if tile else "resize",
                                f"the median short side, {side:g} px, is {'more than' if tile else 'at most'} "
                                f"{TILE_FACTOR} x {MAX_SIDE} px: " + (
                                    "tiles keep the native resolution that resizing would shrink away" if tile
                                    else "resizing keeps each whole image in view at a modest change of scale"))
    else:
        decided["data.mode"] = (data.mode, "set in the config")
    if data.image_size == AUTO:
        step = common_multiple(cfg.model.architectures, cfg.model.pspnet_downsample_factor)
        limit = min(side, MAX_SIDE)
        size = max(step, int(limit // step * step))
        takes = f"{', '.join(cfg.model.architectures)} take multiples of {step} px"
        decided["data.image_size"] = (size, f"{takes}; the largest up to {limit:g} px, the smaller of the median "
                                            f"short side and {MAX_SIDE} px" if size <= limit else
                                            f"{takes}; the smallest, as the median short side is only {side:g} px")
    else:
        decided["data.image_size"] = (data.image_size, "set in the config")
    if train.batch_size == AUTO:
        size = decided["data.image_size"][0]
        budget, device = ((GPU_PIXELS_PER_GB * gpu_gb, f"a GPU of {gpu_gb:.1f} GB at {GPU_PIXELS_PER_GB:,} px per GB")
                          if gpu_gb else (CPU_PIXELS, "no GPU, so the CPU budget"))
        fits = budget / size**2
        batch = int(np.clip(2 ** int(np.floor(np.log2(max(fits, 1)))), *BATCH_RANGE))
        decided["train.batch_size"] = (batch, f"{device}: {budget:,.0f} px per batch hold {fits:.1f} samples of "
                                              f"{size}² px, rounded down to a power of two in {list(BATCH_RANGE)}")
    if train.epochs == AUTO:
        decided["train.epochs"] = (MAX_EPOCHS, f"a cap: train.time_budget_minutes={train.time_budget_minutes:g} "
                                               "ends training")
    return {key: {"value": value, "reason": reason} for key, (value, reason) in decided.items()}


def resolve(cfg: Config, decisions: dict) -> Config:
    """A copy of ``cfg`` with every auto setting replaced by the decision notebook 01 recorded."""
    resolved = copy.deepcopy(cfg)
    for key in AUTO_KEYS:
        section, name = key.split(".")
        if getattr(getattr(resolved, section), name) != AUTO:
            continue
        if key not in decisions:
            raise MissingInput(f"Run notebook 01 again: its dataset.json has no decision for {key}=auto.")
        setattr(getattr(resolved, section), name, decisions[key]["value"])
    return resolved


def load_fingerprint(run: RunDir) -> dict:
    return read_json(run.output("data", "fingerprint"))


def describe(fingerprint: dict, decisions: dict) -> str:
    """The fingerprint and the decisions with their reasons, as lines to print."""
    size, classes = fingerprint["size"], fingerprint["classes"]
    lines = [f"{fingerprint['images']} images ({fingerprint['measured']} measured), channels as stored: "
             f"{fingerprint['channels']}"]
    lines += [f"{axis:>10}: " + ", ".join(f"{k} {v:g}" for k, v in size[axis].items()) for axis in size]
    lines += [f"{'intensity':>10}: " + ", ".join(f"{k} {[round(v, 1) for v in values]}"
                                                 for k, values in fingerprint["intensity"].items())]
    lines += [f"{name:>10}: {p:7.2%} of pixels, in {i:6.1%} of images"
              for name, p, i in zip(classes["names"], classes["pixel_share"], classes["image_share"])]
    lines += [f"{key} = {d['value']}: {d['reason']}" for key, d in decisions.items()]
    return "\n".join(lines)
