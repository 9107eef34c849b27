import csv
import functools
import hashlib
import http.server
import math
import subprocess
import sys
import threading

import numpy as np
import pytest

from seglab import callbacks, class_weights, data_loading, devices, losses, metrics, models, training
from seglab.callbacks import PeriodicBackup
from seglab.backend import keras, tf
from seglab.config import ConfigError
from seglab.models import ModelSpec
from seglab.normalization import input_normalization
from seglab.records import DatasetRecord, ModelCard, TrainingRecord
from seglab.rundir import RunDir


@pytest.mark.parametrize("arch, size", [("unet", 64), ("fpn", 64), ("linknet", 64), ("pspnet", 48)])
def test_every_architecture_builds_with_a_float32_softmax(arch, size):
    model = models.build_model(ModelSpec(arch, "resnet18", 5, size))
    assert model.output_shape == (None, size, size, 5)
    assert model.layers[-1].dtype == "float32"
    out = model.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)
    np.testing.assert_allclose(out.sum(-1), 1, rtol=1e-5)


@pytest.mark.parametrize("arch, size, factor, message", [
    ("unet", 100, 8, "multiple of 32; data.image_size=100: use 96 or 128"),
    ("pspnet", 128, 8, "multiple of 48 at downsample factor 8; data.image_size=128: use 96 or 144"),
    ("pspnet", 100, 4, "multiple of 24 at downsample factor 4"),
    ("pspnet", 96, 3, "must be 4, 8 or 16"),
])
def test_input_size_rules_are_checked_before_building(arch, size, factor, message):
    with pytest.raises(ConfigError, match=message):
        models.build_model(ModelSpec(arch, "resnet18", 3, size, pspnet_downsample_factor=factor))


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus"])
def test_batchnorm_statistics_follow_the_data_within_a_few_dozen_steps(arch):
    """What predictions use: with Keras' 0.99 the input layer's moving mean is at 26% of the data's after 30 steps."""
    model = models.build_model(ModelSpec(arch, "resnet18", 2, 32))
    model.compile(keras.optimizers.SGD(0.0), "mse")  # no weight changes: only the moving statistics move
    x = np.full((30, 32, 32, 3), 100.0, np.float32)
    model.fit(x, np.zeros((30, 32, 32, 2), np.float32), batch_size=1, epochs=1, verbose=0)
    first = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert np.all(first.moving_mean.numpy() > 90)  # 100 * (1 - 0.9 ** 30) = 95.8


@pytest.mark.parametrize("gpu, native, policy", [(True, True, "mixed_float16"), (False, True, "mixed_bfloat16"),
                                               (False, False, "float32")])
def test_auto_precision_is_float16_on_a_gpu_bfloat16_on_a_cpu_that_computes_it_else_float32(monkeypatch, gpu, native, policy):
    monkeypatch.setattr(devices.tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if gpu else [])
    monkeypatch.setattr(devices, "cpu_has_bfloat16_units", lambda: native)
    try:
        assert devices.set_precision("auto") == policy
        assert keras.mixed_precision.global_policy().name == policy
    finally:
        devices.set_precision("float32")


def test_bfloat16_units_are_read_from_the_cpu_flags_and_need_onednn(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    real_path = devices.Path
    monkeypatch.setattr(devices, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_vnni amx_tile\n")  # AVX-512 and AMX tiles, no bfloat16
    assert not devices.cpu_has_bfloat16_units()
    cpuinfo.write_text("flags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert devices.cpu_has_bfloat16_units()
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_bf16\n")  # bfloat16 instructions, no AMX
    assert devices.cpu_has_bfloat16_units()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert not devices.cpu_has_bfloat16_units()
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    cpuinfo.unlink()
    assert not devices.cpu_has_bfloat16_units()


def test_mixed_precision_keeps_the_output_in_float32():
    try:
        assert devices.set_precision("float16") == "mixed_float16"
        model = models.build_model(ModelSpec("unet", "resnet18", 3, 32))
        assert model.layers[-2].compute_dtype == "float16"
        assert model.output.dtype == tf.float32
    finally:
        devices.set_precision("float32")
    assert keras.mixed_precision.global_policy().name == "float32"


class _Serve:
    def __init__(self, folder):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/"


@pytest.fixture
def resnet18_weights_entry(monkeypatch, tmp_path):
    """Point the encoder's ImageNet weights at a server on 127.0.0.1 and an empty Keras cache."""
    from classification_models import weights as registry

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    entry = next(w for w in registry.WEIGHTS_COLLECTION
                 if w["model"] == "resnet18" and w["dataset"] == "imagenet" and not w["include_top"])
    served = tmp_path / "served"
    served.mkdir()
    server = _Serve(served)
    yield entry, served, server.url
    server.server.shutdown()


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus"])  # an sm model and one of seglab.architectures
def test_imagenet_weights_download_and_load(monkeypatch, resnet18_weights_entry, arch):
    entry, served, url = resnet18_weights_entry
    from classification_models.tfkeras import Classifiers

    encoder = Classifiers.get("resnet18")[0](input_shape=(None, None, 3), weights=None, include_top=False)
    encoder.save_weights(str(served / entry["name"]))
    data = (served / entry["name"]).read_bytes()
    monkeypatch.setitem(entry, "url", url + entry["name"])
    monkeypatch.setitem(entry, "md5", hashlib.md5(data).hexdigest())
    lines = []
    model = models.build_model(ModelSpec(arch, "resnet18", 3, 64, encoder_weights="imagenet"), log=lines.append)
    assert lines == []
    expected = {w.name: w.numpy() for w in encoder.weights}
    conv = next(w for w in model.weights if w.name == "conv0/kernel:0")
    np.testing.assert_array_equal(conv.numpy(), expected["conv0/kernel:0"])


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus"])
def test_imagenet_weights_meet_four_channels_through_a_learned_1x1_adapter(monkeypatch, resnet18_weights_entry, arch):
    """With ImageNet weights, 4 channels go through channel_adapter into the pretrained 3-channel encoder;
    from scratch the encoder takes the 4 directly; the float32 copy for saving keeps the structure."""
    entry, served, url = resnet18_weights_entry
    from classification_models.tfkeras import Classifiers

    encoder = Classifiers.get("resnet18")[0](input_shape=(None, None, 3), weights=None, include_top=False)
    encoder.save_weights(str(served / entry["name"]))
    monkeypatch.setitem(entry, "url", url + entry["name"])
    monkeypatch.setitem(entry, "md5", hashlib.md5((served / entry["name"]).read_bytes()).hexdigest())
    assert [models.needs_adapter(c, w) for c, w in ((4, "imagenet"), (1, "imagenet"), (3, "imagenet"), (4, None))] \
        == [True, True, False, False]
    lines = []
    spec = ModelSpec(arch, "resnet18", 3, 64, channels=4, encoder_weights="imagenet")
    model = models.build_model(spec, log=lines.append)
    assert lines == [] and model.input_shape == (None, 64, 64, 4)
    assert model.get_layer("channel_adapter").kernel.shape == (1, 1, 4, 3)
    conv = next(w for w in model.weights if w.name == "conv0/kernel:0")
    np.testing.assert_array_equal(conv.numpy(), next(w for w in encoder.weights if w.name == "conv0/kernel:0").numpy())
    copy = models.float32_copy(model, spec)
    assert copy.get_layer("channel_adapter") is not None and len(copy.weights) == len(model.weights)
    scratch = models.build_model(ModelSpec(arch, "resnet18", 3, 64, channels=4))
    assert scratch.input_shape == (None, 64, 64, 4) and "channel_adapter" not in [l.name for l in scratch.layers]


@pytest.mark.parametrize("served, arch", [("nothing", "unet"), ("an error page", "unet"), ("nothing", "unetplusplus")])
def test_unreachable_weights_fall_back_to_random_init_with_one_line(monkeypatch, resnet18_weights_entry, served, arch):
    entry, folder, url = resnet18_weights_entry
    if served == "an error page":  # e.g. a proxy answering 200 with HTML: fails the checksum
        (folder / "weights.h5").write_text("<html>blocked</html>")
    monkeypatch.setitem(entry, "url", url + "weights.h5")  # otherwise the server answers 404
    lines = []
    model = models.build_model(ModelSpec(arch, "resnet18", 3, 64, encoder_weights="imagenet"), log=lines.append)
    assert len(lines) == 1
    assert lines[0].startswith("imagenet weights for resnet18 could not be downloaded")
    assert lines[0].endswith(f"training {arch} from random initialisation.")
    assert model.output_shape == (None, 64, 64, 3)


@pytest.fixture
def prepared(make_config):
    cfg = make_config("data.demo.num_images=10", "train.batch_size=2", "train.epochs=3", "model.architectures=[unet]",
                      "data.augment=none", "train.backup_minutes=0")  # the state written after every epoch
    run = RunDir(cfg.run_dir)
    data_loading.prepare_dataset(cfg, run)
    weights = class_weights.write_class_weights(run, cfg).weights
    return cfg, run, weights


def train(cfg, run, weights, **kwargs):
    """Notebook 03 for U-Net: begin the step (it reads notebook 02's weights), train, and record the step."""
    step, _ = training.begin(run, cfg)
    summary = training.train_model("unet", cfg, step, weights, **kwargs)
    training.record(step, {"unet": summary})
    return summary


class _Disconnect(keras.callbacks.Callback):
    """Cuts training off after epoch 1, remembering the weights the backup holds."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            self.weights = [w.copy() for w in self.model.get_weights()]
            raise KeyboardInterrupt("runtime disconnected")


class _WeightsAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):  # runs after BackupAndRestore restored the state
        self.weights = [w.copy() for w in self.model.get_weights()]


def _epochs_logged(run):
    with open(run.path("history", "unet.csv")) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_interrupted_training_resumes_with_the_weights_it_had(prepared):
    cfg, run, weights = prepared
    cut = _Disconnect()
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, weights, extra_callbacks=[cut])
    assert not run.path("models", "unet.keras").exists()  # nothing half-finished to trust
    start = _WeightsAtStart()
    summary = train(cfg, run, weights, extra_callbacks=[start])
    assert _epochs_logged(run) == [0, 1, 2]  # epochs 0 and 1 were not trained again
    assert summary.resumed and summary.epochs == 3
    assert run.read(TrainingRecord).models == {"unet": summary}
    for restored, saved in zip(start.weights, cut.weights):
        np.testing.assert_array_equal(restored, saved)
    model = models.load_model(run.path("models", "unet.keras"))
    assert model.optimizer is None  # the export carries no optimizer state


class _CutAfter(keras.callbacks.Callback):
    """Cuts training off at the end of epoch ``cut``, remembering the weights after each epoch."""

    def __init__(self, cut):
        super().__init__()
        self.cut, self.weights = cut, {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = [w.copy() for w in self.model.get_weights()]
        if epoch == self.cut:
            raise KeyboardInterrupt("runtime disconnected")


def test_a_state_written_every_few_minutes_resumes_with_the_history_and_best_weights_of_its_moment(prepared,
                                                                                                  monkeypatch):
    """Epochs trained after the last state was written are trained again, once in the history, and the best
    weights go back to what they were when the state was written."""
    cfg, run, weights = prepared
    cfg.train.epochs, cfg.train.backup_minutes = 4, 2
    minutes = iter(range(0, 10 ** 6, 60))  # the clock moves a minute each time it is read
    monkeypatch.setattr(training, "PeriodicBackup", functools.partial(PeriodicBackup, clock=lambda: next(minutes)))
    made = []

    class Kept(callbacks.BestWeights):  # the series' BestWeights, remembered as training.callbacks makes it
        def __init__(self, *args):
            super().__init__(*args)
            made.append((self.best, self.weights))

    monkeypatch.setattr(training, "BestWeights", Kept)
    cut = _CutAfter(2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, weights, extra_callbacks=[cut])
    assert _epochs_logged(run) == [0, 1, 2]
    assert training.backed_up_epoch(run.path("train_state", "unet")) == 1  # two minutes in: after epoch 2 of 4
    assert [p.name for p in run.path("checkpoints", "unet").iterdir()] == ["with-state-of-epoch-1"]
    first_two = [row["val_mean_iou"] for row in training._logged_epochs(run.path("history", "unet.csv"))][:2]
    start, lines = _WeightsAtStart(), []
    summary = train(cfg, run, weights, extra_callbacks=[start], log=lines.append)
    assert any("the 1 epoch(s) trained since are trained again" in line for line in lines)
    assert _epochs_logged(run) == [0, 1, 2, 3] and summary.resumed and summary.epochs == 4
    for restored, saved in zip(start.weights, cut.weights[1]):
        np.testing.assert_array_equal(restored, saved)
    best_at_start, weights_at_start = made[-1]
    assert best_at_start == pytest.approx(max(first_two))  # epoch 3's score, lost with it, is not counted
    for kept, saved in zip(weights_at_start, cut.weights[int(np.argmax(first_two))]):
        np.testing.assert_array_equal(kept, saved)
    assert not list(run.path("checkpoints", "unet").glob("with-state-of-epoch-*"))  # gone with the state


def test_a_state_cut_off_before_its_first_write_trains_the_logged_epochs_again(prepared):
    cfg, run, weights = prepared
    cfg.train.backup_minutes = 60  # no state written in this short training
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, weights, extra_callbacks=[_Disconnect()])
    assert _epochs_logged(run) == [0, 1]
    half_written = run.path("train_state", "unet", "chief", "ckpt-1.index")  # as a kill mid-write leaves it
    half_written.parent.mkdir(parents=True, exist_ok=True)
    half_written.write_bytes(b"")
    lines = []
    summary = train(cfg, run, weights, log=lines.append)
    assert _epochs_logged(run) == [0, 1, 2] and summary.epochs == 3
    assert any("no training state was written; the 2 epoch(s) trained since are trained again" in line
               for line in lines)


def test_training_ends_with_the_best_epochs_weights(prepared, monkeypatch):
    """The saved model holds the weights of the epoch with the best validation mean IoU, not the last epoch's."""
    cfg, run, weights = prepared
    cfg.train.epochs, cfg.data.augment = 3, "strong"
    scores = iter([0.5, 0.9, 0.7])  # epoch 2 is the best

    class Scored(keras.callbacks.Callback):  # before BestWeights reads the logs
        def on_epoch_end(self, epoch, logs=None):
            logs["val_mean_iou"] = next(scores)

    series_callbacks = training.callbacks
    monkeypatch.setattr(training, "callbacks", lambda *a, **k: [Scored(), *series_callbacks(*a, **k)])
    cut = _CutAfter(99)
    train(cfg, run, weights, extra_callbacks=[cut])
    model = models.load_model(run.path("models", "unet.keras"))
    assert ModelCard.beside(run.path("models", "unet.keras")).mirror_axes == [1, 2]  # strong: both, for test-time flips
    for saved, best in zip(model.get_weights(), cut.weights[1]):
        np.testing.assert_allclose(saved, best, rtol=1e-6)
    assert not np.allclose(model.get_weights()[0], cut.weights[2][0])


def test_a_stale_training_state_is_not_resumed(prepared):
    """After notebook 02 or the config changed, the saved state belongs to another training."""
    cfg, run, weights = prepared
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, weights, extra_callbacks=[_Disconnect()])
    cfg.class_weights.scheme = "none"
    class_weights.write_class_weights(run, cfg)  # a new record of step 02
    lines = []
    summary = train(cfg, run, [1.0] * 4, log=lines.append)
    assert not summary.resumed and _epochs_logged(run) == [0, 1, 2]
    assert any("starting fresh" in line for line in lines)


def test_a_completed_training_starts_fresh_the_next_time(prepared):
    cfg, run, weights = prepared
    train(cfg, run, weights)
    summary = train(cfg, run, weights)
    assert not summary.resumed and summary.epochs == 3


def test_a_model_trained_in_mixed_precision_is_exported_in_float32(prepared):
    cfg, run, weights = prepared
    cfg.train.epochs, cfg.train.steps_per_epoch = 1, 1
    try:
        devices.set_precision("float16")
        summary = train(cfg, run, weights)
    finally:
        devices.set_precision("float32")
    assert summary.precision == "mixed_float16"
    model = models.load_model(run.path(summary.model))
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    assert model(x).dtype == tf.float32


def test_a_saved_model_loads_with_the_weights_and_predictions_keras_itself_loads(tmp_path):
    spec = ModelSpec("unet", "resnet18", classes=3, input_size=64)
    path = models.save_model(models.build_model(spec), tmp_path / "unet.keras")
    ours, keras_own = models.load_model(path), keras.models.load_model(str(path), compile=False, safe_mode=True)
    assert [w.name for w in ours.weights] == [w.name for w in keras_own.weights]
    assert all(np.array_equal(a, b) for a, b in zip(ours.get_weights(), keras_own.get_weights()))
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    np.testing.assert_array_equal(ours.predict_on_batch(x), keras_own.predict_on_batch(x))


def test_a_model_file_carrying_python_code_is_refused(tmp_path):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(str(tmp_path / "lambda.keras"))
    with pytest.raises(ValueError, match="lambda.keras: the model holds Python code"):
        models.load_model(tmp_path / "lambda.keras")


def _one_hot(labels, n):
    return tf.one_hot(np.asarray(labels), n).numpy()


def test_class_weights_reach_the_loss():
    truth = np.zeros((1, 8, 8), np.int64)
    truth[0, :4] = 1
    prediction = _one_hot(np.zeros((1, 8, 8), np.int64), 2) * 0.9 + 0.05  # class 1 missed entirely
    y = _one_hot(truth, 2)
    plain = float(losses.make_loss("dice", [1.0, 1.0])(y, prediction))
    rare_heavy = float(losses.make_loss("dice", [1.0, 9.0])(y, prediction))
    assert rare_heavy > plain * 1.3  # the missed class costs more when it weighs more


def test_ignored_pixels_count_in_neither_loss_nor_metric():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (2, 16, 16))
    y = _one_hot(truth, 3)
    y[:, :4] = 0  # ignored rows: all-zero one-hot, as tf.one_hot makes of label 255
    prediction = rng.dirichlet(np.ones(3), (2, 16, 16)).astype(np.float32)
    other = prediction.copy()
    other[:, :4] = rng.dirichlet(np.ones(3), (2, 4, 16))  # change the prediction only where ignored
    for kind in ("dice", "dice+focal", "dice+crossentropy"):
        loss = losses.make_loss(kind, [1.0, 2.0, 3.0])
        np.testing.assert_allclose(float(loss(y, prediction)), float(loss(y, other)), rtol=1e-6)
    values = []
    for p in (prediction, other):
        metric = metrics.MeanIoU(3)
        metric.update_state(y, p)
        values.append(float(metric.result()))
    assert values[0] == values[1]


def test_the_training_metric_is_the_dataset_level_mean_iou_of_notebook_04():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, (6, 12, 12))
    truth[truth == 3] = 2  # class 3 absent from the truth: left out of the mean, as in notebook 04
    prediction = rng.dirichlet(np.ones(4), (6, 12, 12)).astype(np.float32)
    metric = metrics.MeanIoU(4)
    for batch in range(3):  # batches are summed into one confusion matrix, not averaged
        metric.update_state(_one_hot(truth[2 * batch:2 * batch + 2], 4), prediction[2 * batch:2 * batch + 2])
    expected = metrics.scores(metrics.confusion_matrix(truth, prediction.argmax(-1), 4), list("abcd"))["mean_iou"]
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-9)


def test_with_class_names_the_training_metric_logs_each_classs_iou_as_notebook_04_scores_it():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, (4, 10, 10))
    prediction = rng.dirichlet(np.ones(3), (4, 10, 10)).astype(np.float32)
    metric = metrics.MeanIoU(3, ["background", "deep grey", "speck"])
    metric.update_state(_one_hot(truth, 3), prediction)
    result = {k: float(v) for k, v in metric.result().items()}
    expected = metrics.scores(metrics.confusion_matrix(truth, prediction.argmax(-1), 3),
                              ["background", "deep grey", "speck"])
    assert list(result) == ["mean_iou", "iou_background", "iou_deep_grey", "iou_speck"]
    np.testing.assert_allclose(result["mean_iou"], expected["mean_iou"], rtol=1e-9)
    for name, key in (("background", "iou_background"), ("deep grey", "iou_deep_grey"), ("speck", "iou_speck")):
        np.testing.assert_allclose(result[key], expected["per_class_iou"][name], rtol=1e-9)


TWO_REPLICAS = """
import sys
from seglab.backend import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from seglab import devices, training
from seglab.config import load_config
from seglab.rundir import RunDir
cfg = load_config(sys.argv[1], sys.argv[2:])
strategy = devices.choose_strategy(cfg.train.strategy)
assert isinstance(strategy, tf.distribute.MirroredStrategy), strategy
step, _ = training.begin(RunDir(cfg.run_dir), cfg)
summary = training.train_model("unet", cfg, step, [1.0, 1.0, 1.0, 1.0], strategy)
print("REPLICAS", summary.replicas, summary.global_batch_size, summary.epochs)
"""


def test_training_on_two_replicas_scales_the_global_batch(prepared, tmp_path):
    cfg, run, _ = prepared
    from conftest import REPO

    overrides = [f"run_dir={cfg.run_dir}", "data.image_size=64", "model.architectures=[unet]", "train.batch_size=2",
                 "train.epochs=1", "train.strategy=mirrored", "data.augment=none"]
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS, str(REPO / "configs" / "demo.yaml"), *overrides],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REPLICAS 2 4 1" in result.stdout


def test_the_time_budget_stops_training_mid_epoch_and_still_validates():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.zeros((64, 4), np.float32), np.zeros((64, 1), np.float32)
    steps = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(batch))
    history = model.fit(x, y, batch_size=4, epochs=5, validation_data=(x, y), verbose=0,
                        callbacks=[callbacks.TimeBudget(1e-9), counter])
    assert steps == [0]  # one step of the first of 5 epochs of 16 steps
    assert len(history.history["val_loss"]) == 1


def _rates_under(schedule, epochs: int, seconds_per_step: float, monkeypatch) -> tuple[list, dict]:
    """The learning rate of every step of a 4-step-per-epoch fit, with a clock that ticks once per step."""
    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.5), "mse")
    rates = []

    class Tick(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            rates.append(float(keras.backend.get_value(self.model.optimizer.learning_rate)))
            clock[0] += seconds_per_step

    x, y = np.zeros((16, 4), np.float32), np.zeros((16, 1), np.float32)
    history = model.fit(x, y, batch_size=4, epochs=epochs, verbose=0, callbacks=[*schedule, Tick()])
    return rates, history.history


def test_the_cosine_schedule_follows_the_time_budget_when_it_ends_training(monkeypatch):
    rates, history = _rates_under([callbacks.CosineDecay(0.5, epochs=1000, minutes=1), callbacks.TimeBudget(1)],
                                  1000, 15, monkeypatch)  # each step takes 15 s of a 1-minute budget
    cosine = lambda progress: 0.25 * (1 + math.cos(math.pi * progress))
    assert rates == pytest.approx([cosine(0), cosine(0.25), cosine(0.5), cosine(0.75), cosine(1)])
    assert history["lr"][-1] == pytest.approx(0.0)


def test_the_cosine_schedule_follows_the_epochs_without_a_budget(monkeypatch):
    rates, history = _rates_under([callbacks.CosineDecay(0.5, epochs=4)], 4, 15, monkeypatch)
    cosine = lambda progress: 0.25 * (1 + math.cos(math.pi * progress))
    assert rates == pytest.approx([cosine(e / 4) for e in range(4) for _ in range(4)])
    assert history["lr"] == pytest.approx([cosine(e / 4) for e in range(4)])


def test_training_reads_random_crops_with_rare_classes_forced_into_each_batch(make_config):
    cfg = make_config("data.mode=tile", "data.image_size=32", "data.train_tiles=random_crops", "train.sampling=rare",
                      "train.rare_share=0.5", "train.batch_size=4", "data.augment=none")
    run = RunDir(cfg.run_dir)
    data_loading.prepare_dataset(cfg, run)
    step = run.begin("training", cfg)
    dataset = step.read(DatasetRecord)
    lines = []
    setup = training.prepare("unet", cfg, step, dataset, tf.distribute.get_strategy(), log=lines.append)
    assert any(line.startswith("rare classes") and "speck" in line for line in lines)
    assert setup.train.cardinality() == dataset.splits["train"].items // 4  # an epoch: as many crops as tiles
    names = [type(c).__name__ for c in setup.callbacks]
    assert "CosineDecay" in names and not {"EarlyStopping", "ReduceLROnPlateau"} & set(names)  # one schedule, always
    for _, y in setup.train.take(3):
        assert y.shape == (4, 32, 32, 4) and y.numpy()[..., 3].any(axis=(1, 2)).sum() >= 2


@pytest.mark.parametrize("native", [True, False])
def test_the_gpu_check_says_when_a_cpu_trains_in_bfloat16(monkeypatch, native):
    from seglab import gpu_check
    monkeypatch.setattr(devices, "cpu_has_bfloat16_units", lambda: native)
    report = gpu_check.environment_report()
    if report.accelerator != "CPU":
        pytest.skip("a machine with an accelerator")
    assert ("mixed_bfloat16" in gpu_check.advice(report)) == native


def test_validation_comes_in_whole_batches_the_last_one_padded_with_ignored_samples(prepared):
    """One batch shape, so Keras traces its test step once; the padding is labelled nowhere, so it counts nowhere."""
    cfg, run, _ = prepared
    dataset = run.read(DatasetRecord)
    items = dataset.splits["val"].items
    norm = input_normalization(dataset.images, cfg.model.backbone)
    _, val = training.pipelines(dataset, cfg, run, norm, batch=items + 1, replicas=1)
    batches = [mask.numpy() for _, mask in val]
    assert [len(mask) for mask in batches] == [items + 1]
    labelled = batches[0].sum(axis=(1, 2, 3)) > 0
    assert labelled.tolist() == [True] * items + [False]
