"""A compiled (numba) hash-table build of the permutohedral lattice, timed against structseg's PyTorch build.

    pip install numba
    python benchmarks/lattice_build_numba.py [--threads 2] [--repeats 7]

Issue 18 allowed an optional compiled CPU path for the lattice build if it bought speed. This is the
prototype that was measured: the densecrf way (a hash table of lattice keys), compiled by numba, one parallel
pass for every point's simplex and barycentric weights (the PyTorch path's float operations in the same order),
one serial pass inserting the simplices' vertices (a point whose simplex is its predecessor's reuses its ids),
then the lattice points renumbered in the PyTorch path's order so the result can be compared exactly. The script
checks ``vertex``, ``bary``, ``neighbours`` and the point count equal to ``PermutohedralLattice``'s on a CamVid
frame's appearance features and on random point sets, then times both builds (median of ``--repeats`` after
warm-up calls, which include numba's compilation) and each stage of the compiled one. It was not put into the
package because it is not faster (docs/benchmarks.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from structseg._io import load_image
from structseg.structured.dense_crf import appearance_features
from structseg.structured.lattice import PermutohedralLattice, _elevation_matrix

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
FRAME = "val/0016E5_07959.png"

import argparse
import os
import statistics
import time

os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")  # numba's OpenMP layer crashed beside torch's here
import numba
from numba import njit, prange

if True:  # the compiled kernels

    @njit(parallel=True, cache=True)
    def _simplices(elevated, fd1, half, one):  # pragma: no cover - compiled
        """Per point: the remainder-0 point ``rem0`` and the ranks (int64, (BN, d+1)) and the barycentric
        weights; ``fd1``, ``half``, ``one`` are scalars of ``elevated``'s dtype, so every float operation is
        the PyTorch path's, in the same order and precision (identical weights, identical ties)."""
        d1, bn = elevated.shape
        d = d1 - 1
        rem0_out = np.empty((bn, d1), np.int64)
        rank_out = np.empty((bn, d1), np.int64)
        bary = np.empty((bn, d1), elevated.dtype)
        chunks = 64
        for c in prange(chunks):
            diff = np.empty(d1, elevated.dtype)
            rem0 = np.empty(d1, elevated.dtype)
            a = np.empty(d1, elevated.dtype)
            shift_f = np.empty(1, elevated.dtype)
            rank = np.empty(d1, np.int64)
            for p in range(c * bn // chunks, (c + 1) * bn // chunks):
                total = rem0[0] - rem0[0]
                for j in range(d1):
                    rem0[j] = np.ceil(elevated[j, p] / fd1 - half) * fd1
                    diff[j] = elevated[j, p] - rem0[j]
                    rank[j] = j
                    total += rem0[j]
                for i in range(d1):
                    for j in range(i + 1, d1):
                        if diff[j] > diff[i]:
                            rank[i] += 1
                            rank[j] -= 1
                offset = np.int64(np.round(total / fd1))
                for j in range(d1):
                    rank[j] += offset
                    shift = 0
                    if rank[j] < 0:
                        shift = d1
                    elif rank[j] > d:
                        shift = -d1
                    rank[j] += shift
                    shift_f[0] = shift
                    rem0[j] += shift_f[0]
                    diff[j] = (diff[j] - shift_f[0]) / fd1
                    a[d - rank[j]] = diff[j]
                    rem0_out[p, j] = np.int64(rem0[j])
                    rank_out[p, j] = rank[j]
                for k in range(1, d1):
                    bary[p, k] = a[k] - a[k - 1]
                bary[p, 0] = (a[0] - a[d]) + one
        return rem0_out, rank_out, bary

    @njit(cache=True)
    def _slot(table, keys, key, mask):  # pragma: no cover - compiled
        """The slot of ``key`` in the open-addressing table: where it is, or the empty slot it would take."""
        h = np.uint64(14695981039346656037)
        for v in key:
            h = (h ^ np.uint64(v & 0xFFFFFFFF)) * np.uint64(1099511628211)
        s = np.int64(h & np.uint64(mask))
        while True:
            i = table[s]
            if i < 0:
                return s
            same = True
            for k in range(key.size):
                if keys[i, k] != key[k]:
                    same = False
                    break
            if same:
                return s
            s = (s + 1) & mask

    @njit(cache=True)
    def _insert_vertices(rem0, rank, n):  # pragma: no cover - compiled
        """Hash every simplex vertex ``(image, key_0..key_{d-1})``: per-point vertex ids in insertion order,
        the keys of the lattice points ``(M, d+1)``, and ``M``."""
        bn, d1 = rem0.shape
        d = d1 - 1
        capacity = 1 << 12
        table = np.full(capacity, -1, np.int64)
        keys = np.empty((capacity // 2, d1), np.int64)
        m = 0
        vertex = np.empty((bn, d1), np.int64)
        key = np.empty(d1, np.int64)
        for p in range(bn):
            img = p // n
            if p > 0 and (p - 1) // n == img:
                same = True
                for j in range(d1):
                    if rem0[p, j] != rem0[p - 1, j] or rank[p, j] != rank[p - 1, j]:
                        same = False
                        break
                if same:
                    for r in range(d1):
                        vertex[p, r] = vertex[p - 1, r]
                    continue
            for r in range(d1):
                key[0] = img
                for j in range(d):
                    key[j + 1] = rem0[p, j] + r - (d1 if rank[p, j] > d - r else 0)
                s = _slot(table, keys, key, capacity - 1)
                if table[s] < 0:
                    if 2 * (m + 1) > capacity:  # grow: double and re-insert
                        capacity *= 2
                        table = np.full(capacity, -1, np.int64)
                        grown = np.empty((capacity // 2, d1), np.int64)
                        grown[:m] = keys[:m]
                        keys = grown
                        for i in range(m):
                            table[_slot(table, keys, keys[i], capacity - 1)] = i
                        s = _slot(table, keys, key, capacity - 1)
                    keys[m] = key
                    table[s] = m
                    m += 1
                vertex[p, r] = table[s]
        return vertex, keys[:m].copy(), m

    @njit(cache=True)
    def _finish(vertex, keys, m):  # pragma: no cover - compiled
        """Renumber the lattice points in the PyTorch path's order (image, t_0..t_{d-1}, remainder), find each
        one's blur neighbours, and lay out the splat entries by lattice point. ``ok`` is False where the sort
        code would not fit in int64 (then the caller uses the PyTorch path)."""
        bn, d1 = vertex.shape
        d = d1 - 1
        rem = np.empty(m, np.int64)
        t = np.empty((m, d), np.int64)
        for i in range(m):
            r = keys[i, 1] % d1
            rem[i] = r
            for j in range(d):
                t[i, j] = (keys[i, j + 1] - r) // d1
        lo = np.empty(d, np.int64)
        span = np.empty(d, np.int64)
        for j in range(d):
            lo[j] = t[:, j].min()
            span[j] = t[:, j].max() - lo[j] + 1
        room = float(keys[:, 0].max() + 1) * d1
        for j in range(d):
            room *= span[j]
        if room >= 2.0 ** 62:
            return vertex, np.empty((d1, 2, 0), np.int64), np.empty(0, np.int64), np.empty(0, np.int64), False
        code = np.empty(m, np.int64)
        for i in range(m):
            c = keys[i, 0]
            for j in range(d):
                c = c * span[j] + (t[i, j] - lo[j])
            code[i] = c * d1 + rem[i]
        order = np.argsort(code)
        new_id = np.empty(m, np.int64)
        for k in range(m):
            new_id[order[k]] = k
        for p in range(bn):
            for r in range(d1):
                vertex[p, r] = new_id[vertex[p, r]]
        # a hash table of the renumbered keys for the neighbour lookups
        capacity = 1 << 12
        while capacity < 2 * m:
            capacity *= 2
        table = np.full(capacity, -1, np.int64)
        sorted_keys = np.empty((m, d1), np.int64)
        for k in range(m):
            sorted_keys[k] = keys[order[k]]
        for k in range(m):
            table[_slot(table, sorted_keys, sorted_keys[k], capacity - 1)] = k
        neighbours = np.empty((d1, 2, m), np.int64)
        probe = np.empty(d1, np.int64)
        for k in range(m):
            for j in range(d1):
                for side in range(2):
                    step = 1 if side == 0 else -1  # up: +1 everywhere, -d on axis j; down: the opposite
                    probe[0] = sorted_keys[k, 0]
                    for c in range(d):
                        probe[c + 1] = sorted_keys[k, c + 1] + (step * -d if c == j else step)
                    s = _slot(table, sorted_keys, probe, capacity - 1)
                    neighbours[j, side, k] = table[s] if table[s] >= 0 else m
        counts = np.zeros(m, np.int64)
        for p in range(bn):
            for r in range(d1):
                counts[vertex[p, r]] += 1
        offsets = np.zeros(m + 1, np.int64)
        for k in range(m):
            offsets[k + 1] = offsets[k] + counts[k]
        fill = offsets[:m].copy()
        dest = np.empty(bn * d1, np.int64)
        for p in range(bn):
            for r in range(d1):
                v = vertex[p, r]
                dest[p * d1 + r] = fill[v]
                fill[v] += 1
        return vertex, neighbours, dest, offsets, True


def build(elevated: np.ndarray, points: int):
    t = elevated.dtype.type
    s0 = time.perf_counter()
    rem0, rank, bary = _simplices(elevated, t(elevated.shape[0]), t(0.5), t(1.0))
    s1 = time.perf_counter()
    vertex, keys, m = _insert_vertices(rem0, rank, points)
    s2 = time.perf_counter()
    vertex, neighbours, _dest, _offsets, ok = _finish(vertex, keys, m)
    s3 = time.perf_counter()
    assert ok
    return (vertex, bary, neighbours, m), (s1 - s0, s2 - s1, s3 - s2)


def same_as_torch(features: torch.Tensor) -> int:
    lat = PermutohedralLattice(features)
    b, n, d = features.shape
    e = torch.mm(_elevation_matrix(d, torch.float32, features.device), features.reshape(b * n, d).T)
    (vertex, bary, neighbours, m), _ = build(e.contiguous().numpy(), n)
    assert m == lat.num_lattice_points, (m, lat.num_lattice_points)
    assert np.array_equal(vertex, lat.vertex.long().numpy())
    assert np.array_equal(bary, lat.bary.numpy())
    for j, (up, down) in enumerate(lat.neighbours):
        assert np.array_equal(neighbours[j, 0], up[:m].numpy()) and np.array_equal(neighbours[j, 1], down[:m].numpy())
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    numba.set_num_threads(a.threads)
    image = torch.from_numpy(np.asarray(load_image(CAMVID / FRAME))).permute(2, 0, 1)[None].float()
    features = appearance_features(image, 80.0, 13.0)  # Krähenbühl's appearance kernel, 480x360
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 2000, 2), (1, 2000, 5), (3, 500, 5), (2, 400, 3)]:
        same_as_torch(torch.randn(*shape, generator=g) * 3)
    m = same_as_torch(features)
    print(f"identical lattices (random sets and the CamVid frame, {m} lattice points); {a.threads} thread(s)")
    b, n, d = features.shape
    e = torch.mm(_elevation_matrix(d, torch.float32, features.device), features.reshape(b * n, d).T).contiguous().numpy()
    for _ in range(3):
        PermutohedralLattice(features)
        build(e, n)
    t_torch, t_numba, stages = [], [], []
    for _ in range(a.repeats):  # one block each: interleaved, torch's and numba's thread pools spin against each other
        t = time.perf_counter()
        PermutohedralLattice(features)
        t_torch.append(time.perf_counter() - t)
    for _ in range(a.repeats):
        t = time.perf_counter()
        _, st = build(e, n)
        t_numba.append(time.perf_counter() - t)
        stages.append(st)
    med = [1000 * statistics.median(s[k] for s in stages) for k in range(3)]
    print("| build | ms (median) |\n|---|---|")
    print(f"| PyTorch (PermutohedralLattice, elevation to splat layout) | {1000 * statistics.median(t_torch):.1f} |")
    print(f"| numba hash table (after the elevation) | {1000 * statistics.median(t_numba):.1f} |")
    print(f"| - simplices and weights (parallel) | {med[0]:.1f} |")
    print(f"| - vertex insertion (serial hash table) | {med[1]:.1f} |")
    print(f"| - renumbering, neighbours, splat layout | {med[2]:.1f} |")


if __name__ == "__main__":
    main()
