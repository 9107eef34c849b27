from types import SimpleNamespace

import numpy as np
from PIL import Image

from seglab import evaluation, metrics, predictor
from seglab.backend import keras
from seglab.records import Normalization
from seglab.rundir import RunDir


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


def test_tta_averages_the_four_flips_each_flipped_back():
    """A model that is not flip-equivariant: TTA must differ from plain, and equal the flips' mean."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same", activation="softmax")(inputs))
    batch = np.random.default_rng(0).normal(size=(2, 16, 24, 3)).astype(np.float32)
    views = predictor.predict_views(model, batch, (False, True))
    plain, tta = views[False], views[True]
    by_hand = np.mean([np.flip(model.predict(np.flip(batch, axes), verbose=0), axes)
                       for axes in [(), (1,), (2,), (1, 2)]], axis=0)
    np.testing.assert_allclose(tta, by_hand, atol=1e-6)
    assert np.abs(tta - plain).max() > 1e-3


def test_test_time_flips_are_the_mirrors_the_model_was_trained_with():
    """A model trained with left-right mirrors only is averaged over the image and its mirror: two views, not four."""
    assert predictor.flips_for([]) == [()]
    assert predictor.flips_for([2]) == [(), (2,)]
    assert predictor.flips_for([1, 2]) == predictor.FLIPS
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same", activation="softmax")(inputs))
    card = SimpleNamespace(mirror_axes=[2], pixel_scale=[1.0, 1.0], input_size=16, classes=["a", "b", "c"],
                           normalization=Normalization([0, 1, 2], [1 / 255] * 3, [0.0] * 3))
    calls = []
    real = model.predict_on_batch
    model.predict_on_batch = lambda batch: calls.append(len(batch)) or real(batch)
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3)).astype(np.float32)
    tta = predictor.predict_image(predictor.Predictor(model, card), image, tta=True)
    x = image[None] / 255
    by_hand = (real(x)[0] + np.flip(real(np.flip(x, 2)), 2)[0]) / 2
    np.testing.assert_allclose(tta, by_hand, atol=1e-6)
    assert calls == [2]


def test_a_model_trained_without_mirrors_is_not_offered_test_time_flips(make_config):
    cfg = make_config("evaluation.tta=true")
    names = lambda axes: {evaluation._name(v) for v in evaluation._variants(cfg, SimpleNamespace(mirror_axes=axes))}
    assert not any("tta" in name for name in names([]))
    assert "tta" in names([2])


def _originals(truths: dict) -> dict:
    """``{split: [(stem, image, mask)]}`` for made-up originals, as notebook 01's shards yield them."""
    return {split: [(f"{split}{i}", np.zeros(m.shape + (3,), np.uint8), m) for i, m in enumerate(masks)]
            for split, masks in truths.items()}


def test_options_are_chosen_on_validation_not_test(monkeypatch, make_config, tmp_path):
    """Post-processing that helps on validation but hurts on test is still the one chosen."""
    cfg = make_config("evaluation.tta=false", "evaluation.min_component_sizes=[0, 5]")
    noisy = np.zeros((8, 8), np.uint8)
    noisy[0, 0] = 1  # an isolated pixel: noise in val's prediction, a true speck in test
    pairs = _originals({"val": [np.zeros((8, 8), np.uint8)], "test": [noisy.copy()]})
    dataset = SimpleNamespace(classes=["bg", "fg"])  # the dataset record, as far as evaluation reads it
    run = RunDir(tmp_path / "run")
    monkeypatch.setattr(evaluation, "original_pairs",
                        lambda where, record, split: (where, record) == (run, dataset) and iter(pairs[split]))
    monkeypatch.setattr(predictor, "predict_views_of_images", lambda model, images, *a, **k: [{False: np.eye(2)[noisy]}])
    out = tmp_path / "predictions"
    out.mkdir()
    model = SimpleNamespace(card=SimpleNamespace(mirror_axes=[2]), tile=8)
    result = evaluation.evaluate_model(model, cfg, run, dataset, out)
    chosen = result.selected_on_val["name"]
    assert chosen in ("remove<5px", "opening")  # both clean val perfectly; plain does not
    assert result.variants["plain"]["val_mean_iou"] < result.variants[chosen]["val_mean_iou"] == 1.0
    assert result.variants[chosen]["test_mean_iou"] < result.variants["plain"]["test_mean_iou"]
    assert result.mean_iou == 1.0 and result.with_selected["mean_iou"] < 1.0  # reported before and after
    assert result.saved_predictions == ["test0"] and set(result.per_image_iou) == {"test0"}
    assert np.asarray(Image.open(out / "test0.png"))[0, 0] == 0  # the chosen option's labels are saved


def test_scores_come_from_original_sizes_streamed_a_few_images_at_a_time(tmp_path):
    """Every original pixel counts once, ignored pixels not at all, whatever the image's size; images come in
    groups of at most ``group_pixels`` (a larger one alone), in their order."""
    rng = np.random.default_rng(0)
    shapes = [(37, 53), (20, 11), (10, 10), (5, 4)]
    masks = [rng.integers(0, 3, shape).astype(np.uint8) for shape in shapes]
    masks[1][:5] = 255  # ignored
    pairs = _originals({"test": masks})["test"]
    seen = []

    def label_maps(images):
        seen.append([image.shape for image in images])
        first = sum(map(len, seen[:-1]))
        return [{"perfect": masks[first + i] % 255, "zeros": np.zeros(image.shape[:2], np.uint8)}
                for i, image in enumerate(images)]

    out = tmp_path / "out"
    out.mkdir()
    scores, per_image = evaluation.score_images(iter(pairs), label_maps, ["a", "b", "c"], keep="zeros",
                                                saver=evaluation.PredictionSaver(out, first=8), group_pixels=400)
    assert seen == [[(37, 53, 3)], [(20, 11, 3), (10, 10, 3), (5, 4, 3)]]
    cm = np.array(scores["perfect"]["confusion_matrix"])
    assert cm.sum() == 37 * 53 + 20 * 11 - 5 * 11 + 100 + 20 and (cm == np.diag(np.diag(cm))).all()
    assert scores["perfect"]["mean_iou"] == 1.0 and scores["zeros"]["mean_iou"] < 0.5
    assert set(per_image) == {"test0", "test1", "test2", "test3"} and Image.open(out / "test0.png").size == (53, 37)


def test_image_mean_iou_counts_invented_objects():
    truth = np.zeros((10, 10), np.uint8)
    invented = truth.copy()
    invented[:2, :2] = 1
    assert metrics.image_mean_iou(metrics.confusion_matrix(truth, truth, 2)) == 1.0
    assert metrics.image_mean_iou(metrics.confusion_matrix(truth, invented, 2)) == (0.96 + 0.0) / 2


def test_prediction_pngs_are_capped_to_the_first_ones_and_the_best_and_worst(tmp_path):
    """20 images, 3 first ones kept: 7 PNGs, and the best and worst two are those notebook 05 ranks so."""
    ious = [0.5, 0.9, 0.1, 0.9, 0.3, 0.7, 0.95, 0.1, 0.6, 0.2, 0.8, 0.4, 0.05, 0.5, 0.95, 0.3, 0.6, 0.7, 0.2, 0.1]
    saver = evaluation.PredictionSaver(tmp_path, first=3)
    for i, iou in enumerate(ious):
        saver.offer(f"im{i:02d}", iou, np.full((2, 3), i, np.uint8))
    saved = saver.finish()
    best, worst = metrics.best_and_worst({f"im{i:02d}": iou for i, iou in enumerate(ious)})
    assert best == ["im14", "im06"] and worst == ["im12", "im02"]  # ties: the later image ranks higher
    assert saved == ["im00", "im01", "im02", "im14", "im06", "im12"]
    assert sorted(p.stem for p in tmp_path.iterdir()) == sorted(saved)
    assert np.asarray(Image.open(tmp_path / "im14.png"))[0, 0] == 14  # each file holds its own image's labels
    assert len(saver.best) == len(saver.worst) == 2  # no more label maps held than that


def _report(per_model: dict) -> "Metrics":
    """A metrics record of models given as {name: ({class: test IoU}, {option: test mean IoU}, chosen option)}."""
    from seglab.records import Metrics, ModelScores

    classes = list(next(iter(per_model.values()))[0])
    models = {}
    for name, (ious, options, chosen) in per_model.items():
        none = dict.fromkeys(classes)
        models[name] = ModelScores(float(np.mean(list(ious.values()))), 0, 0, 0, ious, none, none, none, [],
                                   selected_on_val={"name": chosen},
                                   variants={o: {"val_mean_iou": v, "test_mean_iou": v} for o, v in options.items()})
    return Metrics("test", "original", classes, models)


def test_a_class_under_half_the_mean_is_named_and_none_otherwise():
    fine = {"background": 0.99, "disc": 0.9, "speck": 0.6}
    lost = {"background": 0.99, "disc": 0.9, "speck": 0.2}
    report = _report({"unet": (fine, {"plain": 0.8}, "plain"), "fpn": (lost, {"plain": 0.7}, "plain")})
    sentence = evaluation.weak_classes(report)
    assert "fpn's speck (0.20 against a mean of 0.70)" in sentence and "unet" not in sentence
    assert "no model misses a class" in evaluation.weak_classes(_report({"unet": (fine, {"plain": 0.8}, "plain")}))


def test_the_options_table_bolds_the_choice_and_says_what_costs_most():
    options = {"plain": 0.94, "tta": 0.95, "remove<16": 0.72}
    table = evaluation.options_markdown(_report({"unet": ({"a": 0.9, "b": 0.9}, options, "tta")}))
    assert "| tta | **0.950** |" in table and "| remove<16 | 0.720 |" in table
    assert "The costliest option is remove<16: it takes unet from 0.94 to 0.72" in table
