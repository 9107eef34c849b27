"""The one place that imports TensorFlow, Keras and segmentation_models.

segmentation_models 1.0.1 predates Keras 3 and breaks on it. Current TensorFlow still
ships the Keras 2 code as the separate ``tf-keras`` package and switches ``tf.keras`` to
it when ``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is first imported. Everything
else in seglab takes ``tf``, ``keras`` and ``sm`` from here, so no Keras 3 object ever
meets a tf_keras model.
"""
import logging
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["SM_FRAMEWORK"] = "tf.keras"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_keras3_loaded = "keras" in sys.modules and not sys.modules["keras"].__version__.startswith("2.")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

if _keras3_loaded or tf.keras.layers.Layer is not keras.layers.Layer:
    raise ImportError(
        "TensorFlow or Keras 3 was imported before seglab, so tf.keras is Keras 3 and "
        "segmentation_models would fail; restart the kernel and import seglab first."
    )

import segmentation_models as sm  # noqa: E402


class _NoRetracingNote(logging.Filter):
    """Drops tf.function's note that a function was traced again. The notebooks build several models and predict
    images of several sizes, each traced once by design; the note would fill their outputs and teach nothing."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


tf.get_logger().addFilter(_NoRetracingNote())

__all__ = ["tf", "keras", "sm"]
