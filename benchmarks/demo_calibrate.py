"""Should the demo calibrate? Its two ways on one base, each fine-tuned over training seeds, timed side by side.

The base is slimmed to the demo's measured speed-up two ways: `default` (no calibration data: `l1` scores, carried-over
BatchNorm statistics, the `rules` allocation: the demo without `--calibrate`) and `calibrate` (the training split as
calibration data: `taylor` scores, judged BatchNorm recalibration, the `sensitivity` allocation at its default max
ratio: the demo with `--calibrate`). Each cut is validated right away (Ultralytics' validator) and fine-tuned as the
demo fine-tunes (`--epochs` epochs with distillation from the base, `Recipe.finetune()`, precise BatchNorm), once per
training seed; then base and both cuts are timed side by side on ONNX Runtime. `--cuts` measures cuts made elsewhere
(the demo's own `slim.pt`) instead of searching them here. Resumable: every finished step is saved into `--json`.

    yoloprune demo --quick --out demo          # a base and data (any trained base and data.yaml will do)
    python benchmarks/demo_calibrate.py --base demo/base/weights/best.pt --data demo/shapes/data.yaml \\
        --json benchmarks/results/demo_calibrate.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from yoloprune.offline import use_offline  # noqa: E402

use_offline(ROOT / "cache" / "config")

from common import State  # noqa: E402

WAYS = ("default", "calibrate")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="trained base .pt")
    p.add_argument("--data", required=True, help="its data.yaml")
    p.add_argument("--imgsz", type=int, default=128, help="training / calibration / validation size (default 128)")
    p.add_argument("--speedup", type=float, default=2.0, help="measured ONNX Runtime speed-up (default 2)")
    p.add_argument("--deploy-imgsz", type=int, default=640, help="latency size (default 640)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: every core)")
    p.add_argument("--epochs", type=int, default=5, help="fine-tune epochs with distillation (default 5: demo --quick)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds of the fine-tunes (default 0,1,2)")
    p.add_argument("--cuts", default="", help="WAY=PATH,...: a cut made elsewhere for a way (e.g. the demo's slim.pt)")
    p.add_argument("--work", default=str(ROOT / "cache" / "demo_calibrate"), help="cuts and runs (kept)")
    p.add_argument("--json", required=True, help="results (read back to resume)")
    a = p.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
        given = dict(kv.split("=", 1) for kv in a.cuts.split(",") if kv)
    except ValueError:
        p.error("--seeds takes whole numbers and --cuts WAY=PATH pairs, both comma-separated")
    if set(given) - set(WAYS) or not all(Path(v).is_file() for v in given.values()):
        p.error(f"--cuts: ways are {' and '.join(WAYS)}, each with an existing .pt")

    from tqdm import tqdm

    from yoloprune.deploy.bench import bench
    from yoloprune.pipeline import Recipe, fingerprint, kd_keys, train_run, validate
    from yoloprune.slim.target import TargetSlimmer

    settings = {"base_sha1": fingerprint(a.base), "data": a.data, "imgsz": a.imgsz, "speedup": a.speedup,
                "deploy_imgsz": a.deploy_imgsz, "epochs": a.epochs}
    state = State(Path(a.json), {"settings": settings, "cuts": {}, "runs": {}})
    if state.data["settings"] != settings:
        p.error(f"{a.json} holds another setting ({state.data['settings']}): pass another --json")
    work = Path(a.work) / settings["base_sha1"][:8]
    work.mkdir(parents=True, exist_ok=True)
    cuts = state.data["cuts"]
    cuts.setdefault("base", {"map50_95": round(validate(a.base, a.data, a.imgsz)[1], 4)})
    for way in WAYS:
        cut = Path(given.get(way, work / f"{way}.pt"))
        if way in cuts and cuts[way]["sha1"] == (fingerprint(cut) if cut.is_file() else None):
            continue
        row = {"from": str(cut)} if way in given else {}
        if way not in given:
            print(f"{way}: searching the cut to a measured {a.speedup:g}x")
            t = TargetSlimmer(a.base, speedup=a.speedup, imgsz=a.deploy_imgsz, threads=a.threads,
                              data=a.data if way == "calibrate" else None)
            t.search().save(cut)
            row.update(allocation=t.allocation, max_ratio=t.max_ratio, searched=round(t.result.reached, 3))
        cuts[way] = {**row, "sha1": fingerprint(cut), "path": str(cut),
                     "map50_95": round(validate(cut, a.data, a.imgsz)[1], 4)}
        for k in [k for k in state.data["runs"] if k.startswith(f"{way}|")]:
            del state.data["runs"][k]  # a new cut forgets the fine-tunes of the old one
        state.save()

    todo = [(w, s) for w in WAYS for s in seeds if f"{w}|{s}" not in state.data["runs"]]
    for way, seed in (bar := tqdm(todo, desc="fine-tunes", unit="run")):
        r = train_run(cuts[way]["path"], a.data, work, f"ft-{way}-{seed}", a.epochs,
                      Recipe(imgsz=a.imgsz, seed=seed).finetune(), verbose=False, precise_bn=True, **kd_keys(a.base))
        state.data["runs"][f"{way}|{seed}"] = round(r.map50_95, 4)
        state.save()
        bar.set_postfix_str(f"{way} seed {seed}: {r.map50_95:.4f}")

    timed = {"sha1": [cuts[w]["sha1"] for w in WAYS], "threads": a.threads}
    if state.data.get("timing", {}).get("of") != timed:
        b = bench([a.base] + [cuts[w]["path"] for w in WAYS], imgsz=a.deploy_imgsz, threads=a.threads)
        print(b.format())
        state.data["timing"] = {"of": timed, "device": b.device, "threads": b.threads,
                                "ms": [round(r.median_ms, 2) for r in b.rows],
                                "speedup": [round(r.speedup, 3) for r in b.rows]}
        state.save()

    base = cuts["base"]["map50_95"]
    lines = [f"{a.epochs} KD epochs, mAP50-95 at {a.imgsz} (base {base}); mean ± half the range over training seeds "
             f"{a.seeds}; ONNX Runtime {state.data['timing']['device']}, {state.data['timing']['threads']} threads, "
             f"{a.deploy_imgsz} px", "| way | measured speed-up | right after the cut | fine-tuned | per seed | "
             "kept of the base |", "|---|---|---|---|---|---|"]
    for i, way in enumerate(WAYS, 1):
        v = [state.data["runs"][f"{way}|{s}"] for s in seeds]
        m = statistics.mean(v)
        lines.append(f"| {way} | {state.data['timing']['speedup'][i]:.2f}x | {cuts[way]['map50_95']} | {m:.4f} ± "
                     f"{(max(v) - min(v)) / 2:.4f} | {', '.join(f'{x:.4f}' for x in v)} | {m / base:.0%} |")
    state.data["table"] = "\n".join(lines)
    state.save()
    print(state.data["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
