"""Image-level labels (tags) for weak supervision: derived from label maps, read back, checked."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from structseg.cli import main
from structseg.data.tags import TaggedDataset, read_tags, tags_from_labels, write_tags
from structseg.errors import DataError

from .conftest import make_dataset


@pytest.fixture
def tagged_root(tmp_path):
    a = np.zeros((10, 10), np.uint8)          # 100 % class 0
    b = np.zeros((10, 10), np.uint8)
    b[:5] = 1                                  # 50 % class 1, 50 % class 0 ...
    b[0, 0] = 2                                # ... but one pixel of class 2 (1 % of the pixels)
    c = np.full((10, 10), 255, np.uint8)
    c[:2, :5] = 2                              # 10 labelled pixels, all class 2; the rest ignored
    return make_dataset(tmp_path / "ds", [a, b, c], ["sky", "cow", "grass"])


def test_tags_from_labels_count_a_class_by_its_share_of_labelled_pixels(tagged_root):
    tags = [e.tags for e in tags_from_labels(tagged_root, "train.txt", min_share=0.01, progress=False)]
    assert tags == [(0,), (0, 1, 2), (2,)]
    tags = [e.tags for e in tags_from_labels(tagged_root, "train.txt", min_share=0.02, progress=False)]
    assert tags == [(0,), (0, 1), (2,)]  # the single pixel (1 %) is below 2 %; ignored pixels never count


def test_write_read_round_trip_and_the_documented_format(tagged_root, tmp_path):
    entries = tags_from_labels(tagged_root, "train.txt", progress=False)
    from structseg.data.layout import read_classes
    out = write_tags(tmp_path / "train.tags.txt", entries, tagged_root, read_classes(tagged_root))
    assert out.read_text().splitlines() == ["img/0.png sky", "img/1.png sky,cow,grass", "img/2.png grass"]
    assert read_tags(tagged_root, out) == entries


@pytest.mark.parametrize("line, message", [
    ("img/0.png sky,horse", "unknown class(es) ['horse']"),
    ("img/0.png", "has no tags"),
    ("img/9.png sky", "does not exist"),
    ("img/0.png sky\nimg/0.png cow", "listed twice"),
    ("# nothing", "no tagged images"),
])
def test_bad_tags_files_give_one_clear_error(tagged_root, tmp_path, line, message):
    path = tmp_path / "t.txt"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        read_tags(tagged_root, path)


def test_tagged_dataset_reads_images_and_tags_only(tagged_root, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("img/1.png cow,grass\nimg/2.png sky\n")
    for lab in (tagged_root / "lab").glob("*.png"):
        lab.write_bytes(b"not a png")  # the label maps are never opened
    ds = TaggedDataset(tagged_root, path)
    x, y = ds[0]
    assert x.shape == (3, 10, 10) and x.dtype == torch.uint8
    assert y.tolist() == [0.0, 1.0, 1.0] and ds[1][1].tolist() == [1.0, 0.0, 0.0]

    from structseg.data.transforms import TrainTransform
    ds = TaggedDataset(tagged_root, path, TrainTransform(ignore_index=255, crop_size=(8, 8)), seed=3)
    a, b = ds[0][0], ds[0][0]
    assert a.shape == (3, 8, 8) and torch.equal(a, b)  # seeded by (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], a)


def test_cli_writes_tags_and_refuses_bad_shares(tagged_root, tmp_path, capsys):
    out = tmp_path / "tags.txt"
    assert main(["data", "tags", str(tagged_root), "--split", "train.txt", "--out", str(out), "--quiet"]) == 0
    assert "3 images, 1.67 tags per image" in capsys.readouterr().out
    assert main(["data", "tags", str(tagged_root), "--split", "train.txt", "--out", str(tmp_path / "x.txt"),
                 "--min-share", "1"]) == 2
    assert "--min-share must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()
