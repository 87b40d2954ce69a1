"""Peak memory and time of sliding-window prediction on a large image, against the tile and the image size.

    python benchmarks/slide_memory.py [--model camvid-lite2-fpn] [--size 8000,8000] [--tile 512,512] [--threads 2]

Each case runs in a fresh process (``resource.getrusage`` peak RSS, so the figure is the whole process's:
interpreter, torch, the model, the uint8 image and its uint8 label map included). The image is a
deterministic random-block RGB picture; ``Predictor.predict`` with ``--mode slide`` streams it band by
band (one tile row of float logits at a time); with ``--crf`` the dense CRF runs on 1024 x 1024 tiles of
those logits with 64 pixels of context (``crf_tile_labels``). ``--whole`` also tries whole-image inference for
comparison (it may fail for lack of memory, which is then reported).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads({threads})
from structseg.engine.inference import InferenceSettings
from structseg.engine.predict import Predictor
from structseg.structured.dense_crf import CRFParams
h, w = {size}
rng = np.random.default_rng(0)
blocks = rng.integers(0, 256, (h // 64 + 1, w // 64 + 1, 3), dtype=np.uint8)
image = np.ascontiguousarray(np.repeat(np.repeat(blocks, 64, 0), 64, 1)[:h, :w])
settings = InferenceSettings("slide", {tile}, 0.25, 4) if {tile} else None
p = Predictor("{model}", amp="auto", inference=settings, crf=CRFParams() if {crf} else None)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
labels = p.predict(image)
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mib": base, "classes": int(labels.max()) + 1, "shape": list(labels.shape)}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="camvid-lite2-fpn")
    ap.add_argument("--size", default="8000,8000", help="H,W of the test image")
    ap.add_argument("--tile", default="512,512", help="H,W of the tiles")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--whole", action="store_true", help="also try whole-image inference")
    ap.add_argument("--crf", action="store_true", help="refine with the dense CRF (on 1024 x 1024 tiles when sliding)")
    a = ap.parse_args()
    size = tuple(int(v) for v in a.size.split(","))
    cases = [("slide", tuple(int(v) for v in a.tile.split(",")))] + ([("whole", None)] if a.whole else [])
    print(f"model {a.model}{' + dense CRF' if a.crf else ''}, image {size[1]}x{size[0]} (WxH), {a.threads} threads")
    print("| mode | tile | seconds | peak RSS (MiB) | RSS before predict (MiB) |")
    print("|---|---|---|---|---|")
    for mode, tile in cases:
        code = CHILD.format(threads=a.threads, size=size, tile=tile, model=a.model, crf=a.crf)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"| {mode} | {tile} | failed: {r.stderr.strip().splitlines()[-1][:80]} | | |")
            continue
        m = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"| {mode} | {tile[1]}x{tile[0] if tile else ''} | {m['seconds']:.1f} | {m['peak_mib']:.0f} | "
              f"{m['before_mib']:.0f} |" if tile else f"| {mode} | - | {m['seconds']:.1f} | {m['peak_mib']:.0f} | "
              f"{m['before_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
