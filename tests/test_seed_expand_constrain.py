"""The expand / constrain baseline's losses against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from structseg.structured.dense_crf import CRFParams, mean_field
from structseg.structured.seed_expand_constrain import SEC_PIXELS, constrain_loss, expand_loss, gwrp


def test_gwrp_by_hand_and_its_limits():
    probs = torch.tensor([0.1, 0.9, 0.5, 0.3]).view(1, 1, 2, 2)
    d = 0.5
    ranked = [0.9, 0.5, 0.3, 0.1]
    expected = sum(p * d ** i for i, p in enumerate(ranked)) / sum(d ** i for i in range(4))
    assert gwrp(probs, d).item() == pytest.approx(expected)
    assert gwrp(probs, 1.0).item() == pytest.approx(0.45)          # d = 1: the mean
    assert gwrp(probs, 1e-9).item() == pytest.approx(0.9, abs=1e-6)  # d -> 0: the max


def test_gwrp_with_one_decay_per_class_is_each_class_on_its_own():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(2, 3, 4, 5, generator=g)
    decays = torch.tensor([0.5, 0.9, 1.0])
    pooled = gwrp(probs, decays)
    for k in range(3):
        assert torch.allclose(pooled[:, k], gwrp(probs[:, k:k + 1], float(decays[k]))[:, 0])
    assert torch.allclose(pooled[:, 2], probs[:, 2].flatten(1).mean(1))  # d = 1: the mean


def test_expand_loss_by_hand():
    probs = torch.zeros(1, 3, 2, 2)
    probs[0, 0] = torch.tensor([[0.8, 0.8], [0.1, 0.1]])
    probs[0, 1] = torch.tensor([[0.1, 0.1], [0.8, 0.8]])
    probs[0, 2] = 1 - probs[0, 0] - probs[0, 1]
    tags = torch.tensor([[1.0, 1.0, 0.0]])
    d = 0.9 ** (4 / SEC_PIXELS)  # so that the rescaled decay on 4 pixels is 0.9
    w = [0.9 ** i for i in range(4)]
    g0 = (0.8 * w[0] + 0.8 * w[1] + 0.1 * w[2] + 0.1 * w[3]) / sum(w)
    expected = -(math.log(g0) + math.log(g0)) / 2 - math.log(1 - 0.1)  # class 2's peak is 0.1
    assert expand_loss(probs, tags, d).item() == pytest.approx(expected, rel=1e-5)
    # class 1 with its own decay (0.5 after rescaling): only its pooled term changes
    d1 = 0.5 ** (4 / SEC_PIXELS)
    w1 = [0.5 ** i for i in range(4)]
    g1 = (0.8 * w1[0] + 0.8 * w1[1] + 0.1 * w1[2] + 0.1 * w1[3]) / sum(w1)
    expected = -(math.log(g0) + math.log(g1)) / 2 - math.log(1 - 0.1)
    assert expand_loss(probs, tags, torch.tensor([d, d1, d])).item() == pytest.approx(expected, rel=1e-5)


def test_constrain_is_the_kl_to_the_tag_restricted_crf_and_only_trains_f():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 6, 7, generator=g, requires_grad=True)
    image = torch.rand(1, 3, 6, 7, generator=g) * 255
    tags = torch.tensor([[1.0, 0.0, 1.0]])
    params = CRFParams(iterations=3, appearance_xy=5.0, smoothness_xy=1.0)
    loss = constrain_loss(logits, image, tags, params)
    masked = logits.detach().clone()
    masked[:, 1] = -1e4
    q = mean_field(-torch.log_softmax(masked, 1), image, params)
    assert q[:, 1].max() < 1e-6  # the absent class gets no mass
    f = torch.softmax(logits.detach(), 1)
    expected = (q * (torch.log(q.clamp(min=1e-8)) - torch.log(f))).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.sum().backward()  # the gradient is that of the cross-entropy to Q: f - Q per pixel, / pixels
    torch.testing.assert_close(logits.grad, (f - q) / 42, atol=1e-6, rtol=1e-4)
