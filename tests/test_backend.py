import os
import subprocess
import sys

import pytest


def _python(code, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "SM_FRAMEWORK")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**clean, **env})


def test_backend_hands_out_tf_keras_and_segmentation_models():
    from seglab.backend import keras, sm, tf

    assert keras.__version__.startswith("2.")
    assert tf.keras.layers.Layer is keras.layers.Layer
    model = sm.Unet("resnet18", classes=3, encoder_weights=None, input_shape=(64, 64, 3))
    assert isinstance(model, keras.Model)


@pytest.mark.parametrize("first", ["import tensorflow", "import keras"])
def test_importing_tensorflow_first_fails_loudly_not_silently(first):
    result = _python(f"{first}\nimport seglab.backend")
    assert result.returncode != 0
    assert "imported before seglab" in result.stderr and "restart the kernel" in result.stderr


def test_tensorflow_imported_first_with_legacy_keras_already_set_works_on_tf_keras():
    result = _python("import tensorflow\nimport seglab.backend as b\nprint(b.tf.keras.Model is b.keras.Model)",
                     TF_USE_LEGACY_KERAS="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("True")
