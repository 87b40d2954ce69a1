"""Permutohedral-lattice Gaussian filtering in plain PyTorch (Adams, Baek & Davis, 2010).

Computes ``out_i = sum_j k(f_i, f_j) v_j`` with ``k(f, g) ~ exp(-|f - g|^2 / 2)`` approximately,
in time linear in the number of points, for any feature dimension ``d``. The construction
follows Krähenbühl's densecrf code step for step (elevation, rounding to the remainder-0
point, ranks, barycentric weights, [1/2, 1, 1/2] blur along the d+1 lattice axes, the
``1 / (1 + 2^-d)`` slice factor), so results match pydensecrf, but it is vectorised and has no
hash table: each point's enclosing simplex (remainder-0 point and rank permutation) is packed
into one int64 and sorted, the vertices of the distinct simplices are packed and made unique
the same way, blur neighbours are found by ``searchsorted`` in the sorted vertex codes, and
splat and slice are sparse CSR products (int32 indices, which MKL runs faster).

The filter is linear, ``K = alpha * S^T B_d ... B_0 S`` with symmetric blurs ``B_j``, so its
transpose is the same filter with the blur axes in reverse order (``transpose=True``).
A batch of images is one lattice: the image index is the most significant digit of the key.
"""
from __future__ import annotations

import math
import warnings

import torch


def _elevation_matrix(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(d, d+1)`` matrix mapping scaled features onto the plane ``sum x = 0`` in R^{d+1}."""
    scale = math.sqrt(2.0 / 3.0) * (d + 1) / torch.sqrt(
        torch.arange(1, d + 1, dtype=torch.float64) * torch.arange(2, d + 2, dtype=torch.float64))
    e = torch.zeros(d + 1, d, dtype=torch.float64)
    for j in range(d + 1):
        e[j, j:] = 1.0
        if j > 0:
            e[j, j - 1] = -float(j)
    return (e * scale[None, :]).T.contiguous().to(device=device, dtype=dtype)


def _pack(digits: torch.Tensor, spans: list[int], what: str) -> torch.Tensor:
    """Mixed-radix int64 code of non-negative ``digits`` (..., k) with the given spans (first most significant)."""
    total = 1
    for s in spans:
        total *= int(s)
    if total >= 2 ** 62:
        raise ValueError(f"lattice too large to hash ({what}): the features span too wide a range for their "
                         "standard deviations; use wider kernels or fewer points")
    code = digits[..., 0].clone()
    for k in range(1, len(spans)):
        code.mul_(int(spans[k])).add_(digits[..., k])
    return code


def csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix with int32 indices when they fit (MKL's sparse products run faster on them)."""
    if max(size) < 2 ** 31 - 1 and col.numel() < 2 ** 31 - 1:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, values, size=size)


class PermutohedralLattice:
    """A lattice built from features ``(N, d)`` or ``(B, N, d)`` (already divided by the std devs).

    ``filter(values)`` applies the (unnormalised) Gaussian filter to ``(N, C)`` / ``(B, N, C)``
    values; ``filter(values, transpose=True)`` applies its transpose. The pieces are public for
    fused use (see ``dense_crf``): ``vertex`` ``(BN, d+1)`` lattice-point ids of each point's
    simplex, ``bary`` their barycentric weights, ``splat_layout`` the same entries ordered by
    lattice point, ``neighbours`` per blur axis (id ``num_lattice_points`` is an all-zero pad row).
    """

    def __init__(self, features: torch.Tensor):
        if features.dim() == 2:
            features = features[None]
        if features.dim() != 3:
            raise ValueError(f"features must be (N, d) or (B, N, d), got shape {tuple(features.shape)}")
        b, n, d = features.shape
        if d < 1 or n < 1:
            raise ValueError(f"features must have at least one point and one dimension, got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or infinity")
        self.batch, self.num_points, self.dim = b, n, d
        device = features.device
        self.dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        f = features.reshape(b * n, d).to(self.dtype)
        d1 = d + 1
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

        # 1. elevate onto the hyperplane and find the enclosing simplex: remainder-0 point + ranks.
        #    Coordinates are rows here ((d+1, BN) layout) so every step runs on contiguous memory.
        el = (f @ _elevation_matrix(d, f.dtype, device)).T.contiguous()  # (d+1, BN)
        v = el / d1
        up, down = torch.ceil(v) * d1, torch.floor(v) * d1
        rem0 = torch.where(up - el < el - down, up, down)  # nearest multiple of d+1, as densecrf rounds
        total = torch.round(rem0.sum(0) / d1).to(torch.int64)  # how far off the plane rounding went
        diff = el - rem0
        # rank_i = #{j > i: diff_j > diff_i} + #{j < i: diff_j >= diff_i} (densecrf's tie-breaking)
        rank = total[None].repeat(d1, 1)
        for i in range(d1):
            for j in range(i + 1, d1):
                later_bigger = diff[j] > diff[i]
                rank[i] += later_bigger
                rank[j] += ~later_bigger
        low, high = rank < 0, rank > d
        rank = torch.where(low, rank + d1, torch.where(high, rank - d1, rank))
        rem0 = rem0.to(torch.int64)
        rem0 = torch.where(low, rem0 + d1, torch.where(high, rem0 - d1, rem0))

        # 2. barycentric weights of the d+1 vertices
        w = (el - rem0.to(el.dtype)) / d1
        bary = torch.zeros(d + 2, b * n, dtype=el.dtype, device=device)
        bary.scatter_add_(0, d - rank, w)
        bary.scatter_add_(0, d - rank + 1, -w)
        bary[0] += 1.0 + bary[d + 1]
        self.bary = bary[:d1].T.contiguous()  # (BN, d+1)

        # 3. distinct simplices: (image, remainder-0 point, rank permutation) packed and sorted.
        #    rem0 lies on the plane, so its first d coordinates (divided by d+1) determine it.
        base = torch.div(rem0[:d], d1, rounding_mode="floor")
        lo, hi = base.amin(1, keepdim=True), base.amax(1, keepdim=True)
        img = torch.arange(b, device=device).repeat_interleave(n)
        digits = torch.cat([img[None], base - lo, rank[:d]], 0).T
        spans = [b] + (hi - lo + 1).flatten().tolist() + [d1] * d
        sorted_codes, order = torch.sort(_pack(digits, spans, "simplices"))
        _, counts = torch.unique_consecutive(sorted_codes, return_counts=True)
        u = counts.numel()
        first = torch.cumsum(counts, 0) - counts
        simplex = torch.empty(b * n, dtype=torch.int64, device=device)
        simplex[order] = torch.repeat_interleave(torch.arange(u, device=device), counts, output_size=b * n)

        # 4. vertices of the distinct simplices: vertex r has key rem0 + r - (d+1) [rank > d - r]
        rep = order.index_select(0, first)
        rem0_u, rank_u = rem0[:d].index_select(1, rep).T, rank[:d].index_select(1, rep).T  # (U, d)
        r = torch.arange(d1, device=device)
        keys = rem0_u[:, None, :] + r[None, :, None] - d1 * (rank_u[:, None, :] > (d - r)[None, :, None]).long()
        klo = keys.amin(dim=(0, 1)) - d1  # room for blur neighbours at +-(d+1)
        kspan = keys.amax(dim=(0, 1)) + d1 - klo + 1
        vdigits = torch.cat([img.index_select(0, rep)[:, None, None].expand(u, d1, 1), keys - klo], 2)
        vspans = [b] + kspan.tolist()
        uniq, vinv = torch.unique(_pack(vdigits, vspans, "lattice points").flatten(), return_inverse=True)
        m = uniq.numel()
        self.num_lattice_points = m
        self.vertex = vinv.view(u, d1).index_select(0, simplex)  # (BN, d+1)

        # 5. blur neighbours along each of the d+1 axes: key +- (1, ..., 1, -d, 1, ..., 1)
        strides = [1] * (d + 1)
        for k in range(d - 1, -1, -1):
            strides[k] = strides[k + 1] * int(vspans[k + 1])
        step_all = sum(strides[1:])
        self.neighbours = []
        for j in range(d1):
            delta = step_all - (d1 * strides[1 + j] if j < d else 0)
            pair = []
            for sign in (1, -1):
                target = uniq + sign * delta
                idx = torch.searchsorted(uniq, target).clamp_(max=m - 1)
                idx = torch.where(uniq[idx] == target, idx, torch.full_like(idx, m))
                pair.append(torch.cat([idx, idx.new_tensor([m])]))
            self.neighbours.append(tuple(pair))

        # 6. the splat entries ordered by lattice point (a stable int32 sort is 2-3x faster than int64)
        key_dtype = torch.int32 if m < 2 ** 31 - 1 else torch.int64
        entry = torch.argsort(self.vertex.flatten().to(key_dtype), stable=True)
        crow = torch.zeros(m + 2, dtype=torch.int64, device=device)
        crow[1:m + 1] = torch.cumsum(torch.bincount(self.vertex.flatten(), minlength=m), 0)
        crow[m + 1] = crow[m]  # the padding row holds nothing
        self.splat_layout = (crow, torch.div(entry, d1, rounding_mode="floor"), entry)  # rows, points, bary index
        self._matrices = None

    def splat_matrix(self, point_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``(M+1, BN)`` CSR of barycentric weights (times ``point_scale`` per point when given)."""
        crow, point, flat = self.splat_layout
        values = self.bary.flatten().index_select(0, flat)
        if point_scale is not None:
            values = values * point_scale.index_select(0, point)
        return csr(crow, point, values, (self.num_lattice_points + 1, self.batch * self.num_points))

    def slice_matrix(self, point_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``(BN, M+1)`` CSR, the transpose of ``splat_matrix``."""
        bn, d1 = self.batch * self.num_points, self.dim + 1
        values = self.bary if point_scale is None else self.bary * point_scale[:, None]
        crow = torch.arange(0, bn * d1 + 1, d1, device=self.bary.device)
        return csr(crow, self.vertex.flatten(), values.flatten(), (bn, self.num_lattice_points + 1))

    def filter_ones(self) -> torch.Tensor:
        """``K 1`` per point, ``(BN,)``: the normaliser, without building the CSR matrices."""
        m = self.num_lattice_points
        flat = self.vertex.flatten()
        lattice = torch.zeros(m + 1, 1, dtype=self.dtype, device=flat.device)
        lattice[:m, 0] = torch.bincount(flat, weights=self.bary.flatten(), minlength=m).to(self.dtype)
        lattice = self.blur(lattice)[:, 0]
        return (self.bary * lattice.index_select(0, flat).view_as(self.bary)).sum(1) * self.alpha

    def blur(self, values: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        for n1, n2 in (reversed(self.neighbours) if reverse else self.neighbours):
            values = values + 0.5 * (values.index_select(0, n1) + values.index_select(0, n2))
        return values

    def filter(self, values: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """Gaussian-filter ``values`` (``(N, C)`` or ``(B, N, C)``, matching the features)."""
        shape = values.shape
        if values.dim() not in (2, 3) or shape[-2] != self.num_points or (values.dim() == 3 and shape[0] != self.batch):
            raise ValueError(f"values of shape {tuple(shape)} do not match the lattice's "
                             f"{self.batch} x {self.num_points} points")
        if self._matrices is None:
            self._matrices = (self.splat_matrix(), self.slice_matrix())
        splat, slice_ = self._matrices
        dtype = values.dtype
        flat = values.reshape(self.batch * self.num_points, -1).to(self.dtype)
        lattice_values = self.blur(torch.sparse.mm(splat, flat), reverse=transpose)  # row M is empty -> zero
        out = torch.sparse.mm(slice_, lattice_values) * self.alpha
        return out.reshape(shape).to(dtype)
