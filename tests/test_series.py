"""The notebook series, run as a user would: ``python -m seglab run`` on a tiny config."""
import json
import subprocess
import sys

import nbformat
import numpy as np
import pytest

from conftest import REPO
from seglab.jsonrecord import FileStamp
from seglab.records import (ClassWeights, DatasetRecord, Environment, ExportCard, Fingerprint, History, Metrics,
                            ModelCard, ModelInput, ResumeKey, RunManifest, TrainingRecord)
from seglab.rundir import RunDir

# U-Net first (notebooks 06 and 07 use the first), PSPNet for its own size rule, and the two decoders of
# seglab.architectures; FPN and LinkNet are sm's own, built in test_training, and would add a minute here.
ARCHITECTURES = ["unet", "pspnet", "unetplusplus", "deeplabv3plus"]
TINY = [f"--set={o}" for o in ("data.demo.num_images=16", "data.demo.image_size=96", "data.image_size=96",
                                "train.epochs=2", "train.batch_size=4", f"model.architectures=[{', '.join(ARCHITECTURES)}]")]


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "seglab", "run", "--config", "configs/demo.yaml", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("series") / "run"
    result = _run("--run-dir", str(run_dir), *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_every_notebook_ran_without_error_outputs(series_run):
    run_dir, result = series_run
    executed = sorted((run_dir / "notebooks").glob("*.ipynb"))
    assert [p.name for p in executed] == sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{path.name}: {errors[0].ename}"
        assert any(c.metadata.get("tags") == ["injected-parameters"] for c in nb.cells)
    assert "series finished" in result.stdout


def test_every_run_folder_file_carries_its_format_version(series_run):
    run_dir, _ = series_run
    files = {RunManifest.FILE: RunManifest, Environment.FILE: Environment, DatasetRecord.FILE: DatasetRecord,
             "dataset/fingerprint.json": Fingerprint, ClassWeights.FILE: ClassWeights,
             TrainingRecord.FILE: TrainingRecord, Metrics.FILE: Metrics, ModelCard.where("unet"): ModelCard,
             History.where("unet"): History, "train_state/unet.json": ResumeKey,
             "export/" + ExportCard.where("unet"): ExportCard}
    for rel, record in files.items():
        assert json.loads((run_dir / rel).read_text())["format_version"] == record.VERSION, rel
    raw = json.loads((run_dir / TrainingRecord.FILE).read_text())
    assert set(raw) == {"format_version", "models"} and set(raw["models"]) == set(ARCHITECTURES)


def test_step_00_and_01_hand_over_their_artifacts(series_run):
    run_dir, _ = series_run
    run = RunDir(run_dir)
    manifest = run.manifest()
    assert {"gpu_check", "data"} <= set(manifest.steps)
    env = run.read(Environment)
    assert env.accelerator in ("CPU", "GPU", "TPU") and env.tensorflow
    dataset = run.read(DatasetRecord)
    assert len(dataset.items) == 16
    shards = [run_dir / "dataset" / name for names in dataset.shards.values() for name in names]
    assert sorted(p.name for p in shards) == sorted(p.name for p in (run_dir / "dataset").glob("*.tfrecord"))
    assert len(shards) == 5  # one file per split and kind here, not one per image
    assert manifest.steps["data"].config["data"]["image_size"] == 96  # the override reached the notebook
    assert manifest.steps["data"].inputs == {}  # 01 checks that 00 ran, and reads nothing of it
    for figure in ("01_class_pixel_share", "01_training_samples", "01_augmentation"):
        assert (run_dir / "figures" / f"{figure}.png").stat().st_size > 1000


def test_a_notebook_without_its_inputs_names_the_one_to_run_first(tmp_path):
    result = _run("--run-dir", str(tmp_path / "empty"), "--only", "01", *TINY)
    assert result.returncode == 1
    assert "01_data_loading_and_preprocessing.ipynb failed" in result.stderr
    assert "Run notebook 00_gpu_check.ipynb first" in result.stderr


def test_a_bad_config_stops_before_any_notebook(tmp_path):
    result = _run("--run-dir", str(tmp_path / "x"), "--set", "train.epoch=3")
    assert result.returncode == 1 and "unknown config key 'train.epoch'" in result.stderr
    assert not (tmp_path / "x").exists()


def test_step_02_and_03_hand_over_weights_and_models(series_run):
    run_dir, _ = series_run
    run = RunDir(run_dir)
    steps = run.manifest().steps
    weights = run.read(ClassWeights)
    assert weights.scheme == "balanced" and len(weights.weights) == 4
    assert steps["class_weights"].inputs == {"data": steps["data"].id}
    assert steps["training"].inputs == {"data": steps["data"].id, "class_weights": steps["class_weights"].id}
    summary = run.read(TrainingRecord).models
    assert list(summary) == ARCHITECTURES
    for arch, s in summary.items():
        assert (run_dir / s.model).stat().st_size > 100_000 and s.architecture == arch
        assert s.epochs == 2 and 0 <= s.best_val_mean_iou <= 1
        history = run.read(History, arch)
        assert len(history.epochs) == 2 and history.summary == s
        assert {"val_iou_background", "val_iou_speck"} <= set(history.epochs[0])  # per-class IoU, every epoch
        assert run.read(ModelCard, arch).classes == ["background", "disc", "bar", "speck"]
    assert any((run_dir / "tensorboard" / "unet").rglob("events.out.tfevents.*"))
    for figure in ("03_training_curves", "03_learning_rate", "03_epoch_by_epoch", "03_class_iou"):
        assert (run_dir / "figures" / f"{figure}.png").stat().st_size > 1000, figure


def test_step_04_and_05_write_metrics_predictions_and_figures(series_run):
    run_dir, _ = series_run
    run = RunDir(run_dir)
    steps = run.manifest().steps
    metrics = run.read(Metrics)
    dataset = run.read(DatasetRecord)
    test_ids = dataset.splits["test"].source_ids
    assert metrics.split == "test" and metrics.resolution == "original"
    assert set(metrics.models) == set(ARCHITECTURES)
    for name, m in metrics.models.items():
        for key in ("mean_iou", "mean_dice", "pixel_accuracy", "frequency_weighted_iou"):
            assert 0 <= getattr(m, key) <= 1
        assert set(m.per_class_iou) == set(dataset.classes)
        assert sum(map(sum, m.confusion_matrix)) == len(test_ids) * 96 * 96  # every test pixel counted once
        assert set(m.per_image_iou) == set(test_ids)
        assert m.selected_on_val["name"] in m.variants
        assert sorted(p.stem for p in (run_dir / "predictions" / name).glob("*.png")) == sorted(test_ids)
        assert sorted(m.saved_predictions) == sorted(test_ids)
    assert steps["evaluation"].inputs == {"data": steps["data"].id, "training": steps["training"].id}
    header = (run_dir / "comparison.csv").read_text().splitlines()[0]
    assert header.startswith("model,mean_iou,") and "iou_speck" in header
    figures = steps["visualization"].outputs
    for name in ("05_predictions_unet", "05_best_and_worst_pspnet", "05_confusion_matrices", "05_training_curves",
                 "05_per_class_iou"):
        rel = f"figures/{name}.png"
        assert figures[rel] == FileStamp.of(run_dir / rel) and figures[rel].size > 1000
    # 05 reads the test images (01), the scores (04) and the training curves (03), each the record now in place
    assert steps["visualization"].inputs == {"data": steps["data"].id, "evaluation": steps["evaluation"].id,
                                             "training": steps["training"].id}


def test_metrics_json_matches_a_direct_check(series_run):
    """The reported test mean IoU equals one computed here without seglab's predictor or metrics."""
    from sklearn.metrics import confusion_matrix
    from PIL import Image

    from seglab.backend import keras, sm

    run_dir, _ = series_run
    reported = RunDir(run_dir).read(Metrics).models["unet"].mean_iou
    model = keras.models.load_model(str(run_dir / "models" / "unet.keras"), compile=False)
    preprocess = sm.get_preprocessing("resnet18")
    import io

    from seglab.backend import tf

    cm, seen = 0, 0
    for record in tf.data.TFRecordDataset(sorted(map(str, (run_dir / "dataset").glob("test-originals-*.tfrecord")))):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        truth = np.asarray(Image.open(io.BytesIO(feature["mask"].bytes_list.value[0])))
        pixels = Image.open(io.BytesIO(feature["image"].bytes_list.value[0])).convert("RGB")
        image = preprocess(np.asarray(pixels, np.float32)[None])
        seen += 1
        prediction = model.predict(image, verbose=0)[0].argmax(-1)  # demo images are one window at scale 1
        cm = cm + confusion_matrix(truth.ravel(), prediction.ravel(), labels=range(4))
    assert seen == len(RunDir(run_dir).read(DatasetRecord).splits["test"].source_ids)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert abs(np.nanmean(iou[cm.sum(1) > 0]) - reported) < 0.005


def test_step_06_segments_held_out_images_and_a_large_demo_scene(series_run):
    run_dir, _ = series_run
    run = RunDir(run_dir)
    steps = run.manifest().steps
    assert steps["inference"].inputs == {"data": steps["data"].id, "training": steps["training"].id}
    out = run_dir / "inference" / "output"
    names = {p.name for p in out.iterdir()}
    assert {"class_areas.csv", "large_scene_mask.png", "large_scene_color.png", "large_scene_overlay.png"} <= names
    dataset = run.read(DatasetRecord)
    assert dataset.demo_scene.image == "dataset/demo_scene/large_scene.png"  # 06 reads it from 01's dataset
    largest = sorted(dataset.splits["test"].source_ids, key=lambda s: -np.prod(dataset.source.sizes[s]))[:3]
    assert {n for n in names if n.endswith("_mask.png")} == {f"{s}_mask.png" for s in largest} | {"large_scene_mask.png"}
    from PIL import Image

    assert Image.open(out / "large_scene_mask.png").size == (96 * 8, 96 * 8)
    for figure in ("06_predictions", "06_sliding_windows", "06_zoomed"):
        assert steps["inference"].outputs[f"figures/{figure}.png"].size > 1000, figure  # recorded, as written


def test_step_07_exports_that_agree_with_the_trained_model(series_run):
    run_dir, _ = series_run
    run = RunDir(run_dir)
    steps = run.manifest().steps
    step = run.require("export")
    # 07 loads the trained model (03) and checks it on the test images (01)
    assert step.inputs == {"training": steps["training"].id, "data": steps["data"].id}
    names = {p.name for p in (run_dir / "export").iterdir()}
    assert names == {"unet_savedmodel", "unet.tflite", "unet.onnx", "unet.export.json"}
    assert set(step.outputs) == {f"export/{name}" for name in names}
    assert set(step.extra["parity"]) == {"savedmodel", "tflite", "onnx"}
    for check in step.extra["parity"].values():  # the same classes, probabilities equal up to rounding (see test_export)
        assert check["pixel_agreement"] >= 0.999 and check["mean_probability_difference"] < 1e-5
        assert check["max_probability_difference"] < 1e-2
    card = ExportCard.load(run_dir / "export" / ExportCard.where("unet"))
    assert card.classes == ["background", "disc", "bar", "speck"]
    assert sorted(card.files) == sorted(names - {"unet.export.json"})


FOLDER_SIZES = [(37, 53), (61, 45), (50, 50), (29, 71), (45, 33)]


def _series_on_folder(tmp_path_factory, name: str, **dataset):
    """00 to 07 through the CLI on a made-up folder dataset of 10 images of FOLDER_SIZES; (run folder, data root)."""
    from conftest import write_folder_dataset

    base = tmp_path_factory.mktemp(name)
    root = write_folder_dataset(base / "data", n=10, size=FOLDER_SIZES, **dataset)
    result = _run("--run-dir", str(base / "run"), "--set", "data.source=folder", "--set", f"data.root={root}",
                  "--set", "data.image_size=64", "--set", "model.architectures=[unet]", "--set", "train.epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "run", root


def _after_every_step(run_dir) -> tuple[RunManifest, DatasetRecord]:
    """The run manifest and the dataset record, once every notebook is checked to have recorded its step."""
    run = RunDir(run_dir)
    manifest = run.manifest()
    assert set(manifest.steps) == {"gpu_check", "data", "class_weights", "training", "evaluation", "visualization",
                                   "inference", "export"}
    for step in manifest.steps:
        run.require(step)  # every output in place, every input the record now there
    return manifest, run.read(DatasetRecord)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A user's dataset: 3 classes, grey images of odd and mixed non-square sizes, RGB colour masks with
    an ignored colour, and too few images for the default batch size."""
    return _series_on_folder(tmp_path_factory, "folder", grey=True, rgb_masks=True, ignore=[9, 9, 9])


def test_the_series_runs_on_a_users_folder_dataset(folder_run):
    run_dir, root = folder_run
    manifest, dataset = _after_every_step(run_dir)
    assert dataset.classes == ["background", "a", "b"] and dataset.ignore_index == 255
    assert dataset.demo_scene is None
    metrics = RunDir(run_dir).read(Metrics).models["unet"]
    from PIL import Image

    test_ids = dataset.splits["test"].source_ids
    sizes = {stem: Image.open(root / "images" / f"{stem}.png").size for stem in test_ids}
    ignored = sum(h for w, h in sizes.values())  # one ignored column per image
    assert sum(map(sum, metrics.confusion_matrix)) == sum(w * h for w, h in sizes.values()) - ignored
    for stem, size in sizes.items():
        assert Image.open(run_dir / "predictions" / "unet" / f"{stem}.png").size == size  # at the user's size
    out = run_dir / "inference" / "output"
    assert {f"{stem}_mask.png" for stem in test_ids} <= {p.name for p in out.iterdir()}
    assert not any(p.name.startswith("large_scene") for p in out.iterdir())  # the demo scene is for the demo only
    for name in ("01_training_samples", "05_predictions_unet", "06_predictions"):
        assert (run_dir / "figures" / f"{name}.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def bands_run(tmp_path_factory):
    """A user's dataset of 4-band 16-bit multi-sample TIFFs (12-bit values, each band offset), mixed sizes."""
    return _series_on_folder(tmp_path_factory, "bands", bands=4)


def test_the_series_runs_on_four_band_16bit_images(bands_run):
    run_dir, root = bands_run
    from seglab import readers

    manifest, dataset = _after_every_step(run_dir)
    image = dataset.images
    assert (image.channels, image.dtype, image.encoding, image.intensity) == (4, "uint16", "png", "dataset")
    train = np.concatenate([readers.read_image(root / "images" / f"{s}.tif").reshape(-1, 4)
                            for s in dataset.splits["train"].source_ids])
    np.testing.assert_allclose(image.mean, train.mean(0))
    card = ModelCard.beside(run_dir / "models" / "unet.keras")
    assert card.input == ModelInput(channels=4, dtype="uint16", intensity="dataset")
    np.testing.assert_allclose(card.normalization.scale, 1 / train.std(0), rtol=1e-6)  # not the encoder's
    test_ids = dataset.splits["test"].source_ids
    sizes = {stem: tuple(dataset.source.sizes[stem]) for stem in test_ids}
    metrics = RunDir(run_dir).read(Metrics).models["unet"]
    assert sum(map(sum, metrics.confusion_matrix)) == sum(h * w for h, w in sizes.values())
    from PIL import Image

    for stem, (h, w) in sizes.items():
        assert Image.open(run_dir / "predictions" / "unet" / f"{stem}.png").size == (w, h)
        kept = readers.read_image(run_dir / "inference" / "test_images" / f"{stem}.tif")  # shown to 06 as read
        np.testing.assert_array_equal(kept, readers.read_image(root / "images" / f"{stem}.tif"))
    out = run_dir / "inference" / "output"
    assert {f"{stem}_overlay.png" for stem in test_ids} <= {p.name for p in out.iterdir()}
    for name in ("01_training_samples", "01_augmentation", "05_predictions_unet", "06_predictions"):
        assert (run_dir / "figures" / f"{name}.png").stat().st_size > 1000
    exported = ExportCard.load(run_dir / "export" / ExportCard.where("unet")).input
    assert exported["dtype"] == "uint16" and exported["shape"] == [None, 64, 64, 4]
    for check in manifest.steps["export"].extra["parity"].values():  # uint16 in, normalised inside the exported graph
        assert check["pixel_agreement"] >= 0.999 and check["mean_probability_difference"] < 1e-5
