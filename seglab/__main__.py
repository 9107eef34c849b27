"""Command line: ``python -m seglab run`` executes the notebook series headless."""
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
    args = parser.parse_args(argv)

    from seglab.runner import NotebookFailed, run_series

    try:
        timings = run_series(args.config, args.overrides, args.run_dir, args.only)
    except (ConfigError, NotebookFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"series finished in {sum(timings.values()):.0f} s: " + ", ".join(f"{k} {v} s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
