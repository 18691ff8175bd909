"""Accuracy vs measured speed-up: which way of slimming yolo26n keeps the most mAP at a given ONNX Runtime speed-up?

From one cached base model (trained here on the synthetic set, or `--base`/`--data` of your own), every point is
slimmed, timed against the base (ONNX Runtime CPU, interleaved, at `--bench-imgsz`), validated right after slimming,
fine-tuned `--epochs` epochs (distillation from the base unless the point says otherwise) and validated again, all
mAP by Ultralytics' own validator. The reference of every fine-tuned point is the base trained for the same extra
epochs with the same recipe ("equally-trained base"). Points:

- `uniform`, `rules`, `latency`: one line each at the speed-ups of `--speedups` (1.5, 2, 3). uniform = one ratio for
  every group (`--rules none`), rules = the yolo26 shortcut rules, the ratio of both searched by bisection until the
  measured speed-up is within 3 %; latency = `--target-speedup` (the latency-aware widths). Equal latency, not
  equal ratio.
- at the uniform 2x ratio: `rules@ratio` (rules at the same ratio: equal ratio, a slower model), importance `l2` and
  `bn`, `sparse-bn` (`--sparse-epochs` of sparsity training of the base first; its reference has those epochs too),
  `no-kd` (plain fine-tuning).
- `uniform@r0.3`, `rules@r0.3`: the seed's comparison (ratio 0.3, without and with shortcut rules).
- `layer` (half of the repeated blocks removed) and `channel@layer` (uniform channels at the speed-up the layer cut
  measured).

Resumable: the state lives in the cache folder; a point (search, slim, fine-tune) already measured is not redone.

    python benchmarks/methods.py --json benchmarks/results/methods.json --png benchmarks/results/methods.png
    python benchmarks/methods.py --data my.yaml --base my-best.pt --imgsz 640     # your own data and base
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from yoloprune.offline import use_offline  # noqa: E402

use_offline(ROOT / "cache" / "config")

from common import State, search_ratio  # noqa: E402

LINES = ("uniform", "rules", "latency")


class Sweep:
    def __init__(self, args):
        from yoloprune.pipeline import Recipe

        self.args = args
        self.recipe = Recipe(imgsz=args.imgsz, batch=args.batch)
        key = f"{args.data}|{args.base}|{args.train}|{args.val}|{args.imgsz}|{args.base_epochs}|{args.batch}"
        self.cache = ROOT / "cache" / f"tradeoff-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        (self.cache / "slim").mkdir(parents=True, exist_ok=True)
        from yoloprune.slim.slimmer import DEFAULT_WITH_DATA

        self.importance = args.importance or (DEFAULT_WITH_DATA if args.calib else "l1")
        self._calib = None
        # one base for every setting; the points of each setting (calibration, scorer) in a state file of their own
        mode = f"-cal-{self.importance}" if args.calib else ("" if self.importance == "l1" else f"-{self.importance}")
        self.state = State(self.cache / f"state{mode}.json", {"points": {}, "measured": {}})

    # -- set-up -------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        from yoloprune.data import make_dataset
        from yoloprune.deploy.export import export
        from yoloprune.pipeline import train_run, validate

        a = self.args
        if a.data:
            self.data = Path(a.data)
        else:
            self.data = self.cache / "shapes" / "data.yaml"
            if not self.data.exists():
                make_dataset(self.cache / "shapes", "detect", train=a.train, val=a.val, imgsz=a.imgsz, seed=0)
        if a.base:
            self.base = Path(a.base)
        else:
            print(f"base: yolo26n trained {a.base_epochs} epochs (cached in {self.cache})")
            self.base = Path(train_run("yolo26n.yaml", self.data, self.cache, "base", a.base_epochs, self.recipe).weights)
        s = self.state.data
        if "base" not in s:
            s["base"] = dict(zip(("map50", "map50_95"), validate(self.base, self.data, a.imgsz, a.batch)))
            self.state.save()
        self.base_onnx = self.cache / f"base-{a.bench_imgsz}.onnx"
        if not self.base_onnx.exists():
            export(self.base, imgsz=a.bench_imgsz, output=self.base_onnx, verbose=False)

    # -- timing -------------------------------------------------------------------------------------------------
    def measure(self, slim: Path) -> dict:
        from yoloprune.deploy.bench import bench

        r = bench([self.base_onnx, slim], imgsz=self.args.bench_imgsz, threads=self.args.threads, warmup=5,
                  runs=self.args.runs, progress=False)
        base, row = r.rows
        return {"speedup": round(row.speedup, 3), "ms": round(row.median_ms, 2), "base_ms": round(base.median_ms, 2),
                "gflops": row.gflops, "base_gflops": base.gflops, "params": row.params, "base_params": base.params}

    def slim_at(self, kind: str, ratio: float, importance: str | None = None, base: Path | None = None) -> Path:
        from yoloprune import LayerPruner, Slimmer

        src = base or self.base
        importance = importance or self.importance
        tag = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:6]  # which base: several are named best.pt
        cal = "-cal" if self.args.calib and kind != "layer" else ""
        out = self.cache / "slim" / f"{kind}-{importance}-{ratio:.2f}-{tag}{cal}.pt"
        if not out.exists():
            if kind == "layer":
                s = LayerPruner(str(src), ratio=ratio, importance=importance if importance in ("l1", "l2", "bn") else "l1",
                                imgsz=self.args.bench_imgsz)
            else:  # with calibration: BatchNorm recalibrated on a fixed sample of training images (judged)
                s = Slimmer(str(src), ratio=ratio, importance=importance,
                            rules="none" if kind == "uniform" else "yolo26", round_to=16, imgsz=self.args.bench_imgsz,
                            data=self.calibration() if cal else None)
            s.save(out)
        return out

    def calibration(self):
        """The calibration sample (drawn once) at the training size."""
        from yoloprune.calibrate import load_calibration

        if self._calib is None:
            self._calib = load_calibration(self.data, self.args.imgsz)
        return self._calib

    def measured(self, kind: str, ratio: float) -> dict:
        """Speed-up of a ratio of `uniform`/`rules`/`layer` (cached: widths depend on the ratio only)."""
        key = f"{kind}-{ratio:.2f}"
        m = self.state.data["measured"]
        if key not in m:
            m[key] = self.measure(self.slim_at(kind, ratio))
            self.state.save()
        return m[key]

    def search(self, kind: str, target: float) -> dict:
        """The ratio of `kind` whose measured speed-up is within 3 % of `target` (bisected; the nearest)."""
        known = {}

        def speedup_at(ratio):
            known.update({float(k.split("-")[1]): v["speedup"] for k, v in self.state.data["measured"].items()
                          if k.startswith(kind + "-")})
            s = self.measured(kind, ratio)["speedup"]
            known[ratio] = s
            return s

        speedup_at(self.args.max_ratio)
        found = search_ratio(speedup_at, target, self.args.max_ratio, known)
        if "ratio" not in found:
            return {"unreachable": f"{kind} {found['unreachable']}"}
        return {"ratio": found["ratio"], **self.measured(kind, found["ratio"])}

    def searched(self, kind: str, target: float) -> tuple[Path | None, dict]:
        found = self.search(kind, target)
        return (self.slim_at(kind, found["ratio"]) if "ratio" in found else None), found

    # -- points -------------------------------------------------------------------------------------------------
    def point(self, name: str, make, **info) -> None:
        """Make the slim checkpoint of point `name` (`make()` -> path, timing dict), once."""
        pts = self.state.data["points"]
        if name in pts and "slim" in pts[name]:
            return
        slim, timing = make()
        pts[name] = {**info, **timing, "slim": str(slim) if slim else None}
        self.state.save()
        what = f"{timing['speedup']:.2f}x, {timing['gflops']:.2f} GFLOPs" if slim else timing.get("unreachable")
        print(f"  {name}: {what}", flush=True)

    def build(self) -> None:
        from tqdm import tqdm

        from yoloprune.errors import UserError
        from yoloprune.pipeline import train_run
        from yoloprune.slim.target import TargetSlimmer

        a = self.args
        jobs = []
        for kind in ("uniform", "rules"):
            for sp in a.speedups:
                jobs.append((f"{kind}@{sp:g}x", kind, sp))
        for sp in a.speedups:
            jobs.append((f"latency@{sp:g}x", "latency", sp))
        for name, kind, sp in tqdm(jobs, desc="slim to speed-ups", unit="point"):
            if kind == "latency":
                def make(sp=sp):
                    out = self.cache / "slim" / f"latency-{sp:g}.pt"
                    if not out.exists():
                        try:
                            TargetSlimmer(str(self.base), speedup=sp, imgsz=a.bench_imgsz, threads=a.threads,
                                          max_ratio=a.max_ratio, progress=False, allocation="latency").search().save(out)
                        except UserError as e:
                            return None, {"unreachable": str(e)}
                    return out, self.measure(out)
            else:
                def make(kind=kind, sp=sp):
                    return self.searched(kind, sp)
            self.point(name, make, line=kind, target=sp, importance=self.importance, kd=True)

        two = self.state.data["points"].get("uniform@2x", {})
        r2 = two.get("ratio")
        if r2 is not None:  # same widths as uniform@2x whatever the scorer: the same timing
            two_timing = self.measured("uniform", r2)
            self.point("rules@ratio", lambda: (self.slim_at("rules", r2), self.measured("rules", r2)),
                       line="rules@ratio", ratio=r2, importance=self.importance, kd=True)
            for imp in ("l2", "bn"):
                self.point(f"uniform@2x-{imp}", lambda imp=imp: (self.slim_at("uniform", r2, imp), two_timing),
                           line=f"importance {imp}", ratio=r2, importance=imp, kd=True)
            self.point("uniform@2x-no-kd", lambda: (self.slim_at("uniform", r2), self.measured("uniform", r2)),
                       line="no KD", ratio=r2, importance=self.importance, kd=False)
            if a.sparse_epochs:
                print(f"sparsity training: base + {a.sparse_epochs} epochs, structured_l1 lambda_bn={a.lambda_bn}")
                sparse = Path(train_run(self.base, self.data, self.cache, "sparse", a.sparse_epochs, self.recipe,
                                        structured_l1=True, lambda_bn=a.lambda_bn).weights)
                self.point("uniform@2x-sparse-bn", lambda: (self.slim_at("uniform", r2, "bn", sparse), two_timing),
                           line="sparsity + bn", ratio=r2, importance="bn", kd=True, extra_epochs=a.sparse_epochs)
        for kind in ("uniform", "rules"):  # the seed's claim: rules lose less mAP than uniform at ratio 0.3
            self.point(f"{kind}@r0.3", lambda kind=kind: (self.slim_at(kind, 0.3), self.measured(kind, 0.3)),
                       line=f"{kind} r0.3", ratio=0.3, importance=self.importance, kd=True)
        layer = self.measured("layer", 0.5)
        self.point("layer", lambda: (self.slim_at("layer", 0.5), layer), line="layer", ratio=0.5, importance=self.importance,
                   kd=True)
        self.point("channel@layer", lambda: self.searched("uniform", layer["speedup"]), line="channel@layer",
                   importance=self.importance, kd=True)

    def finetune(self) -> None:
        from tqdm import tqdm

        from yoloprune.pipeline import kd_keys, train_run, validate

        a = self.args
        pts = self.state.data["points"]
        refs = self.state.data.setdefault("reference", {})
        for extra in sorted({a.epochs} | {a.epochs + p.get("extra_epochs", 0) for p in pts.values()}):
            if str(extra) not in refs:
                r = train_run(self.base, self.data, self.cache, f"reference-{extra}", extra, self.recipe)
                refs[str(extra)] = {"map50": r.map50, "map50_95": r.map50_95}
                self.state.save()
        todo = [n for n, p in pts.items() if p.get("slim") and "finetuned" not in p]
        for name in tqdm(todo, desc="fine-tune points", unit="point"):
            p = pts[name]
            p["slimmed"] = dict(zip(("map50", "map50_95"), validate(p["slim"], self.data, a.imgsz, a.batch)))
            keys = kd_keys(self.base) if p["kd"] else {}
            r = train_run(p["slim"], self.data, self.cache / "finetune", name.replace("@", "-"), a.epochs, self.recipe,
                          verbose=False, **keys)
            ref = refs[str(a.epochs + p.get("extra_epochs", 0))]
            p["finetuned"] = {"map50": r.map50, "map50_95": r.map50_95,
                              "of_reference": round(r.map50_95 / ref["map50_95"], 4) if ref["map50_95"] else None}
            self.state.save()

    # -- output -------------------------------------------------------------------------------------------------
    def table(self) -> str:
        s = self.state.data
        ref = s.get("reference", {}).get(str(self.args.epochs), {})
        lines = [f"base mAP50-95 {s['base']['map50_95']:.4f}; base + {self.args.epochs} epochs (reference) "
                 f"{ref.get('map50_95', float('nan')):.4f}; ORT CPU {self.args.bench_imgsz}x{self.args.bench_imgsz}, "
                 f"{self.args.threads} threads",
                 "| point | ratio | GFLOPs | params | ORT ms | speed-up | mAP50-95 slimmed | mAP50 tuned | "
                 "mAP50-95 tuned | % of reference |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, p in s["points"].items():
            if not p.get("slim"):
                lines.append(f"| {name} | {p.get('unreachable', 'not reached')} | | | | | | | | |")
                continue
            sl, ft = p.get("slimmed", {}), p.get("finetuned", {})
            lines.append(f"| {name} | {p.get('ratio', '')} | {p['gflops']:.2f} | {p['params']:,} | {p['ms']:.1f} | "
                         f"{p['speedup']:.2f}x | {sl.get('map50_95', float('nan')):.4f} | "
                         f"{ft.get('map50', float('nan')):.4f} | {ft.get('map50_95', float('nan')):.4f} | "
                         f"{ft.get('of_reference') or float('nan'):.1%} |")
        return "\n".join(lines)

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s = self.state.data
        fig, ax = plt.subplots(figsize=(7, 4.5))
        done = {n: p for n, p in s["points"].items() if p.get("finetuned")}
        for line in LINES:
            pts = sorted((p["speedup"], p["finetuned"]["map50_95"]) for p in done.values()
                         if p["line"] == line and p.get("kd"))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=line)
        for n, p in done.items():
            if p["line"] not in LINES:
                ax.scatter(p["speedup"], p["finetuned"]["map50_95"], marker="x")
                ax.annotate(n, (p["speedup"], p["finetuned"]["map50_95"]), fontsize=7)
        ref = s.get("reference", {}).get(str(self.args.epochs))
        if ref:
            ax.axhline(ref["map50_95"], color="k", ls="--", lw=1, label=f"base + {self.args.epochs} epochs")
            ax.axhline(0.97 * ref["map50_95"], color="gray", ls=":", lw=1, label="97 % of it")
        ax.set_xlabel(f"measured ONNX Runtime CPU speed-up ({self.args.bench_imgsz}x{self.args.bench_imgsz})")
        ax.set_ylabel(f"mAP50-95 after {self.args.epochs} fine-tune epochs")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="data.yaml of your own (default: the synthetic set, made here)")
    p.add_argument("--base", help="trained base .pt for --data (default: yolo26n trained here, cached)")
    p.add_argument("--train", type=int, default=256, help="synthetic training images (default 256)")
    p.add_argument("--val", type=int, default=64, help="synthetic validation images (default 64)")
    p.add_argument("--imgsz", type=int, default=128, help="training / validation image size (default 128)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--base-epochs", type=int, default=60, help="epochs of the base (default 60)")
    p.add_argument("--epochs", type=int, default=10, help="fine-tune epochs of every point (default 10)")
    p.add_argument("--sparse-epochs", type=int, default=10, help="sparsity-training epochs (0: skip; default 10)")
    p.add_argument("--lambda-bn", type=float, default=2e-3, help="BN-gamma penalty of the sparsity run")
    p.add_argument("--speedups", default="1.5,2,3", help="measured speed-ups of the lines (default 1.5,2,3)")
    p.add_argument("--bench-imgsz", type=int, default=640, help="image size of the latency figures (default 640)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    p.add_argument("--runs", type=int, default=30, help="interleaved timing rounds per measurement (default 30)")
    p.add_argument("--max-ratio", type=float, default=0.9, help="largest ratio the searches try (default 0.9)")
    p.add_argument("--importance", help="scorer of the lines (default: taylor with calibration, else l1)")
    p.add_argument("--no-calib", dest="calib", action="store_false",
                   help="slim without calibration data (no BatchNorm recalibration, weight-only scorers)")
    p.add_argument("--json", help="write state and table here")
    p.add_argument("--png", help="write the plot (mAP50-95 vs speed-up) here")
    args = p.parse_args(argv)
    args.speedups = [float(x) for x in args.speedups.split(",") if x.strip()]
    if args.data and not args.base:
        p.error("--data needs --base: a base model trained on that data")

    sweep = Sweep(args)
    sweep.prepare()
    print("slimming and timing every point (keep the machine otherwise idle)")
    sweep.build()
    sweep.finetune()
    table = sweep.table()
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**sweep.state.data, "args": {k: v for k, v in vars(args).items()},
                                               "table": table}, indent=2))
    if args.png:
        sweep.plot(Path(args.png))
        print(f"saved {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
