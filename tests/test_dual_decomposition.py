"""Seed 002: chain max-marginals against brute-force enumeration, and the dual-decomposition grid CRF's
invariants (sum of copies, monotone dual, weak duality, zero tables, stride-2 placement, gradients)."""
from __future__ import annotations

import itertools

import pytest
import torch

from structseg.structured.chain import chain_log_partition, chain_max_marginals
from structseg.structured.dual_decomposition import (
    DDParams,
    DualDecompositionCRF,
    Subproblems,
    dd_inference,
    sublattices,
)


def random_chain(n=2, k=3, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, length, generator=g, dtype=torch.float64) * 2,
            torch.randn(n, k, k, length - 1, generator=g, dtype=torch.float64) * 2)


def chain_scores(u, p):
    """Every labelling of chain 0 and its score S(y) = sum u + sum P."""
    k, length = u.shape[1:]
    for y in itertools.product(range(k), repeat=length):
        yield y, sum(u[0, y[i], i] for i in range(length)) + sum(p[0, y[i], y[i + 1], i] for i in range(length - 1))


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_smoothed_max_marginals_equal_brute_force(gamma):
    u, p = random_chain()
    m = chain_max_marginals(u, p, gamma)
    scores = list(chain_scores(u, p))
    all_scores = torch.stack([s for _, s in scores])
    log_z = gamma * torch.logsumexp(all_scores / gamma, 0)
    for i in range(u.shape[-1]):
        for s in range(u.shape[1]):
            ref = gamma * torch.logsumexp(torch.stack([v for y, v in scores if y[i] == s]) / gamma, 0)
            assert m[0, s, i].item() == pytest.approx(ref.item(), abs=1e-10)
        # softmax(M / gamma) is the exact marginal; gamma * lse(M / gamma) is gamma log Z at every position
        exact = torch.stack([torch.exp((torch.stack([v for y, v in scores if y[i] == s]) - log_z) / gamma).sum()
                             for s in range(u.shape[1])])
        torch.testing.assert_close(torch.softmax(m[0, :, i] / gamma, 0), exact)
        assert (gamma * torch.logsumexp(m[0, :, i] / gamma, 0)).item() == pytest.approx(log_z.item(), abs=1e-10)
    assert chain_log_partition(u, p, gamma)[0].item() == pytest.approx(log_z.item(), abs=1e-10)


def test_hard_max_marginals_are_viterbi_max_marginals():
    u, p = random_chain(seed=3)
    m = chain_max_marginals(u, p, None)
    scores = list(chain_scores(u, p))
    for i in range(u.shape[-1]):
        for s in range(u.shape[1]):
            assert m[0, s, i].item() == pytest.approx(max(v for y, v in scores if y[i] == s).item(), abs=1e-12)
        assert m[0, :, i].max().item() == pytest.approx(max(v for _, v in scores).item(), abs=1e-12)


@pytest.mark.parametrize("gamma", [2.0, 0.7])
def test_chain_gradients_match_finite_differences(gamma):
    u, p = random_chain(n=3, k=4, length=6, seed=1)
    assert torch.autograd.gradcheck(lambda a, b: chain_max_marginals(a, b, gamma),
                                    (u.requires_grad_(), p.requires_grad_()))


def test_hard_chain_gradient_routes_through_the_argmax():
    u, p = random_chain(n=1, k=3, length=4, seed=5)
    u.requires_grad_()
    m = chain_max_marginals(u, p, None)
    m[0, :, 2].max().backward()  # the best score: its gradient is the indicator of the Viterbi labelling
    best = max(chain_scores(u.detach(), p), key=lambda t: t[1])[0]
    expected = torch.zeros_like(u)
    for i, s in enumerate(best):
        expected[0, s, i] = 1.0
    torch.testing.assert_close(u.grad, expected)


def grid(b=2, k=3, h=7, w=9, strides=(1, 2), seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, k, h, w, generator=g, dtype=torch.float64) * 2
    tables = {s: (torch.randn(b, k, k, h, w - s, generator=g, dtype=torch.float64) * scale,
                  torch.randn(b, k, k, h - s, w, generator=g, dtype=torch.float64) * scale) for s in strides}
    return u, tables


@pytest.mark.parametrize("shape", [(7, 9), (5, 8), (6, 6)])
@pytest.mark.parametrize("gamma", [2.0, None])
def test_fixed_point_steps_keep_the_sum_of_copies_and_never_raise_the_dual(shape, gamma):
    u, tables = grid(h=shape[0], w=shape[1])
    problems = Subproblems(u, tables, DDParams())
    duals = []
    for _ in range(40):
        m, dual = problems.solve(gamma, with_dual=True)
        duals.append(dual)
        problems.update(m, problems.scatter(m), 1.0 / max(shape))
        assert (problems.unary_sum() - u).abs().max().item() < 1e-12
    assert all(b <= a + 1e-9 for a, b in zip(duals, duals[1:]))
    assert duals[-1] < duals[0] - 1e-3  # and it does go down


def brute_force_grid(u, tables, gamma):
    """Over every labelling of image 0: gamma log Z of the whole grid CRF (max score when gamma is None)."""
    k, h, w = u.shape[1:]
    scores = []
    for flat in itertools.product(range(k), repeat=h * w):
        y = torch.tensor(flat).view(h, w)
        score = u[0].gather(0, y[None])[0].sum()
        for s, (ph, pv) in tables.items():
            score = score + ph[0][y[:, :-s], y[:, s:], torch.arange(h)[:, None], torch.arange(w - s)[None]].sum()
            score = score + pv[0][y[:-s], y[s:], torch.arange(h - s)[:, None], torch.arange(w)[None]].sum()
        scores.append(score)
    scores = torch.stack(scores)
    return scores.max() if gamma is None else gamma * torch.logsumexp(scores / gamma, 0)


@pytest.mark.parametrize("gamma", [2.0, None])
def test_weak_duality_against_the_primal_by_enumeration(gamma):
    u, tables = grid(b=1, k=2, h=3, w=3, seed=7)
    primal = brute_force_grid(u, tables, gamma).item()
    problems = Subproblems(u, tables, DDParams())
    for _ in range(30):
        m, dual = problems.solve(gamma, with_dual=True)
        assert dual >= primal - 1e-9
        problems.update(m, problems.scatter(m), 1.0 / 3)


def test_zero_tables_give_the_unary_logits_up_to_a_per_pixel_constant():
    u, tables = grid(h=6, w=11)
    zero = {s: (torch.zeros_like(a), torch.zeros_like(b)) for s, (a, b) in tables.items()}
    out = dd_inference(u, zero, DDParams(iterations=5))
    diff = out - u
    assert (diff - diff.mean(1, keepdim=True)).abs().max().item() < 1e-10
    torch.testing.assert_close(torch.softmax(out, 1), torch.softmax(u, 1))


def test_stride_two_sublattices_land_where_they_belong():
    assert sublattices([1, 2]) == [(1, 0, 0), (2, 0, 0), (2, 0, 1), (2, 1, 0), (2, 1, 1)]
    h, w = 7, 9  # odd sides: sub-lattices of different sizes
    u = torch.zeros(1, 1, h, w, dtype=torch.float64)
    tables = {s: (torch.zeros(1, 1, 1, h, w - s), torch.zeros(1, 1, 1, h - s, w)) for s in (1, 2)}
    problems = Subproblems(u, tables, DDParams())
    marks = {}
    for n, (s, i, j) in enumerate(problems.subs):  # mark element (r, c) of sub-lattice n with its origin
        rows, cols = problems.u[n, True].shape[-2:]
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        code = ((n + 1) * 10000 + (i + s * r) * 100 + (j + s * c)).double()[None, None]
        marks[n, True], marks[n, False] = code, torch.zeros_like(code)
    placed = problems.scatter(marks)[0, 0]
    expect = torch.zeros(h, w, dtype=torch.float64)
    for n, (s, i, j) in enumerate(problems.subs):
        for y in range(i, h, s):
            for x in range(j, w, s):
                expect[y, x] += (n + 1) * 10000 + y * 100 + x
    torch.testing.assert_close(placed, expect)


@pytest.mark.parametrize("gamma", [2.0, None])
def test_every_copy_solves_its_own_chains_with_its_own_edges(gamma):
    """Each copy's max-marginals equal a direct chain solve of the rows (or columns) of its sub-lattice, with
    the pairwise scores sliced out of the tables by hand: the one gather that lays out every chain's edges
    puts each edge where its chain reads it (odd, non-square grid: chains of different lengths)."""
    g = torch.Generator().manual_seed(5)
    b, k, h, w = 2, 3, 5, 7
    unary = torch.randn(b, k, h, w, generator=g, dtype=torch.float64)
    tables = {s: (torch.randn(b, k, k, h, w - s, generator=g, dtype=torch.float64),
                  torch.randn(b, k, k, h - s, w, generator=g, dtype=torch.float64)) for s in (1, 2)}
    params = DDParams(gamma=gamma)
    problems = Subproblems(unary, tables, params)
    m, _ = problems.solve(gamma, with_dual=False)
    for n, (s, i, j) in enumerate(problems.subs):
        share = unary[:, :, i::s, j::s] / params.copies
        ph, pv = tables[s]
        rows_h, cols_w = share.shape[-2:]
        for img in range(b):
            for r in range(rows_h):  # horizontal: row r of the sub-lattice; edge to its right neighbour
                got = m[n, True][img, :, r, :]
                edges = ph[img, :, :, i + s * r, j::s][..., :cols_w - 1]
                ref = chain_max_marginals(share[img, :, r, :][None], edges[None], gamma)[0]
                torch.testing.assert_close(got, ref)
            for c in range(cols_w):  # vertical: column c; edge to the neighbour below
                got = m[n, False][img, :, :, c]
                edges = pv[img, :, :, i::s, j + s * c][..., :rows_h - 1]
                ref = chain_max_marginals(share[img, :, :, c][None], edges[None], gamma)[0]
                torch.testing.assert_close(got, ref)


def test_pairwise_scores_beyond_the_exp_range_are_refused():
    u, p = random_chain()
    p[0, 0, 1, 2] = 5000.0  # one score 2500 gamma above the rest: exp(P / gamma - max) would underflow to 0
    with pytest.raises(ValueError, match="span more than"):
        chain_max_marginals(u, p, 2.0)
    assert torch.isfinite(chain_max_marginals(u, p, None)).all()  # the hard solver has no exponentials


def test_the_unrolled_iterations_pass_gradcheck():
    u, tables = grid(b=1, k=2, h=3, w=4, seed=2, scale=0.5)
    flat = [tables[1][0], tables[1][1], tables[2][0], tables[2][1]]

    def layer(unary, h1, v1, h2, v2):
        return dd_inference(unary, {1: (h1, v1), 2: (h2, v2)}, DDParams(iterations=3, tol=1e9))  # no early stop

    assert torch.autograd.gradcheck(layer, (u.requires_grad_(), *[t.requires_grad_() for t in flat]))


def test_early_stop_keeps_the_marginals_before_the_dual_rose():
    u, tables = grid(h=6, w=6, seed=0, scale=3.0)
    trace_small, trace_big = [], []
    dd_inference(u, tables, DDParams(iterations=5), trace_small)
    assert len(trace_small) == 5 and all(b <= a for a, b in zip(trace_small, trace_small[1:]))
    # a step far too large makes the dual rise: the loop stops, with the last good iteration's output
    out = dd_inference(u, tables, DDParams(iterations=5, step=1.0), trace_big)
    assert len(trace_big) < 5 and trace_big[-1] > trace_big[-2] + 1e-4
    one = dd_inference(u, tables, DDParams(iterations=len(trace_big) - 1, step=1.0))
    torch.testing.assert_close(out, one)


def test_layer_starts_from_the_plain_network_and_learns_its_tables():
    torch.manual_seed(0)
    layer = DualDecompositionCRF(num_classes=4, feature_channels=8)
    unary, feats = torch.randn(2, 4, 6, 7), torch.relu(torch.randn(2, 8, 6, 7))
    out = layer(unary, feats)
    # N(0, 1e-3) weights: the output's softmax is close to the unary's; with zero weights it is the unary's
    assert (torch.softmax(out, 1) - torch.softmax(unary, 1)).abs().max().item() < 0.02
    assert 1 <= len(layer.last_duals) <= 5
    out.sum().backward()
    assert layer.pairwise.conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        layer.pairwise.conv.weight.zero_()
        torch.testing.assert_close(torch.softmax(layer(unary, feats), 1), torch.softmax(unary, 1))


@pytest.mark.parametrize("bad, message", [
    (dict(params=DDParams(gamma=0.0)), "gamma must be > 0"),
    (dict(params=DDParams(iterations=0)), "iterations must be an integer >= 1"),
    (dict(unary=torch.randn(1, 3, 2, 9)), "too small for stride 2"),
    (dict(unary=torch.full((1, 3, 5, 6), float("nan"))), "NaN"),
    (dict(tables={1: (torch.zeros(1, 3, 3, 5, 6), torch.zeros(1, 3, 3, 4, 6)),
                  2: (torch.zeros(1, 3, 3, 5, 4), torch.zeros(1, 3, 3, 3, 6))}), "stride-1 horizontal pairwise table"),
])
def test_bad_input_gives_one_clear_error(bad, message):
    unary = bad.get("unary", torch.randn(1, 3, 5, 6))
    h, w = unary.shape[-2:]
    tables = bad.get("tables", {s: (torch.zeros(1, 3, 3, h, max(w - s, 0)), torch.zeros(1, 3, 3, max(h - s, 0), w))
                                for s in (1, 2)})
    with pytest.raises(ValueError, match=message):
        dd_inference(unary, tables, bad.get("params"))


def test_model_config_trains_saves_and_reloads_a_network_with_the_layer(synth_root, tmp_path):
    from structseg.config import config_from_dict
    from structseg.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from structseg.engine.report import evaluate_checkpoint
    from structseg.engine.trainer import train
    from structseg.structured.dual_decomposition_net import DualDecompositionNet

    from .test_engine import tiny_config
    cfg = tiny_config(synth_root, epochs=1).to_dict()
    cfg["model"]["crf"] = {"kind": "dual_decomposition", "iterations": 3, "gamma": 2.0}
    summary = train(config_from_dict(cfg), tmp_path / "run", progress=False)
    ckpt = load_checkpoint(summary["best_checkpoint"])
    model = model_from_checkpoint(ckpt).eval()
    assert isinstance(model, DualDecompositionNet) and model.crf.params.iterations == 3
    assert any(k.startswith("crf.pairwise.conv") for k in ckpt["state_dict"])
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        out = model(x)
        plain = model.net(x)
    assert out.shape == plain.shape == (1, 5, 48, 64)
    # the reloaded layer is active (not the plain network up to a per-pixel constant) and finite
    assert torch.isfinite(out).all()
    assert (torch.softmax(out, 1) - torch.softmax(plain, 1)).abs().max() > 1e-4
    record = evaluate_checkpoint(summary["best_checkpoint"], synth_root, "val.txt", panels=0, progress=False)
    assert record["miou"] == pytest.approx(summary["best_miou"], abs=1e-6)


def test_model_config_errors_name_the_key():
    from structseg.engine.checkpoint import build_model
    from structseg.errors import ConfigError
    spec = {"name": "unet", "args": {"base_channels": 4, "depth": 2}, "num_classes": 3}
    with pytest.raises(ConfigError, match="model.crf.gama"):
        build_model({**spec, "crf": {"kind": "dual_decomposition", "gama": 2.0}}, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ConfigError, match="gamma must be > 0"):
        build_model({**spec, "crf": {"kind": "dual_decomposition", "gamma": -1.0}}, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ConfigError, match="model.crf.kind: 'loopy'"):
        build_model({**spec, "crf": {"kind": "loopy"}}, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ConfigError, match="FCN does not declare its final classifier"):
        build_model({"name": "fcn8s", "args": {"backbone": "resnet18"}, "num_classes": 3,
                     "crf": {"kind": "dual_decomposition"}}, (0.5,) * 3, (0.5,) * 3)
