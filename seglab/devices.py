"""Where training runs: the ``tf.distribute`` strategy and the precision."""
from __future__ import annotations

import os
from pathlib import Path

from seglab.backend import keras, tf


def choose_strategy(kind: str = "auto"):
    """TPU when present, MirroredStrategy over several GPUs, else the default strategy.

    ``mirrored`` forces MirroredStrategy over every GPU, or over the logical CPU devices
    when there is none (how the multi-replica path is tested without a GPU).
    ``multi_worker`` trains on several machines with MultiWorkerMirroredStrategy: the ``TF_CONFIG``
    environment variable names the cluster and this machine's task. It must be created before
    any other TensorFlow operation of the process, so each process calls this once.
    """
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "auto" and tf.config.list_logical_devices("TPU"):
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def cpu_has_bfloat16_units() -> bool:
    """A CPU whose instructions compute bfloat16 natively, for oneDNN: AMX (Intel Xeons since Sapphire Rapids) or
    AVX512-BF16 (Cooper Lake and later, AMD Zen 4 and later). On either, a demo U-Net's training steps run 1.4x
    faster than in float32 (bench/overhead.py); elsewhere bfloat16 is emulated, slower."""
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        return False
    try:
        return not {"amx_bf16", "avx512_bf16"}.isdisjoint(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: no way to ask without another dependency, so float32
        return False


def set_precision(setting: str) -> str:
    """The Keras mixed-precision policy for ``train.mixed_precision``: 16-bit compute with float32 weights.

    ``auto``: ``mixed_float16`` on a GPU (a T4's tensor cores), ``mixed_bfloat16`` on a CPU with
    bfloat16 units, ``float32`` elsewhere. ``float16`` and ``bfloat16`` force a policy (how the GPU
    path is tested on a CPU); ``float32`` is full precision.
    """
    if setting == "auto":
        policy = ("mixed_float16" if tf.config.list_physical_devices("GPU")
                  else "mixed_bfloat16" if cpu_has_bfloat16_units() else "float32")
    else:
        policy = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16", "float32": "float32"}[setting]
    keras.mixed_precision.set_global_policy(policy)
    return policy
