"""Command line: ``run`` executes the notebook series headless; ``predict`` segments new images;
``export`` writes a trained model as SavedModel, TFLite or ONNX."""
from __future__ import annotations

import argparse
import sys

from seglab.config import ConfigError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seglab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the notebooks in order into a run folder")
    run.add_argument("--config", default="configs/demo.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    run.add_argument("--run-dir", help="run folder (default: the config's run_dir)")
    run.add_argument("--only", nargs="+", metavar="NN", help="run only the notebooks whose names start so, e.g. 00 01")
    run.add_argument("--jobs", type=int, help="notebooks at a time where neither reads the other's outputs "
                                              "(default: 2 without a GPU, 1 with one)")
    render = commands.add_parser("render", help="run the demo and write the executed notebooks and README results")
    render.add_argument("--cells-only", action="store_true",
                        help="only stamp the set-up cell, parameters and Colab badges into notebooks/ and README, no run")
    predict = commands.add_parser("predict", help="masks for new images of any size with a trained model")
    predict.add_argument("--model", required=True, help="RUN_DIR/models/NAME.keras (its card NAME.json lies beside it)")
    predict.add_argument("--input", required=True, help="an image or a folder of images")
    predict.add_argument("--output", required=True, help="folder for masks, colour masks, overlays, class_areas.csv")
    predict.add_argument("--tile", type=int, help="window size; must be the model's input size (the default)")
    predict.add_argument("--overlap", type=float, default=0.5, help="overlap between windows, 0 to 0.9")
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--tta", action="store_true",
                         help="average over the mirrors the model was trained with (two to four times slower)")
    predict.add_argument("--no-overlays", action="store_true")
    predict.add_argument("--max-megapixels", type=float, default=256.0,
                         help="refuse an image that decodes to more (from its header, before reading it)")
    export = commands.add_parser("export", help="a trained model as SavedModel, TFLite or ONNX, runnable without seglab")
    export.add_argument("--model", required=True, help="RUN_DIR/models/NAME.keras (its card NAME.json lies beside it)")
    export.add_argument("--format", required=True, help="savedmodel, tflite or onnx")
    export.add_argument("--output", help="folder for the export and its NAME.export.json (default: RUN_DIR/export)")
    export.add_argument("--quantize", help="tflite only: float16 or int8 weights (activations stay float)")
    args = parser.parse_args(argv)
    if args.command == "predict":
        return _predict(args)
    if args.command == "export":
        return _export(args)

    from seglab.runner import NotebookFailed, run_series

    if args.command == "run" and args.jobs is not None and args.jobs < 1:
        print(f"error: --jobs {args.jobs} must be at least 1", file=sys.stderr)
        return 1

    try:
        if args.command == "render":
            from seglab.render import render, stamp_notebooks

            if args.cells_only:
                print("stamped: " + (", ".join(stamp_notebooks()) or "nothing changed"))
            else:
                render()
            return 0
        timings = run_series(args.config, args.overrides, args.run_dir, args.only, jobs=args.jobs)
    except (ConfigError, NotebookFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"series finished in {timings.series:.0f} s: "
          + ", ".join(f"{k} {v} s" for k, v in timings.notebooks.items()))
    return 0


def _predict(args) -> int:
    from seglab import inference
    from seglab.atomic import NotOurs
    from seglab.jsonrecord import MissingInput
    from seglab.predictor import Predictor

    if not 0 <= args.overlap < 1:
        print(f"error: --overlap {args.overlap} must be in [0, 1)", file=sys.stderr)
        return 1
    try:
        predictor = Predictor.load(args.model, args.tile)
        predictor.max_pixels = int(args.max_megapixels * 1e6)
        result = inference.predict_folder(predictor, args.input, args.output, args.overlap, args.batch_size,
                                          args.tta, overlays=not args.no_overlays,
                                          log=lambda line: print(line, file=sys.stderr))
    except (FileNotFoundError, ValueError, MissingInput, NotOurs) as e:  # DataError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(result['predicted'])} image(s) segmented into {args.output}"
          + (f"; {len(result['failed'])} unreadable: {', '.join(result['failed'])}" if result["failed"] else ""))
    return 1 if result["failed"] else 0


def _export(args) -> int:
    from seglab import export
    from seglab.atomic import NotOurs
    from seglab.jsonrecord import MissingInput

    try:
        exporter = export.Exporter(args.model)
        path = exporter.write(args.format, args.output, args.quantize)
    except (FileNotFoundError, ValueError, export.Unavailable, MissingInput, NotOurs) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{path} ({export.size_mb(path):.1f} MB): {exporter.describe_input()} in, float32 probabilities and uint8 "
          "classes out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
