"""Speed and memory of the dual-decomposition CRF layer (seed 002) against a plain per-chain reference.

    python benchmarks/dual_decomposition.py [--threads 2] [--repeats 3] [--device cpu|cuda]
        [--skip-reference-backward] [--no-reference-times]

Grids of a 360x480 image at stride 16 (23x30) and stride 8 (45x60), K = 11 and 21, batch 1, the seed's
settings (strides 1 and 2, 5 iterations, gamma 2). For each: forward and forward+backward time (median of
``--repeats`` after one warm-up) and the memory the backward pass keeps (bytes of the tensors saved for it,
counted with ``torch.autograd.graph.saved_tensors_hooks``, plus the tables the solver lays out once and shares
between its solves). The reference solves one chain at a time with the same recurrences in plain autograd (no batching, no custom backward), and
runs the same fixed-point loop; its output is checked against ours before timing.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import structseg.structured.dual_decomposition as dd
from structseg.structured.dual_decomposition import DDParams, dd_inference


def reference_chain(u: torch.Tensor, p: torch.Tensor, gamma: float) -> torch.Tensor:
    """One chain ``u (K, L)``, ``p (K, K, L-1)``: M = L + R - u by the textbook recursions, plain autograd."""
    n = u.shape[-1]
    left, right = [u[:, 0]], [u[:, -1]]
    for i in range(1, n):
        left.append(u[:, i] + gamma * torch.logsumexp((left[-1][:, None] + p[:, :, i - 1]) / gamma, 0))
    for j in range(n - 2, -1, -1):
        right.append(u[:, j] + gamma * torch.logsumexp((right[-1][None, :] + p[:, :, j]) / gamma, 1))
    return torch.stack(left, -1) + torch.stack(right[::-1], -1) - u


def reference_solver(u: torch.Tensor, p: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain by chain; ``gamma log Z`` read off the first site's max-marginals (float64), as the released code."""
    m = torch.stack([reference_chain(u[c], p[c], gamma) for c in range(u.shape[0])])
    return m, gamma * torch.logsumexp(m[:, :, 0].detach().double() / gamma, 1)


def run(layer, unary, tables, backward: bool):
    u = unary.clone().requires_grad_(backward)
    ts = {s: (a.clone().requires_grad_(backward), b.clone().requires_grad_(backward)) for s, (a, b) in tables.items()}
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    layouts = []
    original = dd.ChainTransitions

    def recorded(*args):  # the laid-out tables live on the layout object, outside save_for_backward: count them
        layouts.append(original(*args))
        return layouts[-1]

    dd.ChainTransitions = recorded if getattr(layer, "ours", False) else original
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = layer(u, ts)
    finally:
        dd.ChainTransitions = original
    for tr in layouts:
        saved[0] += sum(t.numel() * t.element_size() for t in (tr.exp_steps, tr.top, tr.steps) if t is not None)
    if backward:
        out.sum().backward()
    return out.detach(), saved[0]


class ReferenceTransitions:
    """Stands in for ``ChainTransitions`` in the reference run: it keeps the step-major tables as they are."""

    def __init__(self, steps: torch.Tensor, gamma):
        self.steps, self.gamma = steps, gamma


def reference_solve(u: torch.Tensor, tr: ReferenceTransitions):
    return reference_solver(u, tr.steps.permute(1, 2, 3, 0), tr.gamma)


def timed(fn, repeats: int, device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-reference-backward", action="store_true", help="time the reference forward only")
    ap.add_argument("--no-reference-times", action="store_true",
                    help="check the output against the reference once, but time only ours")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    params = DDParams()

    def ours(u, t):
        return dd_inference(u, t, params)

    ours.ours = True
    print(f"device {device}, {a.threads} threads, strides {params.strides}, {params.iterations} iterations, "
          f"gamma {params.gamma}; times in ms (median of {a.repeats}), kept = bytes saved for backward")
    print("| grid | K | ours fwd | ours fwd+bwd | ours kept (MiB) | reference fwd | reference fwd+bwd | "
          "reference kept (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for stride in (16, 8):
        h, w = -(-360 // stride), -(-480 // stride)
        for k in (11, 21):
            g = torch.Generator().manual_seed(0)
            unary = torch.randn(1, k, h, w, generator=g).to(device) * 3
            tables = {s: ((torch.randn(1, k, k, h, w - s, generator=g) * 0.5).to(device),
                          (torch.randn(1, k, k, h - s, w, generator=g) * 0.5).to(device)) for s in params.strides}

            def reference(u, t):
                originals = dd.ChainTransitions, dd.solve_transitions
                dd.ChainTransitions, dd.solve_transitions = ReferenceTransitions, reference_solve
                try:
                    return dd_inference(u, t, params)
                finally:
                    dd.ChainTransitions, dd.solve_transitions = originals

            out_ours, _ = run(ours, unary, tables, False)
            out_ref, _ = run(reference, unary, tables, False)
            assert torch.allclose(out_ours, out_ref, atol=1e-3), (out_ours - out_ref).abs().max()
            row = []
            for fn in (ours, reference):
                if fn is reference and a.no_reference_times:
                    row += [float("nan")] * 3
                    continue
                fwd = timed(lambda: run(fn, unary, tables, False), a.repeats, device)
                if fn is reference and a.skip_reference_backward:
                    row += [fwd, float("nan"), float("nan")]
                    continue
                both = timed(lambda: run(fn, unary, tables, True), a.repeats, device)
                kept = run(fn, unary, tables, True)[1] / 2 ** 20
                row += [fwd, both, kept]
            print(f"| {h}x{w} (stride {stride}) | {k} | {1e3 * row[0]:.0f} | {1e3 * row[1]:.0f} | {row[2]:.1f} | "
                  f"{1e3 * row[3]:.0f} | {1e3 * row[4]:.0f} | {row[5]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
