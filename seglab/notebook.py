"""What every notebook does first: the config (with its overrides) and its run folder."""
from __future__ import annotations

from seglab import colab
from seglab.config import Config, load_config, parse_override
from seglab.rundir import RunDir


def open_run(config_path=None, overrides=(), run_dir=None) -> tuple[Config, RunDir]:
    """The config and its run folder.

    ``config_path`` is a path or a config name; None means ``colab_t4`` on Colab and ``demo``
    elsewhere. On Colab the run folder defaults to Google Drive, ``MyDrive/seglab/runs/<name>``
    (each notebook runs in its own runtime), and downloads go to the runtime's own disk; an
    explicit ``run_dir`` or override still wins.
    """
    overrides = list(overrides or []) + ([f"run_dir={run_dir}"] if run_dir else [])
    config_path = config_path or colab.default_config()
    cfg = load_config(config_path, overrides)
    if colab.in_colab():
        given = {parse_override(o)[0] for o in overrides}
        defaults = [f"{key}={value}" for key, value in colab.run_defaults(cfg.name).items() if key not in given]
        cfg = load_config(config_path, defaults + overrides)
    return cfg, RunDir(cfg.run_dir)
