"""Step 04: every model scored as its user gets it, from one confusion matrix per split.

Each validation and test image is predicted at its original size, by the same
:class:`~seglab.inference.Predictor` that notebook 06 and ``seglab predict`` use, and
compared with its original mask. Images stream through one at a time: a confusion matrix
per (option, split) is all that is kept, so memory does not grow with the dataset.
Options that could be tuned (test-time flips, removing small components, opening) are
chosen on the validation split; the test split only reports, before and after.

Each test image's mean IoU goes to ``metrics.json``; prediction PNGs, which people look at,
are written for a bounded number of test images per model (``evaluation.saved_predictions``
first ones, plus the best and the worst two), so the run folder does not grow with the test set.
"""
from __future__ import annotations

import csv
import heapq
import io
import itertools
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from skimage import measure, morphology
from tqdm import tqdm

from seglab import data_loading, inference, metrics, pipeline, training
from seglab.artifacts import RunDir, atomic_dir, read_json, write_json, write_text


EXTREMES = 2  # the best and the worst this many test images per model keep their prediction PNG (notebook 05)


def postprocess(labels: np.ndarray, min_size: int = 0, opening: bool = False) -> np.ndarray:
    """Give background to specks of a class below ``min_size`` pixels, and to what an opening removes."""
    out = labels.copy()
    for c in np.unique(labels):
        if c == 0:
            continue
        region = labels == c
        kept = region
        if opening:
            kept = morphology.opening(kept, morphology.disk(1))
        if min_size:  # as morphology.remove_small_objects, whose arguments differ between scikit-image versions
            components = measure.label(kept, connectivity=1)
            kept = kept & (np.bincount(components.ravel()) >= min_size)[components]
        out[region & ~kept] = 0
    return out


def best_and_worst(per_image_iou: dict, count: int = EXTREMES) -> tuple[list[str], list[str]]:
    """The ``count`` images with the highest and with the lowest IoU; on a tie, the later image ranks higher."""
    ranked = sorted(per_image_iou, key=lambda i: per_image_iou[i])
    return ranked[::-1][:count], ranked[:count]


class PredictionSaver:
    """Writes ``STEM.png`` label maps for the first ``first`` images streamed through it and, at the end,
    for the best and worst ``extremes`` by IoU (as :func:`best_and_worst` ranks them). It holds at most
    ``2 * extremes`` label maps, whatever the number of images."""

    def __init__(self, out_dir: Path, first: int, extremes: int = EXTREMES):
        self.out_dir, self.first, self.extremes = Path(out_dir), first, extremes
        self.saved, self.best, self.worst, self.seen = [], [], [], 0

    def offer(self, stem: str, iou: float, labels: np.ndarray) -> None:
        if len(self.saved) < self.first:
            self._save(stem, labels)
        key = (iou, self.seen)  # the stream position breaks ties, as sorting the per-image dict does
        self.seen += 1
        for heap, sign in ((self.best, 1), (self.worst, -1)):
            entry = ((sign * key[0], sign * key[1]), stem, labels)
            if len(heap) < self.extremes:
                heapq.heappush(heap, entry)
            elif entry[0] > heap[0][0]:
                heapq.heapreplace(heap, entry)

    def finish(self) -> list[str]:
        for _, stem, labels in sorted(self.best, reverse=True) + sorted(self.worst, reverse=True):
            if stem not in self.saved:
                self._save(stem, labels)
        return self.saved

    def _save(self, stem: str, labels: np.ndarray) -> None:
        Image.fromarray(labels.astype(np.uint8)).save(self.out_dir / f"{stem}.png")
        self.saved.append(stem)


def score_images(pairs, label_maps: Callable[[np.ndarray], dict], classes: list, keep: str | None = None,
                 saver: PredictionSaver | None = None, desc: str = "scoring") -> tuple[dict, dict]:
    """Stream ``(stem, image, mask)`` pairs through ``label_maps(image) -> {name: labels}``.

    Returns the scores of every name from its confusion matrix over all images, and, for
    the name ``keep``, each image's mean IoU (its labels are offered to ``saver``).
    """
    n = len(classes)
    totals, per_image = {}, {}
    for stem, image, truth in tqdm(pairs, desc=desc):
        for name, labels in label_maps(image).items():
            cm = metrics.confusion_matrix(truth, labels, n)
            totals[name] = totals.get(name, 0) + cm
            if name == keep:
                per_image[stem] = metrics.image_mean_iou(cm)
                if saver is not None:
                    saver.offer(stem, per_image[stem], labels)
    scores = {name: {**metrics.scores(cm, classes), "confusion_matrix": cm.tolist()} for name, cm in totals.items()}
    return scores, per_image


def _variants(cfg):
    tta = [False, True] if cfg.evaluation.tta else [False]
    post = [(size, opening) for size in cfg.evaluation.min_component_sizes for opening in (False, True)] \
        if cfg.evaluation.postprocess else [(0, False)]
    return [{"tta": t, "min_component_size": s, "opening": o} for t, (s, o) in itertools.product(tta, post)]


def _name(variant: dict) -> str:
    parts = ["tta" if variant["tta"] else ""] + ([f"remove<{variant['min_component_size']}px"]
                                                  if variant["min_component_size"] else [])
    parts += ["opening"] if variant["opening"] else []
    return "+".join(p for p in parts if p) or "plain"


def variant_labels(predictor, image: np.ndarray, variants: list[dict], cfg) -> dict:
    """The label map of every option for one image; each test-time setting is predicted once."""
    probabilities = {tta: inference.predict_image(predictor, image, cfg.inference.tile_overlap, cfg.inference.batch_size, tta)
                     for tta in {v["tta"] for v in variants}}
    return {_name(v): postprocess(np.argmax(probabilities[v["tta"]], -1).astype(np.uint8), v["min_component_size"],
                                  v["opening"]) for v in variants}


def evaluate_model(predictor, cfg, run: RunDir, manifest: dict, out_dir: Path | None = None) -> dict:
    """Pick the option with the best validation mean IoU; report plain and chosen on test."""
    classes, variants = manifest["classes"], _variants(cfg)
    label_maps = lambda image: variant_labels(predictor, image, variants, cfg)
    val, _ = score_images(data_loading.original_pairs(run, manifest, "val"), label_maps, classes, desc="validation")
    options = {_name(v): v for v in variants}
    simplest_first = lambda k: (val[k]["mean_iou"], -sum(map(bool, options[k].values())))
    chosen = max(val, key=simplest_first)  # on a tie, the option with fewer parts
    saver = PredictionSaver(out_dir, cfg.evaluation.saved_predictions) if out_dir is not None else None
    test, per_image = score_images(data_loading.original_pairs(run, manifest, "test"), label_maps, classes,
                                   keep=chosen, saver=saver, desc="test")
    return {
        **test["plain"],
        "per_image_iou": per_image,  # of the chosen option
        "saved_predictions": saver.finish() if saver else [],  # predictions/ARCH/STEM.png: the first ones, best, worst
        "selected_on_val": {**options[chosen], "name": chosen},
        "variants": {k: {"val_mean_iou": val[k]["mean_iou"], "test_mean_iou": test[k]["mean_iou"]} for k in options},
        "with_selected": {k: test[chosen][k] for k in ("mean_iou", "mean_dice", "pixel_accuracy", "per_class_iou")},
    }


def evaluate_all(cfg, run: RunDir, log=print) -> dict:
    """Score every trained model on the test split; write metrics.json, comparison.csv and predictions/."""
    manifest = data_loading.load_manifest(run)
    summaries = training.load_training(run)
    run.start("evaluation")
    results = {}
    with atomic_dir(run.path("predictions")) as out:
        for arch, summary in summaries.items():
            log(f"evaluating {arch} ...")
            (out / arch).mkdir()
            predictor = inference.Predictor.load(run.path(summary["model"]))
            results[arch] = evaluate_model(predictor, cfg, run, manifest, out / arch)
    report = {"split": "test", "resolution": "original", "classes": manifest["classes"], "models": results}
    write_json(run.path("metrics.json"), report)
    write_text(run.path("comparison.csv"), comparison_csv(report))
    run.record("evaluation", {"metrics": "metrics.json", "comparison": "comparison.csv", "predictions": "predictions"},
               config=cfg, inputs=("data", "training"))
    return report


def comparison_rows(report: dict) -> list[dict]:
    rows = []
    for name, m in report["models"].items():
        row = {"model": name, "mean_iou": m["mean_iou"], "mean_dice": m["mean_dice"],
               "pixel_accuracy": m["pixel_accuracy"], "frequency_weighted_iou": m["frequency_weighted_iou"]}
        row.update({f"iou_{c}": m["per_class_iou"][c] for c in report["classes"]})
        row.update({"selected_on_val": m["selected_on_val"]["name"], "mean_iou_with_selected": m["with_selected"]["mean_iou"]})
        rows.append(row)
    return rows


def comparison_csv(report: dict) -> str:
    rows = comparison_rows(report)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows([{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows])
    return out.getvalue()


def comparison_markdown(report: dict) -> str:
    """The comparison table as Markdown, for the notebook and the README."""
    classes = report["classes"]
    head = ["model", "mean IoU", *[f"IoU {c}" for c in classes], "mean Dice", "pixel acc.", "chosen on val", "mean IoU after"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in comparison_rows(report):
        cells = [r["model"], r["mean_iou"], *[r[f"iou_{c}"] for c in classes], r["mean_dice"], r["pixel_accuracy"],
                 r["selected_on_val"], r["mean_iou_with_selected"]]
        lines.append("| " + " | ".join("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |")
    return "\n".join(lines)


def load_metrics(run: RunDir) -> dict:
    return read_json(run.output("evaluation", "metrics"))


def baselines(cfg, run: RunDir, split: str = "val") -> dict:
    """Each trained model beside what it must beat: the majority class everywhere, and the same network untrained.

    One pass over the split's original images, scored like notebook 04 (no options).
    """
    manifest = data_loading.load_manifest(run)
    classes = manifest["classes"]
    majority = int(np.argmax(manifest["splits"]["train"]["pixels"]))
    predictors = {arch: inference.Predictor.load(run.path(s["model"])) for arch, s in training.load_training(run).items()}
    norm = pipeline.input_normalization(manifest["image"], cfg.model.backbone)
    for arch in cfg.model.architectures:
        untrained = training.build_model(arch, cfg.model.backbone, len(classes), manifest["image_size"], None,
                                         cfg.model.pspnet_downsample_factor, channels=manifest["image"]["channels"])
        predictors[f"{arch} untrained"] = inference.Predictor(untrained, classes, manifest["colors"], norm,
                                                              manifest["image_size"], tuple(manifest["pixel_scale"]))

    def label_maps(image):
        maps = {"majority class": np.full(image.shape[:2], majority, np.uint8)}
        for name, predictor in predictors.items():
            maps[name] = np.argmax(inference.predict_image(predictor, image, cfg.inference.tile_overlap,
                                                           cfg.inference.batch_size), -1)
        return maps

    scores, _ = score_images(data_loading.original_pairs(run, manifest, split), label_maps, classes, desc=split)
    return scores
