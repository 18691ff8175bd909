"""Slimming benchmark: params, GFLOPs and slim time for YOLO26 n..x (and any other YAML/checkpoint given).

Usage:
    python benchmarks/slim.py                      # yolo26n..x at ratio 0.3, rules yolo26
    python benchmarks/slim.py --models yolo26n.yaml yolo11n.yaml --ratios 0.3 0.5 --rules none --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from yoloprune.offline import use_offline

use_offline()

from tqdm import tqdm  # noqa: E402

from yoloprune import Slimmer  # noqa: E402

DEFAULT_MODELS = ["yolo26n.yaml", "yolo26s.yaml", "yolo26m.yaml", "yolo26l.yaml", "yolo26x.yaml"]


def bench(models: list[str], ratios: list[float], rules: str, importance: str, round_to: int, imgsz: int) -> list[dict]:
    rows = []
    for model in tqdm(models, desc="models"):
        for ratio in ratios:
            s = Slimmer(model, ratio=ratio, rules=rules, importance=importance, round_to=round_to, imgsz=imgsz)
            t0 = time.perf_counter()
            s.slim()
            wall = time.perf_counter() - t0
            r = s.report
            rows.append({
                "model": model, "ratio": ratio, "rules": rules, "importance": importance, "round_to": round_to,
                "params_before": r.before["params"], "params_after": r.after["params"],
                "gflops_before": r.before["gflops"], "gflops_after": r.after["gflops"],
                "slim_s": round(wall, 2), "kinds": r.kind_summary(),
            })
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'model':<16}{'ratio':>6}{'params':>22}{'kept':>7}{'GFLOPs':>20}{'kept':>7}{'slim s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        p = f"{r['params_before'] / 1e6:.2f}M -> {r['params_after'] / 1e6:.2f}M"
        g = f"{r['gflops_before']:.1f} -> {r['gflops_after']:.1f}"
        lines.append(f"{r['model']:<16}{r['ratio']:>6}{p:>22}{r['params_after'] / r['params_before']:>7.1%}"
                     f"{g:>20}{r['gflops_after'] / r['gflops_before']:>7.1%}{r['slim_s']:>8.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.3])
    ap.add_argument("--rules", default="yolo26")
    ap.add_argument("--importance", default="l1")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--json", help="write the rows as JSON here")
    a = ap.parse_args()
    rows = bench(a.models, a.ratios, a.rules, a.importance, a.round_to, a.imgsz)
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
