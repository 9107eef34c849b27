"""Speed of tiled prediction on a large image, as ratios measured in one run.

Three ways to push the same windows of a 2048 x 2048 image through a U-Net:
  ours  - seglab.predictor.predict_image: windows batched, Gaussian-blended;
  naive - the same windows and blending, but one ``model.predict`` call per window;
  limit - the model alone on the same number of windows, already batched in memory.
Reported in megapixels per second; the aims are ours >= 3x naive and >= 0.85x limit.

    python bench/tiled_inference.py [--size 2048] [--tile 256] [--overlap 0.5] [--batch 8] [--rounds 2]
"""
import argparse
import time

import numpy as np

from seglab import models
from seglab.geometry import tile_starts
from seglab.normalization import encoder_normalization, normalize
from seglab.predictor import Predictor, gaussian_weight, predict_image
from seglab.records import ModelCard, ModelInput


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def naive(predictor, image, overlap):
    """What people write first: a predict call per window."""
    tile = predictor.tile
    x = normalize(image, predictor.card.normalization).numpy()
    weight = gaussian_weight(tile)[..., None]
    total = np.zeros(x.shape[:2] + (len(predictor.classes),), np.float32)
    weights = np.zeros(x.shape[:2] + (1,), np.float32)
    for y in tile_starts(x.shape[0], tile, overlap):
        for x0 in tile_starts(x.shape[1], tile, overlap):
            p = predictor.model.predict(x[None, y:y + tile, x0:x0 + tile], verbose=0)[0]
            total[y:y + tile, x0:x0 + tile] += p * weight
            weights[y:y + tile, x0:x0 + tile] += weight
    return total / weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    args = parser.parse_args()

    model = models.build_model(models.ModelSpec("unet", args.backbone, 4, args.tile))
    card = ModelCard("unet", args.backbone, ["c0", "c1", "c2", "c3"], [[0, 0, 0]] * 4,
                     encoder_normalization(args.backbone), args.tile, [1.0, 1.0], ModelInput())
    predictor = Predictor(model, card)
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    windows = len(tile_starts(args.size, args.tile, args.overlap)) ** 2
    batches = [np.random.default_rng(1).normal(size=(min(args.batch, windows - i), args.tile, args.tile, 3)).astype(np.float32)
               for i in range(0, windows, args.batch)]
    limit = lambda: [model.predict_on_batch(b) for b in batches]  # noqa: E731
    limit()  # trace every batch shape once
    predict_image(predictor, image[: args.tile, : args.tile])
    model.predict(batches[0][:1], verbose=0)
    best = {"ours": np.inf, "naive": np.inf, "limit": np.inf}
    for _ in range(args.rounds):
        best["ours"] = min(best["ours"], timed(lambda: predict_image(predictor, image, args.overlap, args.batch)))
        best["limit"] = min(best["limit"], timed(limit))
        best["naive"] = min(best["naive"], timed(lambda: naive(predictor, image, args.overlap)))
    megapixels = args.size * args.size / 1e6
    print(f"{args.size}x{args.size} image, {windows} windows of {args.tile} px (overlap {args.overlap}), "
          f"U-Net {args.backbone}, batch {args.batch}, best of {args.rounds}")
    for name, seconds in best.items():
        print(f"  {name:>5}: {megapixels / seconds:6.3f} MP/s ({seconds:6.1f} s)")
    print(f"  ours / naive = {best['naive'] / best['ours']:.2f}x   ours / limit = {best['limit'] / best['ours']:.3f}")


if __name__ == "__main__":
    main()
