import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, jaccard_score, precision_score, recall_score

from seglab import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_scikit_learn_on_random_label_maps(seed):
    rng = np.random.default_rng(seed)
    truth = rng.choice(5, size=(6, 32, 32), p=[0.6, 0.2, 0.1, 0.07, 0.03])
    prediction = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 5, truth.shape))
    cm = sum(metrics.confusion_matrix(t, p, 5) for t, p in zip(truth, prediction))  # accumulated image by image
    y, p = truth.ravel(), prediction.ravel()
    np.testing.assert_array_equal(cm, confusion_matrix(y, p, labels=range(5)))
    s = metrics.scores(cm, list("abcde"))
    np.testing.assert_allclose(list(s["per_class_iou"].values()), jaccard_score(y, p, average=None, labels=range(5)))
    np.testing.assert_allclose(s["mean_iou"], jaccard_score(y, p, average="macro", labels=range(5)))
    np.testing.assert_allclose(s["frequency_weighted_iou"], jaccard_score(y, p, average="weighted", labels=range(5)))
    np.testing.assert_allclose(list(s["per_class_dice"].values()), f1_score(y, p, average=None, labels=range(5)))
    np.testing.assert_allclose(list(s["per_class_precision"].values()), precision_score(y, p, average=None, labels=range(5)))
    np.testing.assert_allclose(list(s["per_class_recall"].values()), recall_score(y, p, average=None, labels=range(5)))
    np.testing.assert_allclose(s["pixel_accuracy"], accuracy_score(y, p))


def test_dataset_level_differs_from_averaging_batches():
    """Two images: class 1 is absent from the first. Per-image averaging would count it as 0 there."""
    truth = np.array([[[0, 0], [0, 0]], [[1, 1], [1, 0]]])
    prediction = np.array([[[0, 0], [0, 1]], [[1, 1], [1, 0]]])
    cm = sum(metrics.confusion_matrix(t, q, 2) for t, q in zip(truth, prediction))
    assert metrics.scores(cm, ["bg", "fg"])["per_class_iou"]["fg"] == pytest.approx(3 / 4)
    per_image = [metrics.scores(metrics.confusion_matrix(t, q, 2), ["bg", "fg"])["per_class_iou"]["fg"] for t, q in zip(truth, prediction)]
    assert np.mean(per_image) != pytest.approx(3 / 4)


def test_a_class_absent_from_truth_and_prediction_is_left_out_of_the_mean():
    truth = np.array([0, 0, 1, 1])
    cm = metrics.confusion_matrix(truth, truth, 3)
    s = metrics.scores(cm, ["bg", "fg", "never"])
    assert s["per_class_iou"]["never"] is None and s["mean_iou"] == 1.0
