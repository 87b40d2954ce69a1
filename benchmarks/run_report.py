"""Summarise a training run and its evaluation as the markdown used in docs/benchmarks.md.

    python benchmarks/run_report.py RUN_DIR EVAL_DIR

RUN_DIR holds metrics.jsonl and config.yaml (from ``structseg train``); EVAL_DIR holds the
metrics.json of ``structseg eval RUN_DIR/best.pt ... --out EVAL_DIR``. Wall time runs from the
first epoch's start to the last checkpoint's write; when the run was stopped and resumed (a gap
between epochs of more than 10 minutes beyond the epoch itself), the time it stood still is left out and said.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("eval")
    a = ap.parse_args()
    run, ev = Path(a.run), Path(a.eval)
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    m = json.loads((ev / "metrics.json").read_text())
    times = [r["epoch_time_s"] for r in recs]
    pauses = 0.0
    if all("started" in r for r in recs):  # per-epoch start times: the wall clock without the pauses
        wall = (run / "last.pt").stat().st_mtime - recs[0]["started"]
        for a, b in zip(recs, recs[1:]):
            idle = b["started"] - a["started"] - a["epoch_time_s"]
            if idle > 600:
                pauses += idle
        wall -= pauses
    else:
        wall = (run / "last.pt").stat().st_mtime - (run / "config.yaml").stat().st_mtime
    vals = [r for r in recs if "val" in r]
    best = max(vals, key=lambda r: r["val"]["miou"])
    print(f"- epochs: {len(recs)}; best val mIoU during training {best['val']['miou']:.4f} at epoch {best['epoch']}")
    paused = f" (stopped and resumed: {pauses / 60:.0f} min standing still left out)" if pauses else ""
    print(f"- wall time (start to last checkpoint): {wall / 60:.1f} min{paused}; median epoch {statistics.median(times):.1f} s, "
          f"fastest {min(times):.1f} s, slowest {max(times):.1f} s; sum of epoch times {sum(times) / 60:.1f} min")
    print(f"- evaluation of best.pt on {m['split']} ({m['num_images']} images): mIoU {m['miou']:.4f}, "
          f"mean class accuracy {m['mean_acc']:.4f}, pixel accuracy {m['pixel_acc']:.4f}\n")
    print("| " + " | ".join(m["per_class_iou"]) + " |")
    print("|" + "---|" * len(m["per_class_iou"]))
    print("| " + " | ".join(f"{100 * v:.1f}" if v is not None else "n/a" for v in m["per_class_iou"].values()) + " |")


if __name__ == "__main__":
    main()
