"""Slimming to a target: a measured speed-up on the deploy runtime, or a share of the base GFLOPs.

`--target-speedup S`: every candidate is exported and timed against the base, interleaved, until the measured
speed-up is within `tolerance` of S. With the `rules` allocation (the default without calibration data) the
candidates are the rules plan at a searched ratio; with `latency` a per-layer latency table is measured on the runtime
(`yoloprune.deploy.latency`), widths are allocated greedily to a predicted latency budget (`yoloprune.slim.budget`)
and the budget is corrected by the measured error; `sensitivity` (the default with calibration data) allocates
against the same table by each group's measured loss rise (`yoloprune.slim.sensitivity`). `--target-flops F` does
the same with multiply-accumulates as the cost, checked with Ultralytics' GFLOPs counter.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..calibrate.data import DEFAULT_IMAGES
from .budget import CostModel, allocate_budget, conv_sites
from ..errors import UserError
from ..graph.rewrite import rewrite_blocks
from .slimmer import Slimmer


ALLOCATIONS = ("rules", "latency", "sensitivity")


@dataclass
class Timing:
    """A candidate timed against the base, interleaved: the median of per-round speed-ups and their spread."""

    speedup: float  # median of the per-round ratios base / slim
    p10: float  # 10th and 90th percentiles of the per-round ratios
    p90: float
    base_s: float  # median seconds per run
    slim_s: float
    rounds: int

    @property
    def resolution(self) -> float:
        """How far the median may be off: about two standard errors of a median of `rounds` noisy ratios."""
        return (self.p90 - self.p10) / math.sqrt(max(self.rounds, 1))

    def format(self) -> str:
        return (f"{self.speedup:.2f}x (p10-p90 {self.p10:.2f}-{self.p90:.2f}, {self.rounds} rounds; "
                f"{self.base_s * 1e3:.2f} -> {self.slim_s * 1e3:.2f} ms)")


@dataclass
class TargetStep:
    """One candidate of the search."""

    budget: float  # predicted cost asked of the allocator (the ratio, for the `rules` allocation)
    predicted: float  # predicted cost of the widths it chose
    reached: float  # measured speed-up, or kept share of base GFLOPs
    gflops: float
    p10: float | None = None  # spread of the per-round speed-ups
    p90: float | None = None
    rounds: int = 0
    uncut: bool = False  # the widths equal the base's: never timed, never a result


@dataclass
class TargetResult:
    kind: str  # "speedup" or "flops"
    target: float
    reached: float
    steps: list[TargetStep] = field(default_factory=list)
    runtime: str = ""
    device: str = ""
    threads: int = 0
    allocation: str = ""
    ratio: float | None = None  # the ratio found by the `rules` allocation
    base_ms: float | None = None
    slim_ms: float | None = None
    p10: float | None = None  # spread (10th-90th percentile) of the kept candidate's per-round speed-ups
    p90: float | None = None
    rounds: int = 0
    tolerance: float = 0.0
    resolution: float = 0.0  # how far the kept median may be off (see `Timing.resolution`)
    met: bool = False  # the median is within the tolerance of the target
    resolved: bool = False  # ... and the timing spread is narrow enough to say so

    def format(self) -> str:
        if self.kind == "speedup":
            line = (f"target speed-up {self.target:.2f}x on {self.runtime} {self.device} ({self.threads} threads): "
                    f"measured {self.reached:.2f}x (p10-p90 of per-round ratios {self.p10:.2f}-{self.p90:.2f}, "
                    f"{self.rounds} rounds; {self.base_ms:.2f} -> {self.slim_ms:.2f} ms) after "
                    f"{len(self.steps)} candidate(s), {self.allocation} allocation"
                    + (f" at ratio {self.ratio:.2f}" if self.ratio is not None else ""))
            if not self.resolved and self.resolution > self.tolerance * self.target:
                line += (f"\nnot resolved: the median speed-up is only known to +-{self.resolution:.2f}x on this "
                         f"machine (wider than the {self.tolerance:.0%} tolerance), so no claim is made that the target "
                         "is met; time with more runs on a quieter machine")
            elif not self.met:
                line += (f"\nnot reached: the closest candidate is {abs(self.reached / self.target - 1):.0%} from the "
                         f"target (tolerance {self.tolerance:.0%}); allow more candidates or another target")
            return line
        return (f"target GFLOPs {self.target:.0%} of base: reached {self.reached:.1%} after {len(self.steps)} "
                f"candidate(s)")

    def to_dict(self) -> dict:
        return asdict(self)


def check_target(speedup, flops) -> None:
    if (speedup is None) == (flops is None):
        raise UserError("pass one target: a speed-up (e.g. 2.0) or a share of base GFLOPs to keep (e.g. 0.5)")
    if speedup is not None and (isinstance(speedup, bool) or not isinstance(speedup, (int, float))
                                or not math.isfinite(speedup) or speedup <= 1):
        raise UserError(f"target speed-up {speedup!r} must be a number above 1 (e.g. 2.0 for twice as fast)")
    if flops is not None and (isinstance(flops, bool) or not isinstance(flops, (int, float)) or not 0 < flops < 1):
        raise UserError(f"target GFLOPs {flops!r} is the share of base GFLOPs to keep: a number in (0, 1), e.g. 0.5")


def default_max_ratio(allocation: str) -> float:
    """The most of a group's channels (x its rule multiplier) `TargetSlimmer` lets one cut remove when none is asked:
    0.9 with the `sensitivity` allocation (see `TargetSlimmer`'s docstring), else 0.75."""
    return 0.9 if allocation == "sensitivity" else 0.75


def default_allocation(data, speedup) -> str:
    """The allocation `TargetSlimmer` uses when none is asked: `sensitivity` for a speed-up with calibration data
    (measured best: `TargetSlimmer`'s docstring), else `rules`."""
    return "sensitivity" if data is not None and speedup is not None else "rules"


class TargetSlimmer:
    """Slim a model to a measured speed-up or a GFLOPs share; `search()` returns the `Slimmer` holding the result.

    Args:
        model: as for `Slimmer`.
        speedup: measured speed-up to reach (> 1), or
        flops: share of base GFLOPs to keep, in (0, 1).
        allocation: how `speedup` chooses widths. `rules`: the ratio of the shortcut-rule plan (as `--ratio`) is
            searched until the measured speed-up is reached; `latency`: widths are allocated greedily from a
            measured per-layer latency table, buying the most speed per channel removed (faster per MAC removed,
            but it thins the downsampling convolutions and keeps the least mAP); `sensitivity` (needs `data`): each
            group's measured loss rise when thinned alone (`yoloprune.slim.sensitivity`) against the same latency
            table, buying the most speed per loss; the rules only set each group's floor. Default (None):
            `sensitivity` for a `speedup` with `data` (measured best, benchmarks/allocation.py: at 2x, at its
            default max ratio, it kept the most right after the cut on yolo26n and yolo26s, and after 10 fine-tune
            epochs beat `rules` by 0.047 mAP50-95 on yolo26n and 0.070 on yolo26s), else `rules`.
        importance, rules: as for `Slimmer` (rules weigh how much each group may lose).
        data, calib_images, calib_imgsz, recalibrate: calibration, as for `Slimmer`: the scores are computed once on
            the uncut model, every candidate's BatchNorm statistics are recalibrated.
        round_to: kept widths are multiples of this (16: the channel block of ONNX Runtime's AVX-512 kernels and
            a multiple of GPU tensor-core tiles).
        imgsz: deploy image size: latency and GFLOPs are measured there.
        runtime, device, threads: where the speed-up is measured (`onnxruntime` / `torch`, `cpu` / `cuda`).
        max_ratio: no group loses more than `max_ratio x its rule multiplier` of its channels. Default (None): 0.9
            with the `sensitivity` allocation (its measured curves decide where to cut; at 0.75 the floors bound the
            search on a small model: yolo26n at 2x kept 0.6515 right after the cut and 0.8145 ± 0.0054 after 10
            fine-tune epochs at 0.9, 0.3101 and 0.7694 ± 0.0122 at 0.75, benchmarks/allocation.py), else 0.75.
        tolerance: accepted relative distance from the target.
        max_steps: candidates tried at most.
        runs: interleaved timing rounds per candidate.

    Example:
        >>> t = TargetSlimmer("yolo26n.pt", speedup=2.0, imgsz=640, threads=2)
        >>> slimmer = t.search()
        >>> print(t.result.format()); slimmer.save("yolo26n-2x.pt")
    """

    def __init__(self, model, speedup: float | None = None, flops: float | None = None, importance: str | None = None,
                 rules="yolo26", round_to: int = 16, imgsz: int = 640, runtime: str = "onnxruntime",
                 device: str = "cpu", threads: int | None = None, max_ratio: float | None = None,
                 tolerance: float = 0.03,
                 max_steps: int = 6, runs: int = 50, progress: bool = True, allocation: str | None = None, data=None,
                 calib_images: int = DEFAULT_IMAGES, calib_imgsz: int | None = None, recalibrate: bool = True):
        from ..deploy.bench import check_timing_args
        from ..deploy.runtime import default_threads

        check_target(speedup, flops)
        if allocation is None:
            allocation = default_allocation(data, speedup)
        if allocation not in ALLOCATIONS:
            from ..errors import close_match

            raise UserError(f"allocation '{allocation}' is unknown{close_match(allocation, ALLOCATIONS)}; "
                            f"use {' or '.join(ALLOCATIONS)}")
        self.allocation = allocation
        if allocation == "sensitivity" and data is None:
            raise UserError("allocation 'sensitivity' measures each group's loss on calibration images: pass data "
                            "(--data data.yaml), or use the rules or latency allocation")
        check_timing_args(runtime, device, imgsz, 1, threads, 0, runs)
        if max_ratio is None:
            max_ratio = default_max_ratio(allocation)
        if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not 0 < max_ratio < 1:
            raise UserError(f"max_ratio {max_ratio!r} must be in (0, 1): the most of a group's channels one cut removes")
        self.slimmer = Slimmer(model, ratio=0.5, importance=importance, rules=rules, round_to=round_to, imgsz=imgsz,
                               data=data, calib_images=calib_images, calib_imgsz=calib_imgsz, recalibrate=recalibrate)
        self.speedup, self.flops = speedup, flops
        self.runtime, self.device, self.threads = runtime, device, threads or default_threads()
        self.max_ratio, self.tolerance, self.max_steps, self.runs = max_ratio, tolerance, max_steps, runs
        self.progress = progress
        self.result: TargetResult | None = None
        self.cost: CostModel | None = None
        self.sensitivity = None  # the measured curves, with the `sensitivity` allocation
        self.sensitivity_cache = "default"  # where measured curves are kept (None: nowhere)

    def _log(self, msg: str) -> None:
        if self.progress:
            print(msg, flush=True)

    def search(self) -> Slimmer:
        work = Path(tempfile.mkdtemp(prefix="yoloprune-target-"))
        try:
            if self.flops is None and self.allocation == "rules":
                return self._search_ratio(work)  # the plan's own allocation: no cost model to build
            s = self.slimmer
            model = copy.deepcopy(s.loaded.model).float().cpu().eval()
            rewrite_blocks(model)
            groups, graph, ties, frozen = s.structure(model)
            sites = conv_sites(model, groups, graph, s.imgsz)
            if self.allocation == "sensitivity":
                from .sensitivity import measure

                self._log("measuring each group's loss rise when thinned alone (cached per model and data)")
                self.sensitivity = measure(s, cache=self.sensitivity_cache, progress=self.progress)
            if self.flops is not None:
                return self._search_flops(groups, sites, ties, frozen)
            return self._search_speed(groups, sites, ties, frozen, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _allocate(self, groups, cost, budget, ties, frozen) -> tuple[float, bool]:
        s = self.slimmer
        price = self.sensitivity.price if self.sensitivity is not None else None
        keep, predicted = allocate_budget(groups, cost, budget, s.rules, s.round_to, ties, frozen, self.max_ratio,
                                          loss="share" if cost.unit == "MACs" else "macs", price=price)
        s.widths = {g.root_name: keep[g.index] for g in groups}
        s.slim()
        return predicted, predicted <= budget * (1 + 1e-9)

    def _search_flops(self, groups, sites, ties, frozen) -> Slimmer:
        s = self.slimmer
        cost = self.cost = CostModel.macs(sites)
        budget = cost.predict({}) * self.flops
        result = self.result = TargetResult("flops", self.flops, 1.0)
        for _ in range(self.max_steps):
            predicted, fits = self._allocate(groups, cost, budget, ties, frozen)
            kept = s.report.after["gflops"] / s.report.before["gflops"]
            result.steps.append(TargetStep(budget, predicted, kept, s.report.after["gflops"]))
            result.reached = kept
            self._log(f"  candidate {len(result.steps)}: {kept:.1%} of base GFLOPs")
            if abs(kept / self.flops - 1) <= self.tolerance:
                break
            if not fits and kept > self.flops:
                raise UserError(f"target GFLOPs {self.flops:.0%} is out of reach: with at most {self.max_ratio:.0%} of "
                                f"each group cut, the model keeps {kept:.1%}; ask for more or raise max_ratio")
            budget *= self.flops / kept
        self._finish()
        return s

    def _search_speed(self, groups, sites, ties, frozen, work: Path) -> Slimmer:
        from ..deploy.latency import CALIBRATION_RATIOS, fit_cost_model

        s = self.slimmer
        self._log(f"measuring a per-layer latency table on {self.runtime} {self.device} ({self.threads} threads, "
                  f"imgsz {s.imgsz}): base + {len(CALIBRATION_RATIOS)} uniform slims")
        samples = [self._profile(s.loaded.model, work, "base")]  # profiling: 30 runs per model
        for r in CALIBRATION_RATIOS:
            uni = Slimmer(s.loaded.model, ratio=r, importance="l1", rules="none", round_to=s.round_to,
                          imgsz=s.imgsz).slim()  # profiled for its widths: any scorer gives the same timings
            samples.append(self._profile(uni, work, f"uniform{r}"))
        cost = self.cost = fit_cost_model(sites, samples)
        base_runner = self._runner(s.loaded.model, work, "base-timed")
        predicted_base = cost.predict({})
        budget = predicted_base / self.speedup
        self.result = TargetResult("speedup", self.speedup, 1.0, runtime=self.runtime, device=self.device,
                                   threads=self.threads, allocation=self.allocation)
        # The measured speed-up falls as the budget grows (a larger budget stops earlier on the same greedy path: a
        # gentler cut), but a fitted latency model can misjudge it by far, in steps: the first candidate that
        # meets the target may be much deeper than needed. So the search brackets the largest budget whose cut is
        # fast enough (within the tolerance below the target, or faster) and keeps that, the gentlest such cut;
        # without one it keeps the candidate nearest the target.
        best, closest, fast, slow = None, None, None, None  # fast / slow: budgets that measured fast enough / not
        probe = 2 * self.tolerance
        timed = {}  # widths -> (candidate number, timing): a budget that gives widths already timed is not re-timed
        for i in range(self.max_steps):
            predicted, fits = self._allocate(groups, cost, budget, ties, frozen)
            key = tuple(sorted(s.widths.items()))
            if key in timed:
                first, timing = timed[key]
                self._record(f"predicted {predicted_base / predicted:.2f}x, the widths of candidate {first} (not timed "
                             f"again), ", budget, predicted, timing)
            else:
                timing = self._time(base_runner, work, f"candidate{i}")
                self._record(f"predicted {predicted_base / predicted:.2f}x, ", budget, predicted, timing)
                timed[key] = (len(self.result.steps), timing)
            candidate = (timing, dict(s.widths), s.model, s.report)
            if timing is not None and (closest is None or self._closer(timing, closest[0])):
                closest = candidate
            enough = timing is not None and timing.speedup >= self.speedup * (1 - self.tolerance)
            if enough:
                if fast is None or budget > fast:
                    fast, best = budget, candidate
            else:
                slow = budget if slow is None else min(slow, budget)
            reached = 1.0 if timing is None else timing.speedup
            if fast is None and not fits and reached + (0 if timing is None else timing.resolution) < self.speedup:
                raise UserError(f"target speed-up {self.speedup:.2f}x is out of reach: with at most "
                                f"{self.max_ratio:.0%} of each group cut, the fastest model measured {reached:.2f}x; "
                                f"ask for at most {reached:.2f}x or raise max_ratio")
            if fast is not None and slow is not None and slow <= fast * (1 + self.tolerance):
                break  # bracketed as closely as the tolerance tells speed-ups apart
            # too slow: ask for less predicted time; too fast: allow more, but never the whole base again
            nxt = budget * reached / self.speedup
            if fast is not None and slow is not None:
                if not fast < nxt < slow:
                    nxt = math.sqrt(fast * slow)
            elif enough:
                nxt = max(nxt, budget * (1 + probe))  # probe a gentler cut, twice as far each time
                probe *= 2
            budget = min(nxt, predicted_base * (1 - 1e-3))
            if fast is not None and budget <= fast:
                break  # nothing gentler is left to try
        best = best or closest
        if best is None:
            raise UserError("no candidate cut the model: every group is at its floor; lower round_to or max_ratio")
        s.widths, s.model, s.report = best[1], best[2], best[3]
        self._keep(best[0])
        return s

    def _closer(self, timing: Timing, than: Timing) -> bool:
        return abs(timing.speedup / self.speedup - 1) < abs(than.speedup / self.speedup - 1)

    def _met(self, timing: Timing) -> bool:
        return abs(timing.speedup / self.speedup - 1) <= self.tolerance

    def _record(self, prefix: str, budget: float, predicted: float, timing: Timing | None) -> None:
        s, result = self.slimmer, self.result
        if timing is None:
            result.steps.append(TargetStep(budget, predicted, 1.0, s.report.after["gflops"], uncut=True))
            self._log(f"  candidate {len(result.steps)}: {prefix}widths equal the base's: not a candidate")
            return
        result.steps.append(TargetStep(budget, predicted, timing.speedup, s.report.after["gflops"], timing.p10,
                                       timing.p90, timing.rounds))
        self._log(f"  candidate {len(result.steps)}: {prefix}measured {timing.format()}, "
                  f"{s.report.after['gflops']:.2f} GFLOPs")

    def _time(self, base_runner, work: Path, name: str) -> Timing | None:
        """Time the slimmer's current model against the base, interleaved; None when it is not cut at all.

        `runs` rounds first; while the target lies within the median's resolution (the per-round spread over the
        square root of the rounds) and that resolution is wider than the tolerance, `runs` more rounds, up to four
        times `runs` in all: a decision is never taken on noise that more rounds can settle.
        """
        s = self.slimmer
        if s.report.after["params"] == s.report.before["params"] and s.report.after["gflops"] == s.report.before["gflops"]:
            return None
        runner = self._runner(s.model, work, name)
        t_base, t_slim = [], []
        warmup = 5
        while True:
            b, m = self._rounds(base_runner, runner, warmup)
            t_base += b
            t_slim += m
            warmup = 0
            ratios = np.array(t_base) / np.array(t_slim)
            p10, med, p90 = np.percentile(ratios, [10, 50, 90])
            timing = Timing(float(med), float(p10), float(p90), float(np.median(t_base)), float(np.median(t_slim)),
                            len(ratios))
            close = abs(timing.speedup - self.speedup) <= timing.resolution
            if not close or timing.resolution <= self.tolerance * self.speedup or len(ratios) >= 4 * self.runs:
                return timing

    def _rounds(self, base_runner, runner, warmup: int) -> tuple[list[float], list[float]]:
        """`runs` interleaved rounds of base and candidate: seconds per run of each."""
        from ..deploy.runtime import interleaved

        return interleaved([base_runner, runner], warmup, self.runs)

    def _keep(self, timing: Timing) -> None:
        """Record the kept candidate's timing in the result and the slimmer's report."""
        r = self.result
        r.reached, r.base_ms, r.slim_ms = timing.speedup, timing.base_s * 1e3, timing.slim_s * 1e3
        r.p10, r.p90, r.rounds, r.tolerance = timing.p10, timing.p90, timing.rounds, self.tolerance
        r.met, r.resolution = self._met(timing), timing.resolution
        r.resolved = r.met and timing.resolution <= self.tolerance * self.speedup
        self._finish()

    def _search_ratio(self, work: Path) -> Slimmer:
        """The `rules` allocation: regula falsi on the plan's ratio (speed-up 1 at ratio 0) to the measured target."""
        s = self.slimmer
        s.widths = None
        base_runner = self._runner(s.loaded.model, work, "base-timed")
        result = self.result = TargetResult("speedup", self.speedup, 1.0, runtime=self.runtime, device=self.device,
                                            threads=self.threads, allocation="rules")
        self._log(f"searching the ratio of the {s.rules.name} rules plan for a measured {self.speedup:.2f}x on "
                  f"{self.runtime} {self.device} ({self.threads} threads, imgsz {s.imgsz})")
        seen = {0.0: 1.0}  # ratio -> measured speed-up
        best, ratio = None, self.max_ratio  # the largest ratio first: it says whether the target is reachable
        for i in range(self.max_steps):
            s.ratio = ratio
            s.slim()
            timing = self._time(base_runner, work, f"candidate{i}")
            self._record(f"ratio {ratio:.2f}, ", ratio, ratio, timing)
            reached = seen[ratio] = 1.0 if timing is None else timing.speedup
            if timing is not None and (best is None or self._closer(timing, best[0])):
                best = (timing, ratio, s.model, s.report)
            if timing is not None and self._met(timing):
                break
            if i == 0 and reached + timing.resolution < self.speedup:
                raise UserError(f"target speed-up {self.speedup:.2f}x is out of reach: at ratio {ratio:.2f} (the "
                                f"largest, --max-ratio) the model measured {reached:.2f}x; ask for at most "
                                f"{reached:.2f}x or raise max_ratio")
            lo = max(r for r, v in seen.items() if v < self.speedup)
            hi = min(r for r, v in seen.items() if v >= self.speedup)
            if hi - lo <= 0.011:
                break
            step = (self.speedup - seen[lo]) / max(seen[hi] - seen[lo], 1e-6) * (hi - lo)
            ratio = round(min(max(lo + step, lo + 0.01), hi - 0.01), 2)
            if ratio in seen:
                ratio = round((lo + hi) / 2, 2)
        if best is None:
            raise UserError("no candidate cut the model: every group is at its floor; lower round_to or max_ratio")
        result.ratio = best[1]
        s.ratio, s.model, s.report = best[1], best[2], best[3]
        self._keep(best[0])
        return s

    def _finish(self) -> None:
        self.slimmer.report.target = self.result.to_dict()

    def _onnx(self, model, work: Path, name: str) -> Path:
        from ..deploy.export import export

        # a candidate is exported to be timed, not deployed: its parity is the final export's concern
        return export(model, imgsz=self.slimmer.imgsz, output=work / f"{name}.onnx", verbose=False,
                      tolerance=float("inf")).path

    def _runner(self, model, work: Path, name: str):
        from ..deploy.export import quiet_ultralytics
        from ..deploy.runtime import OrtRunner, TorchRunner

        if self.runtime == "onnxruntime":
            return OrtRunner(self._onnx(model, work, name), self.slimmer.imgsz, 1, self.device, self.threads)
        with quiet_ultralytics():
            return TorchRunner(copy.deepcopy(model), self.slimmer.imgsz, 1, self.device, self.threads)

    def _profile(self, model, work: Path, name: str):
        from ..deploy.export import quiet_ultralytics
        from ..deploy.latency import attribute, profile_onnx, profile_torch, stock_widths

        widths = stock_widths(model)
        if self.runtime == "onnxruntime":
            times = profile_onnx(self._onnx(model, work, name), self.device, self.threads, 30, self.slimmer.imgsz)
            return widths, attribute(times, set(widths))
        with quiet_ultralytics():
            return widths, profile_torch(copy.deepcopy(model), self.slimmer.imgsz, self.device, self.threads, 30)
