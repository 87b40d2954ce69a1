"""Which architectures of the zoo export to ONNX with dynamic batch/height/width, and how close ONNX Runtime's
logits are to PyTorch's (float32, random weights, a 3x3x75x101 batch the export never saw; parameters that
are initialised to zero, e.g. FCN's score layers, are drawn at random too, so no logits are trivially constant).

    pip install -e ".[onnx]"; python benchmarks/onnx_zoo.py [--models unet,fpn,...] [--threads 2]

One row per model: export seconds, file MiB, max |ONNX - PyTorch|, the largest |logit| and their ratio (the
export check accepts a ratio up to 1e-5), or the first line of the error.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from structseg.engine.checkpoint import save_checkpoint
from structseg.engine.onnx_export import export_onnx
from structseg.models import create_model, list_models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(list_models()))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print("| model | export s | MiB | max abs diff | max abs logit | ratio |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            torch.manual_seed(0)
            model = create_model(name, 11)
            with torch.no_grad():
                for p in model.parameters():
                    if not p.any():
                        p.normal_(0, 0.05)
            ckpt = Path(tmp) / f"{name}.pt"
            save_checkpoint(ckpt, {"model": {"name": name, "args": {}, "num_classes": 11},
                                   "classes": {"classes": [f"c{i}" for i in range(11)], "ignore_index": 255},
                                   "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
                                   "state_dict": model.state_dict()})
            t = time.perf_counter()
            try:
                meta = export_onnx(ckpt, Path(tmp) / f"{name}.onnx")
                size = (Path(tmp) / f"{name}.onnx").stat().st_size / 2 ** 20
                diff, top = meta.get("max_abs_diff", float("nan")), meta.get("max_abs_logit", float("nan"))
                print(f"| {name} | {time.perf_counter() - t:.0f} | {size:.1f} | {diff:.1e} | {top:.3g} | "
                      f"{diff / max(1.0, top):.1e} |", flush=True)
            except Exception as e:  # noqa: BLE001 - a table of what works
                print(f"| {name} | {time.perf_counter() - t:.0f} | - | failed: {str(e).splitlines()[0][:90]} |", flush=True)


if __name__ == "__main__":
    main()
