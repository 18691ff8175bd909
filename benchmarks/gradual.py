"""Gradual against one-shot pruning inside training, at equal epochs and equal final widths, over several seeds.

On the trade-off benchmark's converged base (its cache; trained there when missing) and the rules ratio its `slim`
point measured at `--speedup` (searched here when missing), `--epochs` epochs of training with distillation from the
base and precise BatchNorm, cutting with taylor scores and judged recalibration:

- `one-shot`: the whole cut at the start of the first epoch (`prune_at_epoch=0`);
- `gradual`: the same final widths in `--steps` steps from epoch 0 to `--end-epoch` (`pruning_steps`, cubic schedule).

Both end at exactly the same architecture (checked), so they run equally fast; mAP50-95 of best.pt by Ultralytics'
validator, once per training seed of `--seeds`. Resumable.

    python benchmarks/gradual.py --json benchmarks/results/gradual.json
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

from common import State, tradeoff_base, write_results  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speedup", type=float, default=2.0, help="the trade-off point whose ratio is used (default 2)")
    p.add_argument("--steps", type=int, default=3, help="steps of the gradual cut (default 3)")
    p.add_argument("--end-epoch", type=int, default=4, help="epoch of the gradual cut's last step (default 4)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    p.add_argument("--report", action="store_true", help="only print and write what the state holds so far")
    p.add_argument("--json", help="write the state and the table here")
    a, rest = p.parse_known_args(argv)
    t, bench, stem = tradeoff_base(rest)
    state = State(bench.cache / f"gradual-{a.speedup:g}x-{a.steps}-{a.end_epoch}.json", {"runs": {}})
    seeds = [int(x) for x in a.seeds.split(",") if x]
    if not a.report:
        run_all(a, t, bench, stem, state, seeds)
    table = format_table(a, t, state)
    write_results(a.json, state, a, table)
    return 0


def run_all(a, t, bench, stem, state, seeds) -> None:
    from tqdm import tqdm

    from yoloprune.checkpoint import load_model
    from yoloprune.pipeline import kd_keys, train_run
    from yoloprune.slim.report import layer_widths

    bench.prepare([t.models.split(",")[0]])
    base = bench.bases[stem]
    found = bench.ratio_for(stem, "rules", a.speedup)
    if "ratio" not in found:
        raise SystemExit(f"the rules plan does not reach {a.speedup:g}x: {found['unreachable']}")
    state.data["ratio"], state.data["speedup"] = found["ratio"], found["speedup"]
    common = {**kd_keys(base), "pruning": True, "pruning_ratio": found["ratio"], "prune_at_epoch": 0,
              "importance_metric": "taylor", "round_to": 16}
    ways = {"one-shot": {}, "gradual": {"pruning_steps": a.steps, "pruning_end_epoch": a.end_epoch}}
    widths = {}
    for seed in tqdm(seeds, desc="seeds", unit="seed"):
        for way, keys in ways.items():
            key = f"{way}|{seed}"
            r = train_run(base, bench.data, bench.cache / "runs", f"gradual-{way}-{a.speedup:g}x-{a.steps}-"
                          f"{a.end_epoch}-{seed}", t.epochs, bench.recipe(seed).finetune(), verbose=False, **common, **keys)
            widths[way] = layer_widths(load_model(r.weights).model)
            state.data["runs"][key] = {"map50_95": r.map50_95, "map50": r.map50, "seconds": r.seconds,
                                       "params": sum(p.numel() for p in load_model(r.weights).model.parameters())}
            state.save()
        if widths["one-shot"] != widths["gradual"]:
            raise SystemExit("gradual and one-shot pruning ended at different widths: not a fair comparison")


def format_table(a, t, state) -> str:
    lines = [f"rules ratio {state.data.get('ratio')} (measured {state.data.get('speedup')}x); {t.epochs} epochs with "
             f"distillation; gradual: {a.steps} steps from epoch 0 to {a.end_epoch}; mAP50-95 at {t.imgsz} px, mean "
             "± half the range over seeds (n)", "", "| way | params | mAP50-95 | n |", "|---|---|---|---|"]
    for way in ("one-shot", "gradual"):
        runs = [v for k, v in state.data["runs"].items() if k.split("|")[0] == way]
        if runs:
            v = [r["map50_95"] for r in runs]
            spread = f" ± {(max(v) - min(v)) / 2:.4f}" if len(v) > 1 else ""
            lines.append(f"| {way} | {runs[0]['params']:,} | {statistics.mean(v):.4f}{spread} | {len(v)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
