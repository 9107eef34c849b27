"""A development set for rare classes: the demo with its specks in only a few images.

The demo's specks cover about 1% of the pixels and appear in every image, so they are not rare
enough to show how a class under 1% of the pixels, seen in a few images, gets lost (the
brainstem of a brain-structure set: 0.3% of the pixels). Here each image has specks with
probability ``--chance``; everything else is the demo's generator.

    python bench/sparse_specks.py OUT [--images 300] [--size 96] [--chance 0.2] [--seed 0]

``--images 1000 --size 160`` makes a set that 10 minutes of training on a 2-core CPU does not
learn to the end (9 epochs of U-Net on resnet34, as a larger real set would be), where the
default 300 at 96 px are learned to the end in about 70.

Writes a folder dataset (OUT/images, OUT/masks, OUT/classes.json) for ``data.source=folder``
and prints the share of pixels and images of each class.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from seglab.demo_data import CLASSES, COLORS, make_sample


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--chance", type=float, default=0.2, help="the share of images that have specks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out, rng = Path(args.out), np.random.default_rng(args.seed)
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    counts, present = np.zeros(len(CLASSES)), np.zeros(len(CLASSES))
    for i in range(args.images):
        image, mask = make_sample(rng, args.size, speck_chance=args.chance)
        Image.fromarray(image).save(out / "images" / f"specks_{i:04d}.png")
        Image.fromarray(mask).save(out / "masks" / f"specks_{i:04d}.png")
        pixels = np.bincount(mask.ravel(), minlength=len(CLASSES))
        counts, present = counts + pixels, present + (pixels > 0)
    (out / "classes.json").write_text(json.dumps({"classes": CLASSES, "colors": COLORS}))
    for name, share, seen in zip(CLASSES, counts / counts.sum(), present / args.images):
        print(f"{name:>10}: {share:7.2%} of pixels, in {seen:6.1%} of images")


if __name__ == "__main__":
    main()
