"""Per-image colour models (GrabCut-style unary for the weak baseline) against loops written out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from structseg.structured.colour_model import ColourModel, colour_bins, colour_log_likelihood, refine_with_colour
from structseg.structured.dense_crf import CRFParams, mean_field
from structseg.structured.seed_expand_constrain import tag_restricted_marginals


def test_colour_bins_by_hand():
    rgb = torch.tensor([[0.0, 255.0], [127.0, 128.0], [64.0, 300.0]]).view(1, 3, 1, 2)  # two pixels
    # 4 levels a channel (64 values each): pixel 0 = (0, 127, 64) -> (0, 1, 1); pixel 1 = (255, 128, 300) -> (3, 2, 3)
    assert colour_bins(rgb, 4).tolist() == [[0 * 16 + 1 * 4 + 1, 3 * 16 + 2 * 4 + 3]]
    with pytest.raises(ValueError, match="colour bins"):
        colour_bins(rgb, 1)


def test_colour_log_likelihood_is_each_class_soft_histogram():
    g = torch.Generator().manual_seed(0)
    b, k, n, bins, prior = 2, 3, 17, 2, 0.5
    q = torch.softmax(torch.randn(b, k, n, generator=g), 1)
    index = torch.randint(0, bins ** 3, (b, n), generator=g)
    got = colour_log_likelihood(q, index, bins, prior)
    for i in range(b):
        for c in range(k):
            counts = [prior + sum(float(q[i, c, j]) for j in range(n) if index[i, j] == v) for v in range(bins ** 3)]
            for j in range(n):
                assert got[i, c, j].item() == pytest.approx(math.log(counts[int(index[i, j])] / sum(counts)), abs=1e-5)


def test_refinement_is_alternating_histograms_and_softmax():
    g = torch.Generator().manual_seed(1)
    log_probs = torch.log_softmax(torch.randn(1, 3, 4, 5, generator=g), 1)
    rgb = torch.rand(1, 3, 4, 5, generator=g) * 255
    index = colour_bins(rgb, 4)
    expected = log_probs.flatten(2)
    for _ in range(2):  # two rounds written out
        expected = torch.log_softmax(log_probs.flatten(2) + 1.5 * colour_log_likelihood(expected.exp(), index, 4), 1)
    got = refine_with_colour(log_probs, rgb, weight=1.5, rounds=2, bins=4)
    torch.testing.assert_close(got, expected.view(1, 3, 4, 5))
    torch.testing.assert_close(refine_with_colour(log_probs, rgb, weight=0.0, rounds=3, bins=4), log_probs)


def test_colour_moves_a_boundary_the_network_got_wrong():
    """Left half red, right half green; the network says class 0 on the left 3/4, less sure of its last quarter:
    the colour models give the red/green split, which the network's scores alone cannot."""
    h, w = 8, 8
    rgb = torch.zeros(1, 3, h, w)
    rgb[:, 0, :, :4] = 200.0
    rgb[:, 1, :, 4:] = 200.0
    truth = torch.zeros(h, w, dtype=torch.long)
    truth[:, 4:] = 1
    logits = torch.zeros(1, 3, h, w)
    logits[0, 0, :, :4] = 2.0
    logits[0, 0, :, 4:6] = 0.5  # class 0 spread over two columns of class 1
    logits[0, 1, :, 6:] = 2.0
    logits[0, 2] = 5.0  # a confident class the image is not tagged with
    tags = torch.tensor([[1.0, 1.0, 0.0]])
    plain = tag_restricted_marginals(logits, rgb, tags, CRFParams(iterations=1, smoothness_weight=0, appearance_weight=0))
    assert (plain[0].argmax(0) != truth).sum() == 2 * h
    colour = ColourModel(weight=2.0, rounds=3, bins=2)
    refined = tag_restricted_marginals(logits, rgb, tags, CRFParams(iterations=1, smoothness_weight=0,
                                                                   appearance_weight=0), colour)
    assert torch.equal(refined[0].argmax(0), truth)
    assert refined[0, 2].max() < 1e-6  # the untagged class stays out
    # with a CRF after it: the same mean field on the colour-refined unary
    params = CRFParams(iterations=2, appearance_xy=3.0, smoothness_xy=1.0)
    masked = logits.masked_fill(tags[:, :, None, None] == 0, -1e4)
    expected = mean_field(-colour(torch.log_softmax(masked, 1), rgb), rgb, params)
    torch.testing.assert_close(tag_restricted_marginals(logits, rgb, tags, params, colour), expected)


@pytest.mark.parametrize("kwargs, match", [({"weight": -1.0}, "weight"), ({"weight": 1.0, "rounds": 0}, "rounds"),
                                           ({"weight": 1.0, "bins": 65}, "bins"), ({"weight": 1.0, "prior": 0.0}, "prior")])
def test_colour_model_settings_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ColourModel(**kwargs).validate()
