"""Load on ``structseg serve``: a bounded number of concurrent clients on localhost for a bounded time.

    pip install -e ".[serve]"
    python benchmarks/serve_load.py [--model camvid-lite2-fpn] [--image ../shared/data/camvid/...png]
        [--clients 4] [--seconds 30] [--queue 8] [--threads 2] [--crf both]

The server runs in its own process (``structseg serve MODEL --port P --queue Q --threads T``); each client
posts the same image in a loop (multipart, as ``curl -F`` does) and waits for the answer before the next.
Reported per case (plain, and with the dense CRF): requests/s, p50/p95/p99 latency, the answers by
status (200s, 503s from a full queue, anything else counted as errors), and the server process's peak
resident memory (``VmHWM`` from ``/proc``). With ``clients <= queue`` every request is admitted, so
errors and 503s must be 0.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def multipart(image: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="load.png"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else float("nan")


def run_case(url: str, image: bytes, fields: dict[str, str], clients: int, seconds: float) -> dict:
    body, ctype = multipart(image, fields)
    latencies: list[float] = []
    status: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client():
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            req = urllib.request.Request(f"{url}/v1/predict", data=body, headers={"Content-Type": ctype})
            try:
                with urllib.request.urlopen(req, timeout=300) as r:
                    r.read()
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
            except OSError:
                code = -1
            dt = time.perf_counter() - t0
            with lock:
                status[str(code)] = status.get(str(code), 0) + 1
                if code == 200:
                    latencies.append(dt)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = status.get("200", 0)
    return {"requests": sum(status.values()), "ok": ok, "busy_503": status.get("503", 0),
            "errors": sum(v for k, v in status.items() if k not in ("200", "503")),
            "req_per_s": ok / wall, "p50_ms": 1000 * percentile(latencies, 0.5),
            "p95_ms": 1000 * percentile(latencies, 0.95), "p99_ms": 1000 * percentile(latencies, 0.99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="camvid-lite2-fpn")
    ap.add_argument("--image", help="image to post (default: the first CamVid val image in ../shared/data)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crf", choices=("off", "on", "both"), default="both")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    if a.image is None:
        root = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
        a.image = str(root / (root / "val.txt").read_text().split()[0])
    image = Path(a.image).read_bytes()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "structseg", "serve", a.model, "--port", str(port),
                               "--queue", str(a.queue), "--threads", str(a.threads)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.5)
        run_case(url, image, {"model": a.model}, 1, 2)  # warm-up
        print(f"# {a.model}, {Path(a.image).name}, {a.clients} clients for {a.seconds:g} s, queue {a.queue}, "
              f"{a.threads} inference threads")
        print("| case | requests | ok | 503 | errors | req/s | p50 ms | p95 ms | p99 ms | server peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        rows = []
        for crf in ({"off": [False], "on": [True], "both": [False, True]}[a.crf]):
            r = run_case(url, image, {"model": a.model, "crf": str(crf).lower()}, a.clients, a.seconds)
            r.update(case="CRF on" if crf else "plain", peak_rss_mib=peak_rss_mib(server.pid))
            rows.append(r)
            print(f"| {r['case']} | {r['requests']} | {r['ok']} | {r['busy_503']} | {r['errors']} | {r['req_per_s']:.2f} "
                  f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['peak_rss_mib']:.0f} |", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
