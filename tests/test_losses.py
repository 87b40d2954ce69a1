"""Training losses against hand computations on tiny inputs; the ignore index is left out by every one."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from structseg.config import LossTerm, config_from_dict
from structseg.engine.losses import build_loss, dice_loss, focal_loss, lovasz_softmax
from structseg.errors import ConfigError


def tiny():
    """2 classes, one image of 1 x 4 pixels; the last pixel ignored."""
    logits = torch.tensor([[[[2.0, 0.0, -1.0, 5.0]], [[0.0, 0.0, 1.0, -5.0]]]])  # (1, 2, 1, 4)
    labels = torch.tensor([[[0, 1, 1, 255]]])
    return logits, labels


def test_dice_by_hand():
    logits, labels = tiny()
    p = torch.softmax(logits, 1)[0, :, 0, :3]  # the three labelled pixels
    y = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    expected = [1 - (2 * (p[c] * y[c]).sum() + 1) / (p[c].sum() + y[c].sum() + 1) for c in range(2)]
    assert dice_loss(logits, labels).item() == pytest.approx(((expected[0] + expected[1]) / 2).item())
    assert dice_loss(logits, torch.full_like(labels, 255)).item() == 0.0


def test_focal_by_hand_and_gamma_zero_is_cross_entropy():
    logits, labels = tiny()
    p = torch.softmax(logits, 1)[0, :, 0, :3]
    pt = torch.stack([p[0, 0], p[1, 1], p[1, 2]])
    expected = (-(1 - pt) ** 2 * pt.log()).mean()
    assert focal_loss(logits, labels, 2.0).item() == pytest.approx(expected.item())
    w = torch.tensor([1.0, 3.0])
    assert focal_loss(logits, labels, 0.0, w).item() == pytest.approx(
        F.cross_entropy(logits, labels, weight=w, ignore_index=255).item())


def brute_lovasz(errors, truth):
    """The Lovász extension of the Jaccard loss by its definition: sum over the sorted errors of the
    increments of the set function (1 - IoU of the truth with the predicted set) as the mistakes grow."""
    n = len(errors)

    def jaccard_loss(mistakes):  # mistakes: set of pixel indices whose prediction is wrong for this class
        pred = {i for i in range(n) if (truth[i] == 1) != (i in mistakes)}
        gt = {i for i in range(n) if truth[i] == 1}
        return 1 - len(pred & gt) / len(pred | gt) if pred | gt else 0.0
    order = sorted(range(n), key=lambda i: -errors[i])
    total, prev = 0.0, 0.0
    for k in range(n):
        cur = jaccard_loss(set(order[:k + 1]))
        total += errors[order[k]] * (cur - prev)
        prev = cur
    return total


def test_lovasz_softmax_equals_its_definition_and_one_minus_iou_on_hard_predictions():
    logits, labels = tiny()
    p = torch.softmax(logits, 1)[0, :, 0, :3]
    per_class = []
    for c in range(2):
        truth = [1 if v == c else 0 for v in labels[0, 0, :3].tolist()]
        errors = [abs(t - pv) for t, pv in zip(truth, p[c].tolist())]
        per_class.append(brute_lovasz(errors, truth))
    assert lovasz_softmax(logits, labels).item() == pytest.approx(sum(per_class) / 2)
    # hard predictions (huge logits): the loss is the mean over present classes of 1 - IoU
    hard = torch.tensor([[[[50.0, 50.0, -50.0]], [[-50.0, -50.0, 50.0]]]])  # predicts 0, 0, 1
    lab = torch.tensor([[[0, 1, 1]]])
    iou0, iou1 = 1 / 2, 1 / 2  # class 0: {0} vs {0, 1}; class 1: {2} vs {1, 2}
    assert lovasz_softmax(hard, lab).item() == pytest.approx(((1 - iou0) + (1 - iou1)) / 2, abs=1e-6)


def test_terms_sum_with_weights_and_label_smoothing():
    logits, labels = tiny()
    loss = build_loss([LossTerm("cross_entropy", 1.0, label_smoothing=0.1), LossTerm("dice", 0.5)], None, 255)
    expected = F.cross_entropy(logits, labels, ignore_index=255, label_smoothing=0.1) + 0.5 * dice_loss(logits, labels)
    assert loss(logits, labels).item() == pytest.approx(expected.item())
    assert not math.isclose(F.cross_entropy(logits, labels, ignore_index=255, label_smoothing=0.1).item(),
                            F.cross_entropy(logits, labels, ignore_index=255).item())


def test_gradients_flow_for_every_loss():
    for name in ("cross_entropy", "dice", "focal", "lovasz"):
        logits, labels = tiny()
        logits.requires_grad_()
        build_loss([LossTerm(name)], None, 255)(logits, labels).backward()
        assert logits.grad[..., 3].abs().sum() == 0 and logits.grad[..., :3].abs().sum() > 0, name


@pytest.mark.parametrize("loss, message", [
    ([{"name": "hinge"}], "'hinge' is not one of cross_entropy, dice, focal, lovasz"),
    ([{"name": "dice", "weight": -1}], "train.loss"),
    ([{"name": "cross_entropy", "label_smoothing": 1.0}], "train.loss"),
    ([{"name": "dice", "wieght": 1}], "unknown config key 'train.loss[0].wieght'"),
    ([], "train.loss"),
])
def test_loss_config_errors(loss, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict({"data": {"root": "x"}, "train": {"loss": loss}})


def test_a_run_trains_with_a_sum_of_losses(synth_root, tmp_path):
    from structseg.engine.trainer import train

    from .test_engine import tiny_config
    cfg = tiny_config(synth_root, epochs=1).to_dict()
    cfg["train"]["loss"] = [{"name": "cross_entropy"}, {"name": "lovasz", "weight": 0.5}, {"name": "focal"}]
    summary = train(config_from_dict(cfg), tmp_path / "run", progress=False)
    assert math.isfinite(summary["best_miou"])
