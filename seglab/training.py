"""Step 03: build and train U-Net, FPN, PSPNet (and LinkNet) with one function each.

Training runs inside a ``tf.distribute`` strategy, with mixed precision on GPUs, and keeps
its state in the run folder so that a notebook cut off mid-training (a Colab disconnect)
resumes from the last finished epoch when it is run again.
"""
from __future__ import annotations

import csv
import math
import shutil
import time
from pathlib import Path

import numpy as np

from seglab import data_loading, pipeline
from seglab.artifacts import RunDir, atomic_file, read_json, write_json
from seglab.class_weights import load_class_weights
from seglab.backend import keras, sm, tf
from seglab.config import ConfigError, check_input_size
from seglab.config import input_multiple  # noqa: F401 -- notebook 03 calls training.input_multiple

SM_MODELS = {"unet": sm.Unet, "fpn": sm.FPN, "pspnet": sm.PSPNet, "linknet": sm.Linknet}
MONITOR = "val_iou_score"


def build_model(arch: str, backbone: str, num_classes: int, input_size: int, encoder_weights=None,
                downsample_factor: int = 8, log=print):
    """Any segmentation_models architecture with any backbone, ending in a float32 softmax.

    The softmax is a separate float32 layer so that under mixed precision the probabilities
    (and the loss) stay in float32. If the ImageNet encoder weights cannot be downloaded,
    one line says so and the model starts from random initialisation.
    """
    check_input_size(arch, input_size, downsample_factor)
    kwargs = {"downsample_factor": downsample_factor} if arch == "pspnet" else {}

    def make(weights):
        return SM_MODELS[arch](backbone, input_shape=(input_size, input_size, 3), classes=num_classes,
                               activation=None, encoder_weights=weights, **kwargs)

    try:
        base = make(encoder_weights)
    except Exception as error:  # keras' get_file raises plain Exceptions
        if not (encoder_weights and _download_failed(error)):
            raise
        log(f"{encoder_weights} weights for {backbone} could not be downloaded ({_first_line(error)}); "
            f"training {arch} from random initialisation.")
        base = make(None)
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(base.output)
    return keras.Model(base.input, probabilities, name=f"{arch}_{backbone}")


def _download_failed(error: Exception) -> bool:
    """No network, an HTTP error, or a file that failed its checksum (a proxy's error page)."""
    return isinstance(error, OSError) or any(s in str(error).lower() for s in ("fetch failure", "corrupted file"))


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__


def choose_strategy(kind: str = "auto"):
    """TPU when present, MirroredStrategy over several GPUs, else the default strategy.

    ``mirrored`` forces MirroredStrategy over every GPU, or over the logical CPU devices
    when there is none (how the multi-replica path is tested without a GPU).
    """
    if kind == "auto" and tf.config.list_logical_devices("TPU"):
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def set_precision(setting: str) -> str:
    """``mixed_float16`` on GPUs (a T4's tensor cores), ``float32`` elsewhere."""
    on = setting == "on" or (setting == "auto" and bool(tf.config.list_physical_devices("GPU")))
    policy = "mixed_float16" if on else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def make_loss(kind: str, class_weights):
    """Dice (+ focal or cross-entropy); weights scaled to mean 1 so Dice loss stays in [0, 1]."""
    weights = np.asarray(class_weights, np.float32)
    weights = weights / weights.mean()
    dice = sm.losses.DiceLoss(class_weights=weights)
    if kind == "dice+focal":
        return dice + sm.losses.CategoricalFocalLoss()
    if kind == "dice+crossentropy":
        return dice + sm.losses.CategoricalCELoss(class_weights=weights)
    return dice


def metrics():
    return [sm.metrics.IOUScore(threshold=0.5), sm.metrics.FScore(threshold=0.5)]


def _schedule(cfg):
    if cfg.train.schedule == "cosine":
        base, epochs = cfg.train.learning_rate, cfg.train.epochs
        return keras.callbacks.LearningRateScheduler(lambda epoch: base * 0.5 * (1 + math.cos(math.pi * epoch / epochs)))
    return keras.callbacks.ReduceLROnPlateau(monitor=MONITOR, mode="max", factor=0.5, patience=2, min_lr=1e-6)


def _logged_epochs(csv_path: Path) -> list[dict]:
    if not csv_path.exists():
        return []
    with open(csv_path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def train_model(arch: str, cfg, run: RunDir, class_weights, strategy=None, extra_callbacks=(), log=print) -> dict:
    """Train one architecture; write ``models/ARCH.keras`` and ``history/ARCH.json``; return a summary."""
    manifest = data_loading.load_manifest(run)
    num_classes, size = len(manifest["classes"]), manifest["image_size"]
    strategy = strategy or choose_strategy(cfg.train.strategy)
    global_batch = cfg.train.batch_size * strategy.num_replicas_in_sync
    norm = pipeline.encoder_normalization(cfg.model.backbone)
    train_images, train_masks = data_loading.split_paths(run, manifest, "train")
    if len(train_images) < global_batch:
        raise ConfigError(f"{len(train_images)} training samples cannot fill one batch of {global_batch}; "
                          f"lower train.batch_size")
    train = pipeline.make_dataset(train_images, train_masks, num_classes, norm, global_batch, training=True,
                                  augment=cfg.data.augment, seed=cfg.seed, repeat=cfg.train.steps_per_epoch is not None)
    val = pipeline.make_dataset(*data_loading.split_paths(run, manifest, "val"), num_classes, norm, global_batch)

    state_dir = run.path("train_state", arch)
    log_csv = run.path("history", f"{arch}.csv")
    best_weights = run.path("checkpoints", arch, "best")  # TF checkpoint format: HDF5 fails under MirroredStrategy
    resumed = state_dir.exists() and any(state_dir.iterdir())
    if not resumed:  # a fresh start: an old log or checkpoint would mix two trainings
        log_csv.unlink(missing_ok=True)
        shutil.rmtree(best_weights.parent, ignore_errors=True)
    for folder in (state_dir, log_csv.parent, best_weights.parent):
        folder.mkdir(parents=True, exist_ok=True)
    best_so_far = max((row[MONITOR] for row in _logged_epochs(log_csv)), default=None)

    with strategy.scope():
        model = build_model(arch, cfg.model.backbone, num_classes, size, cfg.model.encoder_weights,
                            cfg.model.pspnet_downsample_factor, log=log)
        model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate),
                      loss=make_loss(cfg.train.loss, class_weights), metrics=metrics())
    callbacks = [
        keras.callbacks.BackupAndRestore(str(state_dir)),
        keras.callbacks.ModelCheckpoint(str(best_weights), monitor=MONITOR, mode="max", save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=best_so_far),
        keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.train.early_stopping_patience),
        keras.callbacks.CSVLogger(str(log_csv), append=True),
        keras.callbacks.TensorBoard(str(run.path("tensorboard", arch)), histogram_freq=0, profile_batch=0),
        _schedule(cfg),
        *extra_callbacks,
    ]
    start = time.perf_counter()
    model.fit(train, validation_data=val, epochs=cfg.train.epochs, steps_per_epoch=cfg.train.steps_per_epoch,
              callbacks=callbacks, verbose=2)
    seconds = time.perf_counter() - start
    if best_weights.with_suffix(".index").exists():
        model.load_weights(str(best_weights)).expect_partial()
    export = keras.Model(model.inputs, model.outputs)  # uncompiled: no optimizer state in the export
    model_path = run.path("models", f"{arch}.keras")
    atomic_file(model_path, lambda tmp: export.save(str(tmp)))  # tmp ends in .keras, as Keras requires
    info = {"architecture": arch, "backbone": cfg.model.backbone, "classes": manifest["classes"],
            "colors": manifest["colors"], "normalization": norm, "input_size": size,
            "pixel_scale": manifest["pixel_scale"]}
    write_json(model_path.with_suffix(".json"), info)  # what prediction needs, beside the model
    epochs = _logged_epochs(log_csv)
    summary = {
        **info, "model": f"models/{arch}.keras", "epochs": len(epochs), "resumed": resumed,
        "seconds": round(seconds, 1), "replicas": strategy.num_replicas_in_sync, "global_batch_size": global_batch,
        "precision": keras.mixed_precision.global_policy().name,
        "best_val_iou": max((e[MONITOR] for e in epochs), default=None),
    }
    write_json(run.path("history", f"{arch}.json"), {"summary": summary, "epochs": epochs})
    return summary


def train_all(cfg, run: RunDir, log=print) -> dict:
    """Train every configured architecture in turn and record the step."""
    size = data_loading.load_manifest(run)["image_size"]
    for arch in cfg.model.architectures:  # all sizes checked before the first model trains
        check_input_size(arch, size, cfg.model.pspnet_downsample_factor)
    weights = load_class_weights(run)["weights"]
    run.start("training")
    set_precision(cfg.train.mixed_precision)
    strategy = choose_strategy(cfg.train.strategy)
    summaries = {}
    for arch in cfg.model.architectures:
        log(f"--- {arch} ({cfg.model.backbone}) ---")
        summaries[arch] = train_model(arch, cfg, run, weights, strategy, log=log)
    write_json(run.path("training.json"), summaries)
    outputs = {"summary": "training.json"}
    outputs.update({f"model_{a}": s["model"] for a, s in summaries.items()})
    outputs.update({f"model_info_{a}": f"models/{a}.json" for a in summaries})
    outputs.update({f"history_{a}": f"history/{a}.json" for a in summaries})
    run.record("training", outputs, config=cfg, inputs=("data", "class_weights"))
    return summaries


def load_model(path):
    """A saved model, ready to predict (``compile=False``: sm's losses need not be found)."""
    return keras.models.load_model(str(path), compile=False)


def load_training(run: RunDir) -> dict:
    return read_json(run.output("training", "summary"))


def curves_figure(run: RunDir, architectures):
    """Loss and validation IoU per epoch for every architecture, on one figure."""
    import matplotlib.pyplot as plt

    fig, (loss_ax, iou_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for arch in architectures:
        epochs = read_json(run.path("history", f"{arch}.json"))["epochs"]
        x = [int(e["epoch"]) + 1 for e in epochs]
        line, = loss_ax.plot(x, [e["loss"] for e in epochs], label=f"{arch} train")
        loss_ax.plot(x, [e["val_loss"] for e in epochs], "--", color=line.get_color(), label=f"{arch} val")
        iou_ax.plot(x, [e["iou_score"] for e in epochs], color=line.get_color(), label=f"{arch} train")
        iou_ax.plot(x, [e[MONITOR] for e in epochs], "--", color=line.get_color(), label=f"{arch} val")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss (solid: train, dashed: validation)")
    iou_ax.set(xlabel="epoch", ylabel="IoU", title="IoU (solid: train, dashed: validation)", ylim=(0, 1))
    iou_ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
