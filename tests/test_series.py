"""The notebook series, run as a user would: ``python -m seglab run`` on a tiny config."""
import json
import subprocess
import sys

import nbformat
import pytest

from conftest import REPO

TINY = [f"--set={o}" for o in ("data.demo.num_images=16", "data.demo.image_size=96", "data.image_size=96",
                                "train.epochs=2", "train.batch_size=4")]


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


def test_step_00_and_01_hand_over_their_artifacts(series_run):
    run_dir, _ = series_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {"gpu_check", "data"} <= set(manifest["steps"])
    env = json.loads((run_dir / "env.json").read_text())
    assert env["accelerator"] in ("CPU", "GPU", "TPU") and env["tensorflow"]
    dataset = json.loads((run_dir / "dataset" / "dataset.json").read_text())
    assert len(dataset["items"]) == 16 and len(list((run_dir / "dataset" / "masks").glob("*.png"))) == 16
    assert manifest["steps"]["data"]["config"]["data"]["image_size"] == 96  # the override reached the notebook
    for figure in ("01_class_pixel_share", "01_training_samples", "01_augmented_batch"):
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
    manifest = json.loads((run_dir / "manifest.json").read_text())
    weights = json.loads((run_dir / "class_weights.json").read_text())
    assert weights["scheme"] == "balanced" and len(weights["weights"]) == 4
    assert manifest["steps"]["class_weights"]["inputs"] == {"data": manifest["steps"]["data"]["id"]}
    training = manifest["steps"]["training"]
    assert set(training["inputs"]) == {"data", "class_weights"}
    summary = json.loads((run_dir / "training.json").read_text())
    assert set(summary) == {"unet", "fpn", "pspnet"}
    for arch, s in summary.items():
        assert (run_dir / s["model"]).stat().st_size > 100_000
        assert s["epochs"] == 2 and 0 <= s["best_val_iou"] <= 1
        history = json.loads((run_dir / "history" / f"{arch}.json").read_text())
        assert len(history["epochs"]) == 2
    assert any((run_dir / "tensorboard" / "unet").rglob("events.out.tfevents.*"))
    assert (run_dir / "figures" / "03_training_curves.png").exists()


def test_step_04_and_05_write_metrics_predictions_and_figures(series_run):
    run_dir, _ = series_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    dataset = json.loads((run_dir / "dataset" / "dataset.json").read_text())
    test_ids = [i["id"] for i in dataset["items"] if i["split"] == "test"]
    assert metrics["split"] == "test" and set(metrics["models"]) == {"unet", "fpn", "pspnet"}
    for name, m in metrics["models"].items():
        for key in ("mean_iou", "mean_dice", "pixel_accuracy", "frequency_weighted_iou"):
            assert 0 <= m[key] <= 1
        assert set(m["per_class_iou"]) == set(dataset["classes"])
        cm = m["confusion_matrix"]
        assert sum(map(sum, cm)) == len(test_ids) * 96 * 96  # every test pixel counted once
        assert set(m["per_image_iou"]) == set(test_ids)
        assert m["selected_on_val"]["name"] in m["variants"]
        assert sorted(p.stem for p in (run_dir / "predictions" / name).glob("*.png")) == sorted(test_ids)
    header = (run_dir / "comparison.csv").read_text().splitlines()[0]
    assert header.startswith("model,mean_iou,") and "iou_speck" in header
    figures = manifest["steps"]["visualization"]["outputs"]
    for name in ("05_predictions_unet", "05_best_and_worst_pspnet", "05_confusion_matrices", "05_training_curves",
                 "05_per_class_iou"):
        assert (run_dir / figures[name]).stat().st_size > 1000
    assert manifest["steps"]["visualization"]["inputs"] == {"evaluation": manifest["steps"]["evaluation"]["id"]}


def test_step_06_segments_a_large_image_with_the_saved_model(series_run):
    run_dir, _ = series_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["steps"]["inference"]["inputs"] == {"training": manifest["steps"]["training"]["id"]}
    out = run_dir / "inference" / "output"
    assert {p.name for p in out.iterdir()} == {"class_areas.csv", "large_scene_mask.png", "large_scene_color.png",
                                               "large_scene_overlay.png"}
    from PIL import Image

    assert Image.open(out / "large_scene_mask.png").size == (96 * 8, 96 * 8)
