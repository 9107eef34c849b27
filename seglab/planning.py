"""Settings derived from the dataset, nnU-Net's idea: measure the data (a fingerprint), then decide by written rules.

Notebook 01 measures the source images (:func:`seglab.stats.measure`, written to
``dataset/fingerprint.json``); every setting left as ``auto`` in the config is then decided
by :func:`decide` and recorded, with its reason, in the dataset record's ``decisions``, so
that 02, 03 and 04 use the decided value (:func:`resolve`). The rules, with ``L`` the lcm of
the input multiples of the chosen architectures (``geometry.common_multiple``: 32; 96 with
PSPNet) and ``side`` the median of the images' shorter sides:

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
data on the same device always gives the same decisions.
"""
from __future__ import annotations

import copy

import numpy as np

from seglab.config import Config
from seglab.geometry import common_multiple
from seglab.jsonrecord import MissingInput
from seglab.records import Decision, Fingerprint
from seglab.settings import AUTO

FINGERPRINT_IMAGES = 300  # a seeded sample of this many source images is measured (all of them when fewer)
MAX_SIDE = 512  # px: the largest automatic input side; larger samples leave room for batches of 2 or fewer
TILE_FACTOR = 2  # tile rather than resize when resizing would shrink the median image more than this
CPU_PIXELS = 2**17  # pixels per batch without a GPU: 96² px samples give 14, so 8; a step of about a second on 2 cores
GPU_PIXELS_PER_GB = 2**17  # per GB of GPU memory: a ResNet-34 U-Net in mixed precision fits with room to spare
BATCH_RANGE = (2, 32)  # at least 2 for batch normalisation; beyond 32, more steps per epoch help more
MAX_EPOCHS = 1000  # the cap of train.epochs=auto; the time budget ends training long before
AUTO_KEYS = ("data.mode", "data.image_size", "train.batch_size", "train.epochs")


def _mode(side: float, mode: str) -> Decision:
    if mode != AUTO:
        return Decision(mode, "set in the config")
    tile = side > TILE_FACTOR * MAX_SIDE
    return Decision("tile" if tile else "resize",
                    f"the median short side, {side:g} px, is {'more than' if tile else 'at most'} {TILE_FACTOR} x "
                    f"{MAX_SIDE} px: " + ("tiles keep the native resolution that resizing would shrink away" if tile
                                          else "resizing keeps each whole image in view at a modest change of scale"))


def _image_size(side: float, cfg: Config) -> Decision:
    if cfg.data.image_size != AUTO:
        return Decision(cfg.data.image_size, "set in the config")
    step = common_multiple(cfg.model.architectures, cfg.model.pspnet_downsample_factor)
    limit = min(side, MAX_SIDE)
    size = max(step, int(limit // step * step))
    takes = f"{', '.join(cfg.model.architectures)} take multiples of {step} px"
    if size <= limit:
        return Decision(size, f"{takes}; the largest up to {limit:g} px, the smaller of the median short side and "
                              f"{MAX_SIDE} px")
    return Decision(size, f"{takes}; the smallest, as the median short side is only {side:g} px")


def _batch_size(size: int, gpu_gb: float | None) -> Decision:
    budget, device = ((GPU_PIXELS_PER_GB * gpu_gb, f"a GPU of {gpu_gb:.1f} GB at {GPU_PIXELS_PER_GB:,} px per GB")
                      if gpu_gb else (CPU_PIXELS, "no GPU, so the CPU budget"))
    fits = budget / size**2
    batch = int(np.clip(2 ** int(np.floor(np.log2(max(fits, 1)))), *BATCH_RANGE))
    return Decision(batch, f"{device}: {budget:,.0f} px per batch hold {fits:.1f} samples of {size}² px, "
                           f"rounded down to a power of two in {list(BATCH_RANGE)}")


def decide(fingerprint: Fingerprint, cfg: Config, gpu_gb: float | None) -> dict[str, Decision]:
    """The data settings, and the training settings left as auto, each with its reason; explicit
    values are kept ("set in the config"). See the module docstring for the rules."""
    side = fingerprint.size["short_side"]["median"]
    decided = {"data.mode": _mode(side, cfg.data.mode), "data.image_size": _image_size(side, cfg)}
    if cfg.train.batch_size == AUTO:
        decided["train.batch_size"] = _batch_size(decided["data.image_size"].value, gpu_gb)
    if cfg.train.epochs == AUTO:
        decided["train.epochs"] = Decision(MAX_EPOCHS, f"a cap: train.time_budget_minutes="
                                                       f"{cfg.train.time_budget_minutes:g} ends training")
    return decided


def resolve(cfg: Config, decisions: dict[str, Decision]) -> Config:
    """A copy of ``cfg`` with every auto setting replaced by the decision notebook 01 recorded."""
    resolved = copy.deepcopy(cfg)
    for key in AUTO_KEYS:
        section, name = key.split(".")
        if getattr(getattr(resolved, section), name) != AUTO:
            continue
        if key not in decisions:
            raise MissingInput(f"Run notebook 01 again: its dataset.json has no decision for {key}=auto.")
        setattr(getattr(resolved, section), name, decisions[key].value)
    return resolved


def describe(fingerprint: Fingerprint, decisions: dict[str, Decision]) -> str:
    """The fingerprint and the decisions with their reasons, as lines to print."""
    size, classes = fingerprint.size, fingerprint.classes
    lines = [f"{fingerprint.images} images ({fingerprint.measured} measured), channels as stored: "
             f"{fingerprint.channels}"]
    lines += [f"{axis:>10}: " + ", ".join(f"{k} {v:g}" for k, v in size[axis].items()) for axis in size]
    lines += [f"{'intensity':>10}: " + ", ".join(f"{k} {[round(v, 1) for v in values]}"
                                                 for k, values in fingerprint.intensity.items())]
    lines += [f"{name:>10}: {p:7.2%} of pixels, in {i:6.1%} of images"
              for name, p, i in zip(classes.names, classes.pixel_share, classes.image_share)]
    lines += [f"{key} = {d.value}: {d.reason}" for key, d in decisions.items()]
    return "\n".join(lines)
