"""Seed 001's latent-CRF prior: the closed-form KL to the dense CRF against enumeration of every labelling,
its gradient against the one-message formula and finite differences."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from structseg.structured.dense_crf import CRFParams
from structseg.structured.latent_crf import (
    crf_messages,
    expected_potts_energy,
    kl_to_crf_prior,
)

PARAMS = CRFParams(smoothness_weight=1.5, smoothness_xy=1.0, appearance_weight=2.0, appearance_xy=2.0,
                   appearance_rgb=20.0)


def tiny(seed=0, h=2, w=3, k=2):
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(1, 3, h, w, generator=g, dtype=torch.float64) * 255).round()
    logits = torch.randn(1, k, h, w, generator=g, dtype=torch.float64)
    return image, logits


def dense_kernel(image):
    """The operator's matrix, column by column: channel i of the input is the delta at pixel i."""
    _, _, h, w = image.shape
    n = h * w
    deltas = torch.eye(n, dtype=torch.float64).view(n, h, w)[None]  # (1, n, h, w)
    return crf_messages(deltas, image, PARAMS)[0].reshape(n, n).T  # row j: messages at pixel j


def test_the_lattice_operator_is_nearly_symmetric_with_a_positive_diagonal():
    """The per-axis blurs of the lattice do not commute where vertices are missing, so the filter is symmetric
    only up to border effects; the energy is a quadratic form and sees its symmetric part alone."""
    image, _ = tiny(h=6, w=7)
    kt = dense_kernel(image)
    assert (kt - kt.T).abs().max() < 0.25 * kt.abs().max()
    assert (torch.diagonal(kt) > 0).all()


@pytest.mark.parametrize("seed, k", [(0, 2), (1, 3)])
def test_closed_form_kl_against_enumeration(seed, k):
    image, logits = tiny(seed, k=k)
    q = torch.softmax(logits, 1)
    n = q.shape[-1] * q.shape[-2]
    kt = dense_kernel(image)
    qf = q[0].reshape(k, n).T  # (n, k)
    energies, log_q = [], []
    for z in itertools.product(range(k), repeat=n):
        z = torch.tensor(z)
        differ = (z[:, None] != z[None, :]).double()
        energies.append(0.5 * (kt * differ).sum())  # the diagonal never counts: a pixel agrees with itself
        log_q.append(torch.log(qf[torch.arange(n), z]).sum())
    energies, log_q = torch.stack(energies), torch.stack(log_q)
    log_z = torch.logsumexp(-energies, 0)
    kl_exact = (log_q.exp() * (log_q + energies + log_z)).sum()
    self_term = 0.5 * (torch.diagonal(kt) * (1 - (qf ** 2).sum(1))).sum()
    computed = kl_to_crf_prior(q, image, PARAMS)[0]
    assert computed.item() == pytest.approx((kl_exact - log_z + self_term).item(), abs=1e-9)
    assert kl_exact.item() >= -1e-12 and self_term.item() >= 0


def test_gradient_is_one_mean_field_message():
    image, logits = tiny(2, k=3)
    q = torch.softmax(logits, 1).requires_grad_()
    kl_to_crf_prior(q, image, PARAMS).sum().backward()
    kt = dense_kernel(image)
    sym = 0.5 * (kt + kt.T)  # the gradient of 1/2 q.mu(K q) is mu applied to the symmetric part's message
    k = q.shape[1]
    m = (sym @ q.detach()[0].reshape(k, -1).T).T.reshape(q.shape)
    expected = torch.log(q.detach()) + 1 + (m.sum(1, keepdim=True) - m)
    # on the simplex a gradient is defined up to a constant per pixel: compare the parts along it
    centred = lambda g: g - g.mean(1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(centred(q.grad), centred(expected), atol=1e-9, rtol=1e-7)


def test_gradcheck_through_the_softmax():
    image, logits = tiny(3, h=3, w=3, k=2)
    assert torch.autograd.gradcheck(lambda g: kl_to_crf_prior(torch.softmax(g, 1), image, PARAMS),
                                    (logits.requires_grad_(),))


def test_constant_labelling_has_no_energy_and_a_split_one_has_the_cut():
    image, _ = tiny(4, h=2, w=2)
    kt = dense_kernel(image)
    same = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    same[:, 0] = 1
    assert expected_potts_energy(same, image, PARAMS).item() == pytest.approx(0.0, abs=1e-12)
    split = same.clone()
    split[:, :, :, 1] = torch.tensor([0.0, 1.0])[:, None]  # right column labelled 1
    left, right = [0, 2], [1, 3]
    cut = sum(0.5 * (kt[a, b] + kt[b, a]) for a in left for b in right)
    assert expected_potts_energy(split, image, PARAMS).item() == pytest.approx(cut.item(), rel=1e-9)
    assert not math.isnan(kl_to_crf_prior(split, image, PARAMS).item())


def enumerate_labellings(k, n):
    return [torch.tensor(z) for z in itertools.product(range(k), repeat=n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tag_likelihood_bound_is_below_and_converges_to_the_exact_expectation(seed):
    from structseg.structured.latent_crf import (
        tag_log_likelihood,
        tag_log_likelihood_bound,
    )
    g = torch.Generator().manual_seed(seed)
    k, h, w = 3, 2, 3
    q = torch.softmax(torch.randn(1, k, h, w, generator=g, dtype=torch.float64) * 2, 1)
    tags = torch.tensor([[1.0, 0.0, 1.0]])
    rate = torch.rand(k, generator=g, dtype=torch.float64) * 2 + 0.1
    qf = q[0].reshape(k, -1).T
    exact = sum(torch.prod(qf[torch.arange(h * w), z]) * tag_log_likelihood(z.view(1, h, w), tags, rate, k)[0]
                for z in enumerate_labellings(k, h * w))
    loose = tag_log_likelihood_bound(q, tags, rate, terms=3)[0]
    tight = tag_log_likelihood_bound(q, tags, rate, terms=64)[0]
    assert loose.item() <= exact.item() + 1e-12 and tight.item() <= exact.item() + 1e-12
    assert tight.item() == pytest.approx(exact.item(), abs=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_evidence_bound_never_exceeds_log_p_of_the_tags(seed):
    """log p(y | x) = log sum_z p(z | x) p(y | z), by enumeration, against E_q[log p(y | z)] - KL(q || p)
    as computed (the likelihood's series bound, the lattice KL with its self-interaction)."""
    from structseg.structured.latent_crf import (
        tag_log_likelihood,
        tag_log_likelihood_bound,
    )
    image, logits = tiny(seed, h=2, w=3, k=2)
    q = torch.softmax(logits * 2, 1)
    tags = torch.tensor([[1.0, 1.0]]) if seed % 2 else torch.tensor([[1.0, 0.0]])
    rate = torch.tensor([0.8, 1.5], dtype=torch.float64)
    kt = dense_kernel(image)
    n = 6
    zs = enumerate_labellings(2, n)
    energies = torch.stack([0.5 * (kt * (z[:, None] != z[None, :]).double()).sum() for z in zs])
    log_prior = -energies - torch.logsumexp(-energies, 0)
    log_lik = torch.stack([tag_log_likelihood(z.view(1, 2, 3), tags, rate, 2)[0] for z in zs])
    log_evidence = torch.logsumexp(log_prior + log_lik, 0)
    log_z = torch.logsumexp(-energies, 0)
    elbo = tag_log_likelihood_bound(q, tags, rate)[0] - (kl_to_crf_prior(q, image, PARAMS)[0] + log_z)
    assert elbo.item() <= log_evidence.item() + 1e-9
    # and the exact posterior attains it: KL(p(z|x,y) || p) - E log p(y|z) = -log p(y|x) by enumeration
    post = torch.softmax(log_prior + log_lik, 0)
    exact_elbo = (post * (log_lik + log_prior - torch.log(post))).sum()
    assert exact_elbo.item() == pytest.approx(log_evidence.item(), abs=1e-9)


def test_the_tag_bound_products_have_exact_gradients_for_q_and_the_rates():
    from structseg.structured.latent_crf import _LogProducts
    g = torch.Generator().manual_seed(0)
    q = torch.softmax(torch.randn(3, 7, generator=g, dtype=torch.float64), 0).requires_grad_(True)  # (P, N)
    a = (0.2 + 0.7 * torch.rand(4, 3, generator=g, dtype=torch.float64)).requires_grad_(True)  # (M, P)
    assert torch.autograd.gradcheck(_LogProducts.apply, (q, a))
    dense = torch.log1p(-(q.unsqueeze(1) * a.t().unsqueeze(2))).sum(2)  # the (P, M, N) form it replaces
    torch.testing.assert_close(_LogProducts.apply(q, a), dense)
