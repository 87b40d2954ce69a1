import math

import numpy as np
import pytest
import torch

from structseg.engine.metrics import ConfusionMatrix, class_map


def test_confusion_counts_and_metrics_by_hand():
    # 3 classes, ignore 255. truth / prediction over 10 pixels (2 ignored).
    t = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 255, 255])
    p = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 1, 2])
    cm = ConfusionMatrix(3, 255)
    cm.update(p, t)
    expected = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 2]])
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    m = cm.compute()
    # IoU: c0 = 2/(3+3-2)=0.5, c1 = 1/(2+2-1)=1/3, c2 = 2/(3+3-2)=0.5
    np.testing.assert_allclose(m["iou"], [0.5, 1 / 3, 0.5])
    assert m["miou"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    assert m["pixel_acc"] == pytest.approx(5 / 8)
    assert m["mean_acc"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    # precision tp / predicted: 2/3, 1/2, 2/3; Dice 2 tp / (truth + predicted): 4/6, 2/4, 4/6
    np.testing.assert_allclose(m["precision"], [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(m["dice"], [2 / 3, 1 / 2, 2 / 3])
    assert m["mean_dice"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    # frequency-weighted IoU: truth shares 3/8, 2/8, 3/8
    assert m["fwiou"] == pytest.approx(3 / 8 * 0.5 + 2 / 8 / 3 + 3 / 8 * 0.5)


def test_dice_is_f1_and_differs_from_iou_by_the_known_identity():
    g = torch.Generator().manual_seed(0)
    t, p = torch.randint(0, 5, (500,), generator=g), torch.randint(0, 5, (500,), generator=g)
    cm = ConfusionMatrix(5, 255)
    cm.update(p, t)
    m = cm.compute()
    for iou, dice, prec, rec in zip(m["iou"], m["dice"], m["precision"], m["acc"]):
        assert dice == pytest.approx(2 * prec * rec / (prec + rec))  # F1
        assert dice == pytest.approx(2 * iou / (1 + iou))


def test_absent_classes():
    # class 2 never in truth nor prediction -> excluded; class 3 predicted but absent from truth -> IoU 0
    cm = ConfusionMatrix(4, 9)
    cm.update(torch.tensor([[0, 1], [3, 1]]), torch.tensor([[0, 1], [1, 9]]))
    m = cm.compute()
    assert m["iou"][0] == 1.0
    assert m["iou"][1] == pytest.approx(1 / 2)
    assert math.isnan(m["iou"][2])
    assert m["iou"][3] == 0.0
    assert m["miou"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert math.isnan(m["acc"][2]) and math.isnan(m["acc"][3])
    assert m["mean_acc"] == pytest.approx((1 + 0.5) / 2)
    assert math.isnan(m["precision"][2]) and m["precision"][3] == 0.0 and math.isnan(m["dice"][2])
    assert m["fwiou"] == pytest.approx(1 / 3 * 1.0 + 2 / 3 * 0.5)  # truth: 1 pixel of class 0, 2 of class 1


def test_accumulates_over_batches_like_one_matrix():
    rng = np.random.default_rng(0)
    t = torch.from_numpy(rng.integers(0, 5, (4, 8, 8)))
    p = torch.from_numpy(rng.integers(0, 5, (4, 8, 8)))
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    for i in range(4):
        a.update(p[i], t[i])
    b.update(p, t)
    assert torch.equal(a.matrix, b.matrix)
    assert int(a.matrix.sum()) == 4 * 64


def test_rejects_out_of_range_target():
    with pytest.raises(ValueError, match="target values"):
        ConfusionMatrix(3).update(torch.tensor([0]), torch.tensor([7]))


def test_class_map_is_the_argmax_with_first_index_on_ties():
    scores = torch.randn(2, 5, 7, 9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(class_map(scores), scores.argmax(1))
    assert torch.equal(class_map(scores[0], 0), scores[0].argmax(0))
    tied = torch.tensor([[0.2, 0.7, 0.7, 0.1]]).T[:, :, None]  # (C=4, 1, 1): classes 1 and 2 tie
    assert class_map(tied, 0).item() == 1


def test_boundaries_by_hand():
    from structseg.engine.metrics import boundaries
    lab = torch.tensor([[0, 0, 1], [0, 0, 1], [9, 9, 1]])
    edge = boundaries(lab, 9)
    assert edge.tolist() == [[False, True, True], [False, True, True], [False, False, False]]


def test_boundary_f_by_hand():
    from structseg.engine.metrics import BoundaryF
    truth = torch.zeros(1, 6, 8, dtype=torch.long)
    truth[:, :, 4:] = 1                       # a vertical edge between columns 3 and 4
    pred = torch.zeros(1, 6, 8, dtype=torch.long)
    pred[:, :, 6:] = 1                        # the edge two columns to the right
    exact = BoundaryF(255, tolerance=0)
    exact.update(pred, truth)
    m = exact.compute()
    assert m["boundary_precision"] == 0.0 and m["boundary_recall"] == 0.0
    # boundary pixels: truth columns 3, 4; prediction columns 5, 6 (12 pixels each)
    near = BoundaryF(255, tolerance=1)        # column 5 is 1 from column 4, column 6 is 2 away: 6 of 12 match
    near.update(pred, truth)
    m = near.compute()
    assert m["boundary_precision"] == pytest.approx(6 / 12) and m["boundary_recall"] == pytest.approx(6 / 12)
    assert m["boundary_f"] == pytest.approx(0.5)
    loose = BoundaryF(255, tolerance=2)       # every pixel within 2 of the other edge
    loose.update(pred, truth)
    assert loose.compute()["boundary_f"] == 1.0
    perfect = BoundaryF(255, tolerance=0)
    perfect.update(truth, truth)
    assert perfect.compute()["boundary_f"] == 1.0
    with pytest.raises(ValueError, match="tolerance"):
        BoundaryF(255, -1)
