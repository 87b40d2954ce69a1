"""The compiled (numba) lattice build against the default PyTorch build, stage by stage.

    pip install -e ".[fast]"
    python benchmarks/lattice_build_numba.py [--threads 2] [--repeats 25]

Builds the appearance lattice of a CamVid frame (480x360, Krähenbühl's 80 / 13) both ways, checks that the two
lattices are the same (vertex ids, barycentric weights, blur neighbours, splat rows; what
``tests/test_lattice_numba.py`` asserts on random point sets), then times, alternating, each whole build and the
whole CRF operator (both kernels' splat / slice / blur with the normaliser), and each stage of the compiled build.
Times are the minimum and the median of ``--repeats`` after three warm-up calls (numba's compilation is in the
first; ``cache=True`` keeps it for later processes).

An earlier prototype (a hash table of every point's vertices, 2026-12-02, docs/benchmarks.md) bought nothing; this
build hashes each distinct simplex once and lays the splat out by simplex.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from structseg._io import load_image
from structseg.structured import lattice, lattice_numba
from structseg.structured.dense_crf import CRFParams, appearance_features, message_operator

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
FRAME = "val/0016E5_07959.png"


def timings(fn, repeats: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * min(ts), 1000 * statistics.median(ts)


def stages(features: torch.Tensor, repeats: int) -> dict[str, float]:
    """Minimum ms of each pass of ``lattice_numba.build`` (the same calls, one at a time)."""
    b, n, d = features.shape
    d1 = d + 1
    e = torch.mm(lattice._elevation_matrix(d, torch.float32, features.device), features.reshape(b * n, d).T)
    ln = lattice_numba
    lo_e, hi_e = (torch.from_numpy(x) for x in ln._row_bounds(e[:d].numpy()))
    lo = (torch.floor(lo_e / d1) - 4).long().tolist()
    spans = [int(h) - lo_ + 8 for h, lo_ in zip(torch.ceil(hi_e / d1).long().tolist(), lo)]
    vstrides = lattice._strides([b] + spans + [d1])
    en, t = e.numpy(), e.numpy().dtype.type
    place = np.array([s // d1 for s in vstrides[1:-1]], np.int64)
    perm = np.int64(d1 ** d)
    out = {}

    def run(name, fn):
        out[name] = timings(fn, repeats)[0]
        return fn()

    bary, codes = run("simplices and weights (parallel)", lambda: ln._simplices(
        en, t(d1), t(0.5), t(1.0), np.asarray(lo, np.int64), place, np.int64(vstrides[0] // d1), np.int64(n), perm))
    simplex, sc = run("distinct simplices (hash table)", lambda: ln._distinct(codes))
    sorted_codes, ids, keys, values = run("their vertices (hash table), sorted numbering",
                                          lambda: ln._vertices(sc, place, perm, d1))
    step = np.array(list(vstrides[1:-1]) + [0], np.int64)
    run("blur neighbours", lambda: ln._neighbours(sorted_codes, keys, values, step, np.int64(sum(vstrides[1:-1])), d1))
    vertex = run("vertex ids per point (parallel)", lambda: ln._point_vertices(simplex, ids))
    m = sorted_codes.size
    buf = np.empty(vertex.size, np.int32), np.empty(vertex.size, np.int32)
    run("splat layout", lambda: ln._splat_layout(simplex, ids, m, *buf))
    out["(points, simplices, lattice points)"] = (b * n, sc.size, m)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=25)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    image = torch.from_numpy(np.asarray(load_image(CAMVID / FRAME))).permute(2, 0, 1)[None].float().contiguous()
    features = appearance_features(image, 80.0, 13.0)
    lattice.set_build("torch")
    ref = lattice.PermutohedralLattice(features)
    lattice.set_build("numba")
    got = lattice.PermutohedralLattice(features)
    assert got.splat_source is not None and ref.num_lattice_points == got.num_lattice_points
    assert torch.equal(ref.vertex.long(), got.vertex.long()) and torch.equal(ref.bary, got.bary)
    assert all(torch.equal(x, y) for p, q in zip(ref.neighbours, got.neighbours) for x, y in zip(p, q))
    assert torch.equal(ref.splat_offsets, got.splat_offsets)
    print(f"same lattice both ways ({got.num_lattice_points} lattice points); {a.threads} thread(s)")
    rows = {}
    params = CRFParams()
    for build in ("torch", "numba", "torch", "numba"):  # alternating: the VM's speed drifts
        lattice.set_build(build)
        rows.setdefault(f"{build}: appearance lattice", []).append(
            timings(lambda: lattice.PermutohedralLattice(features), a.repeats))
        rows.setdefault(f"{build}: whole CRF operator (both kernels, normaliser)", []).append(
            timings(lambda: message_operator(image, params), a.repeats))
    print("| build | ms, min | ms, median |\n|---|---|---|")
    for name, runs in rows.items():
        print(f"| {name} | {min(r[0] for r in runs):.1f} | {statistics.median(r[1] for r in runs):.1f} |")
    lattice.set_build("numba")
    for name, v in stages(features, a.repeats).items():
        print(f"| numba stage: {name} | {v if isinstance(v, tuple) else f'{v:.1f}'} | |")


if __name__ == "__main__":
    main()
