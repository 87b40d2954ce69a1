"""Fully connected CRF with Gaussian edge potentials (Krähenbühl & Koltun, NIPS 2011).

Mean-field inference ``Q <- softmax(-U - sum_m mu_m (K_m Q))`` with two kernels over pixel
features: *smoothness* (position, ``exp(-|p_i - p_j|^2 / 2 theta_gamma^2)``) and *appearance*
(position and colour, ``exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)``),
each filtered on a permutohedral lattice with pydensecrf's symmetric normalisation
``n * K(n * Q)``, ``n = 1 / sqrt(K 1)``. Colour is in 0-255 units, positions in pixels.

Differentiable with respect to the unaries (the filter's backward pass is its transpose) and to
the kernel weights and compatibilities; batched; CPU and CUDA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .lattice import Blur, PermutohedralLattice, SparseRows, all_finite


class GaussianKernel:
    """A symmetric-normalised Gaussian filter ``n * K(n * v)``, ``n = 1 / sqrt(K 1)``, over fixed features ``(B, N, d)``."""

    def __init__(self, features: torch.Tensor):
        self.lattice = PermutohedralLattice(features)
        self.norm = 1.0 / torch.sqrt(self.lattice.filter_ones() + 1e-20)  # (BN,)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        n = self.norm.view(self.lattice.batch, self.lattice.num_points, 1).to(values.dtype)
        return self.lattice.filter(values * n) * n


def position_features(height: int, width: int, sxy: float, device, dtype=torch.float32) -> torch.Tensor:
    """``(1, H*W, 2)`` pixel coordinates ``(x, y) / sxy`` in row-major order."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1)[None] / sxy


class _Block:
    """One normalised kernel's pieces: its splat ``(M, BN)`` and its slice entries, with ``n`` folded in."""

    def __init__(self, kernel: GaussianKernel):
        lat = kernel.lattice
        self.m, self.points, self.alpha, self.neighbours = (lat.num_lattice_points, lat.batch * lat.num_points,
                                                             lat.alpha, lat.neighbours)
        self.slice_col = lat.vertex  # (BN, d+1)
        self.slice_val = lat.bary * kernel.norm[:, None]
        self.splat = lat.splat_matrix(self.slice_val)


_POSITION_CACHE: dict[tuple, _Block] = {}


def position_block(height: int, width: int, sxy: float, device, dtype=torch.float32) -> _Block:
    """The smoothness kernel does not depend on the image: build it once per size and width."""
    key = (height, width, float(sxy), str(device), dtype)
    if key not in _POSITION_CACHE:
        if len(_POSITION_CACHE) >= 16:
            _POSITION_CACHE.pop(next(iter(_POSITION_CACHE)))
        _POSITION_CACHE[key] = _Block(GaussianKernel(position_features(height, width, sxy, device, dtype)))
    return _POSITION_CACHE[key]


class MessageOperator:
    """Both kernels of a batch as one linear operator over a stacked lattice.

    Lattice rows are ``[position lattice of image 0, ..., image B-1, appearance lattice, pad]``.
    ``splat`` fills them (the normaliser ``n`` is folded into the weights), ``slice_`` is its
    transpose, one sparse row of ``3 + (d+1)`` entries per pixel; the blur runs over the union of
    the axes (a kernel with fewer axes meets the zero pad row, i.e. the identity). The message is
    ``slice_ (w * alpha * B splat q)`` with the kernel weight ``w`` per row, which keeps the weights
    differentiable.
    """

    def __init__(self, position: _Block, appearance: _Block, batch: int):
        n, ms, ma = position.points, position.m, appearance.m
        self.batch, self.points = batch, n
        self.rows = batch * ms + ma
        self.sizes = (batch * ms, ma)
        self.alphas = (position.alpha, appearance.alpha)
        self.position_splat, self.appearance_splat = position.splat, appearance.splat
        device = appearance.slice_col.device
        pos_col = position.slice_col.repeat(batch, 1)
        if batch > 1:
            pos_col += (torch.arange(batch, device=device) * ms).repeat_interleave(n)[:, None].to(pos_col.dtype)
        slice_col = torch.cat([pos_col, appearance.slice_col + batch * ms], 1)
        slice_val = torch.cat([position.slice_val.repeat(batch, 1), appearance.slice_val], 1)
        k = slice_col.shape[1]
        self.slice_ = SparseRows(torch.arange(0, batch * n * k + 1, k, device=device), slice_col.flatten(),
                                 slice_val.flatten(), self.rows + 1)
        pad = self.rows
        neighbours = []
        for j in range(max(len(position.neighbours), len(appearance.neighbours))):
            pair = []
            for side in range(2):
                parts = []
                for k_img in range(batch):
                    parts.append(_shift(position.neighbours, j, side, ms, k_img * ms, pad))
                parts.append(_shift(appearance.neighbours, j, side, ma, batch * ms, pad))
                parts.append(torch.tensor([pad], device=device))
                pair.append(torch.cat(parts))
            neighbours.append(tuple(pair))
        self.blur = Blur(neighbours)

    def splat(self, q: torch.Tensor) -> torch.Tensor:
        """``(BN, C)`` -> ``(rows + 1, C)``, the last (pad) row zero."""
        n = self.points
        parts = [self.position_splat @ q[k * n:(k + 1) * n] for k in range(self.batch)]
        return torch.cat(parts + [self.appearance_splat @ q, q.new_zeros(1, q.shape[1])])

    def row_scale(self, weights: tuple, dtype: torch.dtype, device) -> torch.Tensor:
        parts = [torch.as_tensor(w * a, dtype=dtype, device=device).expand(size)
                 for w, a, size in zip(weights, self.alphas, self.sizes)]
        return torch.cat(parts + [torch.zeros(1, dtype=dtype, device=device)])

    def __call__(self, q: torch.Tensor, weights: tuple) -> torch.Tensor:
        """Messages ``sum_k w_k n_k K_k(n_k q)`` for ``q`` ``(BN, C)``."""
        lattice_values = _SplatBlur.apply(q, self)
        return _Slice.apply(lattice_values * self.row_scale(weights, q.dtype, q.device)[:, None], self)

    def sliced_chunks(self, q: torch.Tensor, weights: tuple, rows: int):
        """The messages of :meth:`__call__` (no gradient) as ``(start, (rows, C) block)`` pairs, pixel blocks in
        order. Each block is small and fresh in cache, and nothing of ``(BN, C)`` is allocated: ``q`` may be
        overwritten block by block while the pairs are consumed (the lattice values are complete before)."""
        values = self.blur(self.splat(q)).mul_(self.row_scale(weights, q.dtype, q.device)[:, None])
        sl = self.slice_
        k = sl.indices.numel() // max(1, sl.shape[0])
        offsets = torch.arange(0, rows * k + 1, k, dtype=sl.offsets.dtype, device=q.device)
        for start in range(0, sl.shape[0], rows):
            n = min(rows, sl.shape[0] - start)
            yield start, F.embedding_bag(sl.indices[start * k:(start + n) * k], values, offsets[:n + 1], mode="sum",
                                         per_sample_weights=sl.weights[start * k:(start + n) * k].to(values.dtype),
                                         include_last_offset=True)


def _shift(neighbours, axis: int, side: int, m: int, offset: int, pad: int) -> torch.Tensor:
    """One kernel's neighbour ids for ``axis`` moved into the stacked numbering (missing -> ``pad``)."""
    if axis >= len(neighbours):
        return torch.full((m,), pad, dtype=torch.int64, device=neighbours[0][0].device)
    idx = neighbours[axis][side][:m]
    return torch.where(idx == m, torch.full_like(idx, pad), idx + offset)


class _SplatBlur(torch.autograd.Function):
    """``y = B S q``; backward ``S^T B^T g`` (the blur axes in reverse order)."""

    @staticmethod
    def forward(ctx, q, op):
        ctx.op = op
        return op.blur(op.splat(q))

    @staticmethod
    def backward(ctx, grad):
        return ctx.op.slice_ @ ctx.op.blur(grad.contiguous(), reverse=True), None


class _Slice(torch.autograd.Function):
    """``y = S^T v``; backward ``S g``."""

    @staticmethod
    def forward(ctx, values, op):
        ctx.op = op
        return op.slice_ @ values

    @staticmethod
    def backward(ctx, grad):
        return ctx.op.splat(grad.contiguous()), None


def appearance_features(image: torch.Tensor, sxy: float, srgb: float) -> torch.Tensor:
    """``(B, H*W, 5)``: ``(x, y) / sxy`` and ``(r, g, b) / srgb`` for images ``(B, 3, H, W)`` in 0-255."""
    b, _, h, w = image.shape
    pos = position_features(h, w, sxy, image.device, image.dtype).expand(b, -1, -1)
    rgb = image.flatten(2).transpose(1, 2) / srgb
    return torch.cat([pos, rgb], 2)


@dataclass
class CRFParams:
    """Dense-CRF settings; defaults are Krähenbühl's (pydensecrf's examples).

    DeepLab-v2 on VOC used appearance 4 / xy 67 / rgb 3, smoothness 3 / xy 1, 10 iterations.
    """

    iterations: int = 5
    smoothness_weight: float = 3.0
    smoothness_xy: float = 3.0
    appearance_weight: float = 10.0
    appearance_xy: float = 80.0
    appearance_rgb: float = 13.0
    compatibility: list[float] | list[list[float]] | None = None  # None: Potts; C values: diagonal; CxC: full

    def compatibility_tensor(self) -> torch.Tensor | None:
        return None if self.compatibility is None else torch.tensor(self.compatibility, dtype=torch.float32)

    def validate(self, num_classes: int | None = None) -> None:
        """Range checks (finite, positive widths, non-negative weights); with ``num_classes``, the
        compatibility's shape too, so a bad setting fails before any network has run."""
        if not isinstance(self.iterations, int) or isinstance(self.iterations, bool) or self.iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {self.iterations!r}")
        for name in ("smoothness_xy", "appearance_xy", "appearance_rgb"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} (a kernel width) must be a positive finite number, got {v!r}")
        for name in ("smoothness_weight", "appearance_weight"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a non-negative finite number, got {v!r}")
        if self.compatibility is not None:
            try:
                comp = self.compatibility_tensor()
            except (ValueError, TypeError):
                raise ValueError("compatibility must be a list of C numbers or a C x C matrix, got "
                                 f"{self.compatibility!r}") from None
            if not torch.isfinite(comp).all() or comp.dim() not in (1, 2):
                raise ValueError(f"compatibility must be finite, C values or C x C, got {self.compatibility!r}")
            if num_classes is not None and tuple(comp.shape) not in ((num_classes,), (num_classes, num_classes)):
                raise ValueError(f"compatibility of shape {tuple(comp.shape)}: the model has {num_classes} classes, "
                                 f"expected ({num_classes},) or ({num_classes}, {num_classes})")


def _check_inputs(unary: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if unary.dim() == 3:
        unary = unary[None]
    if image.dim() == 3:
        image = image[None]
    if unary.dim() != 4:
        raise ValueError(f"unary must be (B, C, H, W) or (C, H, W), got shape {tuple(unary.shape)}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be RGB, (B, 3, H, W) or (3, H, W), got shape {tuple(image.shape)}")
    if unary.shape[0] != image.shape[0] or unary.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"unary {tuple(unary.shape)} and image {tuple(image.shape)} differ in batch or size "
                         "(H, W); resize the network output to the image first")
    return unary, image


def unary_from_probabilities(probs: torch.Tensor, clip: float = 1e-5) -> torch.Tensor:
    """``-log(max(p, clip))``, pydensecrf's ``unary_from_softmax``; rejects NaN and negative values."""
    lo, hi = torch.aminmax(probs)  # one pass; NaN propagates into both
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise ValueError("probabilities contain NaN or infinity")
    if lo < 0:
        raise ValueError("probabilities contain negative values")
    return probs.clamp(min=clip).log_().neg_()


LATTICE_SETTINGS = ("smoothness_xy", "appearance_xy", "appearance_rgb")  # what the operator depends on


def message_operator(image: torch.Tensor, params: CRFParams, dtype: torch.dtype = torch.float32) -> MessageOperator:
    """Both kernels' lattices for RGB ``image`` ``(B, 3, H, W)`` (0-255) and the widths in ``params``.

    ``mean_field(..., operator=op)`` reuses it, e.g. for several weights or iteration counts on one
    image (``crf search`` does); only the settings in ``LATTICE_SETTINGS`` enter it.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be RGB, (B, 3, H, W), got shape {tuple(image.shape)}")
    b, _, h, w = image.shape
    smooth = position_block(h, w, params.smoothness_xy, image.device, dtype)
    appear = _Block(GaussianKernel(appearance_features(image.to(dtype), params.appearance_xy, params.appearance_rgb)))
    return MessageOperator(smooth, appear, b)


_SHORT_ROWS = 16  # PyTorch's CPU softmax over the last dimension takes a slow path for rows shorter than this
_TINY_ROWS = 4  # up to this many columns, max / exp / sum / divide as four passes beat the padded softmax


def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """``softmax(x, 1)`` of an ``(N, C)`` tensor, the fastest way measured for short rows on the CPU.

    PyTorch's last-dimension softmax is 2-7x slower for C < 16 than for C = 16 (172800 rows, 2 threads: 18 ms at
    C = 11 against 3 ms at C = 16; ``benchmarks/softmax_rows.py``), which made the CRF's iteration slowest at
    CamVid's 11 classes. For 4 < C < 16 the rows are padded with -inf to 16 (the padded columns get probability
    exactly 0 and are dropped); for C <= 4 four elementwise passes are faster still (2.0 against 5.2 ms at C = 2)."""
    c = x.shape[1]
    if c >= _SHORT_ROWS or x.device.type != "cpu":
        return torch.softmax(x, 1)
    if c <= _TINY_ROWS:
        if x.requires_grad and torch.is_grad_enabled():  # autograd keeps exp's output: no in-place steps
            e = (x - x.amax(1, keepdim=True)).exp()
            return e / e.sum(1, keepdim=True)
        e = (x - x.amax(1, keepdim=True)).exp_()
        return e.div_(e.sum(1, keepdim=True))
    return torch.softmax(F.pad(x, (0, _SHORT_ROWS - c), value=-math.inf), 1)[:, :c].contiguous()


def _any_grad(x) -> bool:
    items = x if isinstance(x, (tuple, list)) else (x,)
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in items)


def _combine(message: torch.Tensor, u: torch.Tensor, compatibility: torch.Tensor | None) -> torch.Tensor:
    """The logits of the next ``Q`` from the messages and the unary under the compatibility of
    :func:`mean_field` (Potts: ``message - u``, in place; differentiable in the compatibility)."""
    if compatibility is None:
        return message.sub_(u)
    compatibility = compatibility.to(device=message.device, dtype=message.dtype)
    if compatibility.dim() == 1:
        return message * compatibility - u
    return -u - message @ compatibility.T


BLOCK_BYTES = 1 << 19  # pixels per block of the CPU inference loop: about 512 KiB of messages (fits in L2)


def _blocked_iterations(q: torch.Tensor, u: torch.Tensor, op: MessageOperator, iterations: int, weights: tuple,
                        compatibility: torch.Tensor | None) -> torch.Tensor:
    """Mean-field updates without autograd on the CPU, ``q`` ``(BN, C)`` overwritten in place block by block.

    The same arithmetic as the loop of :func:`mean_field`, but no ``(BN, C)`` temporary per iteration: above
    glibc's mmap threshold (32 MiB, e.g. 480x360 at C >= 49) every fresh buffer of that size is new pages from
    the kernel, and their page faults made each iteration 4-5x slower than its arithmetic (C = 59 / 150 at one
    thread: softmax 42 / 76 ms against 8 / 17 ms on reused memory; ``benchmarks/fresh_buffer_cost.py``).
    Blocks also stay in cache between the slice and the softmax."""
    rows = max(256, BLOCK_BYTES // (q.shape[1] * q.element_size()))
    for _ in range(iterations):
        for start, message in op.sliced_chunks(q, weights, rows):
            end = start + message.shape[0]
            q[start:end] = softmax_rows(_combine(message, u[start:end], compatibility))
    return q


def mean_field(unary: torch.Tensor, image: torch.Tensor, params: CRFParams,
               compatibility: torch.Tensor | None = None,
               weights: tuple[torch.Tensor, torch.Tensor] | None = None,
               operator: MessageOperator | None = None) -> torch.Tensor:
    """Mean-field inference; returns ``Q`` ``(B, C, H, W)``.

    ``unary`` is the energy ``U`` (e.g. ``-log p``); ``image`` is RGB in 0-255. ``compatibility``
    is applied to both kernels' messages: None for Potts (each kernel's weight rewards agreeing labels,
    equivalent to the penalty ``mu = 1 - I``); a ``(C,)`` vector for a diagonal compatibility (a
    per-class reward multiplying the weights); a ``(C, C)`` matrix for a full label-compatibility
    *penalty* ``mu`` (``msg_l = -sum_l' mu[l, l'] (K Q)_l'``).
    ``weights`` (optional tensors) replace the smoothness and appearance weights, e.g. learned ones.
    ``operator`` (from ``message_operator`` on the same image and widths) skips building the lattices.
    """
    params.validate()
    unary, image = _check_inputs(unary, image)
    c_ = unary.shape[1]
    if compatibility is not None and tuple(compatibility.shape) not in ((c_,), (c_, c_)):
        raise ValueError(f"compatibility of shape {tuple(compatibility.shape)}: expected ({c_},) or ({c_}, {c_})")
    if not all_finite(unary):
        raise ValueError("unary contains NaN or infinity")
    b, c, h, w = unary.shape
    if b > 1 and operator is None and unary.device.type == "cpu":
        # one image at a time on the CPU: a lattice over the whole batch is slower per image than b small ones
        # (measured: 8 frames of 480x360 at C = 11 took 1.9x the time of 8 separate calls; docs/benchmarks.md)
        return torch.cat([mean_field(unary[i:i + 1], image[i:i + 1], params, compatibility, weights)
                          for i in range(b)])
    dtype = torch.float64 if unary.dtype == torch.float64 else torch.float32
    if operator is None:
        op = message_operator(image, params, dtype)
    elif operator.batch != b or operator.points != h * w:
        raise ValueError(f"operator built for {operator.batch} image(s) of {operator.points} pixels, "
                         f"unary has {b} of {h * w}")
    else:
        op = operator
    weights = weights if weights is not None else (params.smoothness_weight, params.appearance_weight)
    u = unary.to(dtype).permute(0, 2, 3, 1).reshape(b * h * w, c).contiguous()  # (BN, C), image 0 first
    q = softmax_rows(-u)
    if u.device.type == "cpu" and not (torch.is_grad_enabled() and (u.requires_grad or _any_grad(weights)
                                                                     or _any_grad(compatibility))):
        q = _blocked_iterations(q, u, op, params.iterations, weights, compatibility)
    else:
        for _ in range(params.iterations):
            q = softmax_rows(_combine(op(q, weights), u, compatibility))
    return q.view(b, h, w, c).permute(0, 3, 1, 2).contiguous().to(unary.dtype)


class DenseCRF(torch.nn.Module):
    """Dense-CRF post-processing: ``DenseCRF()(logits=..., image=...)`` -> probabilities ``(B, C, H, W)``."""

    def __init__(self, params: CRFParams | None = None, **kwargs):
        super().__init__()
        self.params = params or CRFParams(**kwargs)
        self.params.validate()

    def forward(self, image: torch.Tensor, logits: torch.Tensor | None = None,
                probs: torch.Tensor | None = None) -> torch.Tensor:
        if (logits is None) == (probs is None):
            raise ValueError("pass exactly one of logits= or probs=")
        if logits is not None:
            if not all_finite(logits):
                raise ValueError("logits contain NaN or infinity")
            unary = -F.log_softmax(logits, dim=-3)
        else:
            unary = unary_from_probabilities(probs)
        return mean_field(unary, image, self.params, self.params.compatibility_tensor())
