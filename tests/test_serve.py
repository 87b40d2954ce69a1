"""structseg serve: every endpoint and every refused request, in process (FastAPI's TestClient)."""
from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from structseg._io import load_image  # noqa: E402
from structseg.config import TTA_SCALES  # noqa: E402
from structseg.engine.inference import InferenceSettings  # noqa: E402
from structseg.structured.dense_crf import CRFParams  # noqa: E402
from structseg.engine.predict import Predictor  # noqa: E402
from structseg.workflows.serve import ServeSettings, create_app  # noqa: E402
from structseg.workflows.serve.app import ServedModel  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(synth_root, tmp_path_factory):
    from structseg.engine.trainer import train

    from .test_engine import tiny_config
    run = tmp_path_factory.mktemp("serve_run")
    train(tiny_config(synth_root, epochs=3), run, progress=False)
    return run / "best.pt"


@pytest.fixture(scope="module")
def client(ckpt):
    app = create_app([str(ckpt)], ServeSettings(max_upload_mb=1.0, max_pixels=200_000, queue=2, threads=1))
    with TestClient(app) as c:
        yield c


def _png(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _post(client, data: bytes, name="x.png", **fields):
    return client.post("/v1/predict", files={"image": (name, data, "application/octet-stream")},
                       data={k: str(v) for k, v in fields.items()})


def _labels(body: dict) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(body["label_png"]))))


def _bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header declaring w x h pixels, with a tiny IDAT: what a decompression bomb looks like."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_health_models_page_and_schema(client, ckpt):
    assert client.get("/healthz").json() == {"status": "ok", "models": [str(ckpt)], "busy": 0, "queue": 2}
    models = client.get("/v1/models").json()
    m = models["models"][0]
    assert m["name"] == str(ckpt) and m["num_classes"] == 5 and len(m["classes"]) == 5 and m["dae"] is None
    assert models["limits"]["max_pixels"] == 200_000
    page = client.get("/")
    assert page.status_code == 200 and "<canvas id=\"labels\">" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no asset from the internet
    schema = client.get("/openapi.json").json()
    assert "/v1/predict" in schema["paths"] and "/v1/models" in schema["paths"]


def test_predict_equals_the_predictor_and_png_format_matches_json(client, ckpt, synth_root):
    path = sorted((synth_root / "images").iterdir())[0]
    data = path.read_bytes()
    body = _post(client, data, path.name).json()
    expected = Predictor(ckpt).predict(load_image(path))
    got = _labels(body)
    assert got.shape == expected.shape == (body["height"], body["width"])
    assert np.array_equal(got, expected)
    shares = np.bincount(expected.ravel(), minlength=5) / expected.size
    assert list(body["shares"].values()) == pytest.approx(shares.tolist(), abs=1e-6)
    assert body["options"] == {"crf": False, "dae": False, "tta": False, "mode": "whole"} and body["time_ms"] > 0
    r = client.post("/v1/predict?format=png", files={"image": ("a.png", data)})
    assert r.headers["content-type"] == "image/png"
    assert np.array_equal(np.array(Image.open(io.BytesIO(r.content))), expected)
    assert json.loads(r.headers["x-structseg-summary"])["width"] == body["width"]
    crf = _post(client, data, crf="true", tta="1").json()
    assert crf["options"]["crf"] and crf["options"]["tta"]
    tta = InferenceSettings(scales=TTA_SCALES, flip=True)
    assert np.array_equal(_labels(crf), Predictor(ckpt).variant(tta, CRFParams()).predict(load_image(path)))


def test_exif_orientation_is_honoured(client):
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90 degrees
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", exif=exif)
    body = _post(client, buf.getvalue(), "phone.jpg").json()
    assert (body["width"], body["height"]) == (40, 60)


@pytest.mark.parametrize("make, status, message", [
    (lambda: b"", 422, "upload 'x.png': empty file"),
    (lambda: _png(np.zeros((1, 1, 3), np.uint8)), 422, "1x1 image; at least 16x16"),
    (lambda: _bomb_png(50000, 50000), 413, "at most 200000 pixels"),
    (lambda: b"just some text\n", 422, "not an image file"),
    (lambda: _png(np.zeros((40, 40, 3), np.uint8))[:60], 422, "corrupt, truncated or unreadable"),
])
def test_bad_uploads_are_4xx_and_the_server_keeps_serving(client, make, status, message, synth_root):
    r = _post(client, make())
    assert r.status_code == status and message in r.json()["error"], r.json()
    good = (sorted((synth_root / "images").iterdir())[0]).read_bytes()
    assert _post(client, good).status_code == 200


def test_bad_requests(client, synth_root, ckpt):
    good = (sorted((synth_root / "images").iterdir())[0]).read_bytes()
    cases = [
        (_post(client, good, foo="1"), 400, "unknown option(s) ['foo']"),
        (_post(client, good, model="nope"), 404, "model 'nope' is not loaded"),
        (_post(client, good, crf="maybe"), 400, "option 'crf': 'maybe' is not a boolean"),
        (_post(client, good, dae="true"), 400, "has no DAE"),
        (client.post("/v1/predict", files={"model": (None, str(ckpt))}), 400, "no 'image' field"),
        (client.post("/v1/predict", data={"model": str(ckpt)}), 415, "multipart/form-data"),
        (client.post("/v1/predict", content=good, headers={"content-type": "image/png"}), 415, "multipart/form-data"),
        (client.post("/v1/predict?colour=red", files={"image": ("a.png", good)}), 400, "unknown query parameter"),
        (_post(client, _png(np.random.default_rng(0).integers(0, 255, (600, 700, 3), dtype=np.uint8), "BMP")),
         413, "at most 1048576 bytes"),
    ]
    for r, status, message in cases:
        assert r.status_code == status and message in r.json()["error"], (status, r.json())
    assert _post(client, good).status_code == 200


def test_a_full_queue_answers_503_at_once(ckpt, synth_root, monkeypatch):
    release, started = threading.Event(), threading.Event()
    real = ServedModel.labels

    def slow(self, *a):
        started.set()
        release.wait(10)
        return real(self, *a)

    monkeypatch.setattr(ServedModel, "labels", slow)
    app = create_app([str(ckpt)], ServeSettings(queue=1, threads=1))
    good = (sorted((synth_root / "images").iterdir())[0]).read_bytes()
    with TestClient(app) as c:
        results = {}
        t = threading.Thread(target=lambda: results.update(first=_post(c, good)))
        t.start()
        assert started.wait(10)
        t0 = time.perf_counter()
        busy = _post(c, good)
        assert busy.status_code == 503 and "server busy" in busy.json()["error"]
        assert time.perf_counter() - t0 < 5  # refused at once, not queued
        release.set()
        t.join(20)
        assert results["first"].status_code == 200
        assert _post(c, good).status_code == 200  # and serving again


def test_large_images_run_by_sliding_tiles(ckpt):
    app = create_app([str(ckpt)], ServeSettings(slide_above=48 * 64 - 1, threads=1))
    img = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    with TestClient(app) as c:
        body = _post(c, _png(img)).json()
    assert body["options"]["mode"] == "slide"
    # tiles no larger than the image: one tile covering it is the whole-image result
    assert np.array_equal(_labels(body), Predictor(ckpt).predict(img))


def test_the_shipped_dae_is_offered_with_its_segmenter():
    app = create_app(["camvid-unet"], ServeSettings(threads=1))
    img = np.random.default_rng(2).integers(0, 255, (97, 131, 3), dtype=np.uint8)
    with TestClient(app) as c:
        assert c.get("/v1/models").json()["models"][0]["dae"] == "camvid-unet-dae"
        plain, dae = _post(c, _png(img)).json(), _post(c, _png(img), dae="true").json()
        both = _post(c, _png(img), dae="true", tta="true")
    assert dae["options"]["dae"] and _labels(dae).shape == _labels(plain).shape == (97, 131)
    assert both.status_code == 400 and "cannot be combined" in both.json()["error"]
