"""Where training's wall time goes: the share spent outside the training steps, as a ratio within one run.

Trains one architecture with the series' own ``training.train_model`` (its callbacks, the
backup, the checkpoint, validation) on a run folder where notebooks 00 to 02 have run, and
times every training step, the validation and each callback's end-of-epoch work: the steps'
share of ``model.fit``'s wall time is what the model learns from; the rest is validation,
the training-state backup (``PeriodicBackup``, every ``train.backup_minutes``, with the best
weights), keeping the best weights (``BestWeights``), logging and input waits between steps. Prints one table row per epoch and the
totals; ``--set train.backup_minutes=0`` writes the state after every epoch, as before. Training
runs in the precision notebook 03 would use (``train.mixed_precision``), so
``--set train.mixed_precision=float32`` against ``bfloat16`` compares the two on the real pipeline.

    python bench/overhead.py [--config configs/demo.yaml] [--arch unet] [--epochs 5] [--set KEY=VALUE ...]

Run ``make demo`` (or notebooks 00 to 02) first for the config's run folder; this writes its
model into ``RUN_DIR/bench_overhead/``, a copy of the run folder's records, not over them.
"""
import argparse
import shutil
import time

from seglab import devices, training
from seglab.backend import keras
from seglab.config import load_config
from seglab.rundir import RunDir


class StepClock(keras.callbacks.Callback):
    """Wall time inside training steps (batch begin to batch end) and in validation, per epoch, and each epoch's
    whole time; ``callbacks`` gets each callback's end-of-epoch seconds from :func:`timed_epoch_ends`."""

    def __init__(self):
        super().__init__()
        self.epochs, self.callbacks = [], {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start, self.inside, self.steps, self.callbacks = time.perf_counter(), 0.0, 0, {}

    def on_train_batch_begin(self, batch, logs=None):
        self.batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.inside += time.perf_counter() - self.batch_start
        self.steps += 1

    def on_test_begin(self, logs=None):
        self.test_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation = time.perf_counter() - self.test_start

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({"epoch": epoch, "steps": self.steps, "inside": self.inside, "validation": self.validation,
                            "total": time.perf_counter() - self.epoch_start, "callbacks": self.callbacks})


def timed_epoch_ends(callbacks: list, clock: StepClock) -> list:
    """The same callbacks, each one's ``on_epoch_end`` timed into ``clock.callbacks`` by class name."""
    for callback in callbacks:
        def timed(epoch, logs=None, _end=callback.on_epoch_end, _name=type(callback).__name__):
            start = time.perf_counter()
            _end(epoch, logs)
            clock.callbacks[_name] = clock.callbacks.get(_name, 0.0) + time.perf_counter() - start
        callback.on_epoch_end = timed
    return callbacks


def copy_inputs(cfg, out) -> RunDir:
    """A scratch run folder with the source run's dataset and class weights, so the benchmark rewrites nothing."""
    source = RunDir(cfg.run_dir)
    source.require("class_weights")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source.root, out, ignore=shutil.ignore_patterns("models", "history", "train_state", "checkpoints",
                                                                    "tensorboard", "bench_*", "notebooks"))
    return RunDir(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(args.config, [f"train.epochs={args.epochs}", *args.overrides])
    run = copy_inputs(cfg, f"{cfg.run_dir}/bench_overhead")
    step, weights = training.begin(run, cfg)
    policy = devices.set_precision(cfg.train.mixed_precision)  # time what notebook 03 would run
    clock = StepClock()
    series_callbacks = training.callbacks
    training.callbacks = lambda *a, **k: timed_epoch_ends(series_callbacks(*a, **k), clock)
    start = time.perf_counter()
    summary = training.train_model(args.arch, cfg, step, weights.weights, extra_callbacks=[clock],
                                   log=lambda line: None)
    fit = time.perf_counter() - start
    print(f"{args.arch} ({cfg.model.backbone}), {summary.epochs} epochs, batch {summary.global_batch_size}, {policy}")
    print("| epoch | steps | in steps, s | validation, s | state backup, s | best weights, s | epoch, s "
          "| outside steps |")
    print("|---|---|---|---|---|---|---|---|")
    for e in clock.epochs:
        ends = e["callbacks"]
        print(f"| {e['epoch'] + 1} | {e['steps']} | {e['inside']:.1f} | {e['validation']:.2f} | "
              f"{ends.get('PeriodicBackup', 0):.2f} | {ends.get('BestWeights', 0):.2f} | {e['total']:.1f} | "
              f"{1 - e['inside'] / e['total']:.0%} |")
    inside, total = sum(e["inside"] for e in clock.epochs), sum(e["total"] for e in clock.epochs)
    later = clock.epochs[1:] or clock.epochs
    print(f"epochs after the first: {1 - sum(e['inside'] for e in later) / sum(e['total'] for e in later):.0%} "
          f"outside the training steps; all epochs: {1 - inside / total:.0%}")
    print(f"whole fit and save: {fit:.1f} s, of which {inside:.1f} s in training steps: "
          f"{1 - inside / fit:.0%} outside them (the first epoch includes building and tracing)")


if __name__ == "__main__":
    main()
