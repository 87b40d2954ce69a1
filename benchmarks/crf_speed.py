"""Dense-CRF speed and agreement: structseg's pure-PyTorch lattice vs pydensecrf on the same input.

Input: a real CamVid frame (480x360, and the same frame upscaled to 960x720) and a simulated
network output, softmax(4 * onehot(label) + N(0, 1) + 1.5 * smooth noise), with C classes (``--classes``;
CamVid's 11 labels folded modulo C below 11, noise-only channels added above); Krähenbühl's settings
(smoothness 3/3, appearance 10/80/13). ``--batch N`` adds a batched case: N frames (the frame and its
mirror images, alternating) in one call of ours against N pydensecrf calls.
Both sides are timed end to end: unary from probabilities, lattice construction, N mean-field
iterations, argmax. Reported: median of --repeats runs (after three warm-up runs; ours and
pydensecrf alternate run by run), the share of identical labels, and forward+backward time of our CRF (gradient w.r.t. the unaries).
Before every timed block the script waits until the machine is idle (< 10 % busy).

    pip install -e ".[bench]"        # pydensecrf2, the reference
    python benchmarks/crf_speed.py [--repeats 5] [--classes 2,3,8,11,16,21,32,59,150] [--iterations 5]
        [--threads 1] [--batch 8] [--no-backward] [--device cpu|cuda] [--json out.json]
    python benchmarks/crf_speed.py --memory [--scales 1,2] [--classes 21]

``--memory`` instead measures the peak memory of one call (5 iterations, labels out) of each side, each in a
fresh process: the rise of the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` after
the input is made and one warm-up call at another size has loaded the libraries) over the resident set before the call.

``--device cuda`` times the GPU path on the device and from host arrays (copies in, labels out), beside
structseg's CPU path on the same machine at ``--threads`` (the crossover: from which size the GPU wins), with
the share of identical labels between the two and the GPU's peak memory of one call; pydensecrf is not run.
``--camvid DIR`` reads the frame from another folder (e.g. the device kit's, ``benchmarks/gpu_kit``).

The CPU model and its vector extensions are printed first.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from structseg._io import load_image, load_label
from structseg.engine.metrics import class_map
from structseg.structured.dense_crf import (
    CRFParams,
    mean_field,
    softmax_rows,
    unary_from_probabilities,
)

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"
FRAME = "val/0016E5_07959.png"


def cpu_busy(interval: float = 0.5) -> float:
    def snap():
        vals = list(map(int, open("/proc/stat").readline().split()[1:]))
        return sum(vals), vals[3] + vals[4]
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(threshold: float = 0.10, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end and cpu_busy() > threshold:
        pass


def make_input(scale: float, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame resized by ``scale`` (bicubic; labels nearest), and C-class probabilities simulated on it."""
    image = load_image(CAMVID / FRAME)
    label = load_label(CAMVID / FRAME.replace("val/", "valannot/"))
    if scale != 1:
        from PIL import Image
        h, w = label.shape
        size = (round(w * scale), round(h * scale))
        image = np.array(Image.fromarray(image).resize(size, Image.BICUBIC))
        label = np.array(Image.fromarray(label).resize(size, Image.NEAREST))
    h, w = label.shape
    g = torch.Generator().manual_seed(seed)
    lab = torch.from_numpy(label.astype(np.int64))
    boost = F.one_hot(lab.clamp(max=10) % classes, classes).permute(2, 0, 1).float() * 4 * (lab < 11)
    r = max(1, round(4 * scale))  # smooth-noise radius follows the image size (4 px at 480x360)
    smooth = F.avg_pool2d(torch.randn(1, classes, h, w, generator=g), 2 * r + 1, 1, r)[0]
    smooth = smooth / smooth.std()
    logits = boost + torch.randn(classes, h, w, generator=g) + 1.5 * smooth
    return image, torch.softmax(logits, 0).numpy().astype(np.float32), np.where(label < 11, label % classes, 255)


def cpu_description() -> str:
    """The CPU's model name and the vector extensions that decide PyTorch's kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16"]
    have = [f for f in wanted if f in flags]
    return f"{model}; {', '.join(have) or 'no x86 vector flags read'}; torch CPU capability " \
           f"{torch.backends.cpu.get_cpu_capability()}"


def run_pydensecrf_batch(images, probs_list, it, p: CRFParams):
    return [run_pydensecrf(im, pr, it, p) for im, pr in zip(images, probs_list)]


def run_pydensecrf(image, probs, it, p: CRFParams):
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax
    c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=p.smoothness_xy, compat=p.smoothness_weight)
    d.addPairwiseBilateral(sxy=p.appearance_xy, srgb=p.appearance_rgb, rgbim=image, compat=p.appearance_weight)
    q = np.array(d.inference(it)).reshape(c, h, w)
    return q.argmax(0)


def run_ours_all(image_t, probs_t, it, p: CRFParams):
    """Label maps ``(B, H, W)`` of a batch of frames in one call."""
    with torch.no_grad():
        q = mean_field(unary_from_probabilities(probs_t), image_t, p)
    return class_map(q).cpu().numpy()


def run_ours_backward(image_t, probs_t, it, p: CRFParams):
    u = unary_from_probabilities(probs_t).requires_grad_(True)
    q = mean_field(u, image_t, p)
    q.square().sum().backward()
    return u.grad


def timed(fns: dict, repeats: int, sync=lambda: None, idle: bool = True) -> dict:
    """Median seconds and last output of each function, the functions interleaved run by run (the
    machine's speed drifts, so alternating keeps the comparison fair); ``idle``: wait for an idle CPU first."""
    for fn in fns.values():
        for _ in range(3):  # warm-up: steady use (fills the position-lattice cache; the allocator's pools grow)
            fn()
    times = {k: [] for k in fns}
    outs = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            if idle:
                wait_idle()
            t = time.perf_counter()
            outs[k] = fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), outs[k]) for k, v in times.items()}


def breakdown(image_t, probs_t, p: CRFParams, repeats: int, sync=lambda: None) -> dict:
    """Milliseconds per stage of our CRF (no grad): where the end-to-end time goes."""
    from structseg.structured.dense_crf import (
        GaussianKernel,
        MessageOperator,
        _Block,
        appearance_features,
        position_block,
        position_features,
    )
    from structseg.structured.lattice import PermutohedralLattice
    _, c, h, w = probs_t.shape
    u = unary_from_probabilities(probs_t)
    uu = u.permute(0, 2, 3, 1).reshape(h * w, c).contiguous()
    smooth = position_block(h, w, p.smoothness_xy, probs_t.device)
    appear = _Block(GaussianKernel(appearance_features(image_t, p.appearance_xy, p.appearance_rgb)))
    op = MessageOperator(smooth, appear, 1)
    q = softmax_rows(-uu)
    stages = {
        "unary from probabilities": lambda: unary_from_probabilities(probs_t),
        "appearance lattice alone": lambda: PermutohedralLattice(
            appearance_features(image_t, p.appearance_xy, p.appearance_rgb)),
        "appearance lattice + normaliser": lambda: GaussianKernel(
            appearance_features(image_t, p.appearance_xy, p.appearance_rgb)),
        "position lattice, uncached": lambda: _Block(GaussianKernel(
            position_features(h, w, p.smoothness_xy, probs_t.device))),
        "splat/slice operators of both kernels": lambda: MessageOperator(smooth, _Block(
            GaussianKernel(appearance_features(image_t, p.appearance_xy, p.appearance_rgb))), 1),
        "one iteration: message": lambda: op(q, (p.smoothness_weight, p.appearance_weight)),
        "one iteration: softmax(message - unary)": lambda: softmax_rows(uu - q),
        "label map: argmax(1)": lambda: probs_t.argmax(1),
        "label map: max(1).indices (class_map)": lambda: class_map(probs_t),
    }
    ms = {}
    with torch.no_grad():
        for name, fn in stages.items():  # back to back after one idle wait: the stages are too short to
            wait_idle()                   # start each from an idle (cold) machine
            for _ in range(3):
                fn()
            times = []
            for _ in range(max(repeats, 5)):
                sync()
                t = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t)
            ms[name] = 1000 * statistics.median(times)
    ms["splat/slice operators of both kernels"] -= ms["appearance lattice + normaliser"]
    return ms


def _rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(side: str, scale: int, classes: int) -> None:
    """One call of ``side`` (ours / pydensecrf) on a fresh process; prints its peak memory rise in MiB."""
    p = CRFParams(iterations=5)
    warm_img, warm_probs, _ = make_input(1, 2)  # load the libraries and their pools on a small input first
    image, probs, _ = make_input(scale, classes)
    tensors = (torch.from_numpy(image).permute(2, 0, 1)[None].float(), torch.from_numpy(probs)[None])
    if side == "ours":
        run_ours_all(torch.from_numpy(warm_img).permute(2, 0, 1)[None, :, :32, :32].float().contiguous(),
                     torch.from_numpy(warm_probs)[None, :, :32, :32].contiguous(), 5, p)
        call = lambda: run_ours_all(*tensors, 5, p)
    else:
        run_pydensecrf(np.ascontiguousarray(warm_img[:32, :32]), np.ascontiguousarray(warm_probs[:, :32, :32]), 5, p)
        call = lambda: run_pydensecrf(image, probs, 5, p)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = _rss_kib("VmRSS")
    call()
    print(json.dumps({"side": side, "peak_rise_mib": (_rss_kib("VmHWM") - before) / 1024}))


def memory_table(scales: list[int], classes: list[int], threads: int) -> None:
    import subprocess
    import sys
    print("| size | C | pydensecrf peak MiB | structseg peak MiB |\n|---|---|---|---|")
    for scale in scales:
        for c in classes:
            got = {}
            for side in ("pydensecrf", "ours"):
                cmd = [sys.executable, __file__, "--memory-child", side, "--camvid", str(CAMVID),
                       "--scales", str(scale), "--classes", str(c), "--threads", str(threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                got[side] = json.loads(out.strip().splitlines()[-1])["peak_rise_mib"]
            print(f"| {480 * scale}x{360 * scale} | {c} | {got['pydensecrf']:.0f} | {got['ours']:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--json", help="also write the rows as JSON")
    ap.add_argument("--scales", default="1,2", help="frame size factors: 1: 480x360, 2: 960x720, 0.25: 120x90 (comma-separated)")
    ap.add_argument("--breakdown", action="store_true", help="also time each stage of our CRF (per size and C)")
    ap.add_argument("--classes", default="11,21", help="class counts (comma-separated)")
    ap.add_argument("--iterations", default="5,10", help="mean-field iteration counts (comma-separated)")
    ap.add_argument("--batch", type=int, default=0, help="also time N frames per call against N pydensecrf calls")
    ap.add_argument("--no-backward", action="store_true", help="skip the forward+backward timing")
    ap.add_argument("--memory", action="store_true", help="peak memory of one call of each side instead of times")
    ap.add_argument("--camvid", type=Path, default=None,
                    help=f"the CamVid folder holding {FRAME} and its valannot/ label (default: ../shared/data/camvid)")
    ap.add_argument("--memory-child", choices=("ours", "pydensecrf"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    global CAMVID
    CAMVID = a.camvid or CAMVID
    if not (CAMVID / FRAME).is_file():
        ap.error(f"{CAMVID / FRAME} not found: --camvid names the CamVid folder in the unified layout")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.memory_child:
        return memory_child(a.memory_child, int(a.scales.split(",")[0]), int(a.classes.split(",")[0]))
    if a.memory:
        print(f"CPU: {cpu_description()}", flush=True)
        return memory_table([int(x) for x in a.scales.split(",")], [int(x) for x in a.classes.split(",")],
                            a.threads or torch.get_num_threads())
    print(f"CPU: {cpu_description()}", flush=True)
    device = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}", flush=True)
    have_ref = importlib.util.find_spec("pydensecrf") is not None and device.type == "cpu"
    if not have_ref:
        print("pydensecrf not installed (pip install -e '.[bench]') or not on CPU: timing structseg only")
    rows = []
    for scale in map(float, a.scales.split(",")):
        for classes in map(int, a.classes.split(",")):
            image, probs, label = make_input(scale, classes)
            image_t = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device)
            probs_t = torch.from_numpy(probs)[None].to(device)
            if a.breakdown:
                p = CRFParams()
                ms = breakdown(image_t, probs_t, p, a.repeats, sync)
                print(json.dumps({"size": f"{image.shape[1]}x{image.shape[0]}", "classes": classes,
                                  "stage_ms": {k: round(v, 1) for k, v in ms.items()}}), flush=True)
            cases = [(1, image_t, probs_t)]
            if a.batch > 1:
                imgs = [image if i % 2 == 0 else np.ascontiguousarray(image[:, ::-1]) for i in range(a.batch)]
                prbs = [probs if i % 2 == 0 else np.ascontiguousarray(probs[:, :, ::-1]) for i in range(a.batch)]
                cases.append((a.batch, torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().to(device),
                              torch.from_numpy(np.stack(prbs)).to(device)))
            for it in map(int, a.iterations.split(",")):
                p = CRFParams(iterations=it)
                for n, im_t, pr_t in cases:
                    fns = {"ours": lambda: run_ours_all(im_t, pr_t, it, p)}
                    if device.type == "cuda":  # from host arrays: the copies in and the labels out included
                        im_h, pr_h = im_t.cpu().pin_memory(), pr_t.cpu().pin_memory()
                        fns["host"] = lambda: run_ours_all(im_h.to(device), pr_h.to(device), it, p)
                        im_c, pr_c = im_t.cpu(), pr_t.cpu()  # the CPU path on the same machine: the crossover
                        fns["cpu"] = lambda: run_ours_all(im_c, pr_c, it, p)
                    if not a.no_backward and n == 1:
                        fns["bwd"] = lambda: run_ours_backward(im_t, pr_t, it, p)
                    if have_ref:
                        fns["ref"] = (lambda: run_pydensecrf(image, probs, it, p)) if n == 1 else \
                            (lambda: run_pydensecrf_batch(imgs, prbs, it, p))
                    res = timed(fns, a.repeats, sync, idle=device.type == "cpu")
                    t_ours, ours = res["ours"]
                    row = {"size": f"{image.shape[1]}x{image.shape[0]}", "batch": n, "classes": classes,
                           "iterations": it, "ours_ms": 1000 * t_ours}
                    if "bwd" in res:
                        row["ours_fwd_bwd_ms"] = 1000 * res["bwd"][0]
                    if "host" in res:  # the same call on the CPU path: do the two devices agree?
                        row["ours_from_host_ms"] = 1000 * res["host"][0]
                        row["cpu_path_ms"] = 1000 * res["cpu"][0]
                        torch.cuda.synchronize()
                        before = torch.cuda.memory_allocated(device)
                        torch.cuda.reset_peak_memory_stats(device)
                        run_ours_all(im_t, pr_t, it, p)
                        row["gpu_peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
                        row["identical_to_cpu"] = float((res["cpu"][1] == ours).mean())
                    if have_ref:
                        t_ref, ref = res["ref"]
                        ref = np.stack(ref) if n > 1 else ref[None]
                        row |= {"pydensecrf_ms": 1000 * t_ref, "speedup": t_ref / t_ours,
                                "identical_labels": float((ref == ours).mean())}
                    valid = label < 255
                    row["pixel_acc_unary"] = float((probs.argmax(0) == label)[valid].mean())
                    row["pixel_acc_crf"] = float((ours[0] == label)[valid].mean())
                    rows.append(row)
                    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                          flush=True)
    print(f"\nmachine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {device}; median of {a.repeats}")
    if device.type == "cuda":
        print(f"| size | batch | C | it | GPU ms (on device) | GPU ms (from host arrays) | CPU path ms "
              f"({torch.get_num_threads()} threads) | CPU / GPU from host | identical to CPU path | "
              "GPU fwd+bwd ms | GPU peak MiB |\n|" + "---|" * 11)
        for r in rows:
            bwd = f"{r['ours_fwd_bwd_ms']:.1f}" if "ours_fwd_bwd_ms" in r else "-"
            print(f"| {r['size']} | {r['batch']} | {r['classes']} | {r['iterations']} | {r['ours_ms']:.1f} | "
                  f"{r['ours_from_host_ms']:.1f} | {r['cpu_path_ms']:.1f} | "
                  f"{r['cpu_path_ms'] / r['ours_from_host_ms']:.2f}x | {100 * r['identical_to_cpu']:.3f} % | {bwd} | "
                  f"{r['gpu_peak_mib']:.0f} |")
        rows_table = []
    else:
        rows_table = rows
    head = "| size | batch | C | it | pydensecrf ms | structseg ms | speed-up | identical labels | structseg fwd+bwd ms |"
    if rows_table:
        print(head + "\n|" + "---|" * 9)
    for r in rows_table:
        ref = f"{r['pydensecrf_ms']:.0f}" if "pydensecrf_ms" in r else "-"
        sp = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        same = f"{100 * r['identical_labels']:.3f} %" if "identical_labels" in r else "-"
        bwd = f"{r['ours_fwd_bwd_ms']:.0f}" if "ours_fwd_bwd_ms" in r else "-"
        print(f"| {r['size']} | {r['batch']} | {r['classes']} | {r['iterations']} | {ref} | {r['ours_ms']:.0f} | {sp} | "
              f"{same} | {bwd} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
