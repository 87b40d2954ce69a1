"""A compiled (numba) build of the permutohedral lattice, checked equal to structseg's PyTorch build and timed.

    pip install numba
    python benchmarks/lattice_build_numba.py [--threads 2] [--repeats 25]

Issue 18 allowed an optional compiled CPU path for the lattice build if it bought speed. This is the second
prototype (2026-12-04); the first (2026-12-02: a hash table of every point's vertices) was no faster. This one
computes what ``PermutohedralLattice`` computes after the elevation (the same float operations in the same order,
the same integer codes) in a few fused passes with hash tables instead of sorts:

1. per point (parallel, in blocks): remainder-0 point, ranks, barycentric weights and the simplex's integer code;
2. the distinct simplices in a hash table of codes (one probe per point), so each distinct simplex's ``d + 1``
   vertex codes are formed and hashed once (34013 simplices for 172800 pixels of the CamVid frame);
3. the lattice points numbered in sorted code order (the PyTorch path's order), each point's vertex ids, the blur
   neighbours by hash lookups, and the splat entries laid out by (simplex, vertex) pair.

The script checks vertex ids, barycentric weights, blur neighbours and splat rows equal to ``PermutohedralLattice``'s
on random point sets (batches, d = 1 to 5, a repeated point) and on a CamVid frame's appearance features, then
times both builds (alternating, minimum and median of ``--repeats`` after three warm-up calls; numba's compilation
is in the first) and each pass of the compiled one. It was built into the package behind an extra at commit
b05d043 (``STRUCTSEG_LATTICE_BUILD=numba``, ``crf_speed.py --build both``) and taken out again (3356235):
the build is 1.2-1.4x faster, but the whole CRF call was not measurably faster with 2 threads and about 7 % faster
on one (docs/benchmarks.md), not worth a compiled dependency.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from structseg._io import load_image
from structseg.structured.dense_crf import appearance_features
from structseg.structured.lattice import (
    PermutohedralLattice,
    _elevation_matrix,
    _fits_int64,
    _strides,
)

os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")  # numba's OpenMP layer crashed beside torch's here
import numba  # noqa: E402
from numba import njit, prange  # noqa: E402

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
FRAME = "val/0016E5_07959.png"

_EMPTY = np.int64(-1)


@njit(cache=True, inline="always")
def _hash(code, mask):  # pragma: no cover - compiled
    h = np.uint64(code)  # splitmix64's finaliser: the codes are structured, their low bits alone hash badly
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.int64((h ^ (h >> np.uint64(31))) & np.uint64(mask))


@njit(cache=True, inline="always")
def _find_or_insert(keys, values, code, fresh, mask):  # pragma: no cover - compiled
    """Open addressing, linear probing: the value stored for ``code``, or ``fresh`` stored and returned (then
    ``fresh`` is new)."""
    s = _hash(code, mask)
    while True:
        if values[s] == _EMPTY:
            keys[s] = code
            values[s] = fresh
            return fresh
        if keys[s] == code:
            return values[s]
        s = (s + 1) & mask


@njit(cache=True)
def _capacity(most):  # pragma: no cover - compiled
    """A power of two at least twice the most entries a table can get (load factor <= 1/2)."""
    capacity = 1 << 10
    while capacity < 2 * most:
        capacity *= 2
    return capacity


@njit(cache=True, inline="always")
def _find(keys, values, code, mask):  # pragma: no cover - compiled
    """The value stored for ``code``, ``_EMPTY`` where there is none (the probe of :func:`_find_or_insert`)."""
    s = _hash(code, mask)
    while values[s] != _EMPTY:
        if keys[s] == code:
            return values[s]
        s = (s + 1) & mask
    return _EMPTY


@njit(cache=True)
def _row_bounds(x):  # pragma: no cover - compiled
    """Least and greatest value of each row of ``(R, N)`` as float64."""
    rows = x.shape[0]
    lo = np.empty(rows, np.float64)
    hi = np.empty(rows, np.float64)
    for j in range(rows):
        a = x[j, 0]
        b = x[j, 0]
        for p in range(x.shape[1]):
            v = x[j, p]
            a = min(a, v)
            b = max(b, v)
        lo[j], hi[j] = a, b
    return lo, hi


@njit(parallel=True, cache=True)
def _simplices(elevated, fd1, half, one, lo, place, image_place, points, permutations):  # pragma: no cover
    """Per point: barycentric weights ``(BN, d+1)`` and the simplex code ``(image, t - lo, ranks)`` as in
    ``lattice._by_codes``. The float steps are the PyTorch path's, in its order and precision. Blocks of points
    go step by step through short loops over the block, which the compiler turns into vector instructions."""
    d1, bn = elevated.shape
    d = d1 - 1
    bary = np.empty((bn, d1), elevated.dtype)
    codes = np.empty(bn, np.int64)
    block = 512
    for c in prange((bn + block - 1) // block):
        p0 = c * block
        nb = min(block, bn - p0)
        rem0 = np.empty((d1, block), elevated.dtype)
        diff = np.empty((d1, block), elevated.dtype)
        rank = np.empty((d1, block), np.int32)
        a = np.empty((d1, block), elevated.dtype)
        code = np.empty(block, np.int64)
        for j in range(d1):
            for q in range(nb):
                x = elevated[j, p0 + q]
                r = np.ceil(x / fd1 - half) * fd1
                rem0[j, q] = r
                diff[j, q] = x - r
                rank[j, q] = j
        for i in range(d1):  # densecrf's tie-breaking: a later coordinate outranks only when strictly bigger
            for j in range(i + 1, d1):
                for q in range(nb):
                    later_bigger = np.int32(diff[j, q] > diff[i, q])
                    rank[i, q] += later_bigger
                    rank[j, q] -= later_bigger
        for q in range(nb):
            total = rem0[0, q]
            for j in range(1, d1):
                total += rem0[j, q]
            offset = np.int32(np.round(total / fd1))  # how far off the plane the rounding went
            code[q] = ((p0 + q) // points) * image_place
            for j in range(d1):
                rank[j, q] += offset
        for j in range(d1):
            for q in range(nb):
                shift = np.int32(0)
                if rank[j, q] < 0:
                    shift = np.int32(d1)
                elif rank[j, q] > d:
                    shift = np.int32(-d1)
                rank[j, q] += shift
                a[j, q] = shift  # as a float of the features' type: float32 - int32 would be float64
            for q in range(nb):
                rem0[j, q] += a[j, q]
                diff[j, q] = (diff[j, q] - a[j, q]) / fd1
        for q in range(nb):
            for j in range(d1):
                a[d - rank[j, q], q] = diff[j, q]
        for j in range(d):
            for q in range(nb):
                code[q] += (np.int64(np.round(rem0[j, q] / fd1)) - lo[j]) * place[j]
        for q in range(nb):
            rank_code = np.int64(0)
            for j in range(d):
                rank_code = rank_code * d1 + rank[j, q]
            codes[p0 + q] = code[q] * permutations + rank_code
            for k in range(1, d1):
                bary[p0 + q, k] = a[k, q] - a[k - 1, q]
            bary[p0 + q, 0] = (a[0, q] - a[d, q]) + one
    return bary, codes


@njit(cache=True)
def _distinct(codes):  # pragma: no cover - compiled
    """Each point's simplex id (in order of first appearance) and each simplex's code."""
    bn = codes.size
    capacity = _capacity(bn)
    keys = np.empty(capacity, np.int64)
    values = np.full(capacity, _EMPTY, np.int64)
    simplex = np.empty(bn, np.int64)
    first = np.empty(bn, np.int64)
    u = 0
    last_code, last_id = np.int64(-1), np.int64(-1)
    for p in range(bn):
        code = codes[p]
        if code == last_code:  # neighbouring pixels often share their simplex
            simplex[p] = last_id
            continue
        s = _find_or_insert(keys, values, code, u, capacity - 1)
        if s == u:
            first[u] = code
            u += 1
        simplex[p] = s
        last_code, last_id = code, s
    return simplex, first[:u].copy()


@njit(cache=True)
def _vertices(simplex_codes, place, permutations, d1):  # pragma: no cover - compiled
    """The lattice points: their codes in sorted order, each simplex's vertex ids ``(U, d+1)`` in that numbering,
    and the hash table (codes -> sorted id) for the neighbour lookups."""
    u = simplex_codes.size
    d = d1 - 1
    capacity = _capacity(u * d1)
    keys = np.empty(capacity, np.int64)
    values = np.full(capacity, _EMPTY, np.int64)
    ids = np.empty((u, d1), np.int64)
    uniq = np.empty(u * d1, np.int64)
    rank = np.empty(d1, np.int64)
    m = 0
    for k in range(u):
        t_code = simplex_codes[k] // permutations
        rc = simplex_codes[k] - t_code * permutations
        for j in range(d - 1, -1, -1):
            rank[j] = rc % d1
            rc //= d1
        for r in range(d1):
            lowered = np.int64(0)
            for j in range(d):
                if rank[j] > d - r:
                    lowered += place[j]
            vcode = (t_code - lowered) * d1 + r
            v = _find_or_insert(keys, values, vcode, m, capacity - 1)
            if v == m:
                uniq[m] = vcode
                m += 1
            ids[k, r] = v
    uniq = uniq[:m]
    order = np.argsort(uniq)
    new_id = np.empty(m, np.int64)
    for i in range(m):
        new_id[order[i]] = i
    for k in range(u):
        for r in range(d1):
            ids[k, r] = new_id[ids[k, r]]
    sorted_codes = uniq[order].copy()
    capacity = _capacity(m)  # a table of the M points alone for the neighbour lookups: small, in cache
    keys = np.empty(capacity, np.int64)
    values = np.full(capacity, _EMPTY, np.int64)
    for i in range(m):
        _find_or_insert(keys, values, sorted_codes[i], i, capacity - 1)
    return sorted_codes, ids, keys, values


@njit(cache=True)
def _neighbours(sorted_codes, keys, values, axis_step, total_step, d1):  # pragma: no cover - compiled
    """``(d+1, 2, M)`` blur neighbours as ``lattice._by_codes`` defines them (``M`` where there is none)."""
    m = sorted_codes.size
    d = d1 - 1
    out = np.empty((d1, 2, m), np.int64)
    mask = keys.size - 1
    for i in range(m):
        code = sorted_codes[i]
        rem = code % d1
        for j in range(d1):
            s_j = axis_step[j]
            s_other = total_step - s_j
            up = code + (1 - s_j) if rem < d else code + (s_other - d)
            down = code + (s_j - 1) if rem > 0 else code + (d - s_other)
            a = _find(keys, values, up, mask)
            b = _find(keys, values, down, mask)
            out[j, 0, i] = a if a >= 0 else m
            out[j, 1, i] = b if b >= 0 else m
    return out


@njit(parallel=True, cache=True)
def _point_vertices(simplex, ids):  # pragma: no cover - compiled
    bn = simplex.size
    d1 = ids.shape[1]
    vertex = np.empty((bn, d1), np.int32)
    for p in prange(bn):
        for r in range(d1):
            vertex[p, r] = ids[simplex[p], r]
    return vertex


@njit(cache=True)
def _splat_layout(simplex, ids, m, source, points):  # pragma: no cover - compiled
    """Entries ordered by lattice point: offsets ``(M+1,)``, and the (point, vertex) entry ``p (d+1) + r`` of each
    slot and its point ``p``, into ``source`` and ``points``. A row holds a block per (simplex, vertex) pair that
    meets it, as long as the simplex has points, its points in increasing order; so the layout is counted over the
    ``U (d+1)`` pairs, and only the final placement touches all ``BN (d+1)`` entries."""
    bn = simplex.size
    u, d1 = ids.shape
    count = np.zeros(u, np.int64)
    within = np.empty(bn, np.int64)
    for p in range(bn):
        within[p] = count[simplex[p]]
        count[simplex[p]] += 1
    offsets = np.zeros(m + 1, np.int64)
    for k in range(u):
        for r in range(d1):
            offsets[ids[k, r] + 1] += count[k]
    for i in range(m):
        offsets[i + 1] += offsets[i]
    fill = offsets[:m].copy()
    start = np.empty((u, d1), np.int64)
    for k in range(u):
        for r in range(d1):
            v = ids[k, r]
            start[k, r] = fill[v]
            fill[v] += count[k]
    _place(simplex, within, start, source, points)
    return offsets, source, points


@njit(parallel=True, cache=True)
def _place(simplex, within, start, source, points):  # pragma: no cover - compiled
    d1 = start.shape[1]
    for p in prange(simplex.size):
        k = simplex[p]
        for r in range(d1):
            slot = start[k, r] + within[p]
            source[slot] = p * d1 + r
            points[slot] = p


def build(elevated: torch.Tensor, batch: int, points: int) -> dict | None:
    """The lattice's pieces from the elevated features ``(d+1, BN)`` (CPU, contiguous), or None where the
    codes would not fit in int64 (the caller builds it the PyTorch way then).

    The codes are those of ``lattice._by_codes`` with the digit ranges bounded from the elevated coordinates'
    extremes instead of the exact ``t``: a mixed-radix code orders points as their digits do whatever the ranges,
    so the sorted numbering, and so every id, is the PyTorch path's."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    d1 = elevated.shape[0]
    d = d1 - 1
    lo_e, hi_e = (torch.from_numpy(x) for x in _row_bounds(elevated[:d].numpy()))
    # t = rem0 / (d+1) with rem0 the multiple of d+1 nearest to the coordinate, moved by at most one step
    lo = (torch.floor(lo_e / d1) - 4).long().tolist()  # room below for the wrap, t - 1 and t -+ 1
    spans = [int(h) - l + 8 for h, l in zip(torch.ceil(hi_e / d1).long().tolist(), lo)]
    if not (_fits_int64([batch] + spans + [d1]) and _fits_int64([batch] + spans + [d1] * d)):
        return None
    vstrides = _strides([batch] + spans + [d1])
    e = elevated.numpy()
    t = e.dtype.type
    place = np.array([s // d1 for s in vstrides[1:-1]], np.int64)
    permutations = d1 ** d
    bary, codes = _simplices(e, t(d1), t(0.5), t(1.0), np.asarray(lo, np.int64), place,
                             np.int64(vstrides[0] // d1), np.int64(points), np.int64(permutations))
    simplex, simplex_codes = _distinct(codes)
    sorted_codes, ids, keys, values = _vertices(simplex_codes, place, np.int64(permutations), d1)
    m = sorted_codes.size
    axis_step = np.array(list(vstrides[1:-1]) + [0], np.int64)
    neighbours = _neighbours(sorted_codes, keys, values, axis_step, np.int64(sum(vstrides[1:-1])), d1)
    vertex = _point_vertices(simplex, ids)
    index = np.int32 if vertex.size < 2 ** 31 - 1 else np.int64
    source, splat_points = np.empty(vertex.size, index), np.empty(vertex.size, index)
    offsets, source, splat_points = _splat_layout(simplex, ids, m, source, splat_points)
    return {"bary": torch.from_numpy(bary), "vertex": torch.from_numpy(vertex), "m": m,
            "neighbours": torch.from_numpy(neighbours), "splat_offsets": torch.from_numpy(offsets),
            "splat_source": torch.from_numpy(source), "splat_points": torch.from_numpy(splat_points)}


def build_numba(features: torch.Tensor) -> dict:
    """The compiled build from features ``(B, N, d)``: the elevation as PyTorch computes it, then :func:`build`."""
    b, n, d = features.shape
    e = torch.mm(_elevation_matrix(d, torch.float32, features.device), features.reshape(b * n, d).float().T)
    parts = build(e.contiguous(), b, n)
    assert parts is not None, "codes do not fit in int64"
    return parts


def same_as_torch(features: torch.Tensor) -> int:
    """Assert the compiled lattice equal to ``PermutohedralLattice``'s; the number of lattice points."""
    ref, got = PermutohedralLattice(features), build_numba(features)
    m = got["m"]
    assert m == ref.num_lattice_points, (m, ref.num_lattice_points)
    assert torch.equal(got["vertex"].long(), ref.vertex.long())
    assert torch.equal(got["bary"], ref.bary)  # the same float operations in the same order
    for j, (up, down) in enumerate(ref.neighbours):
        assert torch.equal(got["neighbours"][j, 0], up[:m]) and torch.equal(got["neighbours"][j, 1], down[:m])
    assert torch.equal(got["splat_offsets"], ref.splat_offsets)
    # each lattice point's splat entries, as sets of (point, vertex) entries
    entries = torch.arange(ref.vertex.numel())
    ref_slots = torch.empty_like(entries).scatter_(0, ref.splat_dest, entries)
    off = ref.splat_offsets.tolist()
    got_slots = got["splat_source"].long()
    for i in range(0, m, max(1, m // 200)):
        assert torch.equal(ref_slots[off[i]:off[i + 1]].sort().values, got_slots[off[i]:off[i + 1]].sort().values)
    return m


def timings(fn, repeats: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * min(ts), 1000 * statistics.median(ts)


def stages(features: torch.Tensor, repeats: int) -> dict:
    """Minimum ms of each pass of :func:`build` (the same calls, one at a time)."""
    b, n, d = features.shape
    d1 = d + 1
    e = torch.mm(_elevation_matrix(d, torch.float32, features.device), features.reshape(b * n, d).T)
    lo_e, hi_e = (torch.from_numpy(x) for x in _row_bounds(e[:d].numpy()))
    lo = (torch.floor(lo_e / d1) - 4).long().tolist()
    spans = [int(h) - lo_ + 8 for h, lo_ in zip(torch.ceil(hi_e / d1).long().tolist(), lo)]
    vstrides = _strides([b] + spans + [d1])
    en, t = e.numpy(), e.numpy().dtype.type
    place = np.array([s // d1 for s in vstrides[1:-1]], np.int64)
    perm = np.int64(d1 ** d)
    out = {}

    def run(name, fn):
        out[name] = timings(fn, repeats)[0]
        return fn()

    bary, codes = run("simplices and weights (parallel)", lambda: _simplices(
        en, t(d1), t(0.5), t(1.0), np.asarray(lo, np.int64), place, np.int64(vstrides[0] // d1), np.int64(n), perm))
    simplex, sc = run("distinct simplices (hash table)", lambda: _distinct(codes))
    sorted_codes, ids, keys, values = run("their vertices (hash table), sorted numbering",
                                          lambda: _vertices(sc, place, perm, d1))
    step = np.array(list(vstrides[1:-1]) + [0], np.int64)
    run("blur neighbours", lambda: _neighbours(sorted_codes, keys, values, step, np.int64(sum(vstrides[1:-1])), d1))
    vertex = run("vertex ids per point (parallel)", lambda: _point_vertices(simplex, ids))
    buf = np.empty(vertex.size, np.int32), np.empty(vertex.size, np.int32)
    run("splat layout", lambda: _splat_layout(simplex, ids, sorted_codes.size, *buf))
    out["(points, simplices, lattice points)"] = (b * n, sc.size, sorted_codes.size)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=25)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    image = torch.from_numpy(np.asarray(load_image(CAMVID / FRAME))).permute(2, 0, 1)[None].float().contiguous()
    features = appearance_features(image, 80.0, 13.0)  # Krähenbühl's appearance kernel, 480x360
    g = torch.Generator().manual_seed(0)
    for shape, scale in [((1, 2000, 2), 3.0), ((1, 2000, 5), 2.0), ((3, 500, 5), 3.0), ((2, 400, 3), 1.5),
                         ((1, 300, 1), 4.0), ((1, 300, 5), 0.3)]:
        pts = torch.randn(*shape, generator=g) * scale
        pts[..., 0, :] = pts[..., 1, :]  # a repeated point: a shared simplex
        same_as_torch(pts)
    m = same_as_torch(features)
    print(f"identical lattices (random sets and the CamVid frame, {m} lattice points); {a.threads} thread(s)")
    rows: dict[str, list] = {}
    for _ in range(2):  # alternating blocks: the VM's speed drifts
        rows.setdefault("PyTorch (PermutohedralLattice, elevation to splat layout)", []).append(
            timings(lambda: PermutohedralLattice(features), a.repeats))
        rows.setdefault("numba (the same, from the elevation on)", []).append(
            timings(lambda: build_numba(features), a.repeats))
    print("| appearance lattice build, 480x360 | ms, min | ms, median |\n|---|---|---|")
    for name, runs in rows.items():
        print(f"| {name} | {min(r[0] for r in runs):.1f} | {statistics.median(r[1] for r in runs):.1f} |")
    for name, v in stages(features, a.repeats).items():
        print(f"| numba pass: {name} | {v if isinstance(v, tuple) else f'{v:.1f}'} | |")


if __name__ == "__main__":
    main()
