"""An exported ``.onnx`` file (``structseg export CKPT model.onnx``) read back: its metadata, and ONNX Runtime
behind the module interface that ``load_pretrained`` and ``predict`` use."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import StructsegError


def require_package(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise StructsegError(f"ONNX export needs the {module} package: pip install -e \".[onnx]\"") from None


def onnx_metadata(path: str | Path) -> dict:
    """The ``structseg`` metadata of an exported file: model spec, classes, normalisation."""
    onnx = require_package("onnx")
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "structseg" not in props:
        raise StructsegError(f"{path}: not an ONNX file exported by structseg (no 'structseg' metadata)")
    return json.loads(props["structseg"])


class OnnxModel(torch.nn.Module):
    """An exported ``.onnx`` file run by ONNX Runtime (CPU) behind the module interface ``predict`` uses:
    ``model(x)`` -> logits, with ``classes``, ``normalization`` and ``metrics`` from the file's metadata."""

    def __init__(self, path: str | Path):
        super().__init__()
        ort = require_package("onnxruntime")
        from ..data.layout import ClassInfo
        meta = onnx_metadata(path)
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.classes = ClassInfo.from_dict(meta["classes"], f"{path} metadata")
        self.normalization = (tuple(meta["normalization"]["mean"]), tuple(meta["normalization"]["std"]))
        self.in_channels = len(self.normalization[0])
        self.metrics: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)
