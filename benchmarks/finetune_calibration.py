"""Does a calibrated cut still lead after fine-tuning? One base, one ratio, four cuts, the same fine-tune each.

The base is slimmed at `--ratio` (yolo26 rules, `round_to` 16) four ways: `l1` with the carried-over BatchNorm
statistics, `l1` + recalibration, `taylor` without recalibration, `taylor` + recalibration (calibration sample: the
data's training split). Each cut is validated (Ultralytics' validator) and fine-tuned `--epochs` epochs with
distillation from the base by the demo's recipe, once per training seed (data order and augmentation) and once with
and once without precise BatchNorm (`precise_bn`, the EMA's statistics re-estimated and judged at every epoch's end),
then validated again. Without precise BN the fine-tuned model is also validated with its statistics re-estimated
(`re-est`), which separates what the weights learned from what the running averages hold. Resumable: every finished
fine-tune is saved into `--json` at once.

    yoloprune demo --quick --out demo          # a base and data (any trained base and data.yaml will do)
    python benchmarks/finetune_calibration.py --base demo/base/weights/best.pt --data demo/shapes/data.yaml \\
        --json benchmarks/results/finetune_calibration.json
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

CUTS = {"l1": {"importance": "l1"}, "l1+recal": {"importance": "l1", "calibrate": True},
        "taylor": {"importance": "taylor", "calibrate": True, "recalibrate": False},
        "taylor+recal": {"importance": "taylor", "calibrate": True}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="trained base .pt")
    p.add_argument("--data", required=True, help="its data.yaml")
    p.add_argument("--imgsz", type=int, default=128, help="training / calibration / validation size (default 128)")
    p.add_argument("--ratio", type=float, default=0.6, help="ratio of the rules plan (default 0.6: ~2x on yolo26n)")
    p.add_argument("--epochs", type=int, default=5, help="fine-tune epochs with distillation (default 5)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds of the fine-tunes (default 0,1,2)")
    p.add_argument("--work", default=str(ROOT / "cache" / "finetune_calibration"), help="cuts and runs (kept)")
    p.add_argument("--json", required=True, help="results (read back to resume)")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]

    from tqdm import tqdm

    from yoloprune.calibrate import load_calibration
    from yoloprune.calibrate.bn import reestimate_bn
    from yoloprune.checkpoint import load_model, save_checkpoint
    from yoloprune.pipeline import Recipe, fingerprint, kd_keys, train_run, validate
    from yoloprune.slim.slimmer import Slimmer

    settings = {"base_sha1": fingerprint(a.base), "data": a.data, "imgsz": a.imgsz, "ratio": a.ratio,
                "epochs": a.epochs}
    state = State(Path(a.json), {"settings": settings, "cuts": {}, "runs": {}})
    if state.data["settings"] != settings:
        sys.exit(f"{a.json} holds another setting ({state.data['settings']}): pass another --json")
    work = Path(a.work) / settings["base_sha1"][:8]
    work.mkdir(parents=True, exist_ok=True)
    calib = load_calibration(a.data, a.imgsz)
    state.data["cuts"].setdefault("base", {"cut": round(validate(a.base, a.data, a.imgsz)[1], 4)})
    todo = [(c, s, pb) for c in CUTS for s in seeds for pb in (True, False)]
    for name, seed, precise in (bar := tqdm(todo, desc="fine-tunes", unit="run")):
        cut = work / f"{name}.pt"
        if name not in state.data["cuts"] or not cut.is_file():
            kw = dict(CUTS[name])
            s = Slimmer(a.base, ratio=a.ratio, imgsz=a.imgsz, round_to=16, data=calib if kw.pop("calibrate", False)
                        else None, **kw)
            s.save(cut)
            state.data["cuts"][name] = {"cut": round(validate(cut, a.data, a.imgsz)[1], 4),
                                        "recal_kept": (s.report.recalibration or {}).get("kept")}
            state.save()
        key = f"{name}|{seed}|{'precise' if precise else 'averages'}"
        if key in state.data["runs"]:
            continue
        r = train_run(cut, a.data, work, f"ft-{name}-{seed}-{int(precise)}", a.epochs, Recipe(imgsz=a.imgsz, seed=seed),
                      verbose=False, precise_bn=precise, **kd_keys(a.base))
        row = {"finetuned": round(r.map50_95, 4)}
        if not precise:
            tuned = load_model(r.weights)
            reestimate_bn(tuned.model.float(), calib.fit)
            re = save_checkpoint(tuned.model, work / f"{name}-{seed}-re.pt", tuned)
            row["re-est"] = round(validate(re, a.data, a.imgsz)[1], 4)
        state.data["runs"][key] = row
        state.save()
        bar.set_postfix_str(f"{key}: {row}")

    def stat(name, kind, col):
        v = [state.data["runs"][f"{name}|{s}|{kind}"][col] for s in seeds]
        return f"{statistics.mean(v):.3f} ± {(max(v) - min(v)) / 2:.3f}"

    lines = [f"ratio {a.ratio}, {a.epochs} KD epochs, mAP50-95 at {a.imgsz} (base {state.data['cuts']['base']['cut']}); "
             f"mean ± half the range over training seeds {a.seeds}",
             "| cut | right after the cut | fine-tuned, precise BN | fine-tuned, running averages | same, BN re-estimated "
             "after |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {state.data['cuts'][c]['cut']} | {stat(c, 'precise', 'finetuned')} | "
              f"{stat(c, 'averages', 'finetuned')} | {stat(c, 'averages', 're-est')} |" for c in CUTS]
    state.data["table"] = "\n".join(lines)
    state.save()
    print(state.data["table"])


if __name__ == "__main__":
    main()
