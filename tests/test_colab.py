import sys
import types
from importlib import metadata

from seglab import colab


def test_does_nothing_outside_colab():
    calls = []
    assert colab.setup_colab(mount_drive=True, run=lambda *a, **k: calls.append(a)) == []
    assert calls == []


def test_on_colab_installs_matching_tf_keras_keeps_tensorflow_and_mounts_drive(monkeypatch):
    mounted = []
    google = types.ModuleType("google")
    google_colab = types.ModuleType("google.colab")
    google_colab.drive = types.SimpleNamespace(mount=mounted.append)
    google.colab = google_colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google_colab)
    calls = []
    commands = colab.setup_colab(mount_drive=True, run=lambda cmd, check: calls.append(cmd))
    assert calls == commands and len(calls) == 1
    major, minor = metadata.version("tensorflow").split(".")[:2]
    packages = calls[0][calls[0].index("install") + 1:]
    assert f"tf-keras~={major}.{minor}.0" in packages
    assert "segmentation-models==1.0.1" in packages
    assert not any(p.startswith("tensorflow") for p in packages)
    assert mounted == ["/content/drive"]
