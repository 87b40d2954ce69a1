"""ONNX export: the file runs in ONNX Runtime at other batch sizes and image sizes and matches PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from structseg.models import create_model, list_models

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def tiny_run(synth_root, tmp_path_factory):
    from structseg.engine.trainer import train

    from .test_engine import tiny_config
    run = tmp_path_factory.mktemp("onnx_run")
    train(tiny_config(synth_root, epochs=1), run, progress=False)
    return run / "best.pt"


def test_export_runs_in_onnx_runtime_at_any_size_with_its_metadata(tiny_run, tmp_path, capsys):
    from structseg.cli import main
    from structseg.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from structseg.engine.onnx_export import ONNX_TOLERANCE
    from structseg.engine.onnx_model import onnx_metadata, run_onnx
    out = tmp_path / "m.onnx"
    assert main(["export", str(tiny_run), str(out)]) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    ckpt = load_checkpoint(tiny_run)
    model = model_from_checkpoint(ckpt).eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = onnx_metadata(out)
    assert meta["size_multiple"] == model.stride
    g = torch.Generator().manual_seed(1)
    for shape in ((1, 3, 48, 64), (2, 3, 37, 53), (4, 3, 96, 33)):
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        got = run_onnx(session, x, meta["size_multiple"]).numpy()
        assert got.shape == ref.shape and np.abs(got - ref).max() < ONNX_TOLERANCE * max(1, np.abs(ref).max())
    m = meta["size_multiple"]  # sizes that are multiples go through the bare session as they are
    x = torch.randn(1, 3, 2 * m, 3 * m, generator=g)
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], model(x).numpy(), atol=1e-4)
    assert meta["classes"]["classes"] == ckpt["classes"]["classes"] and meta["model"]["name"] == "unet"


def test_structured_layers_and_daes_do_not_export(synth_root, tmp_path, capsys):
    from structseg.cli import main
    from structseg.config import config_from_dict
    from structseg.engine.trainer import train

    from .test_engine import tiny_config
    cfg = tiny_config(synth_root, epochs=1).to_dict()
    cfg["model"]["crf"] = {"kind": "dual_decomposition", "iterations": 2}
    train(config_from_dict(cfg), tmp_path / "dd", progress=False)
    assert main(["export", str(tmp_path / "dd" / "best.pt"), str(tmp_path / "dd.onnx")]) == 2
    assert "does not export to ONNX" in capsys.readouterr().err
    assert main(["export", "camvid-unet-dae", str(tmp_path / "dae.onnx")]) == 2
    assert "segmentation checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "dd.onnx").exists()


def test_predict_runs_an_exported_onnx_file(tiny_run, synth_root, tmp_path):
    from PIL import Image

    from structseg.cli import main
    out = tmp_path / "m.onnx"
    assert main(["export", str(tiny_run), str(out)]) == 0
    images = str(synth_root / "images")
    assert main(["predict", str(tiny_run), images, "--out", str(tmp_path / "pt"), "--amp", "off", "--quiet"]) == 0
    assert main(["predict", str(out), images, "--out", str(tmp_path / "onnx"), "--quiet"]) == 0
    assert main(["predict", str(out), images, "--out", str(tmp_path / "tiles"), "--tile", "32,32", "--quiet"]) == 0
    for f in sorted((tmp_path / "pt" / "labels").glob("*.png")):
        a = np.array(Image.open(f))
        assert (a == np.array(Image.open(tmp_path / "onnx" / "labels" / f.name))).mean() > 0.999
    assert len(list((tmp_path / "tiles" / "labels").glob("*.png"))) == 24


def test_eval_scores_an_onnx_file_like_its_checkpoint_and_altered_files_are_refused(tiny_run, synth_root, tmp_path,
                                                                                    capsys):
    import json

    import onnx

    from structseg.cli import main
    out = tmp_path / "m.onnx"
    assert main(["export", str(tiny_run), str(out)]) == 0
    for src, dst in ((tiny_run, "pt"), (out, "onnx")):
        assert main(["eval", str(src), "--data", str(synth_root), "--split", "val.txt", "--out", str(tmp_path / dst),
                     "--amp", "off", "--panels", "0", "--quiet"]) == 0
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("pt", "onnx"))
    assert b["miou"] == pytest.approx(a["miou"], abs=1e-3) and b["pixel_acc"] == pytest.approx(a["pixel_acc"], abs=1e-3)
    proto = onnx.load(str(out))
    meta = next(p for p in proto.metadata_props if p.key == "structseg")
    data = json.loads(meta.value)
    data["classes"]["classes"] = data["classes"]["classes"][:3]  # metadata for another class count
    data["classes"].pop("palette", None)
    meta.value = json.dumps(data)
    onnx.save(proto, str(tmp_path / "altered.onnx"))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "altered.onnx"), str(synth_root / "images"), "--out",
                 str(tmp_path / "p"), "--quiet"]) == 2
    assert "altered.onnx: the graph's classes (5) do not match its structseg metadata (3)" in capsys.readouterr().err
    assert main(["eval", str(out), "--data", str(tmp_path / "nowhere"), "--split", "val.txt"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_architecture_exports_and_matches_pytorch(name, tmp_path):
    """Random weights (zero-initialised score layers made random too, so the logits are not trivially
    constant), exported and checked by export_onnx itself on a batch of an odd size."""
    from structseg.engine.checkpoint import save_checkpoint
    from structseg.engine.onnx_export import export_onnx
    torch.manual_seed(0)
    model = create_model(name, 5).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, {"model": {"name": name, "args": {}, "num_classes": 5, "crf": None},
                           "state_dict": model.state_dict(),
                           "classes": {"classes": list("abcde"), "ignore_index": 255}})
    meta = export_onnx(ckpt, tmp_path / "m.onnx")
    assert meta["max_abs_diff"] >= 0 and meta["size_multiple"] == model.stride
