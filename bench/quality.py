"""Does the series beat the plainest standard recipe on a real dataset, at the same training time?

For each seed, notebooks 00-03 run on DATA_DIR (a folder dataset: images/, masks/, classes.json)
with the series' settings (``--config``, plus ``--set`` overrides) and a training time budget;
then, on the same split, the plainest recipe trains for the same budget:

    ``sm.Unet`` with the same backbone, the training split's arrays in memory scaled to 0-1,
    Dice + focal loss, horizontal flips only, no class weights, Adam 1e-3, batch 8, the epoch
    with the best validation ``iou_score`` kept.

Both models are then scored the same way, by notebook 04's code: each test image predicted at
its original size by ``predictor.Predictor`` and one confusion matrix over the test split.

    python bench/quality.py DATA_DIR --minutes 10 [--seeds 1 2] [--size 128] [--set KEY=VALUE ...]

Prints a Markdown table (mean IoU and per-class IoU per recipe and seed) and writes it with
the numbers to OUT/quality.json. Trains one model at a time; give it the machine.
"""
import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from seglab import evaluation, models
from seglab.atomic import write_json
from seglab.backend import keras, sm, tf
from seglab.callbacks import TimeBudget
from seglab.jsonrecord import FileStamp
from seglab.predictor import Predictor, predict_views_of_images
from seglab.records import DatasetRecord, History, ModelCard, ModelInput, Normalization
from seglab.rundir import RunDir
from seglab.shards import original_pairs, read_samples

BATCH = 8


def run_series(data_dir: Path, run_dir: Path, args, seed: int) -> None:
    overrides = ["data.source=folder", f"data.root={data_dir}", f"data.image_size={args.size}",
                 "model.architectures=[unet]", f"model.backbone={args.backbone}", f"seed={seed}",
                 f"train.time_budget_minutes={args.minutes}", "train.epochs=1000", *args.overrides]
    steps = ["00", "01", "02", "03"] if "series" in args.recipes else ["00", "01"]  # 01 makes the split
    command = [sys.executable, "-m", "seglab", "run", "--config", args.config, "--run-dir", str(run_dir),
               "--only", *steps] + [part for o in overrides for part in ("--set", o)]
    subprocess.run(command, check=True)


def full_scale(dataset: DatasetRecord) -> float:
    """The largest value of the stored images' type, which the plain recipe divides by."""
    dtype = np.dtype(dataset.images.dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def split_arrays(run: RunDir, dataset: DatasetRecord, split: str):
    """Images scaled to 0-1 and one-hot masks (ignored pixels: all-zero rows), as plain arrays."""
    _, images, masks = zip(*read_samples(dataset.shard_files(run.root, split), dataset.images))
    x = np.stack(images).astype(np.float32) / full_scale(dataset)
    y = tf.one_hot(np.stack(masks), len(dataset.classes)).numpy()
    return x, y


def train_plain(run: RunDir, dataset: DatasetRecord, args, seed: int) -> tuple[Path, int]:
    """The plainest recipe, saved like the series' models (``models/plain.keras`` and its sidecar)."""
    keras.utils.set_random_seed(seed)
    x, y = split_arrays(run, dataset, "train")
    val = split_arrays(run, dataset, "val")

    def flip(image, mask):
        return tf.cond(tf.random.uniform([]) < 0.5, lambda: (image[:, ::-1], mask[:, ::-1]), lambda: (image, mask))

    train = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).map(flip)
             .batch(BATCH, drop_remainder=len(x) >= BATCH).prefetch(2))
    channels = x.shape[-1]
    if channels not in (1, 3):
        raise SystemExit(f"the plain recipe takes grey or RGB images, not {channels} channels")
    inputs = keras.Input((args.size, args.size, channels))
    rgb = keras.layers.Concatenate()([inputs] * 3) if channels == 1 else inputs  # grey repeated, as users do
    unet = sm.Unet(args.backbone, input_shape=(args.size, args.size, 3), classes=y.shape[-1], activation="softmax",
                   encoder_weights=None)
    model = keras.Model(inputs, unet(rgb))
    model.compile(keras.optimizers.Adam(1e-3), sm.losses.DiceLoss() + sm.losses.CategoricalFocalLoss(),
                  metrics=[sm.metrics.IOUScore()])
    best = run.path("checkpoints", "plain", "best")
    history = model.fit(train, validation_data=val, epochs=1000, verbose=2, callbacks=[
        TimeBudget(args.minutes),
        keras.callbacks.ModelCheckpoint(str(best), monitor="val_iou_score", mode="max", save_best_only=True,
                                        save_weights_only=True)])
    model.load_weights(str(best)).expect_partial()
    path = models.save_model(model, run.path("models", "plain.keras"))
    scale = Normalization(list(range(channels)), [1 / full_scale(dataset)] * channels, [0.0] * channels)
    ModelCard("unet", args.backbone, dataset.classes, dataset.colors, scale, args.size, dataset.pixel_scale,
              ModelInput(channels, dataset.images.dtype, dataset.images.intensity),
              model=FileStamp.of(path)).save(path.with_suffix(".json"))  # the card names the very file, as 03's do
    return path, len(history.epoch)


def score(run: RunDir, dataset: DatasetRecord, model_path: Path) -> dict:
    """Notebook 04's plain score: every test image at its original size, one confusion matrix."""
    predictor = Predictor.load(model_path)
    label_maps = lambda images: [{"plain": np.argmax(p[False], -1)} for p in predict_views_of_images(predictor, images)]
    scores, _ = evaluation.score_images(original_pairs(run, dataset, "test"), label_maps, dataset.classes,
                                        desc=model_path.stem, group_pixels=evaluation.batch_pixels(predictor, 8))
    return {"mean_iou": scores["plain"]["mean_iou"], "per_class_iou": scores["plain"]["per_class_iou"]}


def table(results: list[dict], classes: list) -> str:
    head = ["recipe", "seed", "epochs", "mean IoU", *[f"IoU {c}" for c in classes]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["recipe"], r["seed"], r["epochs"], f"{r['mean_iou']:.3f}",
                 *[f"{r['per_class_iou'][c]:.3f}" if r["per_class_iou"][c] is not None else "-" for c in classes]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall time per model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=128, help="square model input of both recipes")
    parser.add_argument("--backbone", default="resnet34")
    parser.add_argument("--config", default="configs/demo.yaml", help="the series' settings")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="more settings for the series (not the plain recipe)")
    parser.add_argument("--recipes", nargs="+", choices=("series", "plain"), default=["series", "plain"])
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        run_dir = (args.out / f"seed{seed}").resolve()
        run_series(args.data_dir.resolve(), run_dir, args, seed)
        run = RunDir(run_dir)
        dataset = run.read(DatasetRecord)
        if "series" in args.recipes:
            series_epochs = len(run.read(History, "unet").epochs)
            results.append({"recipe": "series", "seed": seed, "epochs": series_epochs,
                            **score(run, dataset, run.path("models", "unet.keras"))})
        if "plain" in args.recipes:
            plain, plain_epochs = train_plain(run, dataset, args, seed)
            results.append({"recipe": "plain", "seed": seed, "epochs": plain_epochs, **score(run, dataset, plain)})
        print(table(results, dataset.classes), flush=True)
    markdown = table(results, dataset.classes)
    write_json(args.out / "quality.json", {"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                           "table": markdown})
    print(markdown)


if __name__ == "__main__":
    main()
