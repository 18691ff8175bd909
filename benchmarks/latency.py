"""Latency benchmark: measured ONNX Runtime speed-up of slim models against their deploy MACs.

Sweeps ratio x round_to x allocation (uniform, shortcut rules) and the latency-aware target search, exports every
model to ONNX (parity-checked), then times them all in one interleaved run against the base. Prints deploy GMACs
(counted from the ONNX graph: BatchNorm fused, one head), params, median ms, speed-up, MAC reduction and
speed-up / MAC reduction; writes JSON and a PNG of speed-up vs GMACs.

Usage:
    python benchmarks/latency.py --threads 2                       # yolo26n at 640, the README table
    python benchmarks/latency.py --model yolo26s.yaml --ratios 0.3 0.5 --round-to 16 --targets 2.0
    python benchmarks/latency.py --json results/latency.json --png results/latency.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from yoloprune.offline import use_offline

use_offline()

from tqdm import tqdm  # noqa: E402

from yoloprune import Slimmer  # noqa: E402
from yoloprune.checkpoint import load_model, save_checkpoint  # noqa: E402
from yoloprune.deploy.bench import bench  # noqa: E402
from yoloprune.deploy.export import export  # noqa: E402
from yoloprune.deploy.runtime import onnx_cost  # noqa: E402
from yoloprune.errors import UserError  # noqa: E402
from yoloprune.slim.target import TargetSlimmer  # noqa: E402

STRATEGIES = {"uniform": "none", "rules": "yolo26"}


def run(model: str, imgsz: int, threads: int | None, ratios, round_tos, targets, runs: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="yoloprune-latency-"))
    try:
        loaded = load_model(model)
        base_pt = save_checkpoint(loaded.model, work / "base.pt", loaded)
        points = [{"name": "base", "strategy": "base", "ratio": None, "round_to": None, "pt": base_pt}]
        for strategy, rules in STRATEGIES.items():
            for rt in round_tos:
                for r in ratios:
                    pt = work / f"{strategy}-{r}-{rt}.pt"
                    Slimmer(base_pt, ratio=r, rules=rules, round_to=rt, imgsz=imgsz).save(pt)
                    points.append({"name": f"{strategy} r{r} /{rt}", "strategy": strategy, "ratio": r, "round_to": rt,
                                   "pt": pt})
        unreached = []
        for s in tqdm(targets, desc="target searches"):
            t = TargetSlimmer(base_pt, speedup=s, imgsz=imgsz, threads=threads, progress=False, allocation="latency")
            pt = work / f"target-{s}.pt"
            try:
                t.search().save(pt)
            except UserError as e:  # out of reach: say so in the results
                unreached.append(str(e))
                continue
            points.append({"name": f"latency {s}x", "strategy": "latency", "ratio": None, "round_to": 16, "pt": pt,
                           "target": s, "search_reached": t.result.reached})
        for p in tqdm(points, desc="export"):
            p["onnx"] = export(str(p["pt"]), imgsz=imgsz, output=work / f"{Path(p['pt']).stem}.onnx", verbose=False).path
            p.update(onnx_cost(p["onnx"]))
        res = bench([p["onnx"] for p in points], imgsz=imgsz, threads=threads, runs=runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for p, row in zip(points, res.rows):
        macs_red = points[0]["macs"] / p["macs"]
        rows.append({k: v for k, v in p.items() if k not in ("pt", "onnx")} | {
            "gmacs": round(p["macs"] / 1e9, 3), "median_ms": round(row.median_ms, 2), "p10_ms": round(row.p10_ms, 2),
            "p90_ms": round(row.p90_ms, 2), "speedup": round(row.speedup, 3), "mac_reduction": round(macs_red, 3),
            "speedup_per_mac_reduction": round(row.speedup / macs_red, 3)})
    return {"model": model, "imgsz": imgsz, "threads": res.threads, "runs": runs, "machine": res.machine, "rows": rows,
            "unreached": unreached}


def table(result: dict) -> str:
    lines = [f"{result['model']} at {result['imgsz']}, onnxruntime CPU, {result['threads']} threads, "
             f"median of {result['runs']} interleaved runs ({result['machine']})",
             f"{'model':<18} {'GMACs':>6} {'params':>10} {'ms':>7} {'speed-up':>8} {'MACs /':>7} {'speed-up/':>10}",
             f"{'':<18} {'':>6} {'':>10} {'':>7} {'':>8} {'fewer':>7} {'MAC red.':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['name']:<18} {r['gmacs']:>6.2f} {r['params']:>10,} {r['median_ms']:>7.2f} {r['speedup']:>7.2f}x "
                     f"{r['mac_reduction']:>6.2f}x {r['speedup_per_mac_reduction']:>10.2f}")
    lines += [f"not reached: {m}" for m in result.get("unreached", [])]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in ("base", *STRATEGIES, "latency"):
        rows = [r for r in result["rows"] if r["strategy"] == strategy]
        for rt in sorted({r["round_to"] for r in rows}, key=lambda v: v or 0):
            sel = sorted((r for r in rows if r["round_to"] == rt), key=lambda r: r["gmacs"])
            label = strategy if rt is None else f"{strategy} (round_to {rt})"
            ax.plot([r["gmacs"] for r in sel], [r["speedup"] for r in sel], "o-", label=label)
    base = result["rows"][0]["gmacs"]
    xs = sorted(r["gmacs"] for r in result["rows"])
    ax.plot(xs, [base / x for x in xs], "k--", lw=0.8, label="speed-up = MAC reduction")
    ax.set_xlabel("deploy GMACs (ONNX graph)")
    ax.set_ylabel("measured ONNX Runtime speed-up")
    ax.set_title(f"{result['model']} at {result['imgsz']}, {result['threads']} threads")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolo26n.yaml")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: every core)")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    ap.add_argument("--round-to", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--targets", type=float, nargs="*", default=[1.5, 2.0, 2.5], help="latency-aware target speed-ups")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--png", help="write the speed-up vs GMACs plot here")
    a = ap.parse_args()
    result = run(a.model, a.imgsz, a.threads, a.ratios, a.round_to, a.targets, a.runs)
    print(table(result))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2, default=str))
    if a.png:
        Path(a.png).parent.mkdir(parents=True, exist_ok=True)
        plot(result, a.png)


if __name__ == "__main__":
    main()
