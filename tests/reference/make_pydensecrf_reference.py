"""Record pydensecrf's marginals on fixed inputs, for the parity test that runs without pydensecrf.

    pip install pydensecrf2   # 1.1: an sdist only (Cython + a C++ compiler; ~25 min to build on 2 loaded cores)
    python tests/reference/make_pydensecrf_reference.py

Writes ``pydensecrf_reference.npz`` beside this file: the image, the unaries and pydensecrf's marginals
after 1 and 5 mean-field iterations for two settings (the default kernels at K = 6, and an 11-class case
with other widths and weights), so CI checks parity with the reference without building it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydensecrf.densecrf as dcrf

CASES = {  # name: (height, width, classes, smoothness (sxy, w), appearance (sxy, srgb, w))
    "k6": (40, 52, 6, (3.0, 3.0), (20.0, 13.0, 10.0)),
    "k11": (33, 47, 11, (1.0, 5.0), (40.0, 5.0, 4.0)),
}


def main() -> None:
    rng = np.random.default_rng(2026)
    out = {}
    for name, (h, w, c, (gsxy, gw), (bsxy, srgb, bw)) in CASES.items():
        blocks = rng.uniform(0, 255, (4, 5, 3))
        image = np.repeat(np.repeat(blocks, -(-h // 4), 0), -(-w // 5), 1)[:h, :w]
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).round().astype(np.uint8)
        logits = rng.normal(0, 2, (c, h, w))
        probs = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
        unary = (-np.log(np.clip(probs, 1e-5, None))).astype(np.float32)
        out[f"{name}_image"], out[f"{name}_unary"] = image, unary
        out[f"{name}_settings"] = np.array([gsxy, gw, bsxy, srgb, bw])
        for iterations in (1, 5):
            d = dcrf.DenseCRF2D(w, h, c)
            d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(c, -1)))
            d.addPairwiseGaussian(sxy=gsxy, compat=gw)
            d.addPairwiseBilateral(sxy=bsxy, srgb=srgb, rgbim=np.ascontiguousarray(image), compat=bw)
            out[f"{name}_q{iterations}"] = np.array(d.inference(iterations), dtype=np.float32).reshape(c, h, w)
    path = Path(__file__).with_name("pydensecrf_reference.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
