import json

import numpy as np
import pytest
from PIL import Image

from structseg.data.check import check_split
from structseg.data.class_weights import enet_weights, median_frequency_weights
from structseg.data.dataset import SegmentationDataset
from structseg.data.layout import read_classes
from structseg.data.synth import make_scene, write_synthetic
from structseg.errors import DataError

from .conftest import make_dataset


def first_pair(root):
    img, lab = (root / "train.txt").read_text().splitlines()[0].split()
    return root / img, root / lab


def load_all(root, split="train.txt"):
    ds = SegmentationDataset(root, split)
    for i in range(len(ds)):
        ds[i]
    return ds


def test_synthetic_dataset_loads(synth_root):
    ds = load_all(synth_root)
    img, lab = ds[0]
    assert img.shape == (3, 48, 64) and lab.shape == (48, 64)
    assert set(np.unique(lab.numpy())) <= {0, 1, 2, 3, 4, 255}
    assert len(ds) == 18 and len(SegmentationDataset(synth_root, "val.txt")) == 6
    assert read_classes(synth_root).num_classes == 5


def test_synthetic_is_deterministic_by_seed():
    a = make_scene(np.random.default_rng([3, 0]), 32, 40)
    b = make_scene(np.random.default_rng([3, 0]), 32, 40)
    c = make_scene(np.random.default_rng([4, 0]), 32, 40)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # every class appears somewhere in a handful of scenes
    labels = np.concatenate([make_scene(np.random.default_rng([0, i]))[1].ravel() for i in range(8)])
    assert set(range(5)) <= set(np.unique(labels))


def test_synth_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        write_synthetic(tmp_path / "x", n=4)
    assert (tmp_path / "x" / "file").read_text() == "keep me"


def test_corrupt_truncated_image(synth_copy):
    img, _ = first_pair(synth_copy)
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"{img.name}.*(corrupt|truncated)"):
        load_all(synth_copy)


def test_non_image_file(synth_copy):
    img, _ = first_pair(synth_copy)
    img.write_text("this is not a picture")
    with pytest.raises(DataError, match=f"{img.name}: not an image"):
        load_all(synth_copy)


def test_label_size_mismatch(synth_copy):
    _, lab = first_pair(synth_copy)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(lab)
    with pytest.raises(DataError, match=f"{lab.name}: label size 12x10 .* differs from its image .* 64x48"):
        load_all(synth_copy)


def test_label_values_out_of_range(synth_copy):
    _, lab = first_pair(synth_copy)
    arr = np.array(Image.open(lab))
    arr[0, 0] = 7
    Image.fromarray(arr).save(lab)
    with pytest.raises(DataError, match=rf"{lab.name}: label values \[7\] out of range; expected 0..4 or ignore_index 255"):
        load_all(synth_copy)


def test_colour_label_is_rejected(synth_copy):
    _, lab = first_pair(synth_copy)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(lab)
    with pytest.raises(DataError, match="colour image; expected a single-channel"):
        load_all(synth_copy)


def test_missing_listed_file(synth_copy):
    img, _ = first_pair(synth_copy)
    img.unlink()
    with pytest.raises(DataError, match=rf"train.txt:1: listed file .*{img.name} does not exist"):
        SegmentationDataset(synth_copy, "train.txt")


def test_empty_split_and_missing_split(synth_copy):
    (synth_copy / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(DataError, match="empty.txt: split is empty"):
        SegmentationDataset(synth_copy, "empty.txt")
    with pytest.raises(DataError, match="nope.txt: split file not found"):
        SegmentationDataset(synth_copy, "nope.txt")


def test_bad_classes_json(synth_copy):
    (synth_copy / "classes.json").write_text(json.dumps({"classes": ["a", "b"], "ignore_index": 1}))
    with pytest.raises(DataError, match="ignore_index"):
        SegmentationDataset(synth_copy, "train.txt")
    (synth_copy / "classes.json").write_text(json.dumps({"classes": ["a"], "colours": []}))
    with pytest.raises(DataError, match="unknown key.*colours"):
        SegmentationDataset(synth_copy, "train.txt")
    (synth_copy / "classes.json").unlink()
    with pytest.raises(DataError, match="classes.json: missing"):
        SegmentationDataset(synth_copy, "train.txt")


def test_data_check_counts_and_problems(tmp_path):
    good = np.array([[0, 0, 1], [2, 255, 1]])
    bad = np.array([[0, 9, 9], [1, 1, 1]])
    root = make_dataset(tmp_path / "d", [good, bad], ["a", "b", "c"])
    rep = check_split(root, "train.txt", progress=False)
    assert rep.pixels.tolist() == [3, 5, 1]
    assert rep.images_with.tolist() == [2, 2, 1]
    assert rep.ignored_pixels == 1
    assert len(rep.problems) == 1 and "1.png: values [9]" in rep.problems[0]
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / "lab" / "0.png")
    rep = check_split(root, "train.txt", progress=False)
    assert any("0.png: size 3x3 differs from image 3x2" in p for p in rep.problems)
    assert "problem" in rep.format()


def test_median_frequency_weights_by_hand(tmp_path):
    # image 0 (4 px): class 0 x3, class 1 x1; image 1 (4 px): class 1 x2, class 2 x1, ignore x1
    labels = [np.array([[0, 0], [0, 1]]), np.array([[1, 1], [2, 255]])]
    root = make_dataset(tmp_path / "d", labels, ["a", "b", "c", "d"])
    w = median_frequency_weights(SegmentationDataset(root, "train.txt"))
    freq = np.array([3 / 4, 3 / 8, 1 / 4])  # pixels / pixels of images containing the class
    med = np.median(freq)
    np.testing.assert_allclose(w, [med / freq[0], med / freq[1], med / freq[2], 0.0])


def test_enet_weights_by_hand(tmp_path):
    labels = [np.array([[0, 0], [0, 1]]), np.array([[1, 1], [2, 255]])]
    root = make_dataset(tmp_path / "d", labels, ["a", "b", "c", "d"])
    w = enet_weights(SegmentationDataset(root, "train.txt"))
    p = np.array([3, 3, 1, 0]) / 7  # shares of the 7 labelled pixels
    np.testing.assert_allclose(w, 1 / np.log(1.02 + p))


def test_synthetic_folder_has_the_usual_permissions(tmp_path):
    # written in a private temporary folder and renamed: the result must not stay private (0700)
    from structseg._io import default_mode
    write_synthetic(tmp_path / "s", n=2, progress=False)
    assert (tmp_path / "s").stat().st_mode & 0o777 == default_mode(directory=True)
    assert (tmp_path / "s" / "train.txt").stat().st_mode & 0o777 == default_mode()
