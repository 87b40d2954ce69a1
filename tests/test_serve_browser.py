"""The page of structseg serve in a real browser: headless Chromium (Debian's) driven by Playwright."""
from __future__ import annotations

import base64
import io
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed")

from structseg.workflows.serve import ServeSettings, create_app  # noqa: E402


@pytest.fixture(scope="module")
def server(synth_root, tmp_path_factory):
    from structseg.engine.trainer import train

    from .test_engine import tiny_config
    run = tmp_path_factory.mktemp("browser_run")
    train(tiny_config(synth_root, epochs=3), run, progress=False)
    app = create_app([str(run / "best.pt")], ServeSettings(threads=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(10)


def _api_labels(url: str, data: bytes, crf: bool) -> np.ndarray:
    import httpx
    r = httpx.post(f"{url}/v1/predict", files={"image": ("synth.png", data)}, data={"crf": str(crf).lower()},
                   timeout=60)
    r.raise_for_status()
    return np.array(Image.open(io.BytesIO(base64.b64decode(r.json()["label_png"]))))


def test_upload_toggle_crf_and_the_shown_labels_equal_the_api(server, synth_root, tmp_path):
    url, app = server
    image_path = sorted((synth_root / "images").iterdir())[0]
    palette = np.array(next(iter(app.state.models.values())).classes.palette, dtype=np.int64)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#model option').length === 1")

        def shown_labels(done: int) -> np.ndarray:
            page.wait_for_function(f"window.structseg.done >= {done}", timeout=60_000)
            assert "error" not in (page.text_content("#status") or "").lower(), page.text_content("#status")
            h, w, flat = page.evaluate("""() => { const c = document.getElementById('labels');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                return [c.height, c.width, Array.from(d)]; }""")
            rgb = np.array(flat, dtype=np.int64).reshape(h, w, 4)[..., :3]
            # each colour back to its class index through the palette (the synthetic palette's colours differ)
            dist = ((rgb[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
            assert dist.min(-1).max() == 0, "the overlay shows a colour that is not a class colour"
            return dist.argmin(-1)

        page.set_input_files("#file", str(image_path))
        plain = shown_labels(1)
        page.check("#crf")
        with_crf = shown_labels(2)
        legend = page.text_content("#legend")
        timing = page.text_content("#timing")
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    data = image_path.read_bytes()
    assert np.array_equal(plain, _api_labels(url, data, crf=False))
    assert np.array_equal(with_crf, _api_labels(url, data, crf=True))
    assert "%" in legend and "ms" in timing and not errors
