"""``structseg export CKPT model.onnx``: the network as an ONNX graph with dynamic batch, height and width.

Exported with PyTorch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``); the classes, palette
and normalisation ride along as metadata (``structseg`` key, JSON), so the file is usable without the
checkpoint. When ONNX Runtime is installed (``pip install -e ".[onnx]"``), the export is checked at once:
the file's logits against PyTorch's on a batch of another size. Structured layers do not export: CRF-as-RNN
builds a permutohedral lattice whose size depends on the image's colours, and the dual-decomposition CRF
unrolls its chains site by site in Python, a loop whose length is the image's size.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .._io import atomic_path
from ..errors import StructsegError
from .checkpoint import (
    checkpoint_classes,
    checkpoint_normalization,
    load_checkpoint,
    model_from_checkpoint,
)
from .onnx_model import require_package, run_onnx

# max |logit difference| accepted between ONNX Runtime and PyTorch (float32), relative to the largest |logit|
# (floored at 1): deep random-initialised networks reach logits of 1e4-1e7, where float32 rounding alone is 1e-6
ONNX_TOLERANCE = 1e-5


def export_onnx(checkpoint: str | Path, out: str | Path, check: bool = True) -> dict:
    """Export; returns the metadata written, plus ``max_abs_diff`` when ONNX Runtime checked the file."""
    onnx = require_package("onnx")
    require_package("onnxscript")
    ckpt = load_checkpoint(checkpoint)
    if ckpt["model"].get("crf") is not None:
        raise StructsegError(f"{checkpoint}: model.crf ({ckpt['model']['crf'].get('kind', 'mean_field')}) does not "
                             "export to ONNX: the structured layers' loops and lattice depend on the image (see "
                             "structseg/engine/onnx_export.py); export the network without it")
    model = model_from_checkpoint(ckpt, checkpoint).eval()
    mean, std = checkpoint_normalization(ckpt, checkpoint)
    meta = {"model": ckpt["model"], "classes": checkpoint_classes(ckpt).to_dict(),
            "normalization": {"mean": list(mean), "std": list(std)}}
    # height and width are exported as multiples of the model's stride (the model pads to it anyway); run_onnx
    # pads other sizes the way the model does. Fully symbolic sizes would make the exporter prove shape
    # equalities like "n is even" that it cannot (ENet's two-branch downsampling)
    multiple = int(getattr(model, "stride", 32))
    meta["size_multiple"] = multiple
    dim = torch.export.Dim
    shapes = {"x": {0: dim("batch", min=1, max=256), 2: multiple * dim("height_blocks", min=1, max=16384 // multiple),
                    3: multiple * dim("width_blocks", min=1, max=16384 // multiple)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.randn(2, len(mean), 2 * multiple, 3 * multiple),), dynamo=True, input_names=["image"],
                                    output_names=["logits"], dynamic_shapes=shapes, verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "structseg", json.dumps(meta)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            return meta
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        x = torch.randn(3, len(mean), 75, 101, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = model(x)
        got = run_onnx(session, x, multiple)
        diff = float((got - ref).abs().max())
        bound = ONNX_TOLERANCE * max(1.0, float(ref.abs().max()))
        if not diff <= bound:
            Path(out).unlink(missing_ok=True)
            raise StructsegError(f"{out}: ONNX Runtime's logits differ from PyTorch's by {diff:.2e} (> {bound:.2e}, "
                                 f"{ONNX_TOLERANCE:g} of the largest logit); the file was removed")
        meta = {**meta, "max_abs_diff": diff, "max_abs_logit": float(ref.abs().max())}
    return meta
