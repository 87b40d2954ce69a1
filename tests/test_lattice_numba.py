"""The optional compiled lattice build gives the PyTorch build's lattice, exactly (structseg[fast], numba)."""
import pytest
import torch

from structseg.structured import lattice as L
from structseg.structured.dense_crf import CRFParams, mean_field

pytest.importorskip("numba")


@pytest.fixture
def build():
    before = L.get_build()
    yield
    L.set_build(before)


def both(features):
    L.set_build("torch")
    a = L.PermutohedralLattice(features)
    L.set_build("numba")
    b = L.PermutohedralLattice(features)
    return a, b


def splat_rows(lat):
    """Each lattice point's splat entries as a sorted list of (point, weight) pairs."""
    sm = lat.splat_matrix()
    off, pts, w = sm.offsets.long().tolist(), sm.indices.long().tolist(), sm.weights.tolist()
    return [sorted(zip(pts[off[i]:off[i + 1]], w[off[i]:off[i + 1]])) for i in range(len(off) - 1)]


@pytest.mark.parametrize("shape,scale", [((1, 600, 2), 3.0), ((1, 800, 5), 2.0), ((3, 300, 5), 3.0),
                                         ((2, 250, 3), 1.5), ((1, 200, 1), 4.0), ((1, 300, 5), 0.3)])
def test_the_compiled_build_is_the_same_lattice(build, shape, scale):
    g = torch.Generator().manual_seed(sum(shape))
    features = torch.randn(*shape, generator=g) * scale
    features[..., 0, :] = features[..., 1, :]  # a repeated point (a shared simplex)
    a, b = both(features)
    assert b.splat_source is not None  # the compiled path ran
    assert a.num_lattice_points == b.num_lattice_points
    assert torch.equal(a.vertex.long(), b.vertex.long())
    assert torch.equal(a.bary, b.bary)  # the same float operations in the same order
    for (up_a, down_a), (up_b, down_b) in zip(a.neighbours, b.neighbours, strict=True):
        assert torch.equal(up_a, up_b) and torch.equal(down_a, down_b)
    assert torch.equal(a.splat_offsets, b.splat_offsets)
    assert splat_rows(a) == splat_rows(b)
    values = torch.rand(*shape[:2], 4, generator=g)
    ya, yb = a.filter(values), b.filter(values)
    assert (ya - yb).abs().max() <= 1e-5 * ya.abs().max()  # the same sums, in another order
    assert torch.allclose(a.filter_ones(), b.filter_ones(), rtol=1e-5)


def test_codes_too_wide_for_int64_fall_back_to_the_pytorch_build(build):
    features = torch.randn(1, 50, 20, generator=torch.Generator().manual_seed(0)) * 5
    a, b = both(features)
    assert b.splat_source is None  # built the PyTorch way
    assert torch.equal(a.vertex, b.vertex) and a.num_lattice_points == b.num_lattice_points


def test_the_crf_labels_do_not_depend_on_the_build(build):
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 24, 31, generator=g) * 255
    unary = torch.rand(2, 5, 24, 31, generator=g) * 3
    params = CRFParams(iterations=5, appearance_xy=10.0, smoothness_xy=2.0)
    L.set_build("torch")
    qa = mean_field(unary, image, params)
    L.set_build("numba")
    qb = mean_field(unary, image, params)
    assert torch.allclose(qa, qb, atol=1e-5)
    assert torch.equal(qa.argmax(1), qb.argmax(1))


def test_unknown_build_names_the_choices(build):
    with pytest.raises(ValueError, match="unknown lattice build 'cython'.*torch, numba"):
        L.set_build("cython")
