"""An exported ``.onnx`` file (``structseg export CKPT model.onnx``) read back: its metadata, and ONNX Runtime
behind the module interface that ``load_pretrained`` and ``predict`` use."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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


def run_onnx(session, x: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """Logits of normalised images ``(N, C, H, W)`` from an ONNX Runtime session of an exported file whose
    height and width must be multiples of ``multiple``: padded at the bottom and right as the PyTorch model
    pads itself (reflect; replicate when the pad exceeds the image), run, and cropped back."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    xp = x.detach().float().cpu()
    if ph or pw:
        xp = F.pad(xp, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    out = session.run(None, {"image": np.ascontiguousarray(xp.numpy())})[0]
    return torch.from_numpy(out[..., :h, :w].copy())


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
        graph_in, graph_out = self.session.get_inputs()[0].shape, self.session.get_outputs()[0].shape
        for what, dims, want in (("classes", graph_out, self.classes.num_classes),
                                 ("input channels", graph_in, self.in_channels)):
            if len(dims) != 4 or (isinstance(dims[1], int) and dims[1] != want):
                raise StructsegError(f"{path}: the graph's {what} ({dims[1] if len(dims) == 4 else dims}) do not match "
                                     f"its structseg metadata ({want}); the file was altered or is not structseg's")
        self.size_multiple = int(meta.get("size_multiple", 1))  # files exported before it was recorded: any size
        self.metrics: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_onnx(self.session, x, self.size_multiple).to(x.device)
