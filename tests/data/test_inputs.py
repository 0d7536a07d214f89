"""The record of the optional input folders that stage `preprocess` depends on through DVC."""

import os

import pytest

from pipeline.core.config import DataConfig
from pipeline.core.errors import DataError
from pipeline.data.inputs import input_record


def test_unset_folders_give_a_constant_record():
    assert input_record(DataConfig()) == {"data.novel_dir": None, "data.pku_split_dir": None}


def test_the_digest_follows_names_sizes_and_times_of_every_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("1")
    (tmp_path / "sub" / "b.txt").write_text("22")
    data = DataConfig(novel_dir=str(tmp_path))
    first = input_record(data)["data.novel_dir"]
    assert (first["files"], first["bytes"]) == (2, 3)
    assert input_record(data)["data.novel_dir"] == first
    digests = {first["stat_sha256"]}
    for change in (lambda: (tmp_path / "sub" / "b.txt").write_text("333"),
                   lambda: os.utime(tmp_path / "a.txt", ns=(1, 1)),
                   lambda: (tmp_path / "sub" / "b.txt").rename(tmp_path / "sub" / "c.txt"),
                   lambda: (tmp_path / "d.txt").write_text("")):
        change()
        digests.add(input_record(data)["data.novel_dir"]["stat_sha256"])
    assert len(digests) == 5


def test_a_folder_that_is_set_but_missing_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(DataError, match=r"^data\.pku_split_dir: '.*nope' not found; set it"):
        input_record(DataConfig(pku_split_dir=str(tmp_path / "nope")))
