"""What this machine has and is, without importing TensorFlow: its GPUs as the driver reports them, package
versions, and its role in a training cluster."""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata

PACKAGES = ("tensorflow", "tf-keras", "segmentation-models", "numpy", "scikit-learn", "opencv-python-headless")


def versions() -> dict:
    """Python's and the main packages' versions (None for one that is not installed)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def nvidia_smi() -> list[str]:
    """Name, memory and driver version of each GPU as the driver reports them; empty without a driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=30)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []


def gpu_memory_gb() -> float | None:
    """Memory of the smallest GPU in GB; None without a GPU."""
    sizes = [int(m.group(1)) for line in nvidia_smi() if (m := re.search(r"(\d+) MiB", line))]
    return min(sizes) / 1024 if sizes else None


def is_chief() -> bool:
    """Whether ``TF_CONFIG`` makes this process the chief of its cluster (or names no cluster).

    TensorFlow's rule: the task of type ``chief``, or worker 0 when the cluster has no chief.
    """
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {"type": "chief"})
    first = "chief" if "chief" in tf_config.get("cluster", {"chief": []}) else "worker"
    return task["type"] == first and task.get("index", 0) == 0
