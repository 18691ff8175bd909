"""How the fine-tune after a deep cut should learn: its recipe (learning rate, augmentation schedule, ...), with and
without distillation, from two scorers' cuts, over seeds.

On the trade-off benchmark's converged base (its cache; trained there when missing) and its `rules` plan at
`--speedup` (the rules ratio it measured; searched here when missing), cut by each scorer of `--cuts` (`taylor`: with
calibration data and judged BatchNorm recalibration, the trade-off's `rules`; `l1`: magnitude, no data), `--epochs`
epochs with each recipe of `--recipes` (`default`: the base's recipe, AdamW lr0 0.002, 1 warm-up epoch, linear
decay to 1 %, Ultralytics' `close_mosaic` 10; a recipe changes any of its keys; the pipeline's fine-tune recipe,
`Recipe.finetune()`, is `close_mosaic=0`, from this study), with distillation from the base (`kd`) and without
(`plain`), once per training seed of `--seeds`. The base itself is trained by every recipe too (`reference`, without
distillation): the equally-trained base of that recipe. `--plans uniform` adds the cuts of one uniform ratio searched to
the same speed-up (the trade-off's `tp-floor` plan), named `uniform-<scorer>`. mAP50-95 of best.pt by Ultralytics'
validator. Resumable; two processes may share one state when they train different runs. `--models yolo26s.yaml`
studies the trade-off's yolo26s base.

    python benchmarks/finetune.py --recipes "default;lr0=0.004;close_mosaic=0" --json benchmarks/results/finetune.json
"""

from __future__ import annotations

import argparse
import dataclasses
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
    p.add_argument("--speedup", type=float, default=2.0, help="the trade-off point whose cut is fine-tuned (default 2)")
    p.add_argument("--recipes", default="default;lr0=0.004;close_mosaic=0",
                   help="';'-separated recipes, each 'default' or comma-separated key=value training keys "
                        "(default: default;lr0=0.004;close_mosaic=0)")
    p.add_argument("--ways", default="kd,plain", help="kd (distillation from the base), plain (default both)")
    p.add_argument("--cuts", default="taylor,l1", help="scorers of the cut: taylor (calibrated), l1 (default both)")
    p.add_argument("--plans", default="rules",
                   help="width plans: rules (the shortcut-rules plan, the trade-off's rules), uniform (one ratio for "
                        "every group, the trade-off's tp-floor); each searched to --speedup (default rules)")
    p.add_argument("--who", default="slim,reference", help="what is trained: slim, reference (default both)")
    p.add_argument("--seeds", default="0,1", help="training seeds (default 0,1)")
    p.add_argument("--report", action="store_true", help="only print and write what the state holds so far")
    p.add_argument("--json", help="write the state and the table here")
    a, rest = p.parse_known_args(argv)
    unknown = [plan for plan in a.plans.split(",") if plan not in ("rules", "uniform")]  # the trade-off's plan kinds
    if unknown:
        p.error(f"unknown --plans {','.join(unknown)}: rules or uniform")
    try:
        for recipe in a.recipes.split(";"):
            parse_recipe(recipe)
    except ValueError as e:
        p.error(f"--recipes: {e}")
    t, bench, stem = tradeoff_base(rest)
    tag = f"{a.speedup:g}x" + ("" if t.epochs == 10 else f"-{t.epochs}ep")  # the 10-epoch study has no suffix
    state = State(bench.cache / f"finetune-{stem}-{tag}.json", {"runs": {}})
    if not a.report:
        run_all(a, t, bench, stem, state, tag)
    write_results(a.json, state, a, format_table(t, state))
    return 0


def parse_recipe(text: str) -> dict:
    """'lr0=0.004,close_mosaic=0,precise_bn=False' -> {"lr0": 0.004, "close_mosaic": 0, "precise_bn": False};
    'default' -> {}."""
    from yoloprune.train.config import parse_value

    keys = {}
    for part in text.split(","):
        part = part.strip()
        if not part or part == "default":
            continue
        if "=" not in part:
            raise ValueError(f"recipe part {part!r} is not key=value")
        k, v = (x.strip() for x in part.split("=", 1))
        keys[k] = parse_value(v)
    return keys


def run_all(a, t, bench, stem, state, tag: str) -> None:
    from tqdm import tqdm

    from yoloprune.pipeline import kd_keys, train_run

    bench.prepare([t.models.split(",")[0]])
    base = bench.bases[stem]
    state.data["base"] = bench.state.data["bases"][stem]["map50_95"]
    models, cuts = {("reference", "-"): base}, []
    for plan in a.plans.split(","):
        found = bench.ratio_for(stem, plan, a.speedup)
        if "ratio" not in found:
            raise SystemExit(f"the {plan} plan does not reach {a.speedup:g}x: {found['unreachable']}")
        if plan == "rules":  # the table's heading names the rules cut; the others carry theirs in the cut's name
            state.data["ratio"], state.data["speedup"] = found["ratio"], found["speedup"]
        else:
            state.data.setdefault("plans", {})[plan] = {"ratio": found["ratio"], "speedup": found["speedup"]}
        for cut in a.cuts.split(","):
            cuts.append(_cut_name(plan, cut))
            models[("slim", cuts[-1])] = bench.cut(stem, plan, found["ratio"], calibrated=cut == "taylor")
    recipes = [r.strip() for r in a.recipes.split(";") if r.strip()]
    jobs = [(who, cut, way, recipe, int(seed)) for seed in a.seeds.split(",") for recipe in recipes
            for who in a.who.split(",") for cut in (cuts if who == "slim" else ["-"])
            for way in (a.ways.split(",") if who == "slim" else ["plain"])]
    for who, cut, way, recipe, seed in tqdm(jobs, desc="fine-tunes", unit="run"):
        key = f"{who}|{cut}|{way}|{recipe}|{seed}"
        if key in state.data["runs"]:
            continue
        keys = {**(kd_keys(base) if way == "kd" else {}), **parse_recipe(recipe)}
        fields = {f.name for f in dataclasses.fields(bench.recipe(seed))}
        settings = dataclasses.replace(bench.recipe(seed), **{k: v for k, v in keys.items() if k in fields})
        name = "-".join(["ft", stem, tag, who, cut, way, recipe.replace("=", "").replace(",", "+"), str(seed)])
        r = train_run(models[(who, cut)], bench.data, bench.cache / "runs", name, t.epochs, settings, verbose=False,
                      **{k: v for k, v in keys.items() if k not in fields})
        state.data["runs"][key] = {"map50_95": r.map50_95, "map50": r.map50, "seconds": r.seconds}
        state.save()


def _cut_name(plan: str, cut: str) -> str:
    """The cut's name in keys and tables: the scorer for the rules plan (as the study began), else plan-scorer."""
    return cut if plan == "rules" else f"{plan}-{cut}"


def format_table(t, state) -> str:
    runs = state.data["runs"]
    base = state.data.get("base")
    lines = [f"{t.epochs} epochs after the rules cut at {state.data.get('speedup')}x (ratio {state.data.get('ratio')}),"
             f" and the base trained the same ({t.imgsz} px; base {base}); mAP50-95 of best.pt, mean ± half the range"
             " over seeds (n)"
             + "".join(f"; {plan} cuts: ratio {v['ratio']}, {v['speedup']}x"
                       for plan, v in state.data.get("plans", {}).items()),
             "",
             "| recipe | way | cut | slim | reference | slim / reference | slim / base |", "|---" * 7 + "|"]
    combos = {tuple(k.split("|")[1:4]) for k in runs if k.startswith("slim|")}
    for cut, way, recipe in sorted(combos, key=lambda c: (c[2], c[1], c[0])):
        slim = [r["map50_95"] for k, r in runs.items() if k.startswith(f"slim|{cut}|{way}|{recipe}|")]
        ref = [r["map50_95"] for k, r in runs.items() if k.startswith(f"reference|-|plain|{recipe}|")]
        lines.append(f"| {recipe} | {way} | {cut} | {_ms(slim)} | {_ms(ref)} | "
                     + (f"{statistics.mean(slim) / statistics.mean(ref):.1%} | " if slim and ref else "- | ")
                     + (f"{statistics.mean(slim) / base:.1%} |" if slim and base else "- |"))
    return "\n".join(lines)


def _ms(v: list[float]) -> str:
    if not v:
        return "-"
    spread = f" ± {(max(v) - min(v)) / 2:.4f}" if len(v) > 1 else ""
    return f"{statistics.mean(v):.4f}{spread} ({len(v)})"


if __name__ == "__main__":
    sys.exit(main())
