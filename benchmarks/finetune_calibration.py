"""Does a calibrated cut still lead after fine-tuning? One base, one ratio, four cuts, the same fine-tune each.

The base is slimmed at `--ratio` (yolo26 rules, `round_to` 16) four ways: `l1` with the carried-over BatchNorm
statistics, `l1` + recalibration, `taylor` without recalibration, `taylor` + recalibration (calibration sample: the
data's training split). Each cut is validated (Ultralytics' validator) and fine-tuned `--epochs` epochs with
distillation from the base by the demo's recipe, then validated again; for the fine-tuned models the validation is
repeated with BatchNorm statistics re-estimated on the calibration sample (`re-est`), which separates what the
weights learned from what the running statistics hold. Every fine-tune uses the same seed and data order.

    yoloprune demo --quick --out demo          # a base and data (any trained base and data.yaml will do)
    python benchmarks/finetune_calibration.py --base demo/base/weights/best.pt --data demo/shapes/data.yaml \\
        --json benchmarks/results/finetune_calibration.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from yoloprune.offline import use_offline  # noqa: E402

use_offline(ROOT / "cache" / "config")

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
    p.add_argument("--json", help="write the table here")
    a = p.parse_args()

    from tqdm import tqdm

    from yoloprune.calibrate import load_calibration
    from yoloprune.calibrate.bn import reestimate_bn
    from yoloprune.checkpoint import load_model, save_checkpoint
    from yoloprune.pipeline import Recipe, kd_keys, train_run, validate
    from yoloprune.slim.slimmer import Slimmer

    calib = load_calibration(a.data, a.imgsz)
    recipe = Recipe(imgsz=a.imgsz, batch=16)
    rows = {"base": {"cut": round(validate(a.base, a.data, a.imgsz)[1], 4)}}
    with tempfile.TemporaryDirectory(prefix="yoloprune-ftcal-") as d:
        for name, kw in (bar := tqdm(CUTS.items(), desc="cuts", unit="cut")):
            kw = dict(kw)
            data = calib if kw.pop("calibrate", False) else None
            s = Slimmer(a.base, ratio=a.ratio, imgsz=a.imgsz, round_to=16, data=data, **kw)
            cut = s.save(Path(d) / f"{name}.pt")
            r = train_run(cut, a.data, d, f"ft-{name}", a.epochs, recipe, verbose=False, **kd_keys(a.base))
            tuned = load_model(r.weights)
            reestimate_bn(tuned.model.float(), calib.batches)
            re = save_checkpoint(tuned.model, Path(d) / f"{name}-re.pt", tuned)
            rows[name] = {"cut": round(validate(cut, a.data, a.imgsz)[1], 4), "finetuned": round(r.map50_95, 4),
                          "re-est": round(validate(re, a.data, a.imgsz)[1], 4),
                          "recal_kept": (s.report.recalibration or {}).get("kept")}
            bar.set_postfix_str(f"{name}: {rows[name]}")
    lines = [f"ratio {a.ratio}, {a.epochs} KD epochs, mAP50-95 at {a.imgsz} (base {rows['base']['cut']})",
             "| cut | right after the cut | fine-tuned | fine-tuned, BN re-estimated |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['cut']} | {v['finetuned']} | {v['re-est']} |" for k, v in rows.items() if k != "base"]
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows, "table": "\n".join(lines)}, indent=2))
        print(f"saved {a.json}")


if __name__ == "__main__":
    main()
