"""``structseg serve``: an HTTP inference server (FastAPI) and its web page.

Models are loaded once, at start. Requests are decoded in memory (nothing in a request reaches the filesystem
or is unpickled), checked against the limits of :class:`ServeSettings` before any pixel is decoded, and run
one at a time on a single inference thread with a fixed number of torch threads, so concurrent requests do
not oversubscribe the cores; at most ``queue`` requests are admitted (running or waiting), beyond that the
answer is a 503 at once. Every error is a JSON ``{"error": "..."}`` with a 4xx/5xx status.
"""

import asyncio
import base64
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..._io import decode_image_bytes
from ...config import TTA_SCALES
from ...engine.checkpoint import shipped_checkpoints
from ...engine.inference import InferenceSettings
from ...engine.metrics import class_map
from ...engine.predict import Predictor
from ...errors import DataError, ImageTooLargeError, StructsegError
from ...structured.dense_crf import CRFParams

PAGE = Path(__file__).with_name("page.html")
OPTIONS = ("model", "crf", "dae", "tta")  # the form fields of POST /v1/predict besides the image


@dataclass
class ServeSettings:
    """Limits and resources of a server (the ``structseg serve`` flags)."""

    max_upload_mb: float = 20.0  # request body
    max_pixels: int = 40_000_000  # an image's declared width x height; larger ones are refused unread
    slide_above: int = 2048 * 2048  # images with more pixels run by 1024 x 1024 sliding tiles (bounded memory)
    min_side: int = 16  # smaller images are refused
    queue: int = 8  # requests admitted at once (running + waiting); more get a 503
    threads: int = 0  # torch threads of the inference thread (0: the machine's cores)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class ServedModel:
    """One loaded network (and the DAE shipped for it, if any) with what the page needs to show its classes."""

    def __init__(self, name: str, dae_name: str | None = None):
        self.name = name
        self.predictor = Predictor(name)
        self.classes = self.predictor.classes
        self.dae = None
        if dae_name is not None:
            from ..dae.loading import load_dae, read_dae_checkpoint
            _, _, seg, dae = load_dae(dae_name, None, self.predictor.device)
            chosen = read_dae_checkpoint(dae_name).get("chosen") or {"step": 0.1, "iterations": 10}
            self.dae = (dae_name, seg, dae, float(chosen["step"]), int(chosen["iterations"]))

    def describe(self) -> dict:
        return {"name": self.name, "num_classes": self.classes.num_classes,
                "classes": [{"index": i, "name": n, "color": list(self.classes.palette[i])}
                            for i, n in enumerate(self.classes.names)],
                "dae": self.dae[0] if self.dae else None, "in_channels": self.predictor.channels,
                "metrics": {k: v for k, v in (self.predictor.model.metrics or {}).items()
                            if k in ("miou", "mean_acc", "pixel_acc", "data", "split")}}

    def labels(self, image: np.ndarray, crf: bool, dae: bool, tta: bool, slide: bool) -> np.ndarray:
        """``uint8 (H, W)`` class indices of an RGB image with the requested refinements."""
        h, w = image.shape[:2]
        tile = (min(1024, h), min(1024, w)) if slide else None
        settings = InferenceSettings(mode="slide" if slide else "whole", tile=tile,
                                     scales=TTA_SCALES if tta else (1.0,), flip=tta)
        params = CRFParams() if crf else None
        if not dae:
            return self.predictor.variant(settings, params).predict(image)
        from ...data.transforms import network_input
        from ...structured.crf_postprocess import crf_refiner
        from ...structured.dae import iterative_inference
        _, seg, net, step, iterations = self.dae
        p = self.predictor
        with torch.no_grad():
            y0, h = seg(network_input(image, p.mean, p.std)[None].to(p.device))
            y = iterative_inference(net, y0, h, step, iterations)
        if params is not None:
            y = crf_refiner(params)(torch.log(y.float().clamp(min=1e-8)), image)
        return class_map(y, 1)[0].cpu().numpy().astype(np.uint8)


def shipped_daes_by_segmenter() -> dict[str, str]:
    """``{segmenter name: shipped DAE name}``: which served models get the DAE toggle."""
    from ..dae.loading import read_dae_checkpoint
    out: dict[str, str] = {}
    for name, path in shipped_checkpoints("dae").items():
        try:
            out.setdefault(str(read_dae_checkpoint(path).get("segmenter")), name)
        except StructsegError:
            continue
    return out


def _flag(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "on", "yes"):
        return True
    if v in ("0", "false", "off", "no", ""):
        return False
    raise ApiError(400, f"option {name!r}: {value!r} is not a boolean (true/false, 1/0, on/off)")


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """``{field: (filename or None, bytes)}`` of a multipart/form-data body, parsed in memory."""
    from python_multipart.multipart import MultipartParser, parse_options_header
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, "expected a multipart/form-data upload (a form with an 'image' file field)")
    parts: list[dict] = []
    state: dict = {}

    def on_part_begin():
        state.update(part={"headers": {}, "data": bytearray()}, field=b"", value=b"")

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["part"]["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data, start, end):
        state["part"]["data"] += data[start:end]

    def on_part_end():
        parts.append(state["part"])

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as e:  # noqa: BLE001 - any malformed body is the client's error
        raise ApiError(400, f"malformed multipart body ({type(e).__name__}: {str(e)[:120]})") from None
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in parts:
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        if name in fields:
            raise ApiError(400, f"field {name!r} given twice")
        fields[name] = (filename.decode("utf-8", "replace") if filename is not None else None, bytes(part["data"]))
    return fields


def label_png(label: np.ndarray, palette) -> bytes:
    """A palette PNG of class indices (its colours the classes' palette), encoded in memory."""
    from PIL import Image
    im = Image.fromarray(label, mode="L").convert("P")
    flat = [v for c in palette for v in c]
    im.putpalette(flat + [0] * (768 - len(flat)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def create_app(models: list[str] | None = None, settings: ServeSettings | None = None):
    """The FastAPI application serving ``models`` (shipped names or checkpoint files; default: every shipped
    segmentation model), each loaded once, now."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse, JSONResponse, Response
    except ImportError:
        raise StructsegError('structseg serve needs FastAPI and uvicorn: pip install -e ".[serve]"') from None

    settings = settings or ServeSettings()
    names = list(models) if models else sorted(shipped_checkpoints())
    if not names:
        raise StructsegError("no model to serve: give shipped model names or checkpoint files")
    daes = shipped_daes_by_segmenter()
    served = {name: ServedModel(name, daes.get(name)) for name in names}
    threads = settings.threads or os.cpu_count() or 1
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="structseg-infer",
                                  initializer=lambda: torch.set_num_threads(threads))
    admitted = {"n": 0}
    limit = int(settings.max_upload_mb * 1024 * 1024)

    app = FastAPI(title="structseg", version="1", description="Semantic segmentation with structured inference: "
                  "upload an image, get its label map (optionally refined by a dense CRF, a DAE, or TTA).")
    app.state.settings, app.state.models = settings, served

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": list(served), "busy": admitted["n"], "queue": settings.queue}

    @app.get("/v1/models")
    async def list_models():
        return {"models": [m.describe() for m in served.values()],
                "limits": {k: v for k, v in asdict(settings).items() if k != "threads"}}

    @app.post("/v1/predict", responses={200: {"description": "JSON summary with the label map as a base64 PNG, "
                                                              "or the PNG itself with ?format=png"}})
    async def predict(request: Request):
        """Multipart form: ``image`` (PNG/JPEG/... file), ``model`` (a loaded name; default the first), ``crf``,
        ``dae``, ``tta`` (booleans). Query ``format=png`` returns the label PNG with the summary in the
        ``X-Structseg-Summary`` header instead of JSON."""
        unknown_q = sorted(set(request.query_params) - {"format"})
        if unknown_q:
            raise ApiError(400, f"unknown query parameter(s) {unknown_q}; expected format")
        fmt = request.query_params.get("format", "json")
        if fmt not in ("json", "png"):
            raise ApiError(400, f"format {fmt!r}; expected json or png")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"upload of {int(declared)} bytes; at most {limit} bytes are accepted")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"upload larger than {limit} bytes")
            chunks.append(chunk)
        fields = parse_multipart(b"".join(chunks), request.headers.get("content-type", ""))
        unknown = sorted(set(fields) - {"image", *OPTIONS})
        if unknown:
            raise ApiError(400, f"unknown option(s) {unknown}; expected image, {', '.join(OPTIONS)}")
        if "image" not in fields:
            raise ApiError(400, "no 'image' field in the form")
        opts = {k: fields[k][1].decode("utf-8", "replace") for k in OPTIONS if k in fields}
        name = opts.get("model", names[0])
        if name not in served:
            raise ApiError(404, f"model {name!r} is not loaded; loaded: {', '.join(served)}")
        model = served[name]
        crf, dae, tta = (_flag(k, opts.get(k, "false")) for k in ("crf", "dae", "tta"))
        if dae and model.dae is None:
            raise ApiError(400, f"model {name!r} has no DAE; 'dae' is available for "
                           f"{[n for n, m in served.items() if m.dae] or 'no loaded model'}")
        if dae and tta:
            raise ApiError(400, "'dae' and 'tta' cannot be combined")
        filename, data = fields["image"]
        what = f"upload {filename!r}" if filename else "upload"
        try:
            image = decode_image_bytes(data, what, settings.max_pixels)
        except ImageTooLargeError as e:
            raise ApiError(413, str(e)) from None
        except DataError as e:
            raise ApiError(422, str(e)) from None
        h, w = image.shape[:2]
        if min(h, w) < settings.min_side:
            raise ApiError(422, f"{what}: {w}x{h} image; at least {settings.min_side}x{settings.min_side} pixels "
                           "are needed")
        slide = h * w > settings.slide_above and not dae
        if admitted["n"] >= settings.queue:
            raise ApiError(503, f"server busy: {admitted['n']} requests are running or waiting (queue limit "
                           f"{settings.queue}); retry later")
        admitted["n"] += 1
        try:
            start = time.perf_counter()
            loop = asyncio.get_running_loop()
            label = await loop.run_in_executor(executor, model.labels, image, crf, dae, tta, slide)
            elapsed = time.perf_counter() - start
        except StructsegError as e:
            raise ApiError(422, str(e)) from None
        finally:
            admitted["n"] -= 1
        counts = np.bincount(label.ravel(), minlength=model.classes.num_classes)
        summary = {"model": name, "width": w, "height": h, "time_ms": round(1000 * elapsed, 1),
                   "options": {"crf": crf, "dae": dae, "tta": tta, "mode": "slide" if slide else "whole"},
                   "shares": {n: round(float(c) / label.size, 6) for n, c in zip(model.classes.names, counts)}}
        png = label_png(label, model.classes.palette)
        if fmt == "png":
            return Response(png, media_type="image/png", headers={"X-Structseg-Summary": json.dumps(summary)})
        return {**summary, "label_png": base64.b64encode(png).decode("ascii")}

    return app


def serve(models: list[str] | None, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None) -> None:
    """Load the models and serve until interrupted (uvicorn)."""
    try:
        import uvicorn
    except ImportError:
        raise StructsegError('structseg serve needs FastAPI and uvicorn: pip install -e ".[serve]"') from None
    app = create_app(models, settings)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}, reachable from other machines; the API has no authentication")
    print(f"serving {', '.join(app.state.models)} on http://{host}:{port}/ (API: /v1/predict, schema: /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
