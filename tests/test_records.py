"""The typed run-folder files: each round-trips, and a bad one names the file, the problem and the notebook."""
import dataclasses
import json
import typing

import pytest

from seglab import records
from seglab.jsonrecord import MissingInput, RecordError

DATASET = dict(
    classes=["background", "a"], colors=[[0, 0, 0], [255, 0, 0]], ignore_index=None, image_size=32, mode="resize",
    pixel_scale=[1.0, 1.0], decisions={"data.mode": records.Decision("resize", "set in the config")},
    images=records.ImageSpec(3, "uint8", "png", "dataset", [1.0] * 3, [2.0] * 3, [0.0] * 3, [255.0] * 3),
    source=records.SourceInfo("folder", "/data", 3, {"x": [32, 40]}), seed=1, split_by="image", cache_key="k",
    shards={"train": ["train-00000-of-00001.tfrecord"]},
    splits={"train": records.SplitInfo(1, ["x"], 1, [10, 5], [15, 15])},
    items=[records.Item("x", "x", "train", None)])


def test_a_record_saved_loads_back_equal_with_nested_types(tmp_path):
    dataset = records.DatasetRecord(**DATASET)
    path = dataset.save(tmp_path / "dataset.json")
    loaded = records.DatasetRecord.load(path)
    assert loaded == dataset
    assert isinstance(loaded.images, records.ImageSpec) and isinstance(loaded.splits["train"], records.SplitInfo)
    assert isinstance(loaded.decisions["data.mode"], records.Decision) and isinstance(loaded.items[0], records.Item)
    assert json.loads(path.read_text())["format_version"] == records.DatasetRecord.VERSION


def test_every_record_type_names_its_file_and_the_step_that_writes_it():
    kinds = [c for c in vars(records).values() if isinstance(c, type) and issubclass(c, records.Record)
             and c is not records.Record]
    assert len(kinds) == 12
    for kind in kinds:
        assert kind.FILE, kind.__name__
        assert kind is records.RunManifest or kind.STEP in records.STEPS, kind.__name__


@pytest.mark.parametrize("mangle, problem", [
    (lambda d: d.pop("splits"), "has no field 'splits'"),
    (lambda d: d["splits"]["train"].pop("pixels"), "has no field 'splits.train.pixels'"),
    (lambda d: d.update(format_version=0), "has format version 0, this seglab reads version 1"),
    (lambda d: d.pop("format_version"), "has format version None, this seglab reads version 1"),
])
def test_a_file_of_another_version_or_missing_a_field_names_it_and_the_notebook(tmp_path, mangle, problem):
    data = records.DatasetRecord(**DATASET).to_dict()
    mangle(data)
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError) as raised:
        records.DatasetRecord.load(path)
    assert str(raised.value) == f"{path} {problem}; run notebook 01_data_loading_and_preprocessing.ipynb again."
    assert isinstance(raised.value, MissingInput)  # notebooks stop on it as on any missing input


@pytest.mark.parametrize("content", [b"", b'{"format_version": 1, "arch', b"\xff\xfe not text"])
def test_a_corrupt_file_names_itself_and_its_notebook(tmp_path, content):
    path = tmp_path / "unet.json"
    path.write_bytes(content)
    with pytest.raises(RecordError, match=r"unet.json is not valid JSON .*run notebook 03_training.ipynb again"):
        records.ModelCard.load(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(RecordError, match=r"metrics.json is missing; run notebook 04_evaluation.ipynb again"):
        records.Metrics.load(tmp_path / "metrics.json")


def test_optional_fields_with_defaults_may_be_absent(tmp_path):
    data = records.DatasetRecord(**DATASET).to_dict()
    del data["demo_scene"]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    assert records.DatasetRecord.load(path).demo_scene is None


def test_record_fields_are_dataclass_fields_not_free_dicts_where_later_steps_read_them():
    """The fields notebooks 02-07 read by name are typed, so a renamed one fails where it is read."""
    hints = typing.get_type_hints(records.DatasetRecord)
    assert hints["images"] is records.ImageSpec
    assert typing.get_args(hints["splits"])[1] is records.SplitInfo
    assert typing.get_type_hints(records.ModelCard)["normalization"] is records.Normalization
    assert dataclasses.is_dataclass(typing.get_args(typing.get_type_hints(records.TrainingRecord)["models"])[1])
