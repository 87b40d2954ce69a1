"""Permutohedral-lattice Gaussian filtering in plain PyTorch (Adams, Baek & Davis, 2010).

Computes ``out_i = sum_j k(f_i, f_j) v_j`` with ``k(f, g) ~ exp(-|f - g|^2 / 2)`` approximately,
in time linear in the number of points, for any feature dimension ``d``. The construction
follows Krähenbühl's densecrf code step for step (elevation, rounding to the remainder-0
point, ranks, barycentric weights, [1/2, 1, 1/2] blur along the d+1 lattice axes, the
``1 / (1 + 2^-d)`` slice factor), so results match pydensecrf, but it is vectorised: the hash
table is an int64 packing of the lattice keys sorted by ``torch.unique``, blur neighbours are
found by ``searchsorted``, and splat and slice are sparse CSR matrix products.

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


class PermutohedralLattice:
    """A lattice built from features ``(N, d)`` or ``(B, N, d)`` (already divided by the std devs).

    ``filter(values)`` applies the (unnormalised) Gaussian filter to ``(N, C)`` / ``(B, N, C)``
    values; ``filter(values, transpose=True)`` applies its transpose.
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

        # 1. elevate onto the hyperplane and find the enclosing simplex
        el = f @ _elevation_matrix(d, f.dtype, device)  # (BN, d+1)
        v = el / d1
        up, down = torch.ceil(v) * d1, torch.floor(v) * d1
        rem0 = torch.where(up - el < el - down, up, down)
        total = torch.round(rem0.sum(1) / d1).to(torch.int64)  # how far off the plane rounding went
        diff = el - rem0
        # rank_i = #{j > i: diff_j > diff_i} + #{j < i: diff_j >= diff_i} (densecrf's tie-breaking)
        later = torch.triu(torch.ones(d1, d1, dtype=torch.bool, device=device), diagonal=1)
        gt = diff[:, None, :] > diff[:, :, None]   # [p, i, j]: diff_j > diff_i
        ge = diff[:, None, :] >= diff[:, :, None]
        rank = torch.where(later, gt, ge & ~torch.eye(d1, dtype=torch.bool, device=device)).sum(2)
        rank = rank + total[:, None]
        rem0 = rem0.to(torch.int64)
        low, high = rank < 0, rank > d
        rank = torch.where(low, rank + d1, torch.where(high, rank - d1, rank))
        rem0 = torch.where(low, rem0 + d1, torch.where(high, rem0 - d1, rem0))

        # 2. barycentric weights of the d+1 vertices
        w = (el - rem0.to(el.dtype)) / d1
        bary = torch.zeros(b * n, d + 2, dtype=el.dtype, device=device)
        bary.scatter_add_(1, d - rank, w)
        bary.scatter_add_(1, d - rank + 1, -w)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        bary = bary[:, :d1]

        # 3. vertex keys (first d coordinates suffice: coordinates sum to 0), packed into int64 codes
        r = torch.arange(d1, device=device)
        keys = rem0[:, None, :d] + r[None, :, None] - d1 * (rank[:, None, :d] > (d - r)[None, :, None]).long()
        lo = keys.amin(dim=(0, 1)) - d1  # room for neighbours at +-(d+1)
        span = keys.amax(dim=(0, 1)) + d1 - lo + 1
        strides = torch.ones(d + 1, dtype=torch.int64, device=device)
        for k in range(d - 1, -1, -1):
            strides[k] = strides[k + 1] * span[k]
        if float(strides[0]) * b >= 2 ** 62:
            raise ValueError("lattice too large to hash (features span too wide a range for their std devs)")
        img = torch.arange(b, device=device).repeat_interleave(n)
        codes = ((keys - lo) * strides[1:]).sum(2) + img[:, None] * strides[0]
        # one sort serves both the hash table (unique codes) and the splat matrix (entries by vertex)
        sorted_codes, order = torch.sort(codes.flatten(), stable=True)
        uniq, counts = torch.unique_consecutive(sorted_codes, return_counts=True)
        m = uniq.numel()
        self.num_lattice_points = m
        inverse = torch.empty_like(order)
        inverse[order] = torch.repeat_interleave(torch.arange(m, device=device), counts)

        # 4. blur neighbours along each of the d+1 axes (index m = an all-zero padding row)
        self.neighbours = []
        step_all = strides[1:].sum()
        for j in range(d1):
            delta = step_all - (d1 * strides[1 + j] if j < d else 0)
            pair = []
            for sign in (1, -1):
                target = uniq + sign * delta
                idx = torch.searchsorted(uniq, target).clamp_(max=m - 1)
                found = uniq[idx] == target
                idx = torch.where(found, idx, torch.full_like(idx, m))
                pair.append(torch.cat([idx, idx.new_tensor([m])]))
            self.neighbours.append(tuple(pair))

        # 5. splat (M x BN) and slice (BN x M+1) as CSR matrices
        alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self.alpha = alpha
        crow = torch.zeros(m + 2, dtype=torch.int64, device=device)
        crow[1:m + 1] = torch.cumsum(counts, 0)
        crow[m + 1] = crow[m]  # the padding row holds nothing
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
        self._splat = torch.sparse_csr_tensor(crow, order // d1, bary.flatten()[order], size=(m + 1, b * n))
        self._slice = torch.sparse_csr_tensor(torch.arange(0, b * n * d1 + 1, d1, device=device), inverse,
                                              bary.flatten(), size=(b * n, m + 1))

    def _blur(self, values: torch.Tensor, reverse: bool) -> torch.Tensor:
        for n1, n2 in (reversed(self.neighbours) if reverse else self.neighbours):
            values = values + 0.5 * (values.index_select(0, n1) + values.index_select(0, n2))
        return values

    def filter(self, values: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """Gaussian-filter ``values`` (``(N, C)`` or ``(B, N, C)``, matching the features)."""
        shape = values.shape
        if shape[-2] != self.num_points or (values.dim() == 3 and shape[0] != self.batch) or values.dim() not in (2, 3):
            raise ValueError(f"values of shape {tuple(shape)} do not match the lattice's "
                             f"{self.batch} x {self.num_points} points")
        dtype = values.dtype
        flat = values.reshape(self.batch * self.num_points, -1).to(self.dtype)
        lattice_values = torch.sparse.mm(self._splat, flat)  # (M+1, C); row M is empty -> zero
        lattice_values = self._blur(lattice_values, reverse=transpose)
        out = torch.sparse.mm(self._slice, lattice_values) * self.alpha
        return out.reshape(shape).to(dtype)
