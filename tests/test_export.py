"""Exports that run without seglab and agree with the Keras model they came from."""
import json
import subprocess
import sys

import numpy as np
import pytest

from seglab import export, models, normalization as norms
from seglab.__main__ import main
from seglab.backend import keras
from seglab.jsonrecord import FileStamp
from seglab.records import ExportCard, ModelCard, ModelInput

SIZE, CLASSES = 64, 4
# Float32 everywhere, but TFLite and ONNX fold batch norm into the convolutions and sum in another order:
# rounding over ~40 layers. The mean difference is about 2e-6 here (3e-8 on the trained demo U-Net); where
# two classes nearly tie it moves both probabilities (up to 8e-3 on that U-Net, whose logits reach 1e5).
MEAN_TOLERANCE, MAX_TOLERANCE = 1e-5, 1e-2
EXPORTS = [("savedmodel", None), ("tflite", None), ("onnx", None), ("tflite", "float16"), ("tflite", "int8")]

# Loads each export alone in a fresh folder, with TensorFlow Lite, TensorFlow or onnxruntime: no seglab, no card.
WITHOUT_SEGLAB = """
import shutil, sys, tempfile
from pathlib import Path
import numpy as np
import tensorflow as tf
import onnxruntime

images = np.load(sys.argv[1])
outputs = {}
for exported in sys.argv[3:]:
    alone = Path(tempfile.mkdtemp()) / Path(exported).name
    (shutil.copytree if Path(exported).is_dir() else shutil.copy)(exported, alone)
    if alone.is_dir():
        result = tf.saved_model.load(str(alone)).signatures["serving_default"](images=tf.constant(images))
        result = {k: v.numpy() for k, v in result.items()}
        spec = tf.saved_model.load(str(alone)).signatures["serving_default"].structured_input_signature[1]["images"]
        input_spec = (spec.dtype.name, list(spec.shape))
    elif alone.suffix == ".tflite":
        interpreter = tf.lite.Interpreter(model_path=str(alone))
        result = interpreter.get_signature_runner()(images=images)
        detail = interpreter.get_signature_runner().get_input_details()["images"]
        input_spec = (np.dtype(detail["dtype"]).name, [None if d < 0 else int(d) for d in detail["shape_signature"]])
    else:
        session = onnxruntime.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
        result = dict(zip(["probabilities", "classes"], session.run(["probabilities", "classes"], {"images": images})))
        detail = session.get_inputs()[0]
        input_spec = (detail.type, [d if isinstance(d, int) else None for d in detail.shape])
    name = Path(exported).name
    outputs[name + "/probabilities"], outputs[name + "/classes"] = result["probabilities"], result["classes"]
    print(name, input_spec)
np.savez(sys.argv[2], **outputs)
assert not any(m == "seglab" or m.startswith("seglab.") for m in sys.modules), "seglab was imported"
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A U-Net with a card whose normalisation reorders channels and shifts them (vgg16's), in every format."""
    root = tmp_path_factory.mktemp("export")
    model_path = root / "run" / "models" / "unet.keras"
    keras.utils.set_random_seed(0)
    models.save_model(models.build_model(models.ModelSpec("unet", "resnet18", CLASSES, SIZE)), model_path)
    normalization = norms.encoder_normalization("vgg16")
    assert normalization.order == [2, 1, 0] and min(normalization.offset) < -100
    ModelCard(architecture="unet", backbone="resnet18", classes=["background", "a", "b", "c"],
              colors=[[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], normalization=normalization,
              input_size=SIZE, pixel_scale=[1.0, 1.0], input=ModelInput(3, "uint8", "dataset"),
              model=FileStamp.of(model_path)).save(model_path.with_suffix(".json"))
    exporter = export.Exporter(model_path)
    paths = {(fmt, q): exporter.write(fmt, quantize=q) for fmt, q in EXPORTS}
    images = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)  # a batch of 3
    np.save(root / "images.npy", images)
    result = subprocess.run([sys.executable, "-c", WITHOUT_SEGLAB, str(root / "images.npy"), str(root / "out.npz"),
                             *map(str, paths.values())], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(root / "out.npz")
    reference = models.load_model(model_path).predict(norms.normalize(images, normalization), verbose=0)
    return {"paths": paths, "reference": reference, "stdout": result.stdout,
            "outputs": {key: {"probabilities": outputs[f"{p.name}/probabilities"], "classes": outputs[f"{p.name}/classes"]}
                        for key, p in paths.items()}, "model_path": model_path}


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite", "onnx"])
def test_the_export_agrees_with_the_keras_model_without_seglab(exported, fmt):
    out = exported["outputs"][fmt, None]
    assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (3, SIZE, SIZE, CLASSES)
    assert out["classes"].dtype == np.uint8 and out["classes"].shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(out["classes"], out["probabilities"].argmax(-1))
    check = export.agreement(exported["reference"], out)
    assert check["pixel_agreement"] >= 0.999
    assert check["mean_probability_difference"] < MEAN_TOLERANCE
    assert check["max_probability_difference"] < MAX_TOLERANCE


def test_the_input_is_uint8_with_a_free_batch_and_fixed_height_and_width(exported):
    lines = exported["stdout"].splitlines()
    assert f"unet_savedmodel ('uint8', [None, {SIZE}, {SIZE}, 3])" in lines
    assert f"unet.tflite ('uint8', [None, {SIZE}, {SIZE}, 3])" in lines
    assert f"unet.onnx ('tensor(uint8)', [None, {SIZE}, {SIZE}, 3])" in lines


def test_the_savedmodel_holds_the_serving_function_not_a_trace_of_every_keras_layer(exported):
    """Tracking the Keras model itself made tf.saved_model.save trace each layer's call for Keras' metadata: 5.6 of
    the 6.7 s the demo's U-Net took, and 477 functions in the file that nothing serves."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((exported["paths"]["savedmodel", None] / "saved_model.pb").read_bytes())
    functions = saved.meta_graphs[0].graph_def.library.function
    assert 0 < len(functions) < 20, len(functions)


def test_quantized_tflite_variants_are_smaller_and_still_segment(exported):
    sizes = {q: export.size_mb(exported["paths"]["tflite", q]) for q in (None, "float16", "int8")}
    assert sizes["float16"] < 0.55 * sizes[None] and sizes["int8"] < 0.3 * sizes[None]
    for q in ("float16", "int8"):
        out = exported["outputs"]["tflite", q]
        np.testing.assert_allclose(out["probabilities"].sum(-1), 1, atol=1e-3)
        assert export.agreement(exported["reference"], out)["pixel_agreement"] > 0.9


def test_the_export_card_names_classes_the_contract_and_its_files(exported):
    folder = exported["paths"]["onnx", None].parent
    info = json.loads((folder / "unet.export.json").read_text())  # the file as a user without seglab reads it
    assert info["classes"] == ["background", "a", "b", "c"] and len(info["colors"]) == 4
    assert info["input"] == {"name": "images", "dtype": "uint8", "shape": [None, SIZE, SIZE, 3], "channels": "RGB",
                             "normalization": "inside the model"}
    assert info["outputs"] == {"probabilities": {"dtype": "float32", "shape": [None, SIZE, SIZE, CLASSES]},
                               "classes": {"dtype": "uint8", "shape": [None, SIZE, SIZE]}}
    assert "normalization" not in info  # the model needs nothing from it
    card = ExportCard.load(folder / ExportCard.where("unet"))
    assert card.files == [path.name for path in exported["paths"].values()]  # every file the exporter wrote
    assert not (folder / "unet.json").exists()  # the model card stays beside the model


def test_cli_writes_an_export_and_refuses_what_it_cannot(exported, tmp_path, capsys, monkeypatch):
    model = exported["model_path"]
    assert main(["export", "--model", str(model), "--format", "tflite", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "unet.tflite").stat().st_size > 1e6
    assert ExportCard.load(tmp_path / "unet.export.json").files == ["unet.tflite"]
    assert "unet.tflite" in capsys.readouterr().out
    cases = {
        ("--model", str(tmp_path / "none.keras"), "--format", "onnx"): "none.keras: no such model",
        ("--model", str(model), "--format", "pdf"): "unknown format 'pdf'; choose one of savedmodel, tflite, onnx",
        ("--model", str(model), "--format", "onnx", "--quantize", "int8"): "only tflite exports are quantized, to float16 or int8",
    }
    for args, message in cases.items():
        assert main(["export", *args]) == 1
        assert message in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as on a machine without it: import fails
    assert main(["export", "--model", str(model), "--format", "onnx", "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "ONNX export is unavailable" in err and "pip install tf2onnx==1.17.0 onnxruntime==1.32.0" in err
    assert not (tmp_path / "o").exists()
