"""What a cut keeps before any fine-tuning: every scorer, with and without BatchNorm recalibration, at measured speed-ups.

For each model (`--models`, default yolo26n and yolo26s) a base is trained on the synthetic set until its validation
mAP50-95 stops rising (Ultralytics' `patience`, with an epoch cap) and cached. The ratio of the yolo26 rules plan that
gives each measured ONNX Runtime speed-up (`--speedups`, at `--bench-imgsz`, `--threads`) is searched once per model
with `--target-speedup` (the widths do not depend on the scorer). Then, for every scorer and every calibration sample
(`--calib-seeds`: which training images are drawn), the base is slimmed at that ratio and validated (Ultralytics'
validator, val split) three ways: with the carried-over BatchNorm statistics (`cut`), with statistics re-estimated
on the calibration sample (`recal`), and as the product keeps it (`judged`: recalibration kept only where the
held-back calibration loss falls). The table shows the mean over calibration samples and the spread (max - min).

Resumable: every measured point is stored in the cache's state file and not measured again.

    python benchmarks/calibration.py --json benchmarks/results/calibration.json
    python benchmarks/calibration.py --quick          # yolo26n only, fewer epochs and seeds: a smoke run
    python benchmarks/calibration.py --tradeoff ...   # on the trade-off benchmark's converged bases and data
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from yoloprune.offline import use_offline  # noqa: E402

use_offline(ROOT / "cache" / "config")

from common import State  # noqa: E402

from yoloprune.importance import IMPORTANCES  # noqa: E402
from yoloprune.importance.data_aware import DATA_AWARE  # noqa: E402


def curve(run: Path) -> list[float]:
    """Validation mAP50-95 per epoch of a finished Ultralytics run."""
    with open(run / "results.csv") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    return [round(float(r["metrics/mAP50-95(B)"]), 4) for r in rows]


class Bench:
    def __init__(self, args):
        from yoloprune.pipeline import Recipe

        self.args = args
        self.recipe = Recipe(imgsz=args.imgsz, batch=args.batch)
        key = f"{args.train}|{args.val}|{args.imgsz}|{args.max_epochs}|{args.patience}|{args.batch}"
        key += "|tradeoff" if args.tradeoff else ""
        self.cache = ROOT / "cache" / f"calibration-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.state = State(self.cache / "state.json", {"bases": {}, "ratios": {}, "points": {}})
        self.data = self.cache / "shapes" / "data.yaml"
        self.calibs = {}

    def prepare_data(self) -> None:
        from yoloprune.data import make_dataset

        if not self.data.exists():
            make_dataset(self.cache / "shapes", "detect", train=self.args.train, val=self.args.val,
                         imgsz=self.args.imgsz, seed=0)

    def use_tradeoff(self) -> None:
        """Measure on the trade-off benchmark's converged bases and data (trained there, by its defaults, when
        missing) instead of training bases here."""
        from common import tradeoff_base

        _, t, _ = tradeoff_base(["--models", ",".join(self.args.models)])
        t.prepare(self.args.models)
        self.data, self.tradeoff = t.data, t

    def base(self, yaml: str) -> Path:
        """The converged base of `yaml`: trained until mAP50-95 stops rising (patience), capped; cached."""
        from yoloprune.pipeline import train_run

        a = self.args
        stem = Path(yaml).stem
        if a.tradeoff:
            b = self.tradeoff.state.data["bases"][stem]
            self.state.data["bases"][stem] = {"weights": str(self.tradeoff.bases[stem]), "map50_95": b["map50_95"],
                                              "epochs_run": b["epochs"], "best_epoch": b["best_epoch"],
                                              "stopped_early": b["stopped"] == "patience", "from": "tradeoff.py"}
            self.state.save()
            return Path(self.tradeoff.bases[stem])
        print(f"base {stem}: up to {a.max_epochs} epochs at {a.imgsz}, stops after {a.patience} without a better "
              f"mAP (cached in {self.cache})", flush=True)
        r = train_run(yaml, self.data, self.cache, f"base-{stem}", a.max_epochs, self.recipe, patience=a.patience)
        run = Path(r.weights).parent.parent
        maps = curve(run)
        best = max(range(len(maps)), key=maps.__getitem__)
        self.state.data["bases"][stem] = {"weights": r.weights, "map50": r.map50, "map50_95": r.map50_95,
                                          "epochs_run": len(maps), "best_epoch": best + 1, "curve": maps,
                                          "stopped_early": len(maps) < a.max_epochs, "seconds": r.seconds}
        self.state.save()
        return Path(r.weights)

    def ratio(self, stem: str, base: Path, speedup: float) -> dict:
        """The rules-plan ratio that measures `speedup` on ONNX Runtime (searched once, cached)."""
        from yoloprune.slim.target import TargetSlimmer

        key = f"{stem}@{speedup:g}"
        got = self.state.data["ratios"].get(key)
        if got:
            return got
        a = self.args
        t = TargetSlimmer(str(base), speedup=speedup, imgsz=a.bench_imgsz, threads=a.threads, importance="l1",
                          max_ratio=a.max_ratio, runs=a.runs, progress=True)
        t.search()
        r = t.result
        got = {"ratio": r.ratio, "reached": round(r.reached, 3), "p10": round(r.p10, 3), "p90": round(r.p90, 3),
               "rounds": r.rounds, "met": r.met, "resolved": r.resolved, "base_ms": round(r.base_ms, 2),
               "slim_ms": round(r.slim_ms, 2)}
        self.state.data["ratios"][key] = got
        self.state.save()
        print(t.result.format(), flush=True)
        return got

    def calibration(self, seed: int):
        from yoloprune.calibrate import load_calibration

        if seed not in self.calibs:
            self.calibs[seed] = load_calibration(self.data, self.args.imgsz, self.args.calib_images, "detect",
                                                 seed=seed)
        return self.calibs[seed]

    def points(self, stem: str, base: Path, ratios: dict[float, dict]) -> None:
        """Every scorer x calibration sample x speed-up: mAP right after the cut, three ways."""
        from tqdm import tqdm

        from yoloprune.calibrate import reestimate_bn
        from yoloprune.calibrate.bn import recalibrate
        from yoloprune.checkpoint import save_checkpoint
        from yoloprune.pipeline import validate
        from yoloprune.slim.slimmer import Slimmer

        a = self.args
        todo = [(imp, seed) for imp in a.scorers for seed in a.calib_seeds]
        bar = tqdm(todo, desc=f"{stem} scorers", unit="scorer x sample")
        for imp, seed in bar:
            keys = {sp: f"{stem}|{imp}|{seed}|{a.calib_images}|{sp:g}" for sp in ratios}
            if all(k in self.state.data["points"] for k in keys.values()):
                continue
            calib = self.calibration(seed)
            s = Slimmer(str(base), ratio=0.5, importance=imp, round_to=16, imgsz=a.bench_imgsz, data=calib,
                        recalibrate=False)
            for sp, r in ratios.items():
                if keys[sp] in self.state.data["points"]:
                    continue
                t0 = time.perf_counter()
                s.ratio = r["ratio"]
                cut = s.slim()
                recal = copy.deepcopy(cut)
                reestimate_bn(recal, calib.fit)
                judged = copy.deepcopy(cut)
                verdict = recalibrate(judged, calib)
                maps = {}
                for name, model in (("cut", cut), ("recal", recal)):
                    path = save_checkpoint(copy.deepcopy(model), self.cache / f"tmp-{name}.pt", s.loaded)
                    maps[name] = round(validate(path, self.data, a.imgsz, a.batch)[1], 4)
                maps["judged"] = maps["recal"] if verdict.kept else maps["cut"]
                self.state.data["points"][keys[sp]] = {
                    "model": stem, "importance": imp, "seed": seed, "calib_images": a.calib_images, "speedup": sp,
                    "ratio": r["ratio"], **maps,
                    "recal_kept": verdict.kept, "loss_cut": round(verdict.loss_before, 4),
                    "loss_recal": round(verdict.loss_after, 4), "seconds": round(time.perf_counter() - t0, 1)}
                self.state.save()
                bar.set_postfix_str(f"{imp} seed {seed} {sp:g}x: cut {maps['cut']:.3f} recal {maps['recal']:.3f}")

    def table(self) -> str:
        s = self.state.data
        lines = []
        for stem, b in s["bases"].items():
            lines.append(f"\n{stem}: base mAP50-95 {b['map50_95']:.4f} (best epoch {b['best_epoch']} of "
                         f"{b['epochs_run']}{', stopped by patience' if b['stopped_early'] else ', epoch cap reached'})")
            sps = sorted({p["speedup"] for p in s["points"].values() if p["model"] == stem})
            head = "| scorer | " + " | ".join(f"{sp:g}x cut | {sp:g}x recal | {sp:g}x judged" for sp in sps) + " |"
            lines += [head, "|---" * (1 + 3 * len(sps)) + "|"]
            for imp in self.args.scorers:
                cells = []
                for sp in sps:
                    pts = [p for p in s["points"].values() if p["model"] == stem and p["importance"] == imp
                           and p["speedup"] == sp and p.get("calib_images") == self.args.calib_images]
                    for way in ("cut", "recal", "judged"):
                        v = [p[way] for p in pts]
                        cells.append(f"{statistics.mean(v):.3f} ± {(max(v) - min(v)) / 2:.3f}" if v else "-")
                lines.append(f"| {imp} | " + " | ".join(cells) + " |")
            for sp in sps:
                r = s["ratios"].get(f"{stem}@{sp:g}")
                if r:
                    lines.append(f"  {sp:g}x: ratio {r['ratio']:.2f}, measured {r['reached']:.2f}x (p10-p90 "
                                 f"{r['p10']:.2f}-{r['p90']:.2f}; {r['base_ms']:.1f} -> {r['slim_ms']:.1f} ms)")
        return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="yolo26n.yaml,yolo26s.yaml", help="model YAMLs (default yolo26n, yolo26s)")
    p.add_argument("--scorers", default=",".join([*IMPORTANCES, *DATA_AWARE]), help="importance scorers to compare")
    p.add_argument("--speedups", default="1.5,2,3", help="measured speed-ups (default 1.5,2,3)")
    p.add_argument("--calib-seeds", default="0,1,2", help="calibration samples (default 0,1,2)")
    p.add_argument("--calib-images", type=int, default=128,
                   help="images per calibration sample (default 128: samples differ only if below the training set)")
    p.add_argument("--train", type=int, default=256, help="synthetic training images (default 256)")
    p.add_argument("--val", type=int, default=64, help="synthetic validation images (default 64)")
    p.add_argument("--imgsz", type=int, default=128, help="training / calibration / validation size (default 128)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-epochs", type=int, default=150, help="epoch cap of the bases (default 150)")
    p.add_argument("--patience", type=int, default=20, help="epochs without a better mAP before a base stops")
    p.add_argument("--bench-imgsz", type=int, default=640, help="size the speed-ups are measured at (default 640)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    p.add_argument("--runs", type=int, default=30, help="timing rounds per candidate (default 30)")
    p.add_argument("--max-ratio", type=float, default=0.9, help="largest ratio the searches try (default 0.9)")
    p.add_argument("--quick", action="store_true", help="yolo26n, 40 epochs, one calibration sample, 2x only")
    p.add_argument("--tradeoff", action="store_true",
                   help="measure on the trade-off benchmark's converged bases and data (its cache) instead")
    p.add_argument("--json", help="write the state and the table here")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.max_epochs, args.calib_seeds, args.speedups = "yolo26n.yaml", 40, "0", "2"
    args.models = [m for m in args.models.split(",") if m]
    args.scorers = [s for s in args.scorers.split(",") if s]
    args.speedups = [float(x) for x in args.speedups.split(",") if x]
    args.calib_seeds = [int(x) for x in args.calib_seeds.split(",") if x]

    bench = Bench(args)
    bench.use_tradeoff() if args.tradeoff else bench.prepare_data()
    for m in args.models:
        stem, base = Path(m).stem, bench.base(m)
        print(f"searching the ratios of {stem} for {args.speedups} (keep the machine otherwise idle)", flush=True)
        ratios = {sp: bench.ratio(stem, base, sp) for sp in args.speedups}
        bench.points(stem, base, ratios)
    table = bench.table()
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**bench.state.data, "args": vars(args), "table": table}, indent=2))
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
