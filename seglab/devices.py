"""Where training runs: the ``tf.distribute`` strategy and the precision."""
from __future__ import annotations

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


def set_precision(setting: str) -> str:
    """``mixed_float16`` on GPUs (a T4's tensor cores), ``float32`` elsewhere."""
    on = setting == "on" or (setting == "auto" and bool(tf.config.list_physical_devices("GPU")))
    policy = "mixed_float16" if on else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy
