"""DDP exercised, not reasoned: 2 processes on CPU over gloo run the yoloprune trainer with sparsity training,
pruning at an epoch (model and EMA, BatchNorm statistics synced, the model re-wrapped) and distillation, then a kill
after the cut and a resume. See `ddp_worker.py` for the test-only stand-ins of Ultralytics' GPU device set-up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import save_model, small_model
from yoloprune.data import make_dataset

WORKER = Path(__file__).with_name("ddp_worker.py")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def run(job: dict, procs: int) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    cmd = [*(launch if procs > 1 else [sys.executable]), str(WORKER), json.dumps(job)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def same(a: dict, b: dict) -> float:
    """Largest difference between two dicts of tensors of the same keys and shapes (inf if they differ)."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return max(((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].numel()), default=0.0)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Prune at epoch 1 of 3 under 2-process DDP, killed after epoch 1 (the cut's epoch), then resumed."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_dataset(root / "shapes", "detect", train=16, val=8, imgsz=64)
    torch.manual_seed(0)
    base = save_model(small_model(), root / "base.pt")  # every rank and the reference start from the same weights
    keys = dict(data=str(data), epochs=3, imgsz=64, batch=8, nbs=8, workers=0, plots=False, amp=False, seed=0,
                deterministic=True, val=False, project=str(root), exist_ok=True, l1_regularization=True,
                structured_l1=True, lambda_bn=1e-3, pruning=True, pruning_ratio=0.3, prune_at_epoch=1,
                distillation=True, teacher_model=str(base), distill_type="yolo")
    cfg = str(root / "cfg")
    first = run({**keys, "model": str(base), "name": "ddp", "config": cfg, "out": str(root / "first"),
                 "kill_after": 1}, procs=2)
    last = root / "ddp" / "weights" / "last.pt"
    resumed = run({"model": str(last), "resume": True, "config": cfg, "out": str(root / "resumed")}, procs=2)
    single = run({**keys, "epochs": 1, "pruning": False, "distillation": False, "model": str(base), "name": "one",
                  "config": cfg, "out": str(root / "single")}, procs=1)
    return root, first, resumed, single


def test_ddp_ranks_stay_identical_through_the_cut(ddp_run):
    root, first, _, _ = ddp_run
    out = root / "first"
    assert (out / "killed-r0").exists() and (out / "killed-r1").exists(), first.stderr[-3000:]
    cut0, cut1 = load(out / "cut-r0.pt"), load(out / "cut-r1.pt")
    base = small_model().state_dict()
    widths = {k: tuple(v.shape) for k, v in cut0["model"].items()}
    assert any(widths[k] != tuple(v.shape) for k, v in base.items() if k in widths)  # the model was cut
    for part in ("model", "ema", "adapters"):  # weights, BatchNorm statistics and adapters: rank 0's everywhere
        d = same(cut0[part], cut1[part])
        print(f"right after the cut, {part}: max |rank0 - rank1| = {d:.3g}")
        assert d == 0.0, part
    assert cut0["adapters"] and same(cut0["model"], cut0["ema"]) < float("inf")  # EMA cut alike
    for e in (0, 1):
        a, b = load(out / f"epoch{e}-r0.pt"), load(out / f"epoch{e}-r1.pt")
        for part in ("model", "ema", "adapters"):
            d = same(a[part], b[part])
            print(f"epoch {e} end, {part} parameters: max |rank0 - rank1| = {d:.3g}")
            assert d <= 1e-6, (e, part)


def test_ddp_penalty_gradient_equals_single_process(ddp_run):
    root, first, _, single = ddp_run
    assert single.returncode == 0, single.stderr[-3000:]
    ref = load(root / "single" / "penalty-r0.pt")
    for r in (0, 1):
        got = load(root / "first" / f"penalty-r{r}.pt")
        assert got["world"] == 2 and ref["world"] == 1 and got["batch"] == ref["batch"] == 8  # same global batch
        d = same(got["added"], ref["added"])
        scale = max(v.abs().max().item() for v in ref["added"].values())
        print(f"rank {r}: penalty gradient max |ddp - single| = {d:.3g} (largest entry {scale:.3g})")
        assert scale > 0 and d <= 1e-3 * scale  # float32 rounding of grad + penalty - grad; a wrong scale is >= 2x


def test_ddp_resume_after_the_cut_keeps_the_slim_model(ddp_run):
    root, _, resumed, _ = ddp_run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    cut = load(root / "first" / "cut-r0.pt")["model"]
    slim = {k: tuple(v.shape) for k, v in cut.items() if k.endswith("weight")}
    for r in (0, 1):
        end = load(root / "resumed" / f"epoch2-r{r}.pt")  # the resumed run trained only the last epoch
        assert {k: tuple(v.shape) for k, v in end["model"].items() if k in slim} == slim
        assert not (root / "resumed" / f"epoch1-r{r}.pt").exists()
    a, b = load(root / "resumed" / "epoch2-r0.pt"), load(root / "resumed" / "epoch2-r1.pt")
    assert same(a["model"], b["model"]) <= 1e-6 and same(a["adapters"], b["adapters"]) <= 1e-6
    best = subprocess.run([sys.executable, "-c", "import sys; from ultralytics import YOLO; m = YOLO(sys.argv[1]); "
                           "print(sum(p.numel() for p in m.model.parameters())); assert 'yoloprune' not in sys.modules",
                           str(root / "ddp" / "weights" / "last.pt")], capture_output=True, text=True, timeout=300)
    assert best.returncode == 0, best.stderr[-2000:]
    assert int(best.stdout.split()[-1]) == sum(v.numel() for k, v in cut.items() if "running" not in k
                                               and "num_batches" not in k)
