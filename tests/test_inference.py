import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from seglab import predictor as prediction
from seglab.backend import keras
from seglab.jsonrecord import FileStamp
from seglab.records import ModelCard, ModelInput, Normalization

NORM = Normalization(order=[0, 1, 2], scale=[1 / 255] * 3, offset=[0.0] * 3)
COLORS = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def _card(tile=32, classes=("background", "a", "b"), scale=(1.0, 1.0)):
    """What notebook 03 writes beside a model, for an 8-bit RGB model of ``tile`` px windows."""
    return ModelCard(architecture="tiny", backbone="none", classes=list(classes), colors=COLORS, normalization=NORM,
                     input_size=tile, pixel_scale=list(scale), input=ModelInput(3, "uint8", "dataset"))


def _save(model_path, classes=("background", "a", "b")):
    """A model and its card beside it, as notebook 03 saves them."""
    model_path.parent.mkdir(parents=True, exist_ok=True)
    _model(32).save(str(model_path))
    card = _card(32, classes)
    card.model = FileStamp.of(model_path)  # the card names the very file it belongs to
    card.save(model_path.with_suffix(".json"))


def _model(tile, kernel=5, seed=0):
    """A small fully convolutional net whose zero padding makes window borders visible."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((tile, tile, 3))
    x = keras.layers.Conv2D(8, kernel, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(3, kernel, padding="same")(x)
    return keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(x))


def _predictor(tile=32):
    return prediction.Predictor(_model(tile), _card(tile))


def test_one_window_equals_a_plain_model_predict():
    predictor = _predictor()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tiled = prediction.predict_image(predictor, image)
    plain = predictor.model.predict(image[None].astype(np.float32) / 255, verbose=0)[0]
    np.testing.assert_allclose(tiled, plain, atol=1e-5)


def _max_jump_inside_regions(probs, boundaries, margin=4):
    jumps = np.abs(np.diff(probs, axis=1)).max(-1)
    keep = np.ones(jumps.shape[1], bool)
    for b in boundaries:
        keep[max(0, b - margin):b + margin] = False
    return jumps[:, keep].max()


def test_blended_windows_leave_no_seams():
    predictor = _predictor()
    image = np.zeros((160, 200, 3), np.uint8)  # constant per region: three vertical bands
    image[:, :70] = (200, 40, 40)
    image[:, 70:140] = (40, 200, 90)
    image[:, 140:] = (90, 90, 220)
    blended = prediction.predict_image(predictor, image, overlap=0.5)
    # the same windows stitched with hard cuts, no overlap, no blending: seams at every window border
    hard = np.zeros_like(blended)
    for y in range(0, 160, 32):
        for x in range(0, 200 - 32 + 1, 32):
            window = image[y:y + 32, x:x + 32][None].astype(np.float32) / 255
            hard[y:y + 32, x:x + 32] = predictor.model.predict(window, verbose=0)[0]
    boundaries = [70, 140]
    seams = _max_jump_inside_regions(hard[8:-8, :192], [0, *boundaries, 191])  # image edges are not seams
    smooth = _max_jump_inside_regions(blended[8:-8], [0, *boundaries, 199])
    assert seams > 0.02  # the model does see window borders
    assert smooth < seams / 4


@pytest.mark.parametrize("shape", [(17, 23), (17, 23, 3), (70, 45, 3), (33, 97)])
def test_odd_sizes_grey_and_rgb(shape):
    predictor = _predictor()
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    rgb = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image
    probs = prediction.predict_image(predictor, rgb, overlap=0.25, batch_size=3)
    assert probs.shape == shape[:2] + (3,)
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)


def test_predict_cli_reads_the_sidecar_and_skips_unreadable_files(tmp_path):
    model_path = tmp_path / "models" / "tiny.keras"
    _save(model_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 61, 3), dtype=np.uint8)).save(inputs / "good.png")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(inputs / "grey16.png")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "seglab", "predict", "--model", str(model_path),
                             "--input", str(inputs), "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1  # something failed, and the caller can tell
    assert "broken.png: unreadable or truncated image" in result.stderr
    assert "2 image(s) segmented" in result.stdout
    mask = np.asarray(Image.open(out / "good_mask.png"))
    color = np.asarray(Image.open(out / "good_color.png"))
    assert mask.shape == (50, 61) and color.shape == (50, 61, 3)
    np.testing.assert_array_equal(color, np.asarray(COLORS, np.uint8)[mask])  # the sidecar's palette
    assert (out / "good_overlay.png").exists() and (out / "grey16_mask.png").exists()
    rows = (out / "class_areas.csv").read_text().splitlines()
    assert rows[0].startswith("image,width,height,pixels_background") and len(rows) == 3
    assert not any(p.name.startswith("broken") for p in out.iterdir())


def test_predict_cli_rejects_a_tile_the_model_cannot_take(tmp_path):
    model_path = tmp_path / "m.keras"
    _save(model_path, ("a", "b", "c"))
    result = subprocess.run([sys.executable, "-m", "seglab", "predict", "--model", str(model_path), "--input",
                             str(tmp_path), "--output", str(tmp_path / "o"), "--tile", "64"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "takes 32 px windows; --tile 64 does not fit it" in result.stderr


def test_a_model_trained_on_resized_images_sees_new_images_at_that_scale():
    """Shrunk by the training scale to exactly one window, predicted, and brought back to full size."""
    predictor = _predictor()
    predictor.card.pixel_scale = [0.5, 0.25]  # trained on images shrunk to half the height and a quarter the width
    image = np.random.default_rng(3).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    probs = prediction.predict_image(predictor, image)
    shrunk = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)  # one window at the model's scale
    window = predictor.model.predict(shrunk[None].astype(np.float32) / 255, verbose=0)[0]
    expected = cv2.resize(window, (128, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    unscaled = prediction.predict_image(prediction.Predictor(predictor.model, _card(32)), image)
    assert np.abs(unscaled - expected).max() > 0.05  # the scale matters: this test would see it ignored


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "seglab", "predict", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_predict_cli_exit_codes(tmp_path):
    """0 when every image was segmented, 1 for a missing model or input, 2 for a malformed command."""
    model_path = tmp_path / "m.keras"
    _save(model_path, ("a", "b", "c"))
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "one.png")
    ok = _cli("--model", model_path, "--input", tmp_path / "one.png", "--output", tmp_path / "o")
    assert ok.returncode == 0 and "1 image(s) segmented" in ok.stdout, ok.stderr[-2000:]
    assert (tmp_path / "o" / "one_mask.png").exists()
    missing_model = _cli("--model", tmp_path / "none.keras", "--input", tmp_path / "one.png", "--output", tmp_path / "p")
    assert missing_model.returncode == 1 and "none.keras: no such model" in missing_model.stderr
    missing_input = _cli("--model", model_path, "--input", tmp_path / "nothing", "--output", tmp_path / "q")
    assert missing_input.returncode == 1 and "nothing: no such file or folder" in missing_input.stderr
    bad_overlap = _cli("--model", model_path, "--input", tmp_path / "one.png", "--output", tmp_path / "r", "--overlap", "1")
    assert bad_overlap.returncode == 1 and "--overlap 1.0 must be in [0, 1)" in bad_overlap.stderr
    malformed = _cli("--model", model_path)
    assert malformed.returncode == 2 and "required" in malformed.stderr


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.5, 0.75)])
def test_plain_and_flipped_come_from_one_call_per_batch_and_equal_separate_predictions(scale):
    """Notebook 04 scores both options; the plain prediction is the unflipped quarter of the flipped batch."""
    model = _model(32)
    predictor = prediction.Predictor(model, _card(32, scale=scale))
    image = np.random.default_rng(1).integers(0, 255, (100, 150, 3)).astype(np.uint8)  # several windows
    calls = []
    real = model.predict_on_batch
    model.predict_on_batch = lambda batch: calls.append(len(batch)) or real(batch)
    both = prediction.predict_views_of_image(predictor, image, overlap=0.5, batch_size=3, views=(False, True))
    together = len(calls)
    np.testing.assert_allclose(both[False], prediction.predict_image(predictor, image, 0.5, 3), atol=1e-5)
    before_flipped = len(calls)
    np.testing.assert_allclose(both[True], prediction.predict_image(predictor, image, 0.5, 3, tta=True), atol=1e-5)
    assert together == len(calls) - before_flipped > 1  # both views for the calls of the flipped view alone
    assert np.abs(both[True] - both[False]).max() > 1e-3


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.5, 0.75)])
def test_images_predicted_together_share_batches_and_equal_each_predicted_alone(scale):
    """Notebook 04 predicts a few images per call: the same probabilities as one by one, in fewer model calls."""
    model = _model(32)
    predictor = prediction.Predictor(model, _card(32, scale=scale))
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, shape).astype(np.uint8) for shape in [(32, 32, 3), (20, 40, 3), (70, 50, 3)]]
    calls = []
    real = model.predict_on_batch
    model.predict_on_batch = lambda batch: calls.append(len(batch)) or real(batch)
    together = prediction.predict_views_of_images(predictor, images, overlap=0.5, batch_size=8, views=(False, True))
    shared = len(calls)
    for image, both in zip(images, together):
        assert both[False].shape == image.shape[:2] + (3,)
        alone = prediction.predict_views_of_image(predictor, image, 0.5, 8, views=(False, True))
        for view in (False, True):
            np.testing.assert_allclose(both[view], alone[view], atol=1e-5)
    assert shared < len(calls) - shared
