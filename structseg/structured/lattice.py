"""Permutohedral-lattice Gaussian filtering in plain PyTorch (Adams, Baek & Davis, 2010).

Computes ``out_i = sum_j k(f_i, f_j) v_j`` with ``k(f, g) ~ exp(-|f - g|^2 / 2)`` approximately,
in time linear in the number of points, for any feature dimension ``d``. The construction
follows Krähenbühl's densecrf code step for step (elevation, rounding to the remainder-0
point, ranks, barycentric weights, [1/2, 1, 1/2] blur along the d+1 lattice axes, the
``1 / (1 + 2^-d)`` slice factor), so results match pydensecrf, but it is vectorised and has no
hash table: each point's enclosing simplex (remainder-0 point and rank permutation) is packed
into one integer code and sorted, the vertices of the distinct simplices are packed and made
unique the same way, blur neighbours are found by ``searchsorted`` in the sorted vertex codes,
and splat and slice are sparse row-by-row products (``SparseRows``). Lattices too wide or too
high-dimensional for 64-bit codes make whole rows of integers unique instead (slower, any size).

The build is memory-bound (a few dozen passes over ``(d+1) x N`` arrays), so it works in place
where it can, counts ranks in int8, and lays out the splat by placing each entry in the block of
its (simplex, vertex) pair rather than sorting all ``N (d+1)`` entries.

The filter is linear, ``K = alpha * S^T B_d ... B_0 S`` with symmetric blurs ``B_j``, so its
transpose is the same filter with the blur axes in reverse order (``transpose=True``).
A batch of images is one lattice: the image index is the most significant digit of the key.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_EXACT_IN_FLOAT64 = 2 ** 53  # integers below this are exact in float64 (codes use float64 products below it)


def _elevation_matrix(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(d+1, d)`` matrix mapping scaled features onto the plane ``sum x = 0`` in R^{d+1}."""
    scale = math.sqrt(2.0 / 3.0) * (d + 1) / torch.sqrt(
        torch.arange(1, d + 1, dtype=torch.float64) * torch.arange(2, d + 2, dtype=torch.float64))
    e = torch.zeros(d + 1, d, dtype=torch.float64)
    for j in range(d + 1):
        e[j, j:] = 1.0
        if j > 0:
            e[j, j - 1] = -float(j)
    return (e * scale[None, :]).to(device=device, dtype=dtype)


def _strides(spans: list[int]) -> list[int]:
    """Mixed-radix place values for digits with the given spans (first most significant)."""
    strides = [1] * len(spans)
    for k in range(len(spans) - 2, -1, -1):
        strides[k] = strides[k + 1] * int(spans[k + 1])
    return strides


def all_finite(x: torch.Tensor) -> bool:
    """No NaN or infinity in ``x``: one sum (finite unless something is not, or it overflows), then exact."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


class SparseRows:
    """A sparse ``(rows, cols)`` matrix kept row by row (CSR), times dense ``(cols, C)`` matrices.

    The product is ``embedding_bag`` in sum mode with per-entry weights: a fused gather, scale and
    sum that PyTorch runs multi-threaded on CPU (and on CUDA); here it is faster than the CSR
    product of ``torch.sparse``. Indices are int32 when they fit.
    """

    def __init__(self, offsets: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, cols: int):
        index_dtype = torch.int32 if max(cols, indices.numel()) < 2 ** 31 - 1 else torch.int64
        self.offsets, self.indices = offsets.to(index_dtype), indices.to(index_dtype)
        self.weights = weights
        self.shape = (offsets.numel() - 1, cols)

    def __matmul__(self, dense: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(self.indices, dense, self.offsets, mode="sum",
                               per_sample_weights=self.weights.to(dense.dtype), include_last_offset=True)


class Blur:
    """The [1/2, 1, 1/2] blur along each lattice axis, as one sparse product per axis.

    ``neighbours`` holds, per axis, the ids of each lattice row's two neighbours (the last row is
    an all-zero pad that missing neighbours point to). The transpose runs the axes in reverse.
    """

    def __init__(self, neighbours: list[tuple[torch.Tensor, torch.Tensor]]):
        rows = neighbours[0][0].numel()
        device = neighbours[0][0].device
        offsets = torch.arange(0, 3 * rows + 1, 3, device=device)
        self.axes = []
        for n1, n2 in neighbours:
            indices = torch.stack([torch.arange(rows, device=device), n1, n2], 1).flatten()
            weights = torch.tensor([1.0, 0.5, 0.5], device=device).repeat(rows)
            self.axes.append(SparseRows(offsets, indices, weights, rows))

    def __call__(self, values: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        for axis in (reversed(self.axes) if reverse else self.axes):
            values = axis @ values
        return values


def _fits_int64(spans: list[int]) -> bool:
    total = 1
    for sp in spans:
        total *= int(sp)
    return total < 2 ** 62


def _runs(sorted_keys_differ: torch.Tensor, order: torch.Tensor) -> tuple:
    """Runs of equal keys in sorted order -> (first, counts, simplex id per point, id in sorted order)."""
    bn = order.numel()
    first = torch.nonzero(sorted_keys_differ).flatten()  # where each run starts in `order`
    counts = torch.diff(first, append=first.new_tensor([bn]))
    simplex_sorted = torch.cumsum(sorted_keys_differ, 0).sub_(1)
    simplex = torch.empty(bn, dtype=torch.int64, device=order.device).scatter_(0, order, simplex_sorted)
    return first, counts, simplex, simplex_sorted


def _by_codes(t0, lo, t_spans, rank, img, b) -> tuple:
    """Simplices, lattice points and neighbours from mixed-radix integer codes (one sort each).

    A point's code is (image, t, r); a simplex's is (image, t of its remainder-0 point, ranks).
    Codes are float64 products below 2^53 (int64 products do not vectorise on x86), else int64.
    """
    d, bn = t0.shape
    d1 = d + 1
    device = t0.device
    vstrides = _strides([b] + t_spans + [d1])
    permutations = d1 ** d
    exact = vstrides[0] // d1 * b * permutations < _EXACT_IN_FLOAT64
    place = torch.tensor([s // d1 for s in vstrides[1:-1]], device=device)  # t-code place values
    place = place.to(torch.float64) if exact else place
    if exact:
        t_code = (place @ t0.to(torch.float64)).sub_(float(place @ lo.to(torch.float64))).to(torch.int64)
    else:
        t_code = ((t0 - lo[:, None]).long() * place[:, None]).sum(0)
    if img is not None:
        t_code += img * (vstrides[0] // d1)
    rank_code = rank[0].to(torch.int32)
    for k in range(1, d):
        rank_code *= d1
        rank_code += rank[k]
    sorted_codes, order = torch.sort(t_code.mul_(permutations).add_(rank_code))
    new = torch.ones(bn, dtype=torch.bool, device=device)
    torch.ne(sorted_codes[1:], sorted_codes[:-1], out=new[1:])
    first, counts, simplex, simplex_sorted = _runs(new, order)
    u = first.numel()

    # vertex r of a simplex: remainder r, t lowered by one on the r coordinates ranked highest
    # (a cumulative sum of their place values over the coordinates in rank order)
    t_u = torch.div(sorted_codes.index_select(0, first), permutations, rounding_mode="floor")
    rank_u = rank.index_select(1, order.index_select(0, first)).T.long()  # (U, d+1)
    by_rank = torch.zeros(u, d1, dtype=place.dtype, device=device)
    by_rank.scatter_(1, rank_u, torch.cat([place, place.new_zeros(1)]).expand(u, d1))
    lowered = torch.zeros(u, d1, dtype=place.dtype, device=device)
    torch.cumsum(by_rank.flip(1)[:, :d], 1, out=lowered[:, 1:])
    vcode = (t_u[:, None] - lowered.to(torch.int64)).mul_(d1).add_(torch.arange(d1, device=device))
    uniq, vinv = torch.unique(vcode.flatten(), return_inverse=True)
    m = uniq.numel()

    # blur neighbours along axis j, key +- (1, ..., 1, -d, 1, ..., 1): the remainder moves by +-1,
    # and t by -+1 on axis j, or (wrapping past d or 0) by +-1 on the other axes
    s_j = torch.tensor(vstrides[1:-1] + [0], device=device)[:, None]  # a unit of t_j, in code units
    s_other = sum(vstrides[1:-1]) - s_j
    remainder = (uniq % d1)[None]
    up = torch.where(remainder < d, 1 - s_j, s_other - d)
    down = torch.where(remainder > 0, s_j - 1, d - s_other)
    target = (uniq + torch.stack([up, down], 1)).flatten()  # (d+1, 2, M)
    idx = torch.searchsorted(uniq, target).clamp_(max=m - 1)
    idx = torch.where(uniq.index_select(0, idx) == target, idx, torch.full_like(idx, m))
    return order, first, counts, simplex, simplex_sorted, vinv, m, idx


def _by_rows(t0, rank, img) -> tuple:
    """The same as ``_by_codes`` for lattices whose codes would overflow int64: rows of integers
    are made unique whole (slower, any dimension and extent)."""
    d, bn = t0.shape
    d1 = d + 1
    device = t0.device
    parts = [t0.long(), rank[:d].long()] if img is None else [img[None], t0.long(), rank[:d].long()]
    _, simplex = torch.unique(torch.cat(parts).T, dim=0, return_inverse=True)
    order = torch.argsort(simplex, stable=True)
    simplex_sorted = simplex.index_select(0, order)
    new = torch.ones(bn, dtype=torch.bool, device=device)
    torch.ne(simplex_sorted[1:], simplex_sorted[:-1], out=new[1:])
    first, counts, simplex, simplex_sorted = _runs(new, order)
    u = first.numel()

    rep = order.index_select(0, first)
    t_u, rank_u = t0.long().index_select(1, rep).T, rank.index_select(1, rep).T.long()  # (U, d), (U, d+1)
    r = torch.arange(d1, device=device)
    t_v = t_u[:, None, :] - (rank_u[:, None, :d] >= (d1 - r)[None, :, None]).long()  # (U, d+1, d)
    rows = [t_v, r[None, :, None].expand(u, d1, 1)]
    if img is not None:
        rows.insert(0, img.index_select(0, rep)[:, None, None].expand(u, d1, 1))
    keys, vinv = torch.unique(torch.cat(rows, 2).reshape(u * d1, -1), dim=0, return_inverse=True)
    m = keys.shape[0]

    lead = keys[:, :-1 - d]  # the image column, if any
    t, rem = keys[:, -1 - d:-1], keys[:, -1:]
    cands = []
    for j in range(d1):
        axis = torch.zeros(d, dtype=torch.long, device=device)
        if j < d:
            axis[j] = 1
        up = torch.where(rem < d, torch.cat([t - axis, rem + 1], 1), torch.cat([t + 1 - axis, rem - d], 1))
        down = torch.where(rem > 0, torch.cat([t + axis, rem - 1], 1), torch.cat([t - 1 + axis, rem + d], 1))
        cands += [torch.cat([lead, up], 1), torch.cat([lead, down], 1)]
    _, inv = torch.unique(torch.cat([keys] + cands), dim=0, return_inverse=True)
    point_of = torch.full((int(inv.max()) + 1,), m, dtype=torch.int64, device=device)
    point_of[inv[:m]] = torch.arange(m, device=device)
    idx = point_of.index_select(0, inv[m:])  # (d+1, 2, M) flattened; m where there is no neighbour
    return order, first, counts, simplex, simplex_sorted, vinv, m, idx


class PermutohedralLattice:
    """A lattice built from features ``(N, d)`` or ``(B, N, d)`` (already divided by the std devs).

    ``filter(values)`` applies the (unnormalised) Gaussian filter to ``(N, C)`` / ``(B, N, C)``
    values; ``filter(values, transpose=True)`` applies its transpose. The pieces are public for
    fused use (see ``dense_crf``): ``vertex`` ``(BN, d+1)`` lattice-point ids of each point's
    simplex, ``bary`` their barycentric weights, ``splat_dest`` where each of those entries goes
    when ordered by lattice point (rows start at ``splat_offsets``), ``neighbours`` per blur axis
    (id ``num_lattice_points`` is an all-zero pad row).
    """

    def __init__(self, features: torch.Tensor):
        if features.dim() == 2:
            features = features[None]
        if features.dim() != 3:
            raise ValueError(f"features must be (N, d) or (B, N, d), got shape {tuple(features.shape)}")
        b, n, d = features.shape
        if d < 1 or n < 1:
            raise ValueError(f"features must have at least one point and one dimension, got {tuple(features.shape)}")
        if not all_finite(features):
            raise ValueError("features contain NaN or infinity")
        self.batch, self.num_points, self.dim = b, n, d
        device = features.device
        self.dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        bn, d1 = b * n, d + 1
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

        # 1. elevate onto the hyperplane and find the enclosing simplex: remainder-0 point + ranks.
        #    Coordinates are rows here ((d+1, BN) layout) so every step runs on contiguous memory.
        f = features.reshape(bn, d).to(self.dtype)
        diff = torch.mm(_elevation_matrix(d, self.dtype, device), f.T)  # (d+1, BN) elevated
        rem0 = torch.div(diff, d1).sub_(0.5).ceil_().mul_(d1)  # nearest multiple of d+1, ties down as densecrf
        diff.sub_(rem0)
        # rank_i = #{j > i: diff_j > diff_i} + #{j < i: diff_j >= diff_i} (densecrf's tie-breaking),
        # counted in int8: start from #{j < i} = i and move one count per comparison
        small = torch.int8 if 3 * d1 < 127 else torch.int32
        rank = torch.arange(d1, dtype=small, device=device)[:, None].repeat(1, bn)
        for i in range(d1):
            for j in range(i + 1, d1):
                later_bigger = diff[j] > diff[i]
                later_bigger = later_bigger.view(small) if small == torch.int8 else later_bigger.to(small)
                rank[i] += later_bigger
                rank[j] -= later_bigger
        rank += rem0.sum(0).div_(d1).round_().to(small)  # how far off the plane rounding went
        # where a rank left [0, d], wrap it and move the remainder-0 point by -+(d+1) with it
        shift = (rank < 0).to(small)
        shift -= (rank > d).to(small)
        shift *= d1
        rank += shift
        rem0 += shift
        diff.sub_(shift).div_(d1)  # = (elevated - rem0) / (d+1)

        # 2. barycentric weights: with a[k] = diff of the coordinate ranked d-k,
        #    bary[k] = a[k] - a[k-1] (k >= 1) and bary[0] = 1 + a[0] - a[d]
        a = torch.empty_like(diff).scatter_(0, (d - rank).long(), diff)
        bary = torch.empty_like(diff)
        torch.sub(a[1:], a[:-1], out=bary[1:])
        torch.sub(a[0], a[d], out=bary[0]).add_(1.0)
        self.bary = bary.T.contiguous()  # (BN, d+1)

        # 3-5. distinct simplices, their vertices (the lattice points) and each point's blur
        #    neighbours. A lattice point's coordinates are all congruent to its remainder r mod (d+1)
        #    and sum to zero, so it is identified by (image, t_0..t_{d-1} = (key_k - r) / (d+1), r);
        #    a simplex by its remainder-0 point's t and the ranks of the first d coordinates.
        img = torch.arange(b, device=device).repeat_interleave(n) if b > 1 else None
        t0 = torch.div(rem0[:d], d1).round_()  # (d, BN), float holding integers
        lo, hi = torch.aminmax(t0, dim=1)
        lo -= 2  # room for t - 1 (the simplex's other vertices) and t +- 1 (blur neighbours)
        t_spans = ((hi - lo).long() + 3).tolist()
        if _fits_int64([b] + t_spans + [d1]) and _fits_int64([b] + t_spans + [d1] * d):
            topology = _by_codes(t0, lo, t_spans, rank, img, b)
        else:  # very wide or high-dimensional lattices: compare whole rows instead of packed codes
            topology = _by_rows(t0, rank, img)
        order, first, counts, simplex, simplex_sorted, vinv, m, idx = topology
        u = first.numel()
        self.num_lattice_points = m
        vinv = vinv.to(torch.int32 if m < 2 ** 31 - 1 else torch.int64)
        self.vertex = vinv.view(u, d1).index_select(0, simplex)  # (BN, d+1)
        idx = torch.cat([idx.view(d1, 2, m), idx.new_full((d1, 2, 1), m)], 2)
        self.neighbours = [(idx[j, 0], idx[j, 1]) for j in range(d1)]

        # 6. the splat entries ordered by lattice point, as the destination of each (point, vertex)
        #    entry: sort the U (d+1) (simplex, vertex) pairs by lattice point, give each pair a block
        #    as long as its simplex, and place a point at its rank within its simplex (no sort of
        #    all N (d+1) entries)
        pairs = torch.argsort(vinv, stable=True)
        pair_count = counts.index_select(0, torch.div(pairs, d1, rounding_mode="floor"))
        starts = torch.cumsum(pair_count, 0).sub_(pair_count)
        pair_start = torch.empty_like(starts).scatter_(0, pairs, starts).view(u, d1)
        within = torch.arange(bn, device=device).sub_(first.index_select(0, simplex_sorted))  # in sorted order
        within = torch.empty_like(within).scatter_(0, order, within)
        self.splat_dest = pair_start.index_select(0, simplex).add_(within[:, None]).flatten()  # (BN (d+1),)
        per_point = torch.zeros(m, dtype=torch.int64, device=device).index_add_(
            0, vinv.long(), counts.repeat_interleave(d1))
        self.splat_offsets = torch.zeros(m + 1, dtype=torch.int64, device=device)
        torch.cumsum(per_point, 0, out=self.splat_offsets[1:])
        self._slice = self._splat = self._blur = self._splat_points = None

    def splat_matrix(self, weights: torch.Tensor | None = None) -> SparseRows:
        """``(M, BN)``: the entry weights ``(BN, d+1)`` (default ``bary``) ordered by lattice point."""
        bn, d1 = self.batch * self.num_points, self.dim + 1
        values = (self.bary if weights is None else weights).reshape(-1)
        ordered = torch.empty_like(values).scatter_(0, self.splat_dest, values)
        if self._splat_points is None:
            points = torch.arange(bn, dtype=torch.int32, device=self.bary.device).repeat_interleave(d1)
            self._splat_points = torch.empty_like(points).scatter_(0, self.splat_dest, points)
        return SparseRows(self.splat_offsets, self._splat_points, ordered, bn)

    def slice_matrix(self, weights: torch.Tensor | None = None) -> SparseRows:
        """``(BN, M+1)``, the transpose of ``splat_matrix`` (column M is the zero pad row)."""
        bn, d1 = self.batch * self.num_points, self.dim + 1
        values = self.bary if weights is None else weights
        offsets = torch.arange(0, bn * d1 + 1, d1, device=self.bary.device)
        return SparseRows(offsets, self.vertex.flatten(), values.flatten(), self.num_lattice_points + 1)

    def filter_ones(self) -> torch.Tensor:
        """``K 1`` per point, ``(BN,)``: the normaliser."""
        m = self.num_lattice_points
        lattice = torch.zeros(m + 1, 1, dtype=self.dtype, device=self.bary.device)
        lattice[:m, 0] = torch.bincount(self.vertex.flatten(), weights=self.bary.flatten(), minlength=m)
        self._slice = self._slice or self.slice_matrix()
        return (self._slice @ self.blur(lattice))[:, 0] * self.alpha

    def blur(self, values: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        self._blur = self._blur or Blur(self.neighbours)
        return self._blur(values, reverse)

    def filter(self, values: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """Gaussian-filter ``values`` (``(N, C)`` or ``(B, N, C)``, matching the features)."""
        shape = values.shape
        if values.dim() not in (2, 3) or shape[-2] != self.num_points or (values.dim() == 3 and shape[0] != self.batch):
            raise ValueError(f"values of shape {tuple(shape)} do not match the lattice's "
                             f"{self.batch} x {self.num_points} points")
        self._slice = self._slice or self.slice_matrix()
        dtype = values.dtype
        flat = values.reshape(self.batch * self.num_points, -1).to(self.dtype)
        self._splat = self._splat or self.splat_matrix()
        lattice_values = self._splat @ flat
        lattice_values = torch.cat([lattice_values, lattice_values.new_zeros(1, lattice_values.shape[1])])
        out = (self._slice @ self.blur(lattice_values, reverse=transpose)) * self.alpha
        return out.reshape(shape).to(dtype)
