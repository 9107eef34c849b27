"""The Colab set-up cell: install what Colab lacks, keep Colab's own TensorFlow.

Colab ships TensorFlow and Keras 3 but not segmentation_models; tf-keras must match
TensorFlow's minor version, or importing it pulls in another TensorFlow. Locally this
does nothing.
"""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata


def in_colab() -> bool:
    return "google.colab" in sys.modules


def install_commands() -> list[list[str]]:
    major, minor = metadata.version("tensorflow").split(".")[:2]
    return [[sys.executable, "-m", "pip", "install", "-q", f"tf-keras~={major}.{minor}.0",
             "segmentation-models==1.0.1", "scikit-image>=0.26", "PyYAML", "papermill"]]


def setup_colab(mount_drive: bool = False, run=subprocess.run) -> list[list[str]]:
    """On Colab, install the extra packages and optionally mount Google Drive; return what ran."""
    if not in_colab():
        return []
    commands = install_commands()
    for command in commands:
        run(command, check=True)
    if mount_drive:
        from google.colab import drive

        drive.mount("/content/drive")
    return commands
