"""Dataset converters: each on a tiny fixture built in the dataset's exact original layout, labels pixel for pixel."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from structseg.cli import main as cli
from structseg.data.check import check_split
from structseg.data.converters import convert
from structseg.data.converters.camvid import ORIGINAL, original_split
from structseg.data.converters.voc import voc_colormap
from structseg.data.dataset import SegmentationDataset
from structseg.errors import DataError

from .conftest import SHARED_DATA

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Each test draws from its own generator, seeded alike: results never depend on which tests ran before."""
    global RNG
    RNG = np.random.default_rng(0)


def rgb(path: Path, h=12, w=16, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def indexed(path: Path, arr: np.ndarray, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode="L")
    if palette is not None:
        im = im.convert("P")
        im.putpalette([v for c in palette for v in c] + [0] * (768 - 3 * len(palette)))
    im.save(path)
    return path


def colour_image(path: Path, arr: np.ndarray, colours, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array(colours, dtype=np.uint8)[arr]).save(path, format=fmt)
    return path


def label_of(dst: Path, split: str, stem: str) -> np.ndarray:
    return np.array(Image.open(dst / "labels" / split / f"{stem}.png"))


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_voc(tmp_path):
    voc = tmp_path / "src" / "VOCdevkit" / "VOC2012"
    labels = {}
    for i, (split, stem) in enumerate([("train", "2007_000032"), ("train", "2007_000039"), ("val", "2007_000033")]):
        rgb(voc / "JPEGImages" / f"{stem}.jpg", fmt="JPEG")
        lab = RNG.integers(0, 21, (12, 16))
        lab[0, :] = 255  # object border
        labels[stem] = lab
        indexed(voc / "SegmentationClass" / f"{stem}.png", lab, voc_colormap(256))
        with open(voc / "ImageSets" / "Segmentation" / f"{split}.txt" if (voc / "ImageSets" / "Segmentation").is_dir()
                  else _mk(voc / "ImageSets" / "Segmentation" / f"{split}.txt"), "a") as f:
            f.write(stem + "\n")
    before = tree_hash(tmp_path / "src")
    s = convert("voc", tmp_path / "src", tmp_path / "out", progress=False)
    assert tree_hash(tmp_path / "src") == before
    assert s.images == {"train": 2, "val": 1}
    for stem, lab in labels.items():
        split = "val" if stem == "2007_000033" else "train"
        np.testing.assert_array_equal(label_of(tmp_path / "out", split, stem), lab)
        assert (tmp_path / "out" / "images" / split / f"{stem}.jpg").read_bytes() == \
            (voc / "JPEGImages" / f"{stem}.jpg").read_bytes()
    info = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert info["classes"][15] == "person" and info["ignore_index"] == 255 and info["palette"][1] == [128, 0, 0]
    assert check_split(tmp_path / "out", "train.txt", progress=False).problems == []


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_voc_sbd_train_aug_excludes_voc_val(tmp_path):
    from scipy.io import savemat
    voc = tmp_path / "src" / "VOC2012"
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    voc_ids = {"train": ["a1", "b2"], "val": ["c3"]}
    sbd_ids = {"train": ["b2", "d4", "c3"], "val": ["e5"]}
    truth = {}
    for split, ids in voc_ids.items():
        _mk(voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            rgb(voc / "JPEGImages" / f"{i}.jpg", fmt="JPEG")
            truth[i] = RNG.integers(0, 21, (12, 16))
            truth[i][5, 5] = 255
            indexed(voc / "SegmentationClass" / f"{i}.png", truth[i], voc_colormap(256))
    for split, ids in sbd_ids.items():
        _mk(sbd / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            rgb(sbd / "img" / f"{i}.jpg", fmt="JPEG")
            seg = RNG.integers(0, 21, (12, 16)).astype(np.uint8)
            _mk(sbd / "cls" / f"{i}.mat")
            savemat(sbd / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((1, 20)),
                                                         "CategoriesPresent": np.unique(seg)[None]}})
            truth.setdefault(i, seg)  # an image with a VOC label keeps it
    s = convert("voc-sbd", tmp_path / "src", tmp_path / "out", sbd=tmp_path / "benchmark_RELEASE", progress=False)
    assert s.images == {"train_aug": 4, "val": 1}
    names = (tmp_path / "out" / "train_aug.txt").read_text()
    assert "c3" not in names and all(i in names for i in ("a1", "b2", "d4", "e5"))
    for i in ("a1", "b2", "d4", "e5"):
        np.testing.assert_array_equal(label_of(tmp_path / "out", "train_aug", i), truth[i])
    with pytest.raises(DataError, match="--sbd"):
        convert("voc-sbd", tmp_path / "src", tmp_path / "out2", progress=False)


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    # the official table (cityscapesScripts labels.py): id -> trainId for the 19 evaluated classes
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    ids = np.arange(0, 34).repeat(6)[:12 * 16].reshape(12, 16)
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        stem = f"{city}_000000_000019"
        rgb(tmp_path / "cs" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        indexed(tmp_path / "cs" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
        indexed(tmp_path / "cs" / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", ids)
    s = convert("cityscapes", tmp_path / "cs", tmp_path / "out", progress=False)
    assert s.images == {"train": 1, "val": 1}
    got = label_of(tmp_path / "out", "val", "frankfurt_000000_000019")
    want = np.vectorize(lambda v: expected.get(int(v), 255))(ids)
    np.testing.assert_array_equal(got, want)
    assert json.loads((tmp_path / "out" / "classes.json").read_text())["classes"][13] == "car"


def test_ade20k_reduces_zero_label(tmp_path):
    root = tmp_path / "src" / "ADEChallengeData2016"
    lab = RNG.integers(0, 151, (12, 16))
    lab[0, :3] = [0, 1, 150]
    for folder, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        rgb(root / "images" / folder / f"{stem}.jpg", fmt="JPEG")
        indexed(root / "annotations" / folder / f"{stem}.png", lab)
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.1\t10\t1\tname{i};alias" for i in range(1, 151)]
    (root / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    s = convert("ade20k", tmp_path / "src", tmp_path / "out", progress=False)
    assert s.images == {"train": 1, "val": 1}
    got = label_of(tmp_path / "out", "train", "ADE_train_00000001")
    assert got[0, :3].tolist() == [255, 0, 149]
    np.testing.assert_array_equal(got, np.where(lab == 0, 255, lab - 1))
    info = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert len(info["classes"]) == 150 and info["classes"][0] == "name1" and info["ignore_index"] == 255


def test_camvid_segnet_layout(tmp_path):
    src = tmp_path / "CamVid"
    truth = {}
    for split in ("train", "val", "test"):
        rgb(src / split / f"0016E5_0{split}.png")
        truth[split] = RNG.integers(0, 12, (12, 16))
        indexed(src / f"{split}annot" / f"0016E5_0{split}.png", truth[split])
    s = convert("camvid", src, tmp_path / "out", progress=False)
    assert s.images == {"train": 1, "val": 1, "test": 1}
    for split in truth:
        np.testing.assert_array_equal(label_of(tmp_path / "out", split, f"0016E5_0{split}"), truth[split])
    ds = SegmentationDataset(tmp_path / "out", "train.txt")
    assert ds.classes.num_classes == 11 and ds.classes.ignore_index == 11


def test_camvid_original_32_classes(tmp_path):
    src = tmp_path / "camvid"
    names = sorted(ORIGINAL)
    colours = [ORIGINAL[n][0] for n in names]
    (src).mkdir()
    (src / "label_colors.txt").write_text("".join(f"{r} {g} {b}\t{n}\n" for n, ((r, g, b), _) in ORIGINAL.items()))
    frames = ["0016E5_07959", "0016E5_08190", "Seq05VD_f00000", "0001TP_008550", "0001TP_006690", "0006R0_f01000"]
    truth = {}
    for stem in frames:
        rgb(src / "701_StillsRaw_full" / f"{stem}.png", 24, 32)
        truth[stem] = RNG.integers(0, len(names), (24, 32))
        colour_image(src / "LabeledApproved_full" / f"{stem}_L.png", truth[stem], colours)
    s = convert("camvid", src, tmp_path / "out", progress=False)
    assert s.images == {"val": 1, "train": 3, "test": 2}
    eleven = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
              "bicyclist")
    group = np.array([11 if ORIGINAL[n][1] is None else eleven.index(ORIGINAL[n][1]) for n in names])
    got = label_of(tmp_path / "out", "val", "0016E5_07959")
    np.testing.assert_array_equal(got, group[truth["0016E5_07959"]])
    assert group[names.index("LaneMkgsDriv")] == 3 and group[names.index("Sidewalk")] == 4
    assert group[names.index("SUVPickupTruck")] == 8 and group[names.index("Void")] == 11
    half = convert("camvid", src, tmp_path / "half", scale=0.5, progress=False)
    assert half.images == s.images
    assert np.array(Image.open(tmp_path / "half" / "images" / "train" / "0016E5_08190.png")).shape == (12, 16, 3)
    assert label_of(tmp_path / "half", "train", "0016E5_08190").shape == (12, 16)
    # an unknown colour in a label names the file and the colour
    bad = src / "LabeledApproved_full" / "0016E5_07959_L.png"
    arr = np.array(Image.open(bad))
    arr[0, 0] = (1, 2, 3)
    Image.fromarray(arr).save(bad)
    with pytest.raises(DataError, match=r"0016E5_07959_L.png: colour\(s\) \(1, 2, 3\)"):
        convert("camvid", src, tmp_path / "out3", progress=False)
    assert not (tmp_path / "out3").exists() and not list(tmp_path.glob(".out3.partial-*"))


def test_msrc_original_colours(tmp_path):
    root = tmp_path / "src" / "MSRC_ObjCategImageDatabase_v2"
    cmap = voc_colormap(24)
    truth = {}
    for stem in ("1_1_s", "1_2_s", "5_3_s"):
        rgb(root / "Images" / f"{stem}.bmp", fmt="BMP")
        truth[stem] = RNG.integers(0, 24, (12, 16))  # 0 void, 1..23 the MSRC v2 colour order
        colour_image(root / "GroundTruth" / f"{stem}_GT.bmp", truth[stem], cmap, fmt="BMP")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "Train.txt").write_text("1_1_s.bmp\n1_2_s.bmp\n")
    (tmp_path / "splits" / "Test.txt").write_text("5_3_s.bmp\n")
    s = convert("msrc", tmp_path / "src", tmp_path / "out", splits=tmp_path / "splits", progress=False)
    assert s.images == {"train": 2, "test": 1}
    # by hand: v2 index 1 building -> 0, 2 grass -> 1, 5 horse -> void, 6 sheep -> 4, 8 mountain -> void, 23 boat -> 20
    table = {0: 255, 1: 0, 2: 1, 3: 2, 4: 3, 5: 255, 6: 4, 7: 5, 8: 255}
    table.update({v: v - 3 for v in range(9, 24)})
    got = label_of(tmp_path / "out", "train", "1_2_s")
    np.testing.assert_array_equal(got, np.vectorize(table.get)(truth["1_2_s"]))
    assert (tmp_path / "out" / "images" / "train" / "1_2_s.png").is_file()  # BMP re-encoded as PNG
    info = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert info["classes"][0] == "building" and info["classes"][20] == "boat" and len(info["classes"]) == 21
    msgs = []
    assert convert("msrc", tmp_path / "src", tmp_path / "all", progress=False, messages=msgs).images == {"all": 3}
    assert "--splits" in msgs[0]


def test_folder_binary_index_and_colour_masks(tmp_path, capsys):
    src = tmp_path / "binary"
    m = (RNG.random((12, 16)) > 0.5).astype(np.uint8) * 255
    for stem in ("a", "b", "c", "d"):
        rgb(src / "images" / f"{stem}.jpg", fmt="JPEG")
        indexed(src / "masks" / f"{stem}.png", m)
    assert cli(["convert", "folder", str(src), str(tmp_path / "out"), "--quiet", "--val-fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "binary" in out and "0 and 255" in out
    split = "train" if (tmp_path / "out" / "labels" / "train" / "a.png").is_file() else "val"
    np.testing.assert_array_equal(label_of(tmp_path / "out", split, "a"), m // 255)
    assert json.loads((tmp_path / "out" / "classes.json").read_text())["classes"] == ["background", "foreground"]

    src = tmp_path / "colour"
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    (tmp_path / "pal.json").write_text(json.dumps({"classes": ["bg", "red", "green"], "palette": palette}))
    lab = RNG.integers(0, 3, (12, 16))
    for split in ("train", "val"):
        rgb(src / "images" / split / "x.png")
        colour_image(src / "masks" / split / "x.png", lab, palette)
    s = convert("folder", src, tmp_path / "out2", palette=tmp_path / "pal.json", progress=False)
    assert s.images == {"train": 1, "val": 1}
    np.testing.assert_array_equal(label_of(tmp_path / "out2", "val", "x"), lab)

    rgb(src / "images" / "train" / "y.png")
    with pytest.raises(DataError, match="no mask for image"):
        convert("folder", src, tmp_path / "out3", palette=tmp_path / "pal.json", progress=False)


def test_failed_conversion_leaves_nothing_and_src_untouched(tmp_path):
    src = tmp_path / "CamVid"
    for i in range(3):
        rgb(src / "train" / f"f{i}.png")
        indexed(src / "trainannot" / f"f{i}.png", RNG.integers(0, 12, (12, 16)))
    indexed(src / "trainannot" / "f2.png", RNG.integers(0, 12, (10, 16)))  # wrong size
    before = tree_hash(src)
    with pytest.raises(DataError, match="f2.png: image is 16x12 but its label is 16x10"):
        convert("camvid", src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [src]
    assert tree_hash(src) == before
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match="already exists"):
        convert("camvid", src, tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="outside the source"):
        convert("camvid", src, src / "inner", progress=False)


@pytest.mark.realdata
def test_camvid_original_split_rule_matches_segnet_lists():
    camvid = SHARED_DATA / "camvid"
    if not camvid.is_dir():
        pytest.skip(f"{camvid} not present")
    for split in ("train", "val"):
        for line in (camvid / f"{split}.txt").read_text().splitlines():
            assert original_split(Path(line.split()[0]).stem) == split, line
