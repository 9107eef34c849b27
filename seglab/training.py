"""Step 03: train each architecture, with the Keras calls every training has, in one function.

:func:`train_model` builds the network (:func:`seglab.models.build_model`, inside the
``tf.distribute`` strategy's scope), compiles it with Adam, the loss of :mod:`seglab.losses`
and the dataset-level :class:`~seglab.metrics.MeanIoU`, and fits it on the tf.data pipelines
of :mod:`seglab.pipeline` with the callbacks of :func:`callbacks`. Notebook 03 and every
worker of a cluster call this one function. Training writes its state to the run folder every
``train.backup_minutes``, so a notebook cut off mid-training (a Colab disconnect) resumes from
the last state written when it is run again.
"""
from __future__ import annotations

import csv
import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seglab import devices, losses, metrics, models, planning, stats
from seglab.backend import keras, tf
from seglab.atomic import atomic_dir, write_text
from seglab.callbacks import BestWeights, CosineDecay, EpochLine, PeriodicBackup, TimeBudget
from seglab.normalization import input_normalization
from seglab.pipeline import MIRROR_AXES, Batching, SplitData, fit_batch_size, make_dataset
from seglab.jsonrecord import FileStamp, MissingInput
from seglab.records import (ClassWeights, DatasetRecord, History, ModelCard, Normalization, ResumeKey, TrainingRecord,
                            TrainingSummary)
from seglab.rundir import RunDir, Step
from seglab.shards import split_files

MONITOR = "val_mean_iou"
SNAPSHOT = "with-state-of-epoch-"  # checkpoints/ARCH/with-state-of-epoch-E/best.npz: the best weights then


@dataclass
class TrainingSetup:
    """Everything ``model.fit`` needs for one architecture besides the model itself."""
    spec: models.ModelSpec
    card: ModelCard  # saved beside the model
    train: object  # tf.data.Dataset
    val: object
    callbacks: list
    resumed: bool
    global_batch_size: int
    replicas: int
    paths: dict


def resume_key(arch: str, cfg, step: Step) -> ResumeKey:
    """What a training state depends on: the dataset and class weights it read, and its settings."""
    return ResumeKey(arch, step.inputs.get("data"), step.inputs.get("class_weights"), dataclasses.asdict(cfg.model),
                     dataclasses.asdict(cfg.train), cfg.data.augment, cfg.seed)


def rare_classes(dataset: DatasetRecord, cfg, log=print) -> list[int]:
    """The classes ``train.sampling: rare`` forces into each batch (``stats.rare_classes``), named."""
    pixels = np.asarray(dataset.splits["train"].pixels)
    rare = stats.rare_classes(pixels, cfg.train.rare_threshold)
    names = ", ".join(f"{dataset.classes[c]} ({pixels[c] / pixels.sum():.2%})" for c in rare)
    log(f"rare classes (under {cfg.train.rare_threshold:.0%} of the training pixels, else the rarest): {names}; "
        f"{cfg.train.rare_share:.0%} of every batch is drawn to hold one")
    return rare


def pipelines(dataset: DatasetRecord, cfg, run: RunDir, norm: Normalization, batch: int, replicas: int, log=print):
    """The training and validation ``tf.data`` pipelines; the shards read from the local disk on Colab."""
    crops = cfg.data.train_tiles == "random_crops"  # of the full-size training images, instead of the tiles
    if crops and "train-originals" not in dataset.shards:
        raise MissingInput("Run notebook 01 again: data.train_tiles=random_crops crops the full-size training images, "
                           "which its dataset/ does not keep.")
    train_files = split_files(run, dataset, "train", crops, log=lambda _: None)
    val_files = split_files(run, dataset, "val", log=lambda _: None)
    n, splits, size = len(dataset.classes), dataset.splits, dataset.image_size
    records = splits["train"].sources if crops else splits["train"].items
    rare = tuple(rare_classes(dataset, cfg, log)) if cfg.train.sampling == "rare" else ()
    train = SplitData(train_files, dataset.images, n, records, size)
    train_batching = Batching(batch * replicas, training=True, augment=cfg.data.augment, seed=cfg.seed,
                              repeat=cfg.train.steps_per_epoch is not None, crop=size if crops else None,
                              crops_per_image=round(splits["train"].items / records), rare=rare,
                              rare_share=cfg.train.rare_share)
    val = SplitData(val_files, dataset.images, n, splits["val"].items, size)
    # padded with ignored samples to whole batches: a last partial batch would make Keras trace test_function twice
    # (once per batch shape), and on several replicas leave one replica an empty batch
    val_batching = Batching(batch * replicas, pad_to=batch * replicas)
    return make_dataset(train, norm, train_batching), make_dataset(val, norm, val_batching)


def _logged_epochs(csv_path: Path) -> list[dict]:
    if not csv_path.exists():
        return []
    with open(csv_path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _state_paths(run: RunDir, arch: str) -> dict:
    return {"state": run.path("train_state", arch), "key": run.path(ResumeKey.where(arch)),
            "log": run.path("history", f"{arch}.csv"), "best": run.path("checkpoints", arch)}


def backed_up_epoch(state: Path) -> int | None:
    """The epoch after which Keras' ``BackupAndRestore`` last wrote the training state in ``state``, as Keras reads
    it back (its ``chief/`` checkpoint's ``ckpt_saved_epoch``); None when it wrote none."""
    latest = tf.train.latest_checkpoint(str(Path(state) / "chief"))
    if latest is None:
        return None
    return int(tf.train.load_checkpoint(latest).get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))


def write_best(paths: dict, epoch: int, best: BestWeights) -> None:
    """Write the best weights so far, as they are when the state of ``epoch`` is about to be written, to
    ``checkpoints/ARCH/with-state-of-epoch-E/best.npz``; of the earlier ones only the state on disk's is kept
    (until the new state is written, it is the one a resume reads)."""
    with atomic_dir(paths["best"] / f"{SNAPSHOT}{epoch}") as folder:
        if best.weights is not None:
            np.savez(folder / "best.npz", np.float64(best.best), *best.weights)
    keep = {f"{SNAPSHOT}{epoch}", f"{SNAPSHOT}{backed_up_epoch(paths['state'])}"}
    for old in paths["best"].glob(SNAPSHOT + "*"):
        if old.name not in keep:
            shutil.rmtree(old)


def best_at_state(paths: dict) -> tuple[float | None, list | None]:
    """The best score and weights written with the training state about to be resumed; (None, None) without one."""
    epoch = backed_up_epoch(paths["state"])
    saved = paths["best"] / f"{SNAPSHOT}{epoch}" / "best.npz"
    if epoch is None or not saved.exists():
        return None, None
    with np.load(saved) as arrays:
        score, *weights = (arrays[f"arr_{i}"] for i in range(len(arrays.files)))
    return float(score), weights


def _roll_back_to_state(arch: str, paths: dict, log=print) -> None:
    """Make the history agree with the training state about to be resumed: the epochs trained after it was
    written are dropped from ``history/ARCH.csv`` (they are trained again; the best weights go back with
    :func:`best_at_state`)."""
    epoch = backed_up_epoch(paths["state"])  # None: cut off before its first state was complete
    last = -1 if epoch is None else epoch
    lines = paths["log"].read_text().splitlines(keepends=True) if paths["log"].exists() else []
    kept = lines[:1] + [line for line in lines[1:] if int(float(line.split(",")[0])) <= last]
    if len(kept) < len(lines):
        written = "no training state was written" if epoch is None else \
            f"the training state was written after epoch {epoch + 1}"
        log(f"{arch}: {written}; the {len(lines) - len(kept)} epoch(s) trained since are trained again")
        write_text(paths["log"], "".join(kept))


def _move_aside(run: RunDir, arch: str, log=print) -> None:
    """Move an earlier training of ``arch`` (model, card, history, state, checkpoint) to ``previous/STAMP-ARCH/``,
    and say so: a fresh start neither mixes two trainings nor deletes the earlier one."""
    parts = [f"models/{arch}{models.MODEL_SUFFIX}", ModelCard.where(arch), f"history/{arch}.csv", History.where(arch),
             f"train_state/{arch}", ResumeKey.where(arch), f"checkpoints/{arch}"]
    found = [rel for rel in parts if run.path(rel).exists()]
    if not found:
        return
    folder = Path("previous") / f"{time.strftime('%Y%m%d-%H%M%S')}-{arch}"
    for rel in found:
        run.path(folder, rel).parent.mkdir(parents=True, exist_ok=True)
        run.path(rel).rename(run.path(folder, rel))
    log(f"{arch}: the earlier training ({', '.join(found)}) is kept in {folder}/ (delete it when you no longer need it)")


def _resume_or_start(arch: str, cfg, step: Step, chief: bool, log=print) -> tuple[dict, bool]:
    """Resume ``train_state/ARCH`` only when it was saved for the same dataset, class weights and settings;
    otherwise start fresh, and say so. Only the chief changes the run folder."""
    paths, current = _state_paths(step.run, arch), resume_key(arch, cfg, step)
    has_state = paths["state"].exists() and any(paths["state"].iterdir())
    try:
        saved = ResumeKey.load(paths["key"]) if paths["key"].exists() else None
    except MissingInput:
        saved = None
    resumed = has_state and saved == current
    if resumed:
        log(f"{arch}: resuming the training saved in train_state/{arch} (same dataset, class weights and settings)")
    if has_state and not resumed:
        log(f"{arch}: the saved training state is from another dataset, class weights or settings; starting fresh.")
    if chief and not resumed:  # a fresh start: an old state, log or checkpoint would mix two trainings
        _move_aside(step.run, arch, log)
        current.save(paths["key"])
    if chief and resumed:
        _roll_back_to_state(arch, paths, log)
    if chief:
        for folder in (paths["state"], paths["log"].parent, paths["best"]):
            folder.mkdir(parents=True, exist_ok=True)
    return paths, resumed


def verbosity(cfg) -> int:
    """``model.fit``'s verbose: 0 beside :class:`EpochLine`, which prints one line per epoch; on a cluster Keras'
    own line per epoch (2), since with EpochLine and verbose 0 the workers' collective steps went out of step
    (tests/test_multi_worker.py)."""
    return 2 if cfg.train.strategy == "multi_worker" else 0


def callbacks(arch: str, cfg, run: RunDir, paths: dict, chief: bool, resumed: bool, extra=(), log=print) -> list:
    """Keras' callbacks for one training, in the order they run; a resumed one starts from the best weights
    written with its state (on a cluster every worker must start from the same, see :func:`prepare`)."""
    best = BestWeights(MONITOR, *(best_at_state(paths) if resumed else (None, None)))
    train = cfg.train
    # on a cluster every worker writes the state at the same epochs (writing it reads the batch-norm statistics, a
    # collective step), so after every epoch, not by each worker's clock
    backup_minutes = 0 if train.strategy == "multi_worker" else train.backup_minutes
    return [
        best,
        CosineDecay(train.learning_rate, train.epochs, train.time_budget_minutes),  # before the loggers: they log lr
        *([keras.callbacks.CSVLogger(str(paths["log"]), append=True)] if chief else []),
        keras.callbacks.TensorBoard(str(run.path("tensorboard", arch)), histogram_freq=0, profile_batch=0),
        PeriodicBackup(str(paths["state"]), backup_minutes,  # after the best weights and the log it must agree with
                       (lambda epoch: write_best(paths, epoch, best)) if chief else (lambda epoch: None)),
        *([TimeBudget(train.time_budget_minutes)] if train.time_budget_minutes else []),
        *([EpochLine(arch, train.epochs, log)] if train.strategy != "multi_worker" else []),  # see train_model
        *extra,
    ]


def prepare(arch: str, cfg, step: Step, dataset: DatasetRecord, strategy, extra_callbacks=(),
            log=print) -> TrainingSetup:
    """Input pipelines, callbacks and the resume decision for one architecture; ``cfg`` with its
    auto settings resolved (:func:`planning.resolve`).

    On a cluster only the chief writes to the run folder; the other workers read it (the same
    resume decision and best weights, so that every worker reads its weights at the same epochs,
    which all of them must take part in) and Keras sends their training states to temporary folders.
    """
    chief = strategy.extended.should_checkpoint  # False only on a multi_worker worker that is not the chief
    replicas = strategy.num_replicas_in_sync
    norm = input_normalization(dataset.images, cfg.model.backbone)
    batch = fit_batch_size(dataset.splits["train"].items, cfg.train.batch_size, replicas, log=log)
    train, val = pipelines(dataset, cfg, step.run, norm, batch, replicas, log)
    paths, resumed = _resume_or_start(arch, cfg, step, chief, log)
    spec = models.ModelSpec.of(arch, cfg, dataset)
    return TrainingSetup(spec, models.card_for(spec, dataset, norm, MIRROR_AXES[cfg.data.augment]), train, val,
                         callbacks(arch, cfg, step.run, paths, chief, resumed, extra_callbacks, log), resumed,
                         batch * replicas, replicas, paths)


def finish(model, setup: TrainingSetup, step: Step, seconds: float) -> TrainingSummary:
    """Keep the best epoch's weights, save them as ``models/ARCH.keras`` with its card, and summarise.

    On a cluster every worker kept the same best weights (:class:`BestWeights` read them at the
    same epochs: batch-norm statistics are averaged over the workers, which all take part); only
    the chief writes the model and its history.
    """
    spec, strategy = setup.spec, model.distribute_strategy
    strategy.reduce("SUM", strategy.run(tf.function(lambda: tf.constant(1))), axis=None)  # a barrier: fit is over everywhere
    best = next(c for c in setup.callbacks if isinstance(c, BestWeights))
    if best.weights is not None:
        model.set_weights(best.weights)
    copy = models.float32_copy(model, spec)
    epochs = _logged_epochs(setup.paths["log"])
    summary = TrainingSummary(
        architecture=spec.arch, backbone=spec.backbone, model=f"models/{spec.arch}{models.MODEL_SUFFIX}",
        epochs=len(epochs), resumed=setup.resumed, seconds=round(seconds, 1), replicas=setup.replicas,
        global_batch_size=setup.global_batch_size, precision=keras.mixed_precision.global_policy().name,
        best_val_mean_iou=max((e[MONITOR] for e in epochs), default=None))
    if not strategy.extended.should_checkpoint:
        return summary
    for snapshot in setup.paths["best"].glob(SNAPSHOT + "*"):  # Keras removed the state they went with
        shutil.rmtree(snapshot)
    model_path = step.wrote(models.save_model(copy, step.run.path(summary.model)))
    step.save(dataclasses.replace(setup.card, model=FileStamp.of(model_path)), spec.arch)  # the card last: see ModelCard
    step.save(History(summary, epochs), spec.arch)
    return summary


def train_model(arch: str, cfg, step: Step, class_weights, strategy=None, extra_callbacks=(), log=print):
    """Build, compile and fit ``arch``, keep its best epoch and save it: notebook 03's work for one
    architecture, and a cluster worker's."""
    dataset = step.read(DatasetRecord)
    cfg = planning.resolve(cfg, dataset.decisions)
    strategy = strategy or devices.choose_strategy(cfg.train.strategy)
    setup = prepare(arch, cfg, step, dataset, strategy, extra_callbacks, log)
    with strategy.scope():
        model = models.build_model(setup.spec, seed=cfg.seed, log=log)
        # Keras' legacy Adam: the same algorithm, one fused update op per variable; traced in 3 s instead of 5 for
        # the demo U-Net, and a few percent faster per step on a CPU
        model.compile(optimizer=keras.optimizers.legacy.Adam(cfg.train.learning_rate),
                      loss=losses.make_loss(cfg.train.loss, class_weights),
                      metrics=[metrics.MeanIoU(setup.spec.classes, setup.card.classes)])
    log(f"{arch}: {model.count_params():,} parameters; callbacks " + ", ".join(type(c).__name__ for c in setup.callbacks))
    start = time.perf_counter()
    model.fit(setup.train, validation_data=setup.val, epochs=cfg.train.epochs,
              steps_per_epoch=cfg.train.steps_per_epoch, callbacks=setup.callbacks, verbose=verbosity(cfg))
    return finish(model, setup, step, time.perf_counter() - start)


def begin(run: RunDir, cfg) -> tuple[Step, ClassWeights]:
    """Start step 03: its inputs read (the class weights; the dataset record when each model starts)."""
    step = run.begin("training", cfg)
    return step, step.read(ClassWeights)


def record(step: Step, summaries: dict[str, TrainingSummary]):
    """Register step 03 once every architecture is trained and saved."""
    step.save(TrainingRecord(summaries))
    return step.finish()


def train_as_worker(cfg, run: RunDir, log=print) -> None:
    """A ``multi_worker`` worker other than the chief: notebook 03's training steps, and nothing else.

    The chief runs notebook 03 and writes the run folder; every other worker must run the
    same collective steps (creating the variables, each batch, each checkpoint), so it calls
    :func:`train_model` for each architecture, with a step that is never recorded.
    """
    step = Step(run, "training", cfg)  # reads, never begun or finished: the chief records the step
    weights = step.read(ClassWeights).weights  # before the strategy: a missing input fails at once
    devices.set_precision(cfg.train.mixed_precision)
    strategy = devices.choose_strategy(cfg.train.strategy)
    log(f"worker {strategy.cluster_resolver.task_id} of a cluster of {strategy.num_replicas_in_sync} replicas")
    for arch in cfg.model.architectures:
        summary = train_model(arch, cfg, step, weights, strategy, log=log)
        log(f"{arch}: {summary.replicas} replicas trained for {summary.seconds} s; the chief saved the model")
