"""Step 04: every model scored the same way, from one confusion matrix per split.

Options that could be tuned (test-time flips, removing small components, opening) are
chosen on the validation split; the test split only reports, before and after.
"""
from __future__ import annotations

import csv
import io
import itertools

import numpy as np
from PIL import Image
from skimage import morphology

from seglab import data_loading, inference, metrics, pipeline, training
from seglab.artifacts import RunDir, atomic_dir, read_json, write_json, write_text


def split_truth(run: RunDir, manifest: dict, split: str) -> list[np.ndarray]:
    _, masks = data_loading.split_paths(run, manifest, split)
    return [np.asarray(Image.open(p)) for p in masks]


def predict_probabilities(model, image_paths, norm: dict, tta: bool = False, batch_size: int = 8):
    """Softmax maps per image; with ``tta`` the mean over the four flips, each flipped back."""
    for batch in pipeline.make_image_dataset(image_paths, norm, batch_size):
        yield from inference.predict_batch(model, batch.numpy(), tta)


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
        if min_size:
            kept = morphology.remove_small_objects(kept, max_size=min_size - 1)
        out[region & ~kept] = 0
    return out


def score_split(predictions, truths, classes) -> dict:
    cm = sum(metrics.confusion_matrix(t, p, len(classes)) for t, p in zip(truths, predictions))
    return {**metrics.scores(cm, classes), "confusion_matrix": cm.tolist()}


def per_image_iou(predictions, truths, ids, num_classes) -> dict:
    """Mean IoU of each image over the classes in its truth or prediction, so an invented object counts."""
    result = {}
    for i, t, p in zip(ids, truths, predictions):
        ious = metrics.scores(metrics.confusion_matrix(t, p, num_classes), list(range(num_classes)))["per_class_iou"]
        result[i] = float(np.mean([v for v in ious.values() if v is not None]))
    return result


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


def evaluate_model(model, summary: dict, cfg, run: RunDir, manifest: dict) -> tuple[dict, list]:
    """Pick the variant with the best validation mean IoU; report plain and chosen on test."""
    classes = manifest["classes"]
    norm = summary["normalization"]
    found = {}
    for split in ("val", "test"):
        images, _ = data_loading.split_paths(run, manifest, split)
        for tta in {v["tta"] for v in _variants(cfg)}:
            found[split, tta] = [np.argmax(p, -1).astype(np.uint8)
                                 for p in predict_probabilities(model, images, norm, tta, cfg.inference.batch_size)]
    truths = {s: split_truth(run, manifest, s) for s in ("val", "test")}
    table = {}
    for variant in _variants(cfg):
        row = {}
        for split in ("val", "test"):
            labels = [postprocess(p, variant["min_component_size"], variant["opening"]) for p in found[split, variant["tta"]]]
            row[split] = labels
            row[f"{split}_mean_iou"] = score_split(labels, truths[split], classes)["mean_iou"]
        table[_name(variant)] = {**variant, **row}
    simplest_first = lambda k: (table[k]["val_mean_iou"], -(table[k]["tta"] + bool(table[k]["min_component_size"]) + table[k]["opening"]))
    chosen = max(table, key=simplest_first)  # on a tie, the variant with fewer options
    ids = data_loading.split_ids(manifest, "test")
    plain = score_split(table["plain"]["test"], truths["test"], classes)
    after = score_split(table[chosen]["test"], truths["test"], classes)
    result = {
        **plain,
        "per_image_iou": per_image_iou(table[chosen]["test"], truths["test"], ids, len(classes)),  # as saved
        "selected_on_val": {k: table[chosen][k] for k in ("tta", "min_component_size", "opening")} | {"name": chosen},
        "variants": {k: {"val_mean_iou": v["val_mean_iou"], "test_mean_iou": v["test_mean_iou"]} for k, v in table.items()},
        "with_selected": {k: after[k] for k in ("mean_iou", "mean_dice", "pixel_accuracy", "per_class_iou")},
    }
    return result, table[chosen]["test"]


def evaluate_all(cfg, run: RunDir, log=print) -> dict:
    """Score every trained model on the test split; write metrics.json, comparison.csv and predictions/."""
    manifest = data_loading.load_manifest(run)
    summaries = training.load_training(run)
    ids = data_loading.split_ids(manifest, "test")
    run.start("evaluation")
    results = {}
    with atomic_dir(run.path("predictions")) as out:
        for arch, summary in summaries.items():
            log(f"evaluating {arch} ...")
            model = training.load_model(run.path(summary["model"]))
            results[arch], labels = evaluate_model(model, summary, cfg, run, manifest)
            (out / arch).mkdir()
            for item_id, label in zip(ids, labels):
                Image.fromarray(label).save(out / arch / f"{item_id}.png")
    report = {"split": "test", "classes": manifest["classes"], "models": results}
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
    """What a trained model must beat: the majority class everywhere, and the same network untrained."""
    manifest = data_loading.load_manifest(run)
    classes = manifest["classes"]
    truths = split_truth(run, manifest, split)
    train_pixels = np.array(manifest["splits"]["train"]["pixels"])
    results = {"majority class": score_split([np.full_like(t, int(np.argmax(train_pixels))) for t in truths],
                                             truths, classes)}
    images, _ = data_loading.split_paths(run, manifest, split)
    norm = pipeline.encoder_normalization(cfg.model.backbone)
    for arch in cfg.model.architectures:
        untrained = training.build_model(arch, cfg.model.backbone, len(classes), manifest["image_size"], None,
                                         cfg.model.pspnet_downsample_factor)
        labels = [np.argmax(p, -1) for p in predict_probabilities(untrained, images, norm)]
        results[f"{arch} untrained"] = score_split(labels, truths, classes)
    return results


def score_trained(run: RunDir, split: str = "val") -> dict:
    """Dataset-level scores of each trained model on ``split``, no options."""
    manifest = data_loading.load_manifest(run)
    truths = split_truth(run, manifest, split)
    images, _ = data_loading.split_paths(run, manifest, split)
    results = {}
    for arch, summary in training.load_training(run).items():
        model = training.load_model(run.path(summary["model"]))
        labels = [np.argmax(p, -1) for p in predict_probabilities(model, images, summary["normalization"])]
        results[arch] = score_split(labels, truths, manifest["classes"])
    return results
