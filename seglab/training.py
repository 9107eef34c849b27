"""Step 03: build and train U-Net, FPN, PSPNet, UNet++ and DeepLabV3+ (and LinkNet) with one function each.

Training runs inside a ``tf.distribute`` strategy, with mixed precision on GPUs, and keeps
its state in the run folder so that a notebook cut off mid-training (a Colab disconnect)
resumes from the last finished epoch when it is run again.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seglab import architectures, class_weights, data_loading, pipeline, planning
from seglab.artifacts import MissingInput, RunDir, atomic_file, read_json, write_json
from seglab.backend import keras, sm, tf
from seglab.config import check_input_size

SM_MODELS = {"unet": sm.Unet, "fpn": sm.FPN, "pspnet": sm.PSPNet, "linknet": sm.Linknet}
MONITOR = "val_mean_iou"


def needs_adapter(channels: int, encoder_weights) -> bool:
    """Pretrained encoder weights expect 3 channels: other counts are mapped to 3 by a learned 1x1 convolution."""
    return bool(encoder_weights) and channels != 3


def build_model(arch: str, backbone: str, num_classes: int, input_size: int, encoder_weights=None,
                downsample_factor: int = 8, batchnorm_momentum: float = 0.9, log=print, channels: int = 3,
                adapter: bool | None = None):
    """Any architecture of ``config.ARCHITECTURES`` with any backbone, ending in a float32 softmax.

    U-Net, FPN, PSPNet and LinkNet come from segmentation_models, UNet++ and DeepLabV3+
    from :mod:`seglab.architectures`, on the same encoders. The softmax is a separate float32 layer so that under mixed precision the probabilities
    (and the loss) stay in float32. If the ImageNet encoder weights cannot be downloaded,
    one line says so and the model starts from random initialisation.

    ``channels`` other than 3 go through ``channel_adapter``, a learned 1x1 convolution to the 3
    channels an ImageNet encoder expects, when ``adapter`` (default: :func:`needs_adapter`); from
    scratch the encoder takes them directly. The structure follows the config, not the download.

    Batch normalisation's moving statistics, which predictions use, follow the batches with
    ``batchnorm_momentum``: Keras' 0.99 leaves them far from the batches' for the first few
    hundred steps, so a model that trains well predicts one class on validation; 0.9 is
    PyTorch's default (its ``momentum=0.1``), which segmentation_models.pytorch trains with.
    """
    check_input_size(arch, input_size, downsample_factor)
    kwargs = {"downsample_factor": downsample_factor} if arch == "pspnet" else {}
    adapter = needs_adapter(channels, encoder_weights) if adapter is None else adapter
    shape = (input_size, input_size, 3 if adapter else channels)

    def make(weights):
        if arch in architectures.BUILDERS:
            return architectures.BUILDERS[arch](backbone, shape, num_classes, weights)
        return SM_MODELS[arch](backbone, input_shape=shape, classes=num_classes,
                               activation=None, encoder_weights=weights, **kwargs)

    try:
        base = make(encoder_weights)
    except Exception as error:  # keras' get_file raises plain Exceptions
        if not (encoder_weights and _download_failed(error)):
            raise
        log(f"{encoder_weights} weights for {backbone} could not be downloaded ({_first_line(error)}); "
            f"training {arch} from random initialisation.")
        base = make(None)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = batchnorm_momentum
    inputs, outputs = base.input, base.output
    if adapter:
        inputs = keras.Input((input_size, input_size, channels), name="images")
        outputs = base(keras.layers.Conv2D(3, 1, name="channel_adapter")(inputs))
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(outputs)
    return keras.Model(inputs, probabilities, name=f"{arch}_{backbone}")


def _download_failed(error: Exception) -> bool:
    """No network, an HTTP error, or a file that failed its checksum (a proxy's error page)."""
    return isinstance(error, OSError) or any(s in str(error).lower() for s in ("fetch failure", "corrupted file"))


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__


def choose_strategy(kind: str = "auto"):
    """TPU when present, MirroredStrategy over several GPUs, else the default strategy.

    ``mirrored`` forces MirroredStrategy over every GPU, or over the logical CPU devices
    when there is none (how the multi-replica path is tested without a GPU).
    ``multi_worker`` trains on several machines with MultiWorkerMirroredStrategy: the ``TF_CONFIG``
    environment variable names the cluster and this machine's task. It must be created before
    any other TensorFlow operation of the process, so each process calls this once.
    """
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
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
    """Dice (+ focal or cross-entropy); weights scaled to mean 1 so Dice loss stays in [0, 1].

    Ignored pixels arrive as all-zero one-hot rows; zeroing the prediction there too
    takes them out of every term (Dice would otherwise count them as false positives).
    """
    weights = np.asarray(class_weights, np.float32)
    weights = weights / weights.mean()
    dice = sm.losses.DiceLoss(class_weights=weights)
    if kind == "dice+focal":
        loss = dice + sm.losses.CategoricalFocalLoss()
    elif kind == "dice+crossentropy":
        loss = dice + sm.losses.CategoricalCELoss(class_weights=weights)
    else:
        loss = dice

    def masked_loss(y_true, y_pred):
        labelled = tf.reduce_sum(y_true, axis=-1, keepdims=True)
        return loss(y_true, y_pred * tf.cast(labelled, y_pred.dtype))

    masked_loss.__name__ = kind.replace("+", "_")
    return masked_loss


class MeanIoU(keras.metrics.Metric):
    """Dataset-level mean IoU of the argmax, from one confusion matrix per epoch, as notebook 04 scores.

    segmentation_models' ``IOUScore`` thresholds each class's probability, averages over
    batches and scores a class absent from a batch as about 1; choosing checkpoints by it
    need not choose the model with the best reported score. Ignored pixels (all-zero
    one-hot rows) are left out; the mean is over classes present in the truth.
    """

    def __init__(self, num_classes: int, name: str = "mean_iou", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.confusion = self.add_weight("confusion", shape=(num_classes, num_classes), initializer="zeros",
                                         dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labelled = tf.reduce_sum(y_true, axis=-1) > 0
        truth = tf.boolean_mask(tf.argmax(y_true, axis=-1), labelled)
        predicted = tf.boolean_mask(tf.argmax(y_pred, axis=-1), labelled)
        self.confusion.assign_add(tf.math.confusion_matrix(truth, predicted, self.num_classes, dtype=tf.float64))

    def result(self):
        tp = tf.linalg.diag_part(self.confusion)
        truth, predicted = tf.reduce_sum(self.confusion, 1), tf.reduce_sum(self.confusion, 0)
        iou = tf.math.divide_no_nan(tp, truth + predicted - tp)
        present = truth > 0
        return tf.math.divide_no_nan(tf.reduce_sum(tf.boolean_mask(iou, present)),
                                     tf.cast(tf.math.count_nonzero(present), tf.float64))

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def _schedule(cfg):
    if cfg.train.schedule == "cosine":
        return CosineDecay(cfg.train.learning_rate, cfg.train.epochs, cfg.train.time_budget_minutes)  # epochs resolved
    return keras.callbacks.ReduceLROnPlateau(monitor=MONITOR, mode="max", factor=0.5, patience=2, min_lr=1e-6)


class CosineDecay(keras.callbacks.Callback):
    """Cosine decay from ``base`` to 0 over whichever ends training first: the epochs or the time budget.

    With a time budget the decay follows the training wall time, batch by batch, so the last
    minutes run at a small learning rate however many epochs the machine manages.
    """

    def __init__(self, base: float, epochs: int, minutes: float | None = None):
        super().__init__()
        self.base, self.epochs, self.seconds = base, epochs, minutes * 60 if minutes else None
        self.epoch = 0

    def progress(self) -> float:
        by_epoch = self.epoch / self.epochs
        by_time = (time.perf_counter() - self.start) / self.seconds if self.seconds else 0.0
        return min(1.0, max(by_epoch, by_time))

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        keras.backend.set_value(self.model.optimizer.learning_rate,
                                self.base * 0.5 * (1 + math.cos(math.pi * self.progress())))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(keras.backend.get_value(self.model.optimizer.learning_rate))


class TimeBudget(keras.callbacks.Callback):
    """Stop after ``minutes`` of training wall time, mid-epoch if need be.

    Keras still validates the cut epoch, so checkpointing and the history see it like any
    other; comparing recipes "at the same budget" means this budget.
    """

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.start > self.seconds:
            self.model.stop_training = True


def _logged_epochs(csv_path: Path) -> list[dict]:
    if not csv_path.exists():
        return []
    with open(csv_path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@dataclass
class Plan:
    """Everything ``model.fit`` needs for one architecture besides the model itself."""
    arch: str
    num_classes: int
    input_size: int
    channels: int
    normalization: dict
    train: object
    val: object
    callbacks: list
    resumed: bool
    global_batch_size: int
    replicas: int
    paths: dict


def fingerprint(arch: str, cfg, run: RunDir) -> dict:
    """What a training state depends on: the dataset and class weights it read, and its settings."""
    steps = run.manifest()["steps"]
    return {"arch": arch, "data": steps.get("data", {}).get("id"), "class_weights": steps.get("class_weights", {}).get("id"),
            "model": dataclasses.asdict(cfg.model), "train": dataclasses.asdict(cfg.train),
            "augment": cfg.data.augment, "seed": cfg.seed}


def rare_classes(manifest: dict, cfg, log=print) -> list[int]:
    """The classes ``train.sampling: rare`` forces into each batch (``class_weights.rare_classes``), named."""
    pixels = np.asarray(manifest["splits"]["train"]["pixels"])
    rare = class_weights.rare_classes(pixels, cfg.train.rare_threshold)
    names = ", ".join(f"{manifest['classes'][c]} ({pixels[c] / pixels.sum():.2%})" for c in rare)
    log(f"rare classes (under {cfg.train.rare_threshold:.0%} of the training pixels, else the rarest): {names}; "
        f"{cfg.train.rare_share:.0%} of every batch is drawn to hold one")
    return rare


def prepare(arch: str, cfg, run: RunDir, strategy, extra_callbacks=(), log=print) -> Plan:
    """Input pipelines, callbacks and the resume decision for one architecture; ``cfg`` with its
    auto settings resolved (:func:`planning.resolve`).

    Training resumes from ``train_state/ARCH`` only when that state was saved for the same
    dataset, class weights and settings; otherwise it starts fresh and says so.
    On a cluster only the chief writes to the run folder; the other workers read it (the same
    resume decision and best score, so that every worker saves checkpoints at the same epochs,
    which all of them must take part in) and Keras sends their checkpoints to temporary folders.
    """
    chief = strategy.extended.should_checkpoint  # False only on a multi_worker worker that is not the chief
    if chief:
        run.start("training")  # its outputs are being rewritten: the old record is not to be trusted meanwhile
    manifest = data_loading.load_manifest(run)
    num_classes, size = len(manifest["classes"]), manifest["image_size"]
    replicas = strategy.num_replicas_in_sync
    norm = pipeline.input_normalization(manifest["image"], cfg.model.backbone)
    crops = cfg.data.train_tiles == "random_crops"  # of the full-size training images, instead of the tiles
    if crops and "train-originals" not in manifest["shards"]:
        raise MissingInput("Run notebook 01 again: data.train_tiles=random_crops crops the full-size training images, "
                           "which its dataset/ does not keep.")
    # read every epoch: from the local disk when the run folder is on Drive
    shards = {split: data_loading.local_shards(run, data_loading.split_shards(run, manifest, split, originals),
                                               log=lambda _: None) for split, originals in (("train", crops), ("val", False))}
    batch = data_loading.fit_batch_size(manifest["splits"]["train"]["items"], cfg.train.batch_size, replicas, log=log)
    items = {split: manifest["splits"][split]["items"] for split in shards}
    records = manifest["splits"]["train"]["sources"] if crops else items["train"]
    rare = rare_classes(manifest, cfg, log) if cfg.train.sampling == "rare" else []
    train = pipeline.make_dataset(shards["train"], num_classes, norm, batch * replicas, training=True, items=records,
                                  size=size, augment=cfg.data.augment, seed=cfg.seed,
                                  repeat=cfg.train.steps_per_epoch is not None, crop=size if crops else None,
                                  crops_per_image=round(items["train"] / records), rare=rare,
                                  rare_share=cfg.train.rare_share, image=manifest["image"])
    val = pipeline.make_dataset(shards["val"], num_classes, norm, batch * replicas, items=items["val"], size=size,
                                pad_to=batch * replicas if replicas > 1 else None, image=manifest["image"])

    paths = {"state": run.path("train_state", arch), "fingerprint": run.path("train_state", f"{arch}.json"),
             "log": run.path("history", f"{arch}.csv"),
             "best": run.path("checkpoints", arch, "best")}  # TF checkpoint format: HDF5 fails under MirroredStrategy
    current = fingerprint(arch, cfg, run)
    saved = read_json(paths["fingerprint"]) if paths["fingerprint"].exists() else None
    has_state = paths["state"].exists() and any(paths["state"].iterdir())
    resumed = has_state and saved == current
    if has_state and not resumed:
        log(f"{arch}: the saved training state is from another dataset, class weights or settings; starting fresh.")
    if chief and not resumed:  # a fresh start: an old state, log or checkpoint would mix two trainings
        shutil.rmtree(paths["state"], ignore_errors=True)
        paths["log"].unlink(missing_ok=True)
        shutil.rmtree(paths["best"].parent, ignore_errors=True)
        write_json(paths["fingerprint"], current)
    if chief:
        for folder in (paths["state"], paths["log"].parent, paths["best"].parent):
            folder.mkdir(parents=True, exist_ok=True)
    best_so_far = max((row[MONITOR] for row in _logged_epochs(paths["log"])), default=None)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(paths["state"])),
        keras.callbacks.ModelCheckpoint(str(paths["best"]), monitor=MONITOR, mode="max", save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=best_so_far),
        *([keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.train.early_stopping_patience)]
          if cfg.train.early_stopping_patience else []),
        _schedule(cfg),  # before the loggers, which then record the epoch's learning rate
        *([keras.callbacks.CSVLogger(str(paths["log"]), append=True)] if chief else []),  # Keras would not move it aside
        keras.callbacks.TensorBoard(str(run.path("tensorboard", arch)), histogram_freq=0, profile_batch=0),
        *([TimeBudget(cfg.train.time_budget_minutes)] if cfg.train.time_budget_minutes else []),
        *extra_callbacks,
    ]
    return Plan(arch, num_classes, size, manifest["image"]["channels"], norm, train, val, callbacks, resumed,
                batch * replicas, replicas, paths)


def export_float32(model, arch: str, cfg, num_classes: int, input_size: int):
    """The trained weights in a float32 model without optimizer state, whatever policy trained them.

    A model trained under ``mixed_float16`` would otherwise be saved with float16 layers
    and predict slowly in float16 on a laptop CPU.
    """
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        export = build_model(arch, cfg.model.backbone, num_classes, input_size, None, cfg.model.pspnet_downsample_factor,
                             channels=model.input_shape[-1],
                             adapter=any(layer.name == "channel_adapter" for layer in model.layers))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    export.set_weights(model.get_weights())
    return export


def finish(model, plan: Plan, cfg, run: RunDir, seconds: float) -> dict:
    """Keep the best epoch's weights, save them as ``models/ARCH.keras`` with its sidecar, and summarise.

    On a cluster every worker loads the chief's best checkpoint, once the chief has written it,
    and reads the weights (batch-norm statistics are averaged over the workers, which all take
    part); only the chief writes the model and its history.
    """
    arch, strategy = plan.arch, model.distribute_strategy
    strategy.reduce("SUM", strategy.run(tf.function(lambda: tf.constant(1))), axis=None)  # a barrier: fit is over everywhere
    if plan.paths["best"].with_suffix(".index").exists():
        model.load_weights(str(plan.paths["best"])).expect_partial()
    manifest = data_loading.load_manifest(run)
    export = export_float32(model, arch, cfg, plan.num_classes, plan.input_size)
    info = {"architecture": arch, "backbone": cfg.model.backbone, "classes": manifest["classes"],
            "colors": manifest["colors"], "normalization": plan.normalization,
            "input_size": plan.input_size, "pixel_scale": manifest["pixel_scale"],
            "image": {key: manifest["image"][key] for key in ("channels", "dtype", "intensity")}}
    epochs = _logged_epochs(plan.paths["log"])
    summary = {
        **info, "model": f"models/{arch}.keras", "epochs": len(epochs), "resumed": plan.resumed,
        "seconds": round(seconds, 1), "replicas": plan.replicas, "global_batch_size": plan.global_batch_size,
        "precision": keras.mixed_precision.global_policy().name,
        "best_val_mean_iou": max((e[MONITOR] for e in epochs), default=None),
    }
    if not strategy.extended.should_checkpoint:
        return summary
    model_path = run.path("models", f"{arch}.keras")
    atomic_file(model_path, lambda tmp: export.save(str(tmp)))  # tmp ends in .keras, as Keras requires
    write_json(model_path.with_suffix(".json"), info)  # what prediction needs, beside the model
    write_json(run.path("history", f"{arch}.json"), {"summary": summary, "epochs": epochs})
    return summary


def train_model(arch: str, cfg, run: RunDir, class_weights, strategy=None, extra_callbacks=(), log=print) -> dict:
    """Notebook 03's cells for one architecture in one call (tests and benchmarks use it)."""
    cfg = planning.resolve(cfg, data_loading.load_manifest(run)["plan"])
    strategy = strategy or choose_strategy(cfg.train.strategy)
    plan = prepare(arch, cfg, run, strategy, extra_callbacks, log)
    with strategy.scope():
        model = build_model(arch, cfg.model.backbone, plan.num_classes, plan.input_size, cfg.model.encoder_weights,
                            cfg.model.pspnet_downsample_factor, cfg.model.batchnorm_momentum, log=log,
                            channels=plan.channels)
        model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate),
                      loss=make_loss(cfg.train.loss, class_weights), metrics=[MeanIoU(plan.num_classes)])
    start = time.perf_counter()
    model.fit(plan.train, validation_data=plan.val, epochs=cfg.train.epochs, steps_per_epoch=cfg.train.steps_per_epoch,
              callbacks=plan.callbacks, verbose=2)
    return finish(model, plan, cfg, run, time.perf_counter() - start)


def train_as_worker(cfg, run: RunDir, log=print) -> None:
    """A ``multi_worker`` worker other than the chief: notebook 03's training steps, and nothing else.

    The chief runs notebook 03 and writes the run folder; every other worker must run the
    same collective steps (creating the variables, each batch, each checkpoint), so it runs
    the notebook's cells through :func:`train_model`, without the figures and the record.
    """
    from seglab import class_weights

    weights = class_weights.load_class_weights(run)["weights"]  # before the strategy: a missing input fails at once
    set_precision(cfg.train.mixed_precision)
    strategy = choose_strategy(cfg.train.strategy)
    log(f"worker {strategy.cluster_resolver.task_id} of a cluster of {strategy.num_replicas_in_sync} replicas")
    for arch in cfg.model.architectures:
        summary = train_model(arch, cfg, run, weights, strategy, log=log)
        log(f"{arch}: {summary['replicas']} replicas trained for {summary['seconds']} s; the chief saved the model")


def record(cfg, run: RunDir, summaries: dict) -> None:
    """Register step 03 once every architecture is trained and saved."""
    write_json(run.path("training.json"), summaries)
    outputs = {"summary": "training.json"}
    outputs.update({f"model_{a}": s["model"] for a, s in summaries.items()})
    outputs.update({f"model_info_{a}": f"models/{a}.json" for a in summaries})
    outputs.update({f"history_{a}": f"history/{a}.json" for a in summaries})
    run.record("training", outputs, config=cfg, inputs=("data", "class_weights"))


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
        iou_ax.plot(x, [e["mean_iou"] for e in epochs], color=line.get_color(), label=f"{arch} train")
        iou_ax.plot(x, [e[MONITOR] for e in epochs], "--", color=line.get_color(), label=f"{arch} val")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss (solid: train, dashed: validation)")
    iou_ax.set(xlabel="epoch", ylabel="mean IoU", title="Mean IoU (solid: train, dashed: validation)", ylim=(0, 1))
    iou_ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
