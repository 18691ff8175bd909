"""Distillation benchmark: does KD recover a slim yolo26n better than plain fine-tuning and Ultralytics' own KD?

On the project's synthetic dataset: train a base yolo26n once (cached), slim it to about half its FLOPs, then
fine-tune the slim model for the same number of epochs with no KD, Ultralytics' built-in `distill_model`, and each of
yoloprune's `response`, `feature` and `yolo` distillation (teacher = the base). mAP comes from Ultralytics' own
validator (the final validation of `best.pt`); epoch time is the training part of each epoch (validation excluded),
next to the time one teacher forward pass over the epoch's batches takes.

    python benchmarks/distill.py                 # full run (~40 min on 2 CPU cores); cached base in benchmarks/cache
    python benchmarks/distill.py --epochs 2 --base-epochs 3 --train 32 --val 16   # smoke run
    python benchmarks/distill.py --json benchmarks/results/distill.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from yoloprune.offline import use_offline  # noqa: E402

use_offline(ROOT / "cache" / "config")


def epoch_timer():
    """Callbacks that record the training time of every epoch (validation excluded)."""
    times, start = [], {}

    def begin(trainer):
        start["t"] = time.perf_counter()

    def end(trainer):
        times.append(time.perf_counter() - start["t"])

    return times, begin, end


def teacher_forward_time(teacher_path: str, data: str, imgsz: int, batch: int) -> float:
    """Seconds one no-grad forward pass of the teacher over one epoch of training batches takes."""
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.nn.tasks import load_checkpoint

    model = load_checkpoint(teacher_path)[0].float().eval()
    d = check_det_dataset(data)
    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch, "workers": 0})
    loader = build_dataloader(build_yolo_dataset(cfg, d["train"], batch, d, mode="train"), batch, 0, shuffle=False)
    total = 0.0
    with torch.no_grad():
        for b in loader:
            img = b["img"].float() / 255
            t = time.perf_counter()
            model(img)
            total += time.perf_counter() - t
    return total


def finetune(name, slim, data, args, out, **keys):
    from ultralytics import YOLO

    from yoloprune.train import trainer_for

    times, begin, end = epoch_timer()
    yolo = YOLO(str(slim))
    yolo.add_callback("on_train_epoch_start", begin)
    yolo.add_callback("on_train_epoch_end", end)
    m = yolo.train(trainer=trainer_for("detect"), data=str(data), epochs=args.epochs, imgsz=args.imgsz,
                   batch=args.batch, nbs=args.batch, workers=0, plots=False, seed=args.seed, deterministic=True,
                   project=str(out), name=f"{name}-seed{args.seed}-a{args.alpha}-t{args.temperature}", exist_ok=True, verbose=False, **keys)
    return {"run": name, "map50": round(float(m.box.map50), 4), "map50_95": round(float(m.box.map), 4),
            "epoch_s": round(sum(times[1:] or times) / len(times[1:] or times), 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs per run (default 20)")
    p.add_argument("--base-epochs", type=int, default=60, help="epochs of the cached base model (default 60)")
    p.add_argument("--train", type=int, default=256, help="synthetic training images (default 256)")
    p.add_argument("--val", type=int, default=64, help="synthetic validation images (default 64)")
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--target-flops", type=float, default=0.5, help="slim to about this share of the base GFLOPs")
    p.add_argument("--alpha", type=float, default=0.7, help="distill_alpha of yoloprune's runs (default 0.7)")
    p.add_argument("--temperature", type=float, default=4.0, help="temperature of yoloprune's runs (default 4.0)")
    p.add_argument("--seed", type=int, default=0, help="fine-tuning seed (the base and the slim cut stay the same)")
    p.add_argument("--runs", default="none,ultralytics,response,feature,yolo", help="comma-separated subset")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    from tqdm import tqdm
    from ultralytics import YOLO

    from yoloprune import Slimmer
    from yoloprune.data import make_dataset

    cache = ROOT / "cache" / f"distill-{args.train}-{args.val}-{args.imgsz}-{args.base_epochs}"
    data = cache / "shapes" / "data.yaml"
    if not data.exists():
        make_dataset(cache / "shapes", "detect", train=args.train, val=args.val, imgsz=args.imgsz, seed=0)
    base = cache / "base" / "weights" / "best.pt"
    if not base.exists():
        print(f"training the base yolo26n for {args.base_epochs} epochs (cached in {cache})")
        YOLO("yolo26n.yaml").train(data=str(data), epochs=args.base_epochs, imgsz=args.imgsz, batch=args.batch,
                                   nbs=args.batch, workers=0, plots=False, seed=0, deterministic=True,
                                   project=str(cache), name="base", exist_ok=True, verbose=False)
    base_metrics = YOLO(str(base)).val(data=str(data), imgsz=args.imgsz, batch=args.batch, workers=0, plots=False,
                                       verbose=False)
    candidates = []
    for r in (0.25, 0.3, 0.35, 0.4, 0.45, 0.5):  # the ratio whose GFLOPs come closest to the target share
        s = Slimmer(str(base), ratio=r, imgsz=args.imgsz)
        plan = s.plan().to_dict()
        candidates.append((abs(plan["after"]["gflops"] / plan["before"]["gflops"] - args.target_flops), r, s,
                           plan["after"]["gflops"] / plan["before"]["gflops"]))
    _, ratio, slimmer, best = min(candidates, key=lambda c: c[:2])
    slim = cache / f"slim-{ratio}.pt"
    slimmer.save(slim)
    print(f"base mAP50-95 {base_metrics.box.map:.4f}; slim ratio {ratio}: {best:.1%} of the base GFLOPs")

    out = cache / "finetune"
    ours = {"distillation": True, "teacher_model": str(base), "distill_alpha": args.alpha,
            "temperature": args.temperature}
    runs = {
        "none": {},
        "ultralytics": {"distill_model": str(base)},
        "response": {**ours, "distill_type": "response"},
        "feature": {**ours, "distill_type": "feature"},
        "yolo": {**ours, "distill_type": "yolo"},
    }
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    results = []
    for name in tqdm(wanted, desc="fine-tune runs"):
        results.append(finetune(name, slim, data, args, out, **runs[name]))
    t_teacher = teacher_forward_time(str(base), str(data), args.imgsz, args.batch)

    plain = next((r for r in results if r["run"] == "none"), None)
    print(f"\nslim yolo26n ({best:.0%} of base GFLOPs) fine-tuned {args.epochs} epochs; base mAP50-95 "
          f"{base_metrics.box.map:.4f}; one teacher pass over an epoch {t_teacher:.2f} s")
    print(f"{'run':<12}{'mAP50':>8}{'mAP50-95':>10}{'epoch s':>9}{'limit s':>9}")
    for r in results:
        limit = (plain["epoch_s"] + t_teacher) * 1.1 if plain and r["run"] != "none" else None
        r["epoch_limit_s"] = round(limit, 2) if limit else None
        print(f"{r['run']:<12}{r['map50']:>8.4f}{r['map50_95']:>10.4f}{r['epoch_s']:>9.2f}"
              f"{(f'{limit:.2f}' if limit else '-'):>9}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "base_map50_95": round(float(base_metrics.box.map), 4), "slim_ratio": ratio, "slim_gflops_share": best,
            "epochs": args.epochs, "seed": args.seed, "alpha": args.alpha, "temperature": args.temperature, "teacher_epoch_forward_s": round(t_teacher, 2), "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
