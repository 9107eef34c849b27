"""What each architecture costs per training step, as a ratio to U-Net's, measured in one run.

Every model is built as notebook 03 builds it (``models.build_model``) and compiled with the
series' loss and metric; each trains on the same random batches in memory (no input pipeline),
after a warm-up that traces the step. The best of ``--rounds`` rounds counts. FPN is measured
with segmentation_models' two ways of merging its pyramid (``pyramid_aggregation``) and at two widths
(``pyramid_block_filters``): ``fpn:sum:128``.

    python bench/architecture_cost.py [--size 96] [--batch 8] [--steps 10] [--rounds 3] [--backbone resnet18]

Precision is compared on the real pipeline instead, by ``bench/overhead.py --set train.mixed_precision=...``.
"""
import argparse
import time
from unittest import mock

import numpy as np

from seglab import losses, metrics, models
from seglab.backend import keras, sm


def build(arch: str, args, fpn: dict):
    """``fpn``: segmentation_models' own FPN arguments, in place of the ones seglab passes."""
    spec = models.ModelSpec(arch, args.backbone, 4, args.size)
    if not fpn:
        return models.build_model(spec)
    real = sm.FPN
    with mock.patch.dict(models.SM_MODELS, {"fpn": lambda *a, **k: real(*a, **{**k, **fpn})}):
        return models.build_model(spec)


def fpn_arguments(name: str) -> dict:
    """``fpn:concat`` or ``fpn:sum:128``: the pyramid's aggregation, then its filters."""
    _, aggregation, filters = (name.split(":") + ["", ""])[:3]
    return {**({"pyramid_aggregation": aggregation} if aggregation else {}),
            **({"pyramid_block_filters": int(filters)} if filters else {})}


def seconds_per_step(model, x, y, steps: int) -> float:
    start = time.perf_counter()
    model.fit(x, y, batch_size=len(x) // steps, epochs=1, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--archs", nargs="+", default=["unet", "fpn:concat", "fpn:sum:256", "fpn:sum:128", "pspnet",
                                                        "linknet", "unetplusplus", "deeplabv3plus"])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch * args.steps, args.size, args.size, 3)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 4, (len(x), args.size, args.size)), 4)
    built = {}
    for name in args.archs:
        model = build(name.split(":")[0], args, fpn_arguments(name))
        model.compile(keras.optimizers.Adam(1e-3), losses.make_loss("dice+focal", [1.0] * 4), metrics=[metrics.MeanIoU(4)])
        model.fit(x[: args.batch * 2], y[: args.batch * 2], batch_size=args.batch, epochs=1, verbose=0)  # trace
        built[name] = model
    best = {name: np.inf for name in built}
    for _ in range(args.rounds):  # interleaved, so a slow moment of the machine hits every model alike
        for name, model in built.items():
            best[name] = min(best[name], seconds_per_step(model, x, y, args.steps))
    print(f"{args.backbone}, {args.size} px, batch {args.batch}, best of {args.rounds} rounds of {args.steps} steps")
    print("| model | parameters | s per step | relative to U-Net |")
    print("|---|---|---|---|")
    base = best.get("unet", next(iter(best.values())))
    for name, seconds in best.items():
        print(f"| {name} | {built[name].count_params():,} | {seconds:.3f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
