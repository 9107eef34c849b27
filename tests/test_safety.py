"""The run folder never loses work, and a hostile or broken file cannot hurt (one test or more per defect found)."""
import os
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from seglab import atomic, data_loading, export, inference, readers, shards
from seglab.atomic import NotOurs
from seglab.backend import keras
from seglab.jsonrecord import FileStamp, MissingInput, RecordError
from seglab.locks import Holder, Lock
from seglab.models import save_model
from seglab.predictor import Predictor
from seglab.records import DatasetRecord, ModelCard, ModelInput, Normalization, RunManifest
from seglab.rundir import Busy, RunDir

from conftest import REPO, write_folder_dataset

COLORS = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def tiny_model(folder, channels=3, name="unet", lambda_layer=False):
    """A small convolutional model saved as ``folder/NAME.keras`` with its card, as notebook 03 leaves them."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, channels))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs) if lambda_layer else inputs
    x = keras.layers.Conv2D(3, 3, padding="same")(x)
    model = keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(x))
    path = save_model(model, folder / f"{name}.keras")
    card = ModelCard(name, "none", ["background", "a", "b"], COLORS,
                     Normalization(list(range(channels)), [1 / 255] * channels, [0.0] * channels), 32, [1.0, 1.0],
                     ModelInput(channels, "uint8", "dataset"), FileStamp.of(path))
    card.save(path.with_suffix(".json"))
    return path


# --- 1: an export never replaces a file it did not write, and says what it takes ----------


def test_an_export_into_the_models_folder_leaves_the_model_card_alone(tmp_path):
    model_path = tiny_model(tmp_path / "models", channels=1)
    card_before = model_path.with_suffix(".json").read_bytes()
    exporter = export.Exporter(model_path)
    exporter.write("tflite", model_path.parent)
    assert model_path.with_suffix(".json").read_bytes() == card_before
    Predictor.load(model_path)  # seglab predict and notebook 04 still read the model's card
    assert (model_path.parent / "unet.export.json").exists()
    assert exporter.describe_input() == "uint8 images of [N, 32, 32, 1] (channels in the training images' order)"
    exporter.write("tflite", model_path.parent)  # its own earlier export is replaced


def test_an_export_refuses_to_replace_a_file_of_the_users(tmp_path):
    model_path = tiny_model(tmp_path / "models")
    out = tmp_path / "out"
    out.mkdir()
    (out / "unet.tflite").write_bytes(b"my own model")
    with pytest.raises(NotOurs, match="unet.tflite already exists and was not written by seglab export"):
        export.Exporter(model_path).write("tflite", out)
    assert (out / "unet.tflite").read_bytes() == b"my own model" and sorted(os.listdir(out)) == ["unet.tflite"]


def test_the_export_command_says_what_the_export_takes(tmp_path):
    model_path = tiny_model(tmp_path / "models", channels=1)
    result = subprocess.run([sys.executable, "-m", "seglab", "export", "--model", str(model_path), "--format",
                             "tflite"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "uint8 images of [N, 32, 32, 1] (channels in the training images' order) in" in result.stdout
    assert "RGB" not in result.stdout


# --- 2: predict never writes into its input, nor over the user's files, nor beside stale masks -


def _images(folder, names, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros(size + (3,), np.uint8)).save(folder / f"{name}.png")
    return folder


def test_predict_refuses_an_output_folder_inside_its_input(tmp_path):
    predictor = Predictor.load(tiny_model(tmp_path / "models"))
    photos = _images(tmp_path / "photos", ["a"])
    for output in (photos, photos / "masks"):
        with pytest.raises(ValueError, match="is inside the input folder"):
            inference.predict_folder(predictor, photos, output)
    assert sorted(os.listdir(photos)) == ["a.png"]


def test_predict_leaves_the_users_files_and_no_stale_masks(tmp_path):
    predictor = Predictor.load(tiny_model(tmp_path / "models"))
    out = tmp_path / "out"
    lines = []
    inference.predict_folder(predictor, _images(tmp_path / "first", ["a", "b"]), out, log=lines.append)
    inference.predict_folder(predictor, _images(tmp_path / "second", ["a", "c"]), out, log=lines.append)
    assert {p.name for p in out.iterdir()} == {"a_mask.png", "a_color.png", "a_overlay.png", "c_mask.png",
                                               "c_color.png", "c_overlay.png", "class_areas.csv",
                                               ".seglab-predict.json"}  # b's outputs went with b
    assert lines == [f"{out}: 4 file(s) of an earlier run replaced, 3 it wrote for other images removed"]
    (out / "d_mask.png").write_bytes(b"drawn by hand")
    with pytest.raises(NotOurs, match="d_mask.png already exists and was not written by seglab predict"):
        inference.predict_folder(predictor, _images(tmp_path / "third", ["d"]), out)
    assert (out / "d_mask.png").read_bytes() == b"drawn by hand" and (out / "a_mask.png").exists()


# --- 3: rerunning 03 keeps the earlier training ------------------------------------------------


@pytest.fixture
def prepared(make_config):
    from seglab import class_weights

    cfg = make_config("data.demo.num_images=8", "train.batch_size=2", "train.epochs=1", "train.steps_per_epoch=1",
                      "data.augment=none")
    run = RunDir(cfg.run_dir)
    data_loading.prepare_dataset(cfg, run)
    class_weights.write_class_weights(run, cfg)
    return cfg, run


def _train(cfg, run, log=print):
    from seglab import training

    step, weights = training.begin(run, cfg)
    summary = training.train_model("unet", cfg, step, weights.weights, log=log)
    training.record(step, {"unet": summary})
    return summary


def test_training_again_keeps_the_earlier_model_and_history(prepared):
    cfg, run = prepared
    _train(cfg, run)
    first = FileStamp.of(run.path("models", "unet.keras"))
    lines = []
    _train(cfg, run, log=lines.append)
    [kept] = list(run.path("previous").iterdir())
    assert FileStamp.of(kept / "models" / "unet.keras") == first
    assert {p.name for p in (kept / "history").iterdir()} == {"unet.csv", "unet.json"}
    assert (kept / "models" / "unet.json").exists()
    assert any(line.startswith("unet: the earlier training (models/unet.keras") and f"{kept.name}/" in line
               for line in lines)
    Predictor.load(run.path("models", "unet.keras"))  # the new pair is whole


# --- 4: nothing of the user's is deleted ---------------------------------------------------------


def test_a_folder_of_the_users_is_never_replaced_or_deleted(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(NotOurs, match="mine already exists and was not made by seglab"):
        with atomic.atomic_dir(mine) as tmp:
            (tmp / "x").write_text("1")
    with pytest.raises(NotOurs):
        atomic.remove_own_dir(mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    with atomic.atomic_dir(tmp_path / "ours") as tmp:
        (tmp / "x").write_text("1")
    atomic.remove_own_dir(tmp_path / "ours")  # its own folder it may delete
    assert not (tmp_path / "ours").exists()


def test_a_users_oxford_pets_folder_is_left_alone(tmp_path):
    from seglab import downloads

    (tmp_path / "oxford_pets").mkdir()
    (tmp_path / "oxford_pets" / "my_pets.jpg").write_bytes(b"x")
    with pytest.raises(NotOurs, match="oxford_pets already exists and was not made by seglab"):
        downloads.prepare_oxford_pets(tmp_path, base_url="http://127.0.0.1:9/")  # refused before any download
    assert (tmp_path / "oxford_pets" / "my_pets.jpg").exists()


def test_render_does_not_delete_a_folder_of_the_users(tmp_path, monkeypatch):
    from seglab import render

    monkeypatch.setattr(render, "stamp_notebooks", lambda: [])
    monkeypatch.setattr(render, "run_series", lambda *a, **k: pytest.fail("ran after all"))
    (tmp_path / "render").mkdir()
    (tmp_path / "render" / "thesis.tex").write_text("x")
    with pytest.raises(NotOurs):
        render.render(run_dir=tmp_path / "render")
    assert (tmp_path / "render" / "thesis.tex").exists()


def test_a_folder_of_the_users_does_not_become_a_run_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(NotOurs, match="choose another run folder"):
        RunDir(tmp_path).begin("gpu_check")


# --- 5: a kill at any point leaves nothing half-written that is trusted -------------------------

KILL = """
import os, sys, pathlib
from seglab.config import load_config
from seglab.rundir import RunDir
cfg = load_config(sys.argv[1], sys.argv[3:])
run = RunDir(cfg.run_dir)
where = sys.argv[2]
if where == "dataset swap":  # between moving the old dataset/ away and moving the new one in
    rename = pathlib.Path.rename
    def killing_rename(self, target):
        if pathlib.Path(target).name == "dataset":
            os._exit(9)
        return rename(self, target)
    pathlib.Path.rename = killing_rename
    from seglab import data_loading
    data_loading.prepare_dataset(cfg, run)
else:  # between the model and its card
    from seglab import records, training
    records.ModelCard.save = lambda *a, **k: os._exit(9)
    step, weights = training.begin(run, cfg)
    training.train_model("unet", cfg, step, weights.weights)
"""


def _killed(cfg, where: str) -> int:
    overrides = [f"run_dir={cfg.run_dir}", f"data.download_dir={cfg.data.download_dir}", "data.demo.num_images=8",
                 "data.demo.image_size=64", "data.image_size=64", "model.architectures=[unet]", "train.batch_size=2",
                 "train.epochs=1", "train.steps_per_epoch=1", "data.augment=none", "data.tile_overlap=0.5",
                 "data.mode=tile"]
    result = subprocess.run([sys.executable, "-c", KILL, str(REPO / "configs" / "demo.yaml"), where, *overrides],
                            capture_output=True, text=True, timeout=600)
    return result.returncode


def test_a_kill_during_the_dataset_swap_is_cleaned_up_by_the_next_run(prepared):
    cfg, run = prepared
    assert _killed(cfg, "dataset swap") == 9  # a new split setting: 01 writes a new dataset, cut off mid-swap
    assert not run.path("dataset").exists() and list(run.root.glob(".dataset.*"))
    with pytest.raises(MissingInput, match="Run notebook 01_data_loading_and_preprocessing.ipynb first"):
        run.require("data")  # its record went before the swap: nothing half-swapped is trusted
    cfg.data.mode, cfg.data.tile_overlap = "tile", 0.5
    data_loading.prepare_dataset(cfg, run)
    assert not list(run.root.glob(".dataset.*")) and run.require("data")


def test_a_kill_between_the_model_and_its_card_is_not_trusted(prepared):
    cfg, run = prepared
    _train(cfg, run)
    assert _killed(cfg, "model, then card") == 9  # the earlier pair was moved aside; the new model has no card
    with pytest.raises(RecordError, match="models/unet.json is missing; run notebook 03_training.ipynb again"):
        Predictor.load(run.path("models", "unet.keras"))
    with pytest.raises(MissingInput, match="Run notebook 03_training.ipynb first"):
        run.require("training")
    _train(cfg, run)
    Predictor.load(run.path("models", "unet.keras"))


def test_a_model_and_a_card_from_different_saves_are_refused(tmp_path):
    path = tiny_model(tmp_path)
    other = tiny_model(tmp_path / "other")
    path.write_bytes(other.read_bytes()[:-1] + b"\0")  # another model in its place, its card kept
    with pytest.raises(RecordError, match="unet.keras and its card unet.json are not from the same save"):
        Predictor.load(path)


# --- 6, 7: two runtimes on one run folder --------------------------------------------------------

HOLD = """
import sys, time
from seglab.rundir import RunDir
step = RunDir(sys.argv[1]).begin(sys.argv[2])
print("holding", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process that began notebook 03's step on a run folder, as a second Colab runtime would."""
    run = RunDir(tmp_path / "run")
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run.root), "training"], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "holding"
    yield run, process
    process.kill()
    process.wait()


def test_a_second_runtime_is_refused_with_the_holder_named(holder):
    run, process = holder
    manifest = run.path("manifest.json").read_bytes()
    with pytest.raises(Busy, match=rf"03_training.ipynb is already running .*process {process.pid}, since "):
        run.begin("training")
    with pytest.raises(Busy, match=r"Notebook 03_training.ipynb is running .* 01_data_loading_and_preprocessing.ipynb "
                                   "would rewrite what it reads"):
        run.begin("data")
    with pytest.raises(Busy, match="04_evaluation.ipynb reads what it writes"):
        run.begin("evaluation")
    assert run.path("manifest.json").read_bytes() == manifest  # nothing of it was touched
    run.begin("gpu_check").finish()  # a step that shares nothing with 03 runs alongside it


def test_a_step_starting_removes_its_own_half_written_figures_and_no_others(tmp_path):
    """05 and 06 may run at once (neither reads the other's outputs): 05 starting must not take the figure 06
    is writing at that moment, only what a killed 05 left."""
    run = RunDir(tmp_path / "run")
    run.begin("gpu_check").finish()
    figures = atomic.mark(run.path("figures"))
    writing = figures / ".06_zoomed.png.k2j4.tmp.png"  # atomic_file's temporary name, 06 mid-write
    killed = figures / ".05_confusion_matrices.png.x9q1.tmp.png"  # a killed 05's
    for path in (writing, killed):
        path.write_bytes(b"half a png")
    run.begin("visualization").release()
    assert writing.exists() and not killed.exists()


def test_a_crashed_holder_does_not_keep_its_lock(holder):
    run, process = holder
    process.kill()
    process.wait()
    run.begin("training").finish()


def test_a_silent_holder_on_another_host_is_taken_over_after_a_while(tmp_path):
    path = tmp_path / "x.lock"
    gone = Holder("elsewhere", 1, "2026-12-01T00:00:00+00:00", time.time() - 3600, "notebook 03")
    path.write_text(__import__("json").dumps(gone.__dict__))
    Lock(path, "me").acquire().release()
    alive = Holder("elsewhere", 1, "2026-12-01T00:00:00+00:00", time.time(), "notebook 03")
    path.write_text(__import__("json").dumps(alive.__dict__))
    with pytest.raises(Exception, match="held by notebook 03 \\(host elsewhere"):
        Lock(path, "me").acquire()


def test_a_step_whose_input_changed_under_it_records_nothing(prepared):
    cfg, run = prepared
    from seglab import class_weights

    step = run.begin("class_weights", cfg)
    step.read(DatasetRecord)
    cfg.data.tile_overlap, cfg.data.mode = 0.5, "tile"
    data_loading.prepare_dataset(cfg, run)  # 01 rerun meanwhile (here, by the same process)
    before = run.manifest().steps.get("class_weights")
    with pytest.raises(MissingInput, match="01_data_loading_and_preprocessing.ipynb was rerun while "
                                           "02_class_weights.ipynb ran"):
        step.finish()
    assert run.manifest().steps.get("class_weights") == before is None
    class_weights.write_class_weights(run, cfg)  # run again, it records


# --- 8, 12: shards on Drive: incomplete or damaged files are named -------------------------------


def test_a_shard_cut_short_or_damaged_is_named_with_the_notebook_that_rebuilds_it(prepared):
    cfg, run = prepared
    dataset = run.read(DatasetRecord)
    shard = dataset.shard_files(run.root, "test", originals=True)[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # half synced
    with pytest.raises(MissingInput, match=r"01_data_loading_and_preprocessing.ipynb again: its output "
                                           r"dataset/test-originals-00000-of-00001.tfrecord .* has \d+ bytes, not"):
        run.read(DatasetRecord)
    shard.write_bytes(data[:100] + bytes(len(data) - 100))  # the right size, the wrong bytes
    with pytest.raises(MissingInput, match="its checksum differs"):
        list(shards.original_pairs(run, dataset, "test"))
    with pytest.raises(MissingInput, match=r"test-originals-00000-of-00001.tfrecord is damaged .*rebuilds dataset/"):
        list(shards.read_samples([shard], dataset.images))


# --- 9: a model file cannot run code --------------------------------------------------------------


def test_a_model_with_python_code_in_it_is_refused(tmp_path):
    path = tiny_model(tmp_path, lambda_layer=True)
    with pytest.raises(ValueError, match="holds Python code \\(a Lambda layer\\)"):
        Predictor.load(path)
    h5 = tmp_path / "old.h5"
    keras.models.load_model(str(path), compile=False, safe_mode=False).save(str(h5))
    with pytest.raises(ValueError, match="loads only the .keras model files"):
        Predictor.load(h5)


# --- 10, 11, 13: hostile or broken images and masks -----------------------------------------------


def _png_header(path, width, height):
    """A valid PNG that says it is width x height: a few hundred bytes that would decode to gigabytes."""
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def test_an_image_too_large_to_decode_is_refused_from_its_header(tmp_path):
    default = Image.MAX_IMAGE_PIXELS
    bomb = _png_header(tmp_path / "bomb.png", 40000, 40000)
    with pytest.raises(readers.DataError, match="bomb.png: 40000 x 40000 px is 1,600 megapixels, more than "
                                                "data.max_image_megapixels \\(256\\)"):
        readers.read_image(bomb)
    with pytest.raises(readers.DataError, match="1,600 megapixels"):
        readers.image_format(bomb)
    array = np.lib.format.open_memmap(tmp_path / "big.npy", "w+", np.uint8, (20000, 20000))  # sparse on disk
    del array
    with pytest.raises(readers.DataError, match="big.npy: 20000 x 20000 px is 400 megapixels"):
        readers.read_image(tmp_path / "big.npy")
    assert Image.MAX_IMAGE_PIXELS == default  # Pillow's limit for the rest of the process is its own


def test_a_larger_image_reads_when_the_limit_allows_it(tmp_path):
    Image.fromarray(np.zeros((200, 300), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(readers.DataError, match="more than"):
        readers.read_image(tmp_path / "a.png", max_pixels=50_000)
    assert readers.read_image(tmp_path / "a.png", max_pixels=60_000).shape == (200, 300, 1)


def test_nan_and_infinity_in_a_float_image_are_counted_and_named(tmp_path):
    image = np.ones((10, 12, 2), np.float32)
    image[0, :3, 0] = np.nan
    image[1, 0, 1] = np.inf
    tifffile.imwrite(tmp_path / "scan.tif", image, photometric="minisblack", planarconfig="contig")
    with pytest.raises(readers.DataError, match="scan.tif: 4 pixel value\\(s\\) are NaN or infinite"):
        readers.read_image(tmp_path / "scan.tif")


def test_a_file_name_that_is_not_utf8_is_named_not_crashed_on(tmp_path):
    root = write_folder_dataset(tmp_path / "d", n=3)
    bad = os.fsdecode(b"img\xff")
    (root / "images" / "img0.png").rename(root / "images" / f"{bad}.png")
    with pytest.raises(readers.DataError, match=r"img\\udcff.png: the file name is not valid UTF-8"):
        readers.find_pairs(root)


@pytest.mark.parametrize("values, message", [
    (np.array([[0, 1], [-3, 1]], np.int32), "mask value -3 is negative; class indices run from 0 to 2"),
    (np.array([[0, 1.5], [np.nan, 1]]), "2 mask value\\(s\\) are not whole numbers"),
    (np.array([[0, 1], [2, 1]], np.int64), None),
])
def test_npy_masks_are_read_and_their_bad_values_named(tmp_path, values, message):
    classes = readers.ClassInfo(["a", "b", "c"], None)
    np.save(tmp_path / "m.npy", values)
    if message is None:
        np.testing.assert_array_equal(readers.read_mask(tmp_path / "m.npy", classes), values)
    else:
        with pytest.raises(readers.DataError, match=message):
            readers.read_mask(tmp_path / "m.npy", classes)


def test_a_negative_value_in_a_32_bit_mask_is_named_as_negative(tmp_path):
    Image.fromarray(np.array([[0, 1], [-7, 1]], np.int32)).save(tmp_path / "m.tif")
    with pytest.raises(readers.DataError, match="mask value -7 is negative"):
        readers.read_mask(tmp_path / "m.tif", readers.ClassInfo(["a", "b"], None))


# --- 14: a corrupt manifest or card names itself and who writes it -------------------------------


def test_a_corrupt_manifest_or_card_names_the_file_and_the_notebook(tmp_path):
    run = RunDir(tmp_path)
    run.path("manifest.json").write_text("")
    with pytest.raises(RecordError, match=r"manifest.json is not valid JSON .*every notebook rewrites it when it "
                                          r"finishes, so run the series again from 00_gpu_check.ipynb"):
        run.require("data")
    model_path = tiny_model(tmp_path / "models")
    model_path.with_suffix(".json").write_text('{"format_version": 2, "architecture": "u')
    with pytest.raises(RecordError, match=r"models/unet.json is not valid JSON .*run notebook 03_training.ipynb again"):
        Predictor.load(model_path)
    assert RunManifest.VERSION == 2
