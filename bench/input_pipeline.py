"""How much does the input pipeline cost training? A ratio of two speeds in one run.

U-Net is trained on the real tf.data pipeline (shards read, PNGs decoded, augmented, normalised) and on
the same batches already in memory, alternately, a few rounds each; the best round of
each counts. A ratio near 1 means the model, not the input, limits the speed.

    python bench/input_pipeline.py [--config configs/demo.yaml] [--steps 30] [--rounds 3]

Needs a run folder where notebooks 01 and 02 have run (``make demo`` makes one).
"""
import argparse
import time

import numpy as np

from seglab import devices, losses, metrics, models, pipeline, planning
from seglab.backend import tf
from seglab.normalization import encoder_normalization
from seglab.notebook import open_run
from seglab.records import ClassWeights, DatasetRecord
from seglab.shards import local_copies


def images_per_second(model, dataset, steps: int, batch_size: int) -> float:
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cfg, run = open_run(args.config)
    dataset = run.read(DatasetRecord)
    cfg = planning.resolve(cfg, dataset.decisions)
    weights = run.read(ClassWeights).weights
    devices.set_precision(cfg.train.mixed_precision)  # time what training would run
    n, batch = len(dataset.classes), cfg.train.batch_size
    norm = encoder_normalization(cfg.model.backbone)
    files = local_copies(run.root, dataset.shard_files(run.root, "train"))
    real = pipeline.make_dataset(pipeline.SplitData(files, dataset.images, n), norm,
                                 pipeline.Batching(batch, training=True, augment=cfg.data.augment, seed=cfg.seed,
                                                   repeat=True))
    cached = [(x.numpy(), y.numpy()) for x, y in real.take(args.steps)]
    memory = tf.data.Dataset.from_tensor_slices((np.stack([x for x, _ in cached]), np.stack([y for _, y in cached])))
    memory = memory.repeat()
    model = models.build_model(models.ModelSpec("unet", cfg.model.backbone, n, dataset.image_size))
    model.compile("adam", losses.make_loss(cfg.train.loss, weights), metrics=[metrics.MeanIoU(len(weights))])
    model.fit(memory, steps_per_epoch=3, epochs=1, verbose=0)  # build and trace once before timing
    speeds = {"pipeline": [], "memory": []}
    for _ in range(args.rounds):
        speeds["pipeline"].append(images_per_second(model, real, args.steps, batch))
        speeds["memory"].append(images_per_second(model, memory, args.steps, batch))
    best = {k: max(v) for k, v in speeds.items()}
    print(f"U-Net ({cfg.model.backbone}, {dataset.image_size} px, batch {batch}), best of {args.rounds} rounds of {args.steps} steps")
    print(f"  real tf.data pipeline : {best['pipeline']:7.1f} images/s")
    print(f"  same batches in memory: {best['memory']:7.1f} images/s")
    print(f"  ratio pipeline/memory : {best['pipeline'] / best['memory']:.3f}")


if __name__ == "__main__":
    main()
