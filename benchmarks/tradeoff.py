"""Accuracy kept at a measured speed-up, against honest baselines: converged bases, several seeds, one or two models.

For each model of `--models` a base is trained on the data until its validation mAP50-95 stops rising (`--patience`
epochs without a new best, at most `--max-epochs`; its epochs and curve are recorded). At each speed-up of
`--speedups`, measured on ONNX Runtime CPU at `--bench-imgsz` against that base, side by side:

- `slim`: the product's way, `--target-speedup` with calibration data: `TargetSlimmer` with the `sensitivity`
  allocation and its defaults (each group's measured loss rise against a measured per-layer latency table),
  corrected until the measured speed-up is within 3 % (taylor scores, judged BatchNorm recalibration); fine-tuned
  `--epochs` epochs with distillation from the base and precise BatchNorm. A point an earlier default made is
  measured again.
- `rules`: as `slim`, but the widths are the shortcut-rules plan, its ratio searched to the same measured speed-up
  (the product's allocation without calibration data).
- `tp-floor`: the plain Torch-Pruning recipe as a floor: one uniform ratio searched to the same measured speed-up,
  l1 magnitude, `round_to` 16, no rules, no calibration, fine-tuned `--epochs` without distillation.
- `scratch`: the `slim` architecture with fresh weights, trained as long as base and fine-tune together
  (`scratch-rules`, asked by name: the `rules` architecture likewise).
- `small-input`: the base itself at a smaller input, the size nearest the same measured speed-up (sizes step by 32 at
  the training size, timed at the same fraction of the bench size), fine-tuned `--epochs` at that size.
- `reference` (1.0x): the base trained the same `--epochs` more (the equally-trained base).
- `sibling` (with two models): the larger slimmed the `slim` way to the smaller's measured latency (and the `rules`
  way, when `rules` is measured), fine-tuned with distillation from the larger, against the smaller's reference.

Every fine-tune and from-scratch run at `--seed-speedup` (2x) runs once per training seed of `--seeds` (data order and
augmentation; the base is one run); the other speed-ups use the first seed. mAP by Ultralytics' validator.
Resumable: every finished measurement and run is kept in the cache folder and in the state file at once.

    python benchmarks/tradeoff.py --quick                 # yolo26n, small sizes, one seed: under 30 minutes
    python benchmarks/tradeoff.py --json benchmarks/results/tradeoff.json --png benchmarks/results/tradeoff.png
    python benchmarks/tradeoff.py --models yolo26n.yaml,yolo26s.yaml ...      # + yolo26s and the sibling question
    python benchmarks/tradeoff.py --data my.yaml --imgsz 640 ...              # any detection data set
    python benchmarks/tradeoff.py --retime ...    # time every chosen point again on an idle machine, then report
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from yoloprune.offline import use_offline  # noqa: E402

use_offline(ROOT / "cache" / "config")

from common import State, alloc_cut, reinitialize, search_ratio  # noqa: E402

from yoloprune.checkpoint import atomic_write  # noqa: E402

METHODS = ("slim", "rules", "tp-floor", "scratch", "small-input")
EXTRA = ("scratch-rules",)  # measured only when asked by name
KINDS = {"rules": "rules", "tp-floor": "uniform"}  # the width plan of each ratio-searched cut
SCRATCH = {"scratch": "slim", "scratch-rules": "rules"}  # a from-scratch point -> the cut whose architecture it trains
SETTINGS = ("data", "train", "val", "imgsz", "batch", "max_epochs", "patience", "preset")  # what the cache is keyed by
QUICK = {"max_epochs": 40, "patience": 10, "epochs": 5, "speedups": "2", "seeds": "0", "runs": 20,
         "methods": "slim,tp-floor,scratch,small-input"}


class Bench:
    def __init__(self, a):
        from yoloprune.pipeline import Recipe

        from yoloprune.deploy.runtime import machine_name

        self.a = a
        settings = {k: getattr(a, k) for k in SETTINGS}
        key = json.dumps(settings)
        self.cache = ROOT / "cache" / f"tradeoff2-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        (self.cache / "slim").mkdir(parents=True, exist_ok=True)
        fresh = not (self.cache / "state.json").is_file()
        self.state = State(self.cache / "state.json", {"bases": {}, "measured": {}, "runs": {}, "points": {},
                                                       "machine": machine_name(), "version": 2})
        if fresh and a.adopt:
            self.adopt(Path(a.adopt), settings)
        if _upgrade(self.state.data):
            self.save()
        self.recipe = lambda seed=0, imgsz=a.imgsz: Recipe(imgsz=imgsz, batch=a.batch, seed=seed)
        self._calib = None  # the calibration sample, drawn once

    def save(self):
        self.state.save()

    def adopt(self, path: Path, settings: dict) -> None:
        """Start from the finished measurements and runs of an earlier run's `--json` (a clone holds the committed
        results, not the cache), when it ran with these settings on this kind of machine. Its bases are trained
        again here; a model whose base does not reproduce its recorded curve keeps only its timings and its
        from-scratch runs (they depend on the architectures, not on the base's weights) and loses its cuts' figures
        and fine-tunes."""
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        why = ("other settings" if {k: old.get("args", {}).get(k) for k in SETTINGS} != settings else
               f"timed on {old.get('machine')}, this is {self.state.data['machine']}"
               if old.get("machine") != self.state.data["machine"] else None)
        if why:
            print(f"not adopting {path}: {why}")
            return
        for k in ("bases", "measured", "runs", "points"):
            self.state.data[k] = old.get(k, {})
        self.state.data["version"] = old.get("version", 1)
        for b in self.state.data["bases"].values():
            b["adopted"] = {"from": str(path), "checked": False}
        print(f"adopted {len(self.state.data['runs'])} runs and the timings of {path}; checking its bases")
        self.save()

    def drop(self, stem: str, epochs: int) -> None:
        """Forget every figure of base `stem`'s weights (its base changed, now trained `epochs` epochs): all but the
        timings and the from-scratch runs as long as its new base + fine-tune (fresh weights of the architectures)."""
        s = self.state.data
        for k in ("bases", "points"):
            s[k] = {key: v for key, v in s[k].items() if stem not in key.split("->")}
        s["runs"] = {key: v for key, v in s["runs"].items() if not key.startswith(f"{stem}|")
                     or (key.split("|")[1].startswith("scratch") and v.get("epochs") == epochs + self.a.epochs)}
        self.save()

    # -- data and bases -----------------------------------------------------------------------------------------
    def prepare(self, models):
        from yoloprune.data import make_dataset
        from yoloprune.deploy.runtime import library_versions
        from yoloprune.pipeline import train_run, validate

        a = self.a
        if a.data:
            self.data = Path(a.data)
        else:
            self.data = self.cache / "shapes" / "data.yaml"
            if not self.data.exists():
                if a.preset == "digits":
                    from yoloprune.data import make_digits_dataset

                    make_digits_dataset(self.cache / "shapes", train=a.train, val=a.val, imgsz=a.imgsz, seed=0)
                else:
                    hard = {"classes": 8, "max_objects": 12} if a.preset == "hard" else {}
                    make_dataset(self.cache / "shapes", "detect", train=a.train, val=a.val, imgsz=a.imgsz, seed=0,
                                 preset=a.preset, **hard)
        self.bases = {}
        for model in models:
            stem = Path(model).stem
            kept = ROOT / "results" / "bases" / self.cache.name / f"{stem}.pt"
            record = self.kept_base(kept)
            if record is None:
                r = train_run(model, self.data, self.cache, f"base-{stem}", a.max_epochs, self.recipe(),
                              patience=a.patience)
                curve = _curve(self.cache / f"base-{stem}")
                record = {"epochs": len(curve), "best_epoch": curve.index(max(curve)) + 1, "curve": curve,
                          "map50_95": round(validate(r.weights, self.data, a.imgsz, a.batch)[1], 4),
                          "stopped": "patience" if len(curve) < a.max_epochs else "cap", "seconds": r.seconds,
                          "versions": library_versions()}
                kept.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(kept, lambda tmp, src=r.weights: shutil.copyfile(src, tmp))
                text = json.dumps(record, indent=2)
                atomic_write(kept.with_suffix(".json"), lambda tmp, t=text: Path(tmp).write_text(t))
            self.bases[stem] = kept
            known = self.state.data["bases"].get(stem)
            if known is None or known.get("adopted", {}).get("checked") is False:
                if known and (known["curve"], known["map50_95"]) != (record["curve"], record["map50_95"]):
                    print(f"base {stem} did not reproduce the adopted one ({record['map50_95']} vs "
                          f"{known['map50_95']}): only its adopted timings and from-scratch runs are kept")
                    self.drop(stem, record["epochs"])
                if known:
                    record["adopted"] = {**known["adopted"], "checked": True,
                                         "reproduced": record["curve"] == known["curve"]}
                self.state.data["bases"][stem] = record
            self.state.data["bases"][stem]["weights"] = str(kept)
            self.save()
            b = self.state.data["bases"][stem]
            print(f"base {stem}: mAP50-95 {b['map50_95']:.4f} after {b['epochs']} epochs (best {b['best_epoch']}, "
                  f"stopped by {b['stopped']})")
            self.base_onnx(stem, a.bench_imgsz)

    def kept_base(self, kept: Path) -> dict | None:
        """The record of a base kept beside the results (`results/bases/<cache>/<stem>.pt` and `.json`: a clone
        holds them when they were committed, so a later session need not train the base again), when it measures
        its recorded mAP50-95 on this data; None otherwise."""
        from yoloprune.pipeline import validate

        try:
            record = json.loads(kept.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return None
        if not kept.is_file():
            return None
        got = round(validate(kept, self.data, self.a.imgsz, self.a.batch)[1], 4)
        if got != record["map50_95"]:
            print(f"{kept} measures {got} on this data, recorded {record['map50_95']}: not used")
            return None
        return record

    def calibration(self):
        from yoloprune.calibrate import load_calibration

        if self._calib is None:
            self._calib = load_calibration(self.data, self.a.imgsz)
        return self._calib

    # -- timing -------------------------------------------------------------------------------------------------
    def timed(self, key: str, stem: str, make) -> dict:
        """Speed-up of what `make()` returns (a slim .pt, or (onnx, imgsz)) against base `stem`, measured once."""
        m = self.state.data["measured"].setdefault(stem, {})
        if key not in m:
            from yoloprune.deploy.export import export
            from yoloprune.deploy.runtime import OrtRunner, interleaved

            import numpy as np

            what = make()
            onnx, size = what if isinstance(what, tuple) else (None, self.a.bench_imgsz)
            if onnx is None:
                onnx = self.cache / "slim" / f"{Path(what).stem}-{size}.onnx"
                if not onnx.exists():
                    export(what, imgsz=size, output=onnx, verbose=False)
            base = self.base_onnx(stem, self.a.bench_imgsz)[0]
            runners = [OrtRunner(base, self.a.bench_imgsz, 1, "cpu", self.a.threads),
                       OrtRunner(onnx, size, 1, "cpu", self.a.threads)]
            t0, t1 = (np.array(t) for t in interleaved(runners, 5, self.a.runs))
            ratios = t0 / t1
            m[key] = {"speedup": round(float(np.median(t0) / np.median(t1)), 3),
                      "p10": round(float(np.percentile(ratios, 10)), 3),
                      "p90": round(float(np.percentile(ratios, 90)), 3),
                      "ms": round(float(np.median(t1)) * 1e3, 2), "base_ms": round(float(np.median(t0)) * 1e3, 2)}
            self.save()
        return m[key]

    def cut(self, stem: str, kind: str, ratio: float, calibrated: bool = False) -> Path:
        from yoloprune import Slimmer

        out = self.cache / "slim" / f"{stem}-{kind}-{ratio:.2f}{'-cal' if calibrated else ''}.pt"
        if not out.exists():
            Slimmer(str(self.bases[stem]), ratio=ratio, importance="taylor" if calibrated else "l1",
                    rules="none" if kind == "uniform" else "yolo26", round_to=16, imgsz=self.a.bench_imgsz,
                    data=self.calibration() if calibrated else None).save(out)
        return out

    def target_cut(self, stem: str, target: float) -> dict:
        """The product's cut of base `stem` to measured speed-up `target` (`TargetSlimmer`, sensitivity allocation and
        its default max ratio, the calibration sample), searched once: {"path", "met", "max_ratio"}, or
        {"unreachable": why, "max_ratio"}. The cut file is the allocation benchmark's for its first calibration sample
        at that max ratio (the same search), so either benchmark reuses it."""
        from yoloprune.errors import UserError
        from yoloprune.slim.target import TargetSlimmer, default_max_ratio

        mr = default_max_ratio("sensitivity")
        out = alloc_cut(self.cache, stem, "sensitivity", target, mr, 0)
        record = out.with_suffix(".search.json")
        if not record.exists():
            ts = TargetSlimmer(str(self.bases[stem]), speedup=target, allocation="sensitivity", data=self.calibration(),
                               round_to=16, imgsz=self.a.bench_imgsz, threads=self.a.threads, runs=self.a.runs,
                               max_ratio=mr)
            ts.sensitivity_cache = self.cache / "sensitivity"
            try:
                slimmer = ts.search()
            except UserError as e:
                found = {"unreachable": f"sensitivity: {e}"}
            else:
                slimmer.save(out)
                found = {"met": ts.result.met, "searched": round(ts.result.reached, 3)}
            text = json.dumps(found)
            atomic_write(record, lambda tmp: Path(tmp).write_text(text))
        found = {**json.loads(record.read_text()), "max_ratio": mr}
        return found if "unreachable" in found else {**found, "path": out, "key": f"sensitivity-{target:g}x-mr{mr:g}"}

    def outdated(self, p: dict, runs: list[str]) -> bool:
        """Forget a `slim` point `p` the product's earlier defaults made (another max ratio: an earlier
        `TargetSlimmer` default), with its from-scratch point and the runs of `runs` (key prefixes); True if so."""
        if "slim" not in p or _current(p["slim"]):
            return False
        p.pop("slim")
        p.pop("scratch", None)
        s = self.state.data
        s["runs"] = {k: v for k, v in s["runs"].items() if not any(k.startswith(r) for r in runs)}
        return True

    def point_cut(self, stem: str, name: str, target: float, p: dict) -> Path | None:
        """Cut method `name` (`slim`, `rules` or `tp-floor`) of base `stem` to measured speed-up `target`; timed and
        validated once into `p[name]`. Returns the cut, or None where `name` cannot reach `target` (said in
        `p[name]`)."""
        from yoloprune.pipeline import validate

        if name == "slim":
            found = self.target_cut(stem, target)
            ident = {"target": target, "met": found.get("met"), "max_ratio": found["max_ratio"]}
        else:
            kind = KINDS[name]
            # a point keeps the cut it was first given (a later timing, e.g. --retime, may move the search)
            found = {"ratio": p[name]["ratio"]} if "ratio" in p.get(name, {}) else self.ratio_for(stem, kind, target)
            if "ratio" in found:
                found["path"] = self.cut(stem, kind, found["ratio"], calibrated=name == "rules")
                found["key"] = f"{kind}-{found['ratio']:.2f}"
            else:
                found["unreachable"] = f"{kind} {found['unreachable']}"
            ident = {"ratio": found.get("ratio")}
        if "unreachable" in found:
            p[name] = {k: v for k, v in found.items() if k in ("unreachable", "max_ratio")}
            return None
        if name not in p:
            p[name] = {**ident, **self.timed(found["key"], stem, lambda: found["path"]),
                       "cut": round(validate(found["path"], self.data, self.a.imgsz, self.a.batch)[1], 4)}
        return found["path"]

    def ratio_for(self, stem: str, kind: str, target: float) -> dict:
        known = {}

        def speedup_at(ratio):
            known[ratio] = self.timed(f"{kind}-{ratio:.2f}", stem, lambda: self.cut(stem, kind, ratio))["speedup"]
            known.update({float(k.split("-")[1]): v["speedup"] for k, v in self.state.data["measured"][stem].items()
                          if k.startswith(kind + "-")})
            return known[ratio]

        return search_ratio(speedup_at, target, self.a.max_ratio, known)

    def small_input(self, stem: str, target: float) -> dict:
        """The training size (a multiple of 32 below `--imgsz`) whose bench-scale size measures nearest `target`."""
        best = None
        for t in range(self.a.imgsz - 32, 31, -32):
            size = round(self.a.bench_imgsz * t / self.a.imgsz / 32) * 32
            m = self.timed(f"input-{size}", stem, lambda size=size: self.base_onnx(stem, size))
            if best is None or abs(m["speedup"] / target - 1) < abs(best["speedup"] / target - 1):
                best = {**m, "imgsz": t, "bench_imgsz": size}
            if m["speedup"] >= target:
                break
        return best

    def base_onnx(self, stem: str, size: int) -> tuple[Path, int]:
        """Base `stem` exported at input `size`, once: the bench size every timing compares against, or a smaller
        input."""
        from yoloprune.deploy.export import export

        onnx = self.cache / f"{stem}-{size}.onnx"
        if not onnx.exists():
            export(self.bases[stem], imgsz=size, output=onnx, verbose=False)
        return onnx, size

    def retime(self) -> None:
        """Time every chosen point again: the same architectures, fresh interleaved rounds against the base (keep the
        machine otherwise idle). A timing taken beside other work has wide per-round spreads; the figures a new
        timing replaces stay in the point's `earlier`."""
        from tqdm import tqdm

        timing = {k: k for k in ("speedup", "p10", "p90", "ms", "base_ms")}  # measurement field -> record field
        measured, done = self.state.data["measured"], {}
        todo = []  # (record, its base, timing key, make, measurement field -> record field)
        for stem, sps in self.state.data["points"].items():
            if "->" in stem:  # the sibling: the smaller model's latency (its target), and the larger cut to it
                large, small = stem.split("->")
                todo.append((sps, large, f"sibling-{small}",
                             lambda small=small: self.base_onnx(small, self.a.bench_imgsz), {"speedup": "target"}))
                sps = {"": {k: v for k, v in sps.items() if isinstance(v, dict) and k != "earlier"}}
                stem = large
            for p in sps.values():
                for name, q in p.items():
                    if "target" in q:
                        if not _current(q):
                            continue  # an earlier default's cut: the next run measures it again
                        found = self.target_cut(stem, q["target"])
                        todo.append((q, stem, found["key"], lambda path=found["path"]: path, timing))
                    elif "ratio" in q:
                        kind = KINDS[SCRATCH.get(name, name)]
                        todo.append((q, stem, f"{kind}-{q['ratio']:.2f}",
                                     lambda stem=stem, kind=kind, r=q["ratio"]: self.cut(stem, kind, r), timing))
                    elif "bench_imgsz" in q:
                        todo.append((q, stem, f"input-{q['bench_imgsz']}",
                                     lambda stem=stem, size=q["bench_imgsz"]: self.base_onnx(stem, size), timing))
        for q, stem, key, make, fields in tqdm(todo, desc="timing again", unit="point"):
            if (stem, key) not in done:  # a cut shared by two points (a cut and its scratch) is timed once
                measured.get(stem, {}).pop(key, None)
                done[stem, key] = self.timed(key, stem, make)
            q["earlier"] = {**q.get("earlier", {}), **{f: q[f] for f in fields.values()}}
            q.update({f: done[stem, key][k] for k, f in fields.items()})
        self.save()

    # -- runs ---------------------------------------------------------------------------------------------------
    def run(self, key: str, model, epochs: int, seed: int, imgsz: int | None = None, **keys) -> dict | None:
        """Train (or reuse) run `key`: a fine-tune of trained weights by the fine-tune recipe, a from-scratch run
        (`scratch` in its key) by the base's recipe; None while another process trains it."""
        from yoloprune.deploy.runtime import library_versions
        from yoloprune.pipeline import train_run

        runs = self.state.data["runs"]
        if key not in runs:
            # a run at another input size is named by that size: speed-ups that land on one size share its run
            name = (f"{key.split('@')[0]}-{imgsz}px-{seed}" if imgsz else key.replace("@", "-")).replace("|", "-")
            with _claim(self.cache / "runs" / f"{name}.claim") as mine:
                if not mine:  # another process of this benchmark is training it
                    return None
                recipe = self.recipe(seed, imgsz or self.a.imgsz)
                r = train_run(model, self.data, self.cache / "runs", name, epochs,
                              recipe if "|scratch@" in key else recipe.finetune(), verbose=False, **keys)
            runs[key] = {"map50_95": r.map50_95, "map50": r.map50, "epochs": epochs, "seconds": r.seconds,
                         "versions": library_versions()}
            self.save()
        return runs[key]

    def points(self, stem: str) -> tuple[list, list]:
        """Cut, time and validate every point of base `stem`; returns its training jobs: (fine-tunes, from-scratch
        runs). `main` cuts and times every model first (the machine must be quiet then), then trains the fine-tunes
        and last the long from-scratch runs: an interrupted run has its cheapest answers first."""
        from tqdm import tqdm

        from yoloprune.checkpoint import load_model, save_checkpoint
        from yoloprune.pipeline import kd_keys, validate

        a, base = self.a, self.bases[stem]
        b = self.state.data["bases"][stem]
        pts = self.state.data["points"].setdefault(stem, {})
        jobs, scratch_jobs = [], []
        for sp in tqdm(a.speedups, desc=f"{stem} cuts and timing", unit="speed-up"):
            seeds = a.seeds if sp == a.seed_speedup else a.seeds[:1]
            p = pts.setdefault(f"{sp:g}", {})
            cuts = {}  # method -> its cut, for the fine-tunes and the from-scratch runs
            for name in ("slim", "rules", "tp-floor"):
                if name not in a.methods and not any(SCRATCH[m] == name for m in a.methods if m in SCRATCH):
                    continue
                if name == "slim":
                    self.outdated(p, [f"{stem}|slim@{sp:g}|", f"{stem}|scratch@{sp:g}|"])
                slim = self.point_cut(stem, name, sp, p)
                if slim is None:
                    continue
                cuts[name] = slim
                keys = kd_keys(base) if name in ("slim", "rules") else {"precise_bn": False}
                if name in a.methods:
                    jobs += [(f"{stem}|{name}@{sp:g}|{seed}", slim, a.epochs, seed, None, keys) for seed in seeds]
            for name, of in SCRATCH.items():
                if name not in a.methods or of not in cuts:
                    continue
                scratch = cuts[of].with_name(f"{cuts[of].stem}-scratch.pt")
                if not scratch.exists():
                    loaded = load_model(cuts[of])
                    save_checkpoint(reinitialize(loaded.model), scratch, loaded)
                p.setdefault(name, {**p[of], "cut": None})
                scratch_jobs += [(f"{stem}|{name}@{sp:g}|{seed}", scratch, b["epochs"] + a.epochs, seed, None, {})
                                 for seed in seeds]
            if "small-input" not in a.methods:
                self.save()
                continue
            small = self.small_input(stem, sp)
            p.setdefault("small-input", {**small, "cut": round(validate(base, self.data, small["imgsz"], a.batch)[1],
                                                                  4)})
            jobs += [(f"{stem}|small-input@{sp:g}|{seed}", base, a.epochs, seed, p["small-input"]["imgsz"], {})
                     for seed in seeds]
            self.save()
        return [(f"{stem}|reference|{seed}", base, a.epochs, seed, None, {}) for seed in a.seeds] + jobs, scratch_jobs

    def sibling(self, small: str, large: str) -> list:
        """The larger model slimmed to the smaller's measured latency (cut and timed now), the product's way and, when
        `rules` is measured, the rules way, against the smaller trained as long; returns its training jobs."""
        from yoloprune.pipeline import kd_keys

        a = self.a
        lat = self.timed(f"sibling-{small}", large, lambda: self.base_onnx(small, a.bench_imgsz))
        p = self.state.data["points"].setdefault(f"{large}->{small}", {"target": lat["speedup"]})
        self.outdated(p, [f"{large}|sibling|"])
        # the search's target: the one its cut was made for (a re-timing moves `target`), else the latest measurement
        target = p.get("slim", {}).get("target") or round(p["target"], 2)
        jobs = []
        for name in ("slim", "rules"):
            if name != "slim" and name not in a.methods:
                continue
            slim = self.point_cut(large, name, target, p)
            if slim is None:
                continue
            tag = "sibling" if name == "slim" else "sibling-rules"
            jobs += [(f"{large}|{tag}|{seed}", slim, a.epochs, seed, None, kd_keys(self.bases[large]))
                     for seed in a.seeds]
        self.save()
        return jobs

    def train(self, jobs: list) -> None:
        from tqdm import tqdm

        for key, model, epochs, seed, imgsz, keys in tqdm(jobs, desc="training runs", unit="run"):
            self.run(key, model, epochs, seed, imgsz, **keys)

    # -- output -------------------------------------------------------------------------------------------------
    def finals(self, stem: str, name: str, sp=None) -> list[float]:
        tag = f"{name}@{sp:g}" if sp is not None else name
        return [r["map50_95"] for k, r in self.state.data["runs"].items() if k.startswith(f"{stem}|{tag}|")]

    def table(self) -> str:
        s, a = self.state.data, self.a
        lines = [f"mAP50-95 (Ultralytics' validator, {a.imgsz} px) after {a.epochs} fine-tune epochs: mean ± half the "
                 f"range over seeds (n); speed-up: ONNX Runtime CPU {a.bench_imgsz} px, {a.threads} threads, median "
                 f"of {a.runs} interleaved rounds (p10-p90 of the per-round ratios)", "",
                 "| model | point | speed-up | right after the cut | after fine-tuning | n | % of reference |",
                 "|---|---|---|---|---|---|---|"]
        for stem, b in s["bases"].items():
            ref = self.finals(stem, "reference")
            refm = statistics.mean(ref) if ref else float("nan")
            lines.append(f"| {stem} | base ({b['epochs']} epochs, best {b['best_epoch']}) | 1.00x | {b['map50_95']:.4f} "
                         f"| | | |")
            lines.append(f"| {stem} | reference (base + {a.epochs} epochs) | 1.00x | | {_ms(ref)} | {len(ref)} | "
                         "100 % |")
            for sp, p in s["points"].get(stem, {}).items():
                for name in METHODS + EXTRA:
                    q = p.get(name)
                    if not q:
                        continue
                    if "unreachable" in q:
                        lines.append(f"| {stem} | {name} @{sp}x | {q['unreachable']} | | | | |")
                        continue
                    v = self.finals(stem, name, float(sp))
                    if name in SCRATCH and not v:
                        continue  # not trained (yet)
                    size = f", {q['imgsz']} px" if name == "small-input" else ""
                    cut = "" if q.get("cut") is None else f"{q['cut']:.4f}"
                    pct = f"{statistics.mean(v) / refm:.0%}" if v and refm == refm and refm else "-"
                    missed = " (target not met)" if q.get("met") is False else ""
                    lines.append(f"| {stem} | {name} @{sp}x{size} | {q['speedup']:.2f}x ({q['p10']:.2f}-{q['p90']:.2f})"
                                 f"{missed} | {cut} | {_ms(v)} | {len(v)} | {pct} |")
        for key, p in s["points"].items():
            if "->" not in key:
                continue
            large, small = key.split("->")
            ref = self.finals(small, "reference")
            for name, tag in (("slim", "sibling"), ("rules", "sibling-rules")):
                q = p.get(name, {})
                if "unreachable" in q:
                    lines.append(f"| {large} | {tag}: slimmed to {small}'s latency | {q['unreachable']} | | | | |")
                elif "speedup" in q:
                    v = self.finals(large, tag)
                    lines.append(f"| {large} | {tag} ({name}): slimmed to {small}'s latency ({p['target']:.2f}x) | "
                                 f"{q['speedup']:.2f}x ({q['p10']:.2f}-{q['p90']:.2f}) | {q['cut']:.4f} | {_ms(v)} | "
                                 f"{len(v)} | {small} reference: {_ms(ref)} |")
        return "\n".join(lines)

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s = self.state.data
        stems = list(s["bases"])
        fig, axes = plt.subplots(1, len(stems), figsize=(6.5 * len(stems), 4.5), squeeze=False)
        for ax, stem in zip(axes[0], stems):
            for name, marker, color in zip(METHODS + EXTRA, "oDsx^v", ("C0", "C4", "C1", "C2", "C3", "C5")):
                xs, ys, lo, hi = [], [], [], []
                for sp, p in s["points"].get(stem, {}).items():
                    v = self.finals(stem, name, float(sp))
                    if v and "speedup" in p.get(name, {}):
                        xs.append(p[name]["speedup"])
                        ys.append(statistics.mean(v))
                        lo.append(ys[-1] - min(v))
                        hi.append(max(v) - ys[-1])
                if xs:
                    order = sorted(range(len(xs)), key=xs.__getitem__)
                    ax.errorbar([xs[i] for i in order], [ys[i] for i in order], capsize=3, marker=marker, label=name,
                                color=color, yerr=[[lo[i] for i in order], [hi[i] for i in order]])
            ref = self.finals(stem, "reference")
            if ref:
                ax.errorbar([1.0], [statistics.mean(ref)], yerr=[[statistics.mean(ref) - min(ref)],
                                                                 [max(ref) - statistics.mean(ref)]],
                            marker="*", ms=12, color="k", capsize=3, ls="none", label="reference (base + epochs)")
            for key, p in s["points"].items():  # the sibling question on the larger model's axes
                large, sep, small = key.partition("->")
                if not sep or large != stem:
                    continue
                marks = [(p[n]["speedup"], self.finals(large, tag), dict(marker=m, color=c),
                          f"{tag}: {small}'s latency")
                         for n, tag, m, c in (("slim", "sibling", "D", "m"), ("rules", "sibling-rules", "d", "C6"))
                         if "speedup" in p.get(n, {})]
                marks.append((p["target"], self.finals(small, "reference"), dict(marker="P", color="g"),
                              f"{small} reference, at its speed-up"))
                for x, v, style, label in marks:
                    if v:
                        m = statistics.mean(v)
                        ax.errorbar([x], [m], yerr=[[m - min(v)], [max(v) - m]], capsize=3, ms=9, ls="none",
                                    label=label, **style)
            ax.set_title(f"{stem}: base {s['bases'][stem]['map50_95']:.3f} after {s['bases'][stem]['epochs']} epochs")
            ax.set_xlabel(f"measured ONNX Runtime CPU speed-up ({self.a.bench_imgsz} px)")
            ax.set_ylabel(f"mAP50-95 after {self.a.epochs} epochs")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)


@contextlib.contextmanager
def _claim(path: Path):
    """Yields whether this process may train the run `path` names: another live process of the benchmark may hold
    it (its pid in the file); a claim left by a killed process is taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or 0), 0)
                yield False  # alive: it is training this run
                return
            except (ProcessLookupError, ValueError, OSError):
                path.unlink(missing_ok=True)  # its process is gone
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)
        return
    yield False


def _current(q: dict) -> bool:
    """Whether `slim` record `q` was made with the product's current default max ratio (0.75 before it was recorded)."""
    from yoloprune.slim.target import default_max_ratio

    return q.get("max_ratio", 0.75) == default_max_ratio("sensitivity")


def _upgrade(s: dict) -> bool:
    """Bring an earlier state (its own cache, or an adopted `--json`) to this layout; True when it changed. Before
    version 2, `slim` was the shortcut-rules plan, `scratch` its architecture and the sibling one rules cut: those
    records are `rules`, `scratch-rules` and `sibling-rules` now (their run folders keep their old names)."""
    if s.get("version", 1) >= 2:
        return False
    names = {"slim": "rules", "scratch": "scratch-rules", "sibling": "sibling-rules"}
    for stem, sps in s.get("points", {}).items():
        if "->" in stem:  # one flat rules cut beside the smaller model's latency (`target`)
            cut = {k: sps.pop(k) for k in list(sps) if k != "target"}
            earlier = cut.get("earlier", {})
            if "target" in earlier:
                sps["earlier"] = {"target": earlier.pop("target")}
            if cut:
                sps["rules"] = cut
            continue
        for p in sps.values():
            for old in ("scratch", "slim"):  # scratch first: `scratch-rules` takes its name before `slim` leaves
                if old in p:
                    p[names[old]] = p.pop(old)
    runs = {}
    for key, v in s.get("runs", {}).items():
        stem, point, *rest = key.split("|")
        name, at, sp = point.partition("@")
        runs["|".join([stem, names.get(name, name) + at + sp, *rest])] = v
    s["runs"], s["version"] = runs, 2
    return True


def _rank(key: str, seed_speedup: float) -> int:
    """Training order of a fine-tune (the sort is stable): the acceptance questions first (the reference, the product's
    slim and the sibling over every seed), then the other methods at the seeded speed-up, then the other speed-ups;
    the from-scratch runs likewise, after every fine-tune."""
    point = key.split("|")[1]
    if point in ("reference", "sibling", "sibling-rules", f"slim@{seed_speedup:g}", f"rules@{seed_speedup:g}"):
        return 0
    return 1 if point.endswith(f"@{seed_speedup:g}") else 2


def _ms(v: list[float]) -> str:
    if not v:
        return "-"
    return f"{statistics.mean(v):.4f}" + (f" ± {(max(v) - min(v)) / 2:.4f}" if len(v) > 1 else "")


def _curve(run: Path) -> list[float]:
    from yoloprune.demo import _curve as read

    return [round(v, 4) for v in read(run)]


def parser() -> argparse.ArgumentParser:
    """The trade-off benchmark's options (other benchmarks build its bases with them)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"small and short: {QUICK}")
    p.add_argument("--models", default="yolo26n.yaml", help="model YAMLs, smallest first (default yolo26n.yaml)")
    p.add_argument("--data", help="data.yaml of your own (default: the synthetic set, made here)")
    p.add_argument("--preset", default="normal", choices=("normal", "hard", "digits"),
                   help="built-in set: normal shapes, hard (8 classes, up to 12 smaller, thinner objects, clutter) "
                        "or digits (real handwritten digits composited into scenes; needs scikit-learn)")
    p.add_argument("--train", type=int, default=256, help="synthetic training images (default 256)")
    p.add_argument("--val", type=int, default=64, help="synthetic validation images (default 64)")
    p.add_argument("--imgsz", type=int, default=128, help="training / validation size (default 128)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-epochs", type=int, default=200, help="cap of the base's training (default 200)")
    p.add_argument("--patience", type=int, default=20, help="epochs without a new best that end it (default 20)")
    p.add_argument("--epochs", type=int, default=10, help="fine-tune epochs (and the reference's extra; default 10)")
    p.add_argument("--speedups", default="1.5,2,3", help="measured speed-ups (default 1.5,2,3)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds at --seed-speedup (default 0,1,2)")
    p.add_argument("--seed-speedup", type=float, default=2.0, help="the speed-up measured over every seed (default 2)")
    p.add_argument("--bench-imgsz", type=int, default=640, help="size of the latency figures (default 640)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    p.add_argument("--runs", type=int, default=30, help="interleaved timing rounds (default 30)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"the points measured (default: {','.join(METHODS)}; also {','.join(EXTRA)}); the "
                        "reference always")
    p.add_argument("--max-ratio", type=float, default=0.9, help="largest ratio the searches try (default 0.9)")
    p.add_argument("--adopt", default=str(ROOT / "results" / "tradeoff.json"),
                   help="a fresh cache starts from this earlier --json's finished runs and timings when its settings "
                        "and machine match and its bases reproduce (default: the committed results; '' for none)")
    p.add_argument("--retime", action="store_true",
                   help="time every chosen point again on an idle machine (the earlier figures are kept), then report")
    p.add_argument("--report", action="store_true",
                   help="only print and write what the state holds so far (an unfinished run's results)")
    p.add_argument("--json", help="write the state and the table here")
    p.add_argument("--png", help="write the plot here")
    return p


def options(argv=None) -> argparse.Namespace:
    """The parsed options, `--quick` applied and the lists split (other scripts drive the benchmark with them)."""
    a = parser().parse_args(argv)
    if a.quick:
        given = {k for k in vars(a) if f"--{k.replace('_', '-')}" in (argv or sys.argv[1:])}
        for k, v in QUICK.items():
            if k not in given:
                setattr(a, k, v)
    a.speedups = [float(x) for x in str(a.speedups).split(",") if x.strip()]
    a.seeds = [int(x) for x in str(a.seeds).split(",") if x.strip()]
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = set(a.methods) - set(METHODS + EXTRA)
    if unknown:
        print(f"error: unknown --methods {', '.join(sorted(unknown))}: choose from {', '.join(METHODS + EXTRA)}")
        raise SystemExit(2)
    return a


def main(argv=None) -> int:
    a = options(argv)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bench = Bench(a)
    if a.retime:
        bench.prepare(models)
        bench.retime()
    elif not a.report:
        bench.prepare(models)
        print("slimming, timing (keep the machine otherwise idle) and training every point")
        finetunes, scratch = [], []
        for m in models:
            f, s = bench.points(Path(m).stem)
            finetunes, scratch = finetunes + f, scratch + s
        if len(models) > 1:
            finetunes += bench.sibling(Path(models[0]).stem, Path(models[1]).stem)
        rank = lambda job: _rank(job[0], a.seed_speedup)  # noqa: E731
        bench.train(sorted(finetunes, key=rank) + sorted(scratch, key=rank))
    table = bench.table()
    print(table)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({**bench.state.data, "args": vars(a), "table": table}, indent=2))
        print(f"saved {a.json}")
    if a.png:
        bench.plot(Path(a.png))
        print(f"saved {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
