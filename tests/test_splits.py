"""Splits that respect groups: a split file, a group pattern, or one image at a time."""
import json
import shutil

import pytest

from conftest import write_folder_dataset
from seglab import data_loading
from seglab.readers import DataError
from seglab.rundir import RunDir


def _cases(tmp_path, cases=5, slices=4):
    """``case{c}_slice{s}`` images: slices of one case are near-duplicates and must stay together."""
    root = write_folder_dataset(tmp_path / "d", n=cases * slices, size=(32, 32))
    for i in range(cases * slices):
        for sub in ("images", "masks"):
            (root / sub / f"img{i}.png").rename(root / sub / f"case{i // slices}_slice{i % slices}.png")
    return root


def _prepare(make_config, root, *overrides):
    cfg = make_config("data.source=folder", f"data.root={root}", "data.image_size=32", *overrides)
    return data_loading.prepare_dataset(cfg, RunDir(cfg.run_dir))


def _split_of_case(dataset):
    found = {}
    for split in data_loading.SPLITS:
        for stem in dataset.splits[split].source_ids:
            found.setdefault(stem.split("_")[0], set()).add(split)
    return found


def test_a_group_pattern_keeps_each_group_in_one_split(tmp_path, make_config):
    root = _cases(tmp_path)
    grouped = _prepare(make_config, root, r"data.group_pattern=^(case\d+)_")
    assert all(len(splits) == 1 for splits in _split_of_case(grouped).values())
    assert grouped.split_by.startswith("groups of data.group_pattern")
    assert sorted(len(grouped.splits[s].source_ids) for s in data_loading.SPLITS) == [4, 4, 12]
    shutil.rmtree(tmp_path / "run")
    per_image = _prepare(make_config, root)  # the leak the pattern prevents
    assert any(len(splits) > 1 for splits in _split_of_case(per_image).values()) and per_image.split_by == "image"


def test_a_group_pattern_that_matches_an_image_not_is_named(tmp_path, make_config):
    root = _cases(tmp_path)
    with pytest.raises(DataError, match=r"data.group_pattern='\^\(patient\\\\d\+\)' does not match the image name "
                                        r"'case0_slice0' \(20 of 20 do not match\)"):
        _prepare(make_config, root, r"data.group_pattern=^(patient\d+)")


def test_too_few_groups_for_three_splits_are_named(tmp_path, make_config):
    root = _cases(tmp_path, cases=2)
    with pytest.raises(DataError, match=r"only 2 group\(s\); a train/val/test split needs at least 3"):
        _prepare(make_config, root, r"data.group_pattern=^(case\d+)_")


def _split_file(root, train, val, test):
    (root / "splits.json").write_text(json.dumps({"train": train, "val": val, "test": test}))


def test_a_split_file_is_followed_exactly_and_wins_over_the_pattern(tmp_path, make_config):
    root = _cases(tmp_path, cases=3, slices=2)
    _split_file(root, ["case0_slice0", "case1_slice0", "case2_slice0", "case2_slice1"], ["case0_slice1"], ["case1_slice1"])
    dataset = _prepare(make_config, root, r"data.group_pattern=^(case\d+)_")
    assert dataset.split_by == "splits.json"
    assert dataset.splits["val"].source_ids == ["case0_slice1"]
    assert dataset.splits["test"].source_ids == ["case1_slice1"]


@pytest.mark.parametrize("train, val, test, message", [
    (["case0_slice0", "case1_slice0", "case2_slice0"], ["case0_slice1", "case0_slice0"], ["case1_slice1", "case2_slice1"],
     "'case0_slice0' is in both train and val"),
    (["case0_slice0", "case1_slice0", "case2_slice0", "case9_slice0"], ["case0_slice1"], ["case1_slice1", "case2_slice1"],
     "'case9_slice0' names no image in"),
    (["case0_slice0", "case1_slice0"], ["case0_slice1"], ["case1_slice1", "case2_slice1"],
     "the image 'case2_slice0' is in no split"),
    (["case0_slice0"], [], ["case1_slice1"], "must map each of train, val and test to a non-empty list"),
])
def test_a_bad_split_file_is_named_with_the_problem(tmp_path, make_config, train, val, test, message):
    root = _cases(tmp_path, cases=3, slices=2)
    _split_file(root, train, val, test)
    with pytest.raises(DataError, match=f"splits.json: {message}"):
        _prepare(make_config, root)


def test_changing_the_split_file_redoes_the_dataset(tmp_path, make_config):
    root = _cases(tmp_path, cases=3, slices=2)
    _split_file(root, ["case0_slice0", "case1_slice0", "case2_slice0", "case2_slice1"], ["case0_slice1"], ["case1_slice1"])
    assert _prepare(make_config, root).splits["val"].source_ids == ["case0_slice1"]
    _split_file(root, ["case0_slice0", "case1_slice0", "case2_slice0", "case2_slice1"], ["case1_slice1"], ["case0_slice1"])
    assert _prepare(make_config, root).splits["val"].source_ids == ["case1_slice1"]
