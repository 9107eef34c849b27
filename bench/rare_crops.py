"""A development set for rare classes cut from a folder dataset: grid crops in which one class stays small.

A class of 6% of the pixels that appears in nearly every image (the liver set's tumour) is not
rare enough to show how a small structure gets lost (a brainstem of 0.3% of the pixels, in a
third of the slices). Cutting every image into ``--crop`` squares and keeping only those in which
``--class`` covers less than ``--max-share`` makes it rare in both pixels and images, with the
real images' appearance: what is small in the crops is small in the scan.

    python bench/rare_crops.py SRC OUT [--crop 64] [--class 2] [--max-share 0.03]

SRC and OUT are folder datasets (images/, masks/ of class indices, classes.json). Crop names
keep the source's stem (``axial_012_y64x0``), so a ``data.group_pattern`` on the stem still
keeps neighbouring slices in one split. Prints the share of pixels and images of each class.
"""
import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from seglab.readers import read_classes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--class", dest="rare", type=int, default=2, help="the class index to keep small")
    parser.add_argument("--max-share", type=float, default=0.03)
    args = parser.parse_args()
    src, out = Path(args.src), Path(args.out)
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    classes = read_classes(src / "classes.json").names
    counts, present, kept = np.zeros(len(classes)), np.zeros(len(classes)), 0
    for mask_path in sorted((src / "masks").glob("*.png")):
        image, mask = np.asarray(Image.open(src / "images" / mask_path.name)), np.asarray(Image.open(mask_path))
        for y in range(0, mask.shape[0] - args.crop + 1, args.crop):
            for x in range(0, mask.shape[1] - args.crop + 1, args.crop):
                window = np.s_[y:y + args.crop, x:x + args.crop]
                if (mask[window] == args.rare).mean() >= args.max_share:
                    continue
                name = f"{mask_path.stem}_y{y}x{x}.png"
                Image.fromarray(image[window]).save(out / "images" / name)
                Image.fromarray(mask[window]).save(out / "masks" / name)
                pixels = np.bincount(mask[window].ravel(), minlength=len(classes))
                counts, present, kept = counts + pixels, present + (pixels > 0), kept + 1
    shutil.copy(src / "classes.json", out / "classes.json")
    print(f"{kept} crops of {args.crop} px")
    for name, share, seen in zip(classes, counts / counts.sum(), present / kept):
        print(f"{name:>10}: {share:7.2%} of pixels, in {seen:6.1%} of images")


if __name__ == "__main__":
    main()
