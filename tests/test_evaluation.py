import numpy as np
from PIL import Image

from seglab import evaluation, pipeline
from seglab.backend import keras


def test_postprocess_removes_small_components_and_keeps_large_ones():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:10, 2:10] = 1  # 64 px
    labels[15, 15] = 2  # 1 px speck
    labels[15:17, 2:4] = 2  # 4 px
    out = evaluation.postprocess(labels, min_size=4)
    assert (out[2:10, 2:10] == 1).all() and out[15, 15] == 0 and (out[15:17, 2:4] == 2).all()
    opened = evaluation.postprocess(labels, opening=True)
    assert opened[15, 15] == 0 and opened[5, 5] == 1
    np.testing.assert_array_equal(evaluation.postprocess(labels), labels)


def test_flip_tta_equals_plain_prediction_for_a_flip_equivariant_model(tmp_path):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, activation="softmax")(inputs))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    norm = pipeline.encoder_normalization("mobilenetv2")
    plain = list(evaluation.predict_probabilities(model, paths, norm, tta=False, batch_size=2))
    tta = list(evaluation.predict_probabilities(model, paths, norm, tta=True, batch_size=2))
    assert len(plain) == 3 and plain[0].shape == (16, 24, 3)
    np.testing.assert_allclose(np.stack(plain), np.stack(tta), atol=1e-6)


def test_options_are_chosen_on_validation_not_test(monkeypatch, make_config):
    """Post-processing that helps on validation but hurts on test is still the one chosen."""
    cfg = make_config("evaluation.tta=false", "evaluation.min_component_sizes=[0, 5]")
    manifest = {"classes": ["bg", "fg"], "items": [{"id": "v", "split": "val"}, {"id": "t", "split": "test"}]}
    noisy = np.zeros((8, 8), np.uint8)
    noisy[0, 0] = 1  # an isolated pixel: noise in val's prediction, a true speck in test
    truths = {"val": [np.zeros((8, 8), np.uint8)], "test": [noisy.copy()]}
    monkeypatch.setattr(evaluation, "split_truth", lambda run, manifest, split: truths[split])
    monkeypatch.setattr(evaluation.data_loading, "split_paths", lambda run, manifest, split: ([split], [split]))
    one_hot = np.eye(2)[noisy]
    monkeypatch.setattr(evaluation, "predict_probabilities", lambda *a, **k: iter([one_hot]))
    result, labels = evaluation.evaluate_model(None, {"normalization": {}}, cfg, None, manifest)
    chosen = result["selected_on_val"]["name"]
    assert chosen in ("remove<5px", "opening")  # both clean val perfectly; plain does not
    assert result["variants"]["plain"]["val_mean_iou"] < result["variants"][chosen]["val_mean_iou"] == 1.0
    assert result["variants"][chosen]["test_mean_iou"] < result["variants"]["plain"]["test_mean_iou"]
    assert result["mean_iou"] == 1.0 and result["with_selected"]["mean_iou"] < 1.0  # reported before and after
    assert labels[0][0, 0] == 0


def test_per_image_iou_counts_invented_objects():
    truth = np.zeros((10, 10), np.uint8)
    invented = truth.copy()
    invented[:2, :2] = 1
    scores = evaluation.per_image_iou([truth, invented], [truth, truth], ["clean", "invented"], 2)
    assert scores["clean"] == 1.0
    assert scores["invented"] == (0.96 + 0.0) / 2  # background 96/100 and the invented class 0
