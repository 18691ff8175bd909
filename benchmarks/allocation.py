"""Widths chosen three ways at one measured speed-up: mAP right after the cut and after fine-tuning.

On the trade-off benchmark's converged base (its cache; trained there when missing), for each allocation of
`--allocations`:

- `rules`: the shortcut-rules plan, its ratio searched to the measured speed-up;
- `latency`: greedy widths from a measured per-layer latency table, the most speed per MAC removed;
- `sensitivity`: each group's measured loss rise when thinned alone (BatchNorm recalibrated) against the same latency
  table, the most speed per loss, the rules only setting floors;

`TargetSlimmer` searches `--speedup` measured on ONNX Runtime CPU at `--bench-imgsz` (taylor scores, judged
BatchNorm recalibration), once per calibration sample of `--calib-seeds` (the spread right after the cut), and mAP50-95
is read with Ultralytics' validator right after the cut. The cut of the first calibration sample is then fine-tuned
`--epochs` epochs with distillation from the base and precise BatchNorm, once per training seed of `--seeds`.
Resumable: every search and run is kept in the state file at once.

    python benchmarks/allocation.py --json benchmarks/results/allocation.json
    python benchmarks/allocation.py --models yolo26s.yaml ...      # the trade-off benchmark's yolo26s base
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from yoloprune.offline import use_offline  # noqa: E402

use_offline(ROOT / "cache" / "config")

from common import State, alloc_cut, alloc_tag, tradeoff_base, write_results  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--allocations", default="rules,latency,sensitivity")
    p.add_argument("--speedup", type=float, default=2.0, help="measured speed-up asked (default 2)")
    p.add_argument("--calib-seeds", default="0,1,2", help="calibration samples, for the spread after the cut")
    p.add_argument("--seeds", default="0", help="training seeds of the fine-tunes (default 0)")
    p.add_argument("--epochs", type=int, default=10, help="fine-tune epochs (default 10)")
    p.add_argument("--bench-imgsz", type=int, default=640)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30, help="interleaved timing rounds per candidate (default 30)")
    p.add_argument("--max-ratio", type=float, default=0.75,
                   help="most of a group's channels a cut removes (x its rule multiplier; default 0.75, the product's)")
    p.add_argument("--importance", default="taylor",
                   help="channel scorer of every cut and of the sensitivity measurement (default taylor, the product's "
                        "with data; any of yoloprune's scorers)")
    p.add_argument("--report", action="store_true", help="only print and write what the state holds so far")
    p.add_argument("--json", help="write the state and the table here")
    a, rest = p.parse_known_args(argv)
    from yoloprune.importance import IMPORTANCES
    from yoloprune.importance.data_aware import DATA_AWARE

    if a.importance not in (*IMPORTANCES, *DATA_AWARE):
        p.error(f"--importance {a.importance!r} is unknown: use one of {', '.join((*IMPORTANCES, *DATA_AWARE))}")
    t, bench, stem = tradeoff_base(rest)  # the base: the trade-off benchmark's, by its own options
    a.tag = alloc_tag(a.speedup, a.max_ratio, a.importance)  # names its state and runs
    state = State(bench.cache / f"allocation-{stem}-{a.tag}.json", {"cuts": {}, "runs": {}})
    allocations = [x for x in a.allocations.split(",") if x]
    cseeds = [int(x) for x in a.calib_seeds.split(",") if x]
    seeds = [int(x) for x in a.seeds.split(",") if x]
    if not a.report:
        bench.prepare([t.models.split(",")[0]])
        run_all(a, t, bench, stem, state, allocations, cseeds, seeds)
    table = format_table(a, t, bench, stem, state, allocations)
    write_results(a.json, state, a, table)
    return 0


def run_all(a, t, bench, stem, state, allocations, cseeds, seeds) -> None:
    from tqdm import tqdm

    from yoloprune.calibrate import load_calibration
    from yoloprune.pipeline import kd_keys, train_run, validate
    from yoloprune.slim.target import TargetSlimmer

    base = bench.bases[stem]
    cuts = state.data["cuts"]
    for alloc in tqdm(allocations, desc="allocations (cut and timed: keep the machine quiet)", unit="allocation"):
        for cs in cseeds:
            key = f"{alloc}|{cs}"
            out = alloc_cut(bench.cache, stem, alloc, a.speedup, a.max_ratio, cs, a.importance)
            if key in cuts and out.exists():
                continue
            calib = load_calibration(bench.data, t.imgsz, seed=cs)
            t0 = time.perf_counter()
            ts = TargetSlimmer(str(base), speedup=a.speedup, allocation=alloc, data=calib, round_to=16,
                               importance=a.importance,
                               imgsz=a.bench_imgsz, threads=a.threads, runs=a.runs, max_ratio=a.max_ratio)
            ts.sensitivity_cache = bench.cache / "sensitivity"
            slimmer = ts.search()
            slimmer.save(out)
            r = ts.result
            entry = {"speedup": round(r.reached, 3), "p10": round(r.p10, 3), "p90": round(r.p90, 3),
                     "met": r.met, "ratio": r.ratio, "gflops": round(slimmer.report.after["gflops"], 3),
                     "params": slimmer.report.after["params"], "seconds": round(time.perf_counter() - t0, 1),
                     "map50_95": round(validate(out, bench.data, t.imgsz, t.batch)[1], 4)}
            if ts.sensitivity is not None:
                entry["sensitivity_seconds"] = ts.sensitivity.seconds
                entry["taylor_agreement"] = ts.sensitivity.agreement()
            cuts[key] = entry
            state.save()
    for alloc in allocations:
        out = alloc_cut(bench.cache, stem, alloc, a.speedup, a.max_ratio, cseeds[0], a.importance)
        for seed in tqdm(seeds, desc=f"{alloc} fine-tunes", unit="run"):
            key = f"{alloc}|{seed}"
            if key not in state.data["runs"]:
                name = f"alloc-{stem}-{alloc}-{a.tag}-{seed}"
                r = train_run(out, bench.data, bench.cache / "runs", name, a.epochs, bench.recipe(seed).finetune(),
                              verbose=False, **kd_keys(base))
                state.data["runs"][key] = {"map50_95": r.map50_95, "map50": r.map50, "seconds": r.seconds}
                state.save()


def format_table(a, t, bench, stem, state, allocations) -> str:
    b = bench.state.data["bases"].get(stem, {})
    ref = [r["map50_95"] for k, r in bench.state.data["runs"].items() if k.startswith(f"{stem}|reference|")]
    lines = [f"{stem}, base {b.get('map50_95', float('nan')):.4f} ({b.get('epochs', '?')} epochs); reference (base + "
             f"{t.epochs} epochs) {_ms(ref)}; target {a.speedup:g}x on ONNX Runtime CPU {a.bench_imgsz} px, "
             f"max ratio {a.max_ratio:g}, {a.importance} scores, "
             f"{a.threads} threads; mAP50-95 at {t.imgsz} px: mean ± half the range (n)", "",
             "| allocation | measured speed-up | GFLOPs | right after the cut (calibration samples) | after "
             f"{a.epochs} KD epochs (seeds) | % of reference |", "|---|---|---|---|---|---|"]
    for alloc in allocations:
        cuts = [v for k, v in state.data["cuts"].items() if k.split("|")[0] == alloc]
        runs = [v["map50_95"] for k, v in state.data["runs"].items() if k.split("|")[0] == alloc]
        if not cuts:
            continue
        sp = [c["speedup"] for c in cuts]
        pct = f"{statistics.mean(runs) / statistics.mean(ref):.0%}" if runs and ref else "-"
        lines.append(f"| {alloc} | {_ms(sp, 2)}x | {statistics.mean(c['gflops'] for c in cuts):.2f} | "
                     f"{_ms([c['map50_95'] for c in cuts])} ({len(cuts)}) | {_ms(runs)} ({len(runs)}) | {pct} |")
    sens = [v for k, v in state.data["cuts"].items() if v.get("sensitivity_seconds") is not None]
    if sens:
        v = sens[0]
        agree = v.get("taylor_agreement")
        lines += ["", f"sensitivity: {v['sensitivity_seconds']:.0f} s to measure" + (
            "" if agree is None else f", Spearman agreement of the Taylor estimate with the measured rises {agree:.2f}")]
    return "\n".join(lines)


def _ms(v, digits: int = 4) -> str:
    if not v:
        return "-"
    return f"{statistics.mean(v):.{digits}f}" + (f" ± {(max(v) - min(v)) / 2:.{digits}f}" if len(v) > 1 else "")


if __name__ == "__main__":
    sys.exit(main())
