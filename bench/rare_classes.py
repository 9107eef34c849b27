"""Do class weights and rare-class sampling help the rare classes? U-Net under four recipes at one time budget.

No weighting, class weights, sampling (``train.sampling=rare``) and both: each runs notebooks 00 to
04 into its own run folder, trains for ``--minutes`` (``train.time_budget_minutes``, with epochs
enough for the budget to be the limit) and is scored on the test split by step 04. The table gives
the model's own per-class test IoU (no test-time augmentation or post-processing, which would blur
the comparison and cost time).

    python bench/rare_classes.py --config configs/demo.yaml --minutes 3 \\
        [--set data.source=folder --set data.root=/tmp/liver_axial ...] [--out runs/rare_classes]

Class weights follow the config's ``class_weights.scheme`` (``balanced`` where it is ``none``);
sampling its ``train.rare_share`` and ``train.rare_threshold``. Training four models takes four
budgets plus the other steps; train nothing else meanwhile, or the budgets buy unequal work.
"""
import argparse
from pathlib import Path

from seglab.config import load_config
from seglab.records import DatasetRecord, Metrics, TrainingRecord
from seglab.rundir import RunDir
from seglab.runner import run_series
from seglab.stats import rare_classes


def recipes(cfg) -> dict:
    """The four settings, as overrides."""
    weights = f"class_weights.scheme={cfg.class_weights.scheme if cfg.class_weights.scheme != 'none' else 'balanced'}"
    unweighted, sampled, plain = "class_weights.scheme=none", "train.sampling=rare", "train.sampling=none"
    return {"no weighting": [unweighted, plain], "class weights": [weights, plain],
            "sampling": [unweighted, sampled], "both": [weights, sampled]}


def table(results: dict, classes: list, rare: list) -> str:
    """Markdown: one row per recipe, the rare classes marked."""
    names = [f"{name} (rare)" if c in rare else name for c, name in enumerate(classes)]
    lines = ["| recipe | epochs | mean IoU | " + " | ".join(f"IoU {n}" for n in names) + " |",
             "|---" * (3 + len(classes)) + "|"]
    for recipe, (scores, summary) in results.items():
        cells = [scores.mean_iou, *(scores.per_class_iou[c] for c in classes)]
        lines.append(f"| {recipe} | {summary.epochs} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget of each recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.mode=tile (repeatable)")
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--recipes", nargs="+", metavar="RECIPE", help="a subset of the four, by name with _ for spaces "
                        "(e.g. class_weights both)")
    parser.add_argument("--out", help="folder for the four run folders (default: the config's run_dir + _rare_classes)")
    args = parser.parse_args()
    overrides = ["train.epochs=1000", "evaluation.tta=false", "evaluation.postprocess=false", *args.overrides,
                 f"train.time_budget_minutes={args.minutes}", f"model.architectures=[{args.arch}]"]
    cfg = load_config(args.config, overrides)
    out = Path(args.out or f"{cfg.run_dir}_rare_classes").resolve()
    chosen = recipes(cfg)
    if args.recipes:
        unknown = set(args.recipes) - {name.replace(" ", "_") for name in chosen}
        if unknown:
            parser.error(f"unknown recipe(s) {', '.join(sorted(unknown))}; choose from "
                         + ", ".join(name.replace(" ", "_") for name in chosen))
        chosen = {name: extra for name, extra in chosen.items() if name.replace(" ", "_") in args.recipes}
    results = {}
    for recipe, extra in chosen.items():
        run_dir = out / recipe.replace(" ", "_")
        print(f"--- {recipe} ({', '.join(extra)}) in {run_dir}", flush=True)
        run_series(args.config, overrides + extra, str(run_dir), only=["00", "01", "02", "03", "04"])
        run = RunDir(run_dir)
        results[recipe] = (run.read(Metrics).models[args.arch], run.read(TrainingRecord).models[args.arch])
    dataset = run.read(DatasetRecord)
    rare = rare_classes(dataset.splits["train"].pixels, cfg.train.rare_threshold)
    print(f"\n{args.arch}, {args.minutes:g} min of training each, test split at original size; "
          f"rare share {cfg.train.rare_share:g}, threshold {cfg.train.rare_threshold:g}\n")
    print(table(results, dataset.classes, rare))


if __name__ == "__main__":
    main()
