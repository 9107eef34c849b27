"""Step 04: every model scored as its user gets it, from one confusion matrix per split.

Each validation and test image is predicted at its original size, by the same
:class:`~seglab.predictor.Predictor` that notebook 06 and ``seglab predict`` use, and
compared with its original mask. Images stream through a few at a time (as many as one batch
of windows holds, predicted together): a confusion matrix per (option, split) is all that is
kept, so memory does not grow with the dataset.
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

from seglab import metrics, models, predictor
from seglab.atomic import atomic_dir, write_text
from seglab.normalization import input_normalization
from seglab.predictor import Predictor
from seglab.records import DatasetRecord, Metrics, ModelScores, TrainingRecord
from seglab.rundir import RunDir
from seglab.shards import original_pairs


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


def groups(pairs, pixels: int):
    """Consecutive ``(stem, image, mask)`` pairs in lists of at most ``pixels`` image pixels (an image larger than
    that alone): images predicted together share the model's batches, and memory stays bounded."""
    group, total = [], 0
    for pair in pairs:
        size = pair[1].shape[0] * pair[1].shape[1]
        if group and total + size > pixels:
            yield group
            group, total = [], 0
        group.append(pair)
        total += size
    if group:
        yield group


def score_images(pairs, label_maps: Callable[[list], list], classes: list, keep: str | None = None,
                 saver: PredictionSaver | None = None, desc: str = "scoring", group_pixels: int = 0) -> tuple[dict, dict]:
    """Stream ``(stem, image, mask)`` pairs, in :func:`groups` of ``group_pixels``, through
    ``label_maps(images) -> [{name: labels}, ...]``.

    Returns the scores of every name from its confusion matrix over all images, and, for
    the name ``keep``, each image's mean IoU (its labels are offered to ``saver``).
    """
    n = len(classes)
    totals, per_image = {}, {}
    for group in groups(tqdm(pairs, desc=desc), group_pixels):
        for (stem, _, truth), maps in zip(group, label_maps([image for _, image, _ in group])):
            for name, labels in maps.items():
                cm = metrics.confusion_matrix(truth, labels, n)
                totals[name] = totals.get(name, 0) + cm
                if name == keep:
                    per_image[stem] = metrics.image_mean_iou(cm)
                    if saver is not None:
                        saver.offer(stem, per_image[stem], labels)
    scores = {name: {**metrics.scores(cm, classes), "confusion_matrix": cm.tolist()} for name, cm in totals.items()}
    return scores, per_image


def _variants(cfg, card):
    """Every option to try on validation; test-time flips only for a model trained with mirrors."""
    tta = [False, True] if cfg.evaluation.tta and card.mirror_axes else [False]
    post = [(size, opening) for size in cfg.evaluation.min_component_sizes for opening in (False, True)] \
        if cfg.evaluation.postprocess else [(0, False)]
    return [{"tta": t, "min_component_size": s, "opening": o} for t, (s, o) in itertools.product(tta, post)]


def _name(variant: dict) -> str:
    parts = ["tta" if variant["tta"] else ""] + ([f"remove<{variant['min_component_size']}px"]
                                                  if variant["min_component_size"] else [])
    parts += ["opening"] if variant["opening"] else []
    return "+".join(p for p in parts if p) or "plain"


def variant_labels(model: Predictor, images: list, variants: list[dict], cfg) -> list[dict]:
    """The label map of every option for each image, from one prediction: plain and flipped in the same batches."""
    views = tuple({v["tta"] for v in variants})
    return [{_name(v): postprocess(np.argmax(probabilities[v["tta"]], -1).astype(np.uint8), v["min_component_size"],
                                   v["opening"]) for v in variants}
            for probabilities in predictor.predict_views_of_images(model, images, cfg.inference.tile_overlap,
                                                                   cfg.inference.batch_size, views)]


def batch_pixels(model: Predictor, batch_size: int) -> int:
    """The image pixels one batch of ``batch_size`` windows holds: the size of the groups of images predicted together."""
    return batch_size * model.tile ** 2


def evaluate_model(model: Predictor, cfg, run: RunDir, dataset: DatasetRecord, out_dir: Path | None = None) -> ModelScores:
    """Pick the option with the best validation mean IoU; report plain and chosen on test."""
    classes, variants = dataset.classes, _variants(cfg, model.card)
    label_maps = lambda images: variant_labels(model, images, variants, cfg)
    group = batch_pixels(model, cfg.inference.batch_size)
    val, _ = score_images(original_pairs(run, dataset, "val"), label_maps, classes, desc="validation", group_pixels=group)
    options = {_name(v): v for v in variants}
    simplest_first = lambda k: (val[k]["mean_iou"], -sum(map(bool, options[k].values())))
    chosen = max(val, key=simplest_first)  # on a tie, the option with fewer parts
    saver = PredictionSaver(out_dir, cfg.evaluation.saved_predictions) if out_dir is not None else None
    test, per_image = score_images(original_pairs(run, dataset, "test"), label_maps, classes,
                                   keep=chosen, saver=saver, desc="test", group_pixels=group)
    return ModelScores(
        **test["plain"],
        per_image_iou=per_image,  # of the chosen option
        saved_predictions=saver.finish() if saver else [],  # predictions/ARCH/STEM.png: the first ones, best, worst
        selected_on_val={**options[chosen], "name": chosen},
        variants={k: {"val_mean_iou": val[k]["mean_iou"], "test_mean_iou": test[k]["mean_iou"]} for k in options},
        with_selected={k: test[chosen][k] for k in ("mean_iou", "mean_dice", "pixel_accuracy", "per_class_iou")})


def evaluate_all(cfg, run: RunDir, log=print) -> Metrics:
    """Run step 04: score every trained model on the test split; metrics.json, comparison.csv and predictions/."""
    with run.begin("evaluation", cfg) as step:
        dataset, trained = step.read(DatasetRecord), step.read(TrainingRecord)
        results = {}
        with atomic_dir(run.path("predictions")) as out:
            for arch, summary in trained.models.items():
                log(f"evaluating {arch} ...")
                (out / arch).mkdir()
                results[arch] = evaluate_model(Predictor.load(run.path(summary.model)), cfg, run, dataset, out / arch)
        report = Metrics("test", "original", dataset.classes, results)
        step.save(report)
        step.wrote(write_text(run.path("comparison.csv"), comparison_csv(report)))
        step.wrote("predictions")
        step.finish()
    return report


def comparison_rows(report: Metrics) -> list[dict]:
    rows = []
    for name, m in report.models.items():
        row = {"model": name, "mean_iou": m.mean_iou, "mean_dice": m.mean_dice, "pixel_accuracy": m.pixel_accuracy,
               "frequency_weighted_iou": m.frequency_weighted_iou}
        row.update({f"iou_{c}": m.per_class_iou[c] for c in report.classes})
        row.update({"selected_on_val": m.selected_on_val["name"], "mean_iou_with_selected": m.with_selected["mean_iou"]})
        rows.append(row)
    return rows


def comparison_csv(report: Metrics) -> str:
    rows = comparison_rows(report)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows([{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows])
    return out.getvalue()


def comparison_markdown(report: Metrics) -> str:
    """The comparison table as Markdown, for the notebook and the README."""
    classes = report.classes
    head = ["model", "mean IoU", *[f"IoU {c}" for c in classes], "mean Dice", "pixel acc.", "chosen on val", "mean IoU after"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in comparison_rows(report):
        cells = [r["model"], r["mean_iou"], *[r[f"iou_{c}"] for c in classes], r["mean_dice"], r["pixel_accuracy"],
                 r["selected_on_val"], r["mean_iou_with_selected"]]
        lines.append("| " + " | ".join("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |")
    return "\n".join(lines)


def options_markdown(report: Metrics) -> str:
    """Test mean IoU of every model under every option (rows), the chosen one in bold, and the sentence that says
    what the table shows: the option that costs most, and which class it costs."""
    names = list(report.models)
    options = list(next(iter(report.models.values())).variants)
    lines = ["| option | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for option in options:
        cells = [(f"**{m.variants[option]['test_mean_iou']:.3f}**" if m.selected_on_val["name"] == option
                  else f"{m.variants[option]['test_mean_iou']:.3f}") for m in report.models.values()]
        lines.append(f"| {option} | " + " | ".join(cells) + " |")
    drop = {(name, option): m.variants["plain"]["test_mean_iou"] - m.variants[option]["test_mean_iou"]
            for name, m in report.models.items() for option in options}
    (name, option), loss = max(drop.items(), key=lambda kv: kv[1])
    said = ("Bold: the option validation chose for each model. "
            + (f"The costliest option is {option}: it takes {name} from "
               f"{report.models[name].variants['plain']['test_mean_iou']:.2f} to "
               f"{report.models[name].variants[option]['test_mean_iou']:.2f} mean IoU"
               + (", since removing small components also erases small true objects." if "remove" in option else ".")
               if loss > 0.005 else "No option changes any model by more than 0.005."))
    return "\n".join(lines) + "\n\n" + said


def weak_classes(report: Metrics) -> str:
    """A sentence naming each class whose test IoU is under half its model's mean IoU: a class the model nearly misses."""
    weak = [f"{name}'s {c} ({iou:.2f} against a mean of {m.mean_iou:.2f})" for name, m in report.models.items()
            for c, iou in m.per_class_iou.items() if iou is not None and iou < m.mean_iou / 2]
    if not weak:
        return "Every class scores at least half its model's mean IoU: no model misses a class."
    return ("Nearly missed, with an IoU under half the model's mean: " + "; ".join(weak)
            + ". Notebook 05's confusion matrices show where those pixels went.")


def baselines(cfg, run: RunDir, split: str = "val") -> dict:
    """Each trained model beside what it must beat: the majority class everywhere, and the first architecture
    untrained (one is enough to show what training adds; each costs a build and a pass).

    One pass over the split's original images, scored like notebook 04 (no options).
    """
    dataset = run.read(DatasetRecord)
    majority = int(np.argmax(dataset.splits["train"].pixels))
    predictors = {arch: Predictor.load(run.path(s.model)) for arch, s in run.read(TrainingRecord).models.items()}
    norm = input_normalization(dataset.images, cfg.model.backbone)
    spec = models.ModelSpec.of(cfg.model.architectures[0], cfg, dataset)
    spec.encoder_weights = None
    predictors[f"{spec.arch} untrained"] = Predictor(models.build_model(spec), models.card_for(spec, dataset, norm, []))

    def label_maps(images):
        maps = [{"majority class": np.full(image.shape[:2], majority, np.uint8)} for image in images]
        for name, model in predictors.items():
            for image_maps, p in zip(maps, predictor.predict_views_of_images(model, images, cfg.inference.tile_overlap,
                                                                             cfg.inference.batch_size)):
                image_maps[name] = np.argmax(p[False], -1)
        return maps

    group = min(batch_pixels(model, cfg.inference.batch_size) for model in predictors.values())
    scores, _ = score_images(original_pairs(run, dataset, split), label_maps, dataset.classes, desc=split,
                             group_pixels=group)
    return scores
