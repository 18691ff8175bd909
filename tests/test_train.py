"""Training as a user runs it: sparsity columns, pruning inside training, resume, slim models staying slim, DDP args."""

from types import SimpleNamespace
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yoloprune.data import make_dataset
from yoloprune.errors import UserError
from yoloprune.slim.report import layer_widths
from yoloprune.train import train, trainer_for

from conftest import FAST, Killed, kill_after, save_model, small_model
from conftest import results_rows as rows


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shapes"), "detect", train=24, val=8, imgsz=64)


def ckpt_model(path):
    """The model a checkpoint holds (EMA in unfinished runs, `model` once Ultralytics stripped it)."""
    ckpt = torch.load(path, weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).float()


def params(path) -> int:
    from ultralytics.nn.tasks import load_checkpoint

    return sum(p.numel() for p in load_checkpoint(str(path))[0].parameters())


def test_structured_l1_makes_bn_gamma_sparser(shapes, tmp_path):
    """Acceptance: a 3-epoch structured_l1 run shows BN-gamma sparsity rising in results.csv, against a plain run."""
    common = dict(data=str(shapes), epochs=3, project=str(tmp_path), **FAST)
    train("yolo26n.yaml", name="reg", structured_l1=True, lambda_bn=1e-3, **common)
    train("yolo26n.yaml", name="plain", pruning=False, l1_regularization=False, **common)
    reg = rows(tmp_path / "reg")
    mean = [r["sparsity/bn_gamma_mean"] for r in reg]
    hoyer = [r["sparsity/bn_gamma_hoyer"] for r in reg]
    print("mean |gamma| per epoch", mean, "Hoyer", hoyer)
    assert len(reg) == 3 and all(b < a for a, b in zip(mean, mean[1:])), mean
    assert all(b > a for a, b in zip(hoyer, hoyer[1:])), hoyer
    assert all(r["sparsity/penalty"] > 0 for r in reg)
    plain = rows(tmp_path / "plain")
    assert "sparsity/bn_gamma_mean" not in plain[0]  # columns only when sparsity training or pruning is on
    from ultralytics.nn.tasks import load_checkpoint

    from yoloprune.train import get_sparsity

    g_plain = get_sparsity(load_checkpoint(str(tmp_path / "plain/weights/last.pt"))[0])["bn_gamma"]["mean"]
    print(f"final mean |gamma|: regularised {mean[-1]:.5f}, plain {g_plain:.5f}")
    assert mean[-1] < g_plain - 1e-3  # the penalty, not the data, moved gamma


def test_prune_in_training_then_kill_and_resume(shapes, tmp_path):
    """Acceptance: prune at epoch 1 of 3, kill after the prune, resume: the slim model is kept, best.pt loads stock."""
    from ultralytics import YOLO

    yolo = YOLO("yolo26n.yaml")
    yolo.add_callback("on_model_save", kill_after(1))
    with pytest.raises(Killed):
        yolo.train(trainer=trainer_for("detect"), data=str(shapes), epochs=3, project=str(tmp_path), name="p",
                   pruning=True, pruning_ratio=0.3, prune_at_epoch=1, **FAST)
    run = tmp_path / "p"
    base = sum(p.numel() for p in small_model().parameters())
    killed = params(run / "weights/last.pt")
    assert killed < 0.8 * base, (killed, base)
    killed_widths = layer_widths(ckpt_model(run / "weights/last.pt"))

    train(resume=str(run / "weights/last.pt"))
    table = rows(run)
    print("params per epoch", [int(r["model/params"]) for r in table])
    assert [int(r["epoch"]) for r in table] == [1, 2, 3]
    assert table[0]["model/params"] > table[1]["model/params"] == table[2]["model/params"]
    assert params(run / "weights/best.pt") == killed
    assert layer_widths(ckpt_model(run / "weights/best.pt")) == killed_widths
    _loads_stock(run / "weights/best.pt", shapes)


def test_gradual_pruning_reaches_the_planned_widths_across_a_kill_and_resume(shapes, tmp_path):
    """Acceptance: pruning_steps=3 cuts at the start of epochs 2, 3 and 4 toward the one-cut plan; killed after the
    second step and resumed, the third step ends at exactly the widths one cut of that ratio plans; best.pt and
    last.pt load in stock Ultralytics."""
    from ultralytics import YOLO

    from yoloprune import Slimmer

    keys = dict(pruning=True, pruning_ratio=0.5, prune_at_epoch=1, pruning_steps=3, pruning_end_epoch=3, round_to=8)
    yolo = YOLO("yolo26n.yaml")
    yolo.add_callback("on_model_save", kill_after(2))
    with pytest.raises(Killed):
        yolo.train(trainer=trainer_for("detect"), data=str(shapes), epochs=5, project=str(tmp_path), name="g",
                   **keys, **FAST)
    run = tmp_path / "g"
    plan = torch.load(run / "weights/last.pt", weights_only=False)["train_args"]["pruning_plan"]
    assert plan  # the steps' widths travel with the checkpoint
    train(resume=str(run / "weights/last.pt"))
    table = rows(run)
    counts = [int(r["model/params"]) for r in table]
    print("params per epoch", counts)
    assert [int(r["epoch"]) for r in table] == [1, 2, 3, 4, 5]
    assert counts[0] > counts[1] > counts[2] > counts[3] == counts[4]  # one step per epoch, then none
    one_cut = Slimmer(small_model(), ratio=0.5, round_to=8, imgsz=64).slim()
    for name in ("best.pt", "last.pt"):
        assert layer_widths(ckpt_model(run / "weights" / name)) == layer_widths(one_cut), name
    assert params(run / "weights/last.pt") == sum(p.numel() for p in one_cut.parameters())
    _loads_stock(run / "weights/best.pt", shapes)


def _loads_stock(path, data):
    """The checkpoint loads and validates in a fresh process that never imports yoloprune."""
    code = ("from ultralytics import YOLO; import sys; m = YOLO(sys.argv[1]); r = m.val(data=sys.argv[2], imgsz=64, "
            "batch=8, plots=False, workers=0); print('PARAMS', sum(p.numel() for p in m.model.parameters()), "
            "'MAP', r.box.map50); assert 'yoloprune' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(data)],
                         capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MAP" in out.stdout


def test_gradual_schedule_is_cubic_and_ends_at_the_plan():
    """Each step removes 1 - (1 - k/K)^3 of every group's planned removal (rounded to its multiple); the last step
    is the plan itself; widths never grow between steps."""
    from yoloprune import Slimmer

    s = Slimmer(small_model(), ratio=0.6, round_to=8, imgsz=64)
    steps = s.schedule(4)
    groups = {g.root_name: g for g in s.groups()}
    assert steps[-1] == {n: g.keep for n, g in groups.items()}
    for n, g in groups.items():
        seq = [g.width] + [w[n] for w in steps]
        assert all(a >= b for a, b in zip(seq, seq[1:])), (n, seq)
    wide = max(groups.values(), key=lambda g: g.width - g.keep)  # the group with the most to remove
    done = [(wide.width - w[wide.root_name]) / (wide.width - wide.keep) for w in steps]
    print(wide.root_name, wide.width, "->", wide.keep, "share removed per step", [round(d, 3) for d in done])
    for k, d in enumerate(done, 1):
        assert abs(d - (1 - (1 - k / 4) ** 3)) <= 8 / (wide.width - wide.keep) + 1e-9
    with pytest.raises(UserError, match="steps"):
        s.schedule(0)


def test_gradual_pruning_keys_are_checked(shapes, tmp_path):
    """Bad gradual-pruning keys: one-line errors before any training."""
    for keys, match in [({"pruning_steps": 3}, "pruning_end_epoch >= prune_at_epoch"),
                        ({"pruning_steps": 3, "pruning_end_epoch": 2}, "pruning_end_epoch >= prune_at_epoch"),
                        ({"pruning_steps": 2, "pruning_end_epoch": 6}, "must be below epochs"),
                        ({"pruning_end_epoch": 3}, "needs pruning_steps > 1"),
                        ({"pruning_steps": 0}, "pruning_steps"),
                        ({"pruning_steps": 2, "pruning_end_epoch": 3, "pruning_method": "layer"}, "layer pruning")]:
        with pytest.raises(UserError, match=match):
            train("yolo26n.yaml", data=str(shapes), epochs=5, project=str(tmp_path), name="bad", pruning=True,
                  prune_at_epoch=1, **keys, **FAST)
    assert not (tmp_path / "bad").exists()


def test_cli_train_keeps_slim_widths(shapes, tmp_path):
    """Acceptance: `yoloprune train model=slim.pt data=... epochs=1` keeps the slim widths (and the weights)."""
    from yoloprune import Slimmer

    s = Slimmer(small_model(), ratio=0.4)
    slim_path = s.save(tmp_path / "slim.pt")
    widths = layer_widths(s.model)
    cmd = [sys.executable, "-m", "yoloprune.cli", "train", f"model={slim_path}", f"data={shapes}", "epochs=1",
           "imgsz=64", "batch=8", "workers=0", "plots=False", f"project={tmp_path}", "name=ft", "optimizer=SGD",
           "lr0=0", "warmup_epochs=0", "warmup_bias_lr=0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Transferred" not in out.stdout + out.stderr  # no rebuild from the YAML
    trained = ckpt_model(tmp_path / "ft/weights/last.pt")
    assert layer_widths(trained) == widths
    before = dict(s.model.named_parameters())
    diff = max((p - before[n]).abs().max().item() for n, p in trained.named_parameters() if "bn" not in n)
    print("max |w - w_slim| after an lr=0 epoch:", diff)
    assert diff < 1e-2  # fp16 checkpoint rounding only: the slim weights were trained, not re-initialised


@pytest.mark.parametrize("task, yaml, extra", [
    ("segment", "yolo26n-seg.yaml", {}),
    ("pose", "yolo26n-pose.yaml", {"data_kpt_shape": (4, 3)}),
    ("obb", "yolo26n-obb.yaml", {}),
    ("classify", "yolo26n-cls.yaml", {}),
])
def test_every_task_trains_its_slim_model(task, yaml, extra, tmp_path):
    from yoloprune import Slimmer

    data = make_dataset(tmp_path / "data", task, train=16, val=8, imgsz=64)
    s = Slimmer(small_model(yaml, **extra), ratio=0.3, imgsz=64)
    slim = s.save(tmp_path / "slim.pt")
    train(str(slim), data=str(data), epochs=1, project=str(tmp_path), name="run",
          **FAST)
    best = tmp_path / "run/weights/best.pt"
    assert layer_widths(ckpt_model(best)) == layer_widths(s.model)


def test_layer_pruning_in_training(shapes, tmp_path):
    """Acceptance: pruning_method=layer removes blocks inside training and the model still validates."""
    from ultralytics import YOLO

    yolo = YOLO("yolo26n.yaml")
    yolo.add_callback("on_model_save", kill_after(1))
    with pytest.raises(Killed):  # killed right after the layers went: resume must rebuild the same optimizer
        yolo.train(trainer=trainer_for("detect"), data=str(shapes), epochs=3, project=str(tmp_path), name="lay",
                   pruning=True, pruning_method="layer", pruning_ratio=0.5, prune_at_epoch=1, **FAST)
    train(resume=str(tmp_path / "lay/weights/last.pt"))
    assert [int(r["epoch"]) for r in rows(tmp_path / "lay")] == [1, 2, 3]
    best = tmp_path / "lay/weights/best.pt"
    names = {n for n, _ in ckpt_model(best).named_modules()}
    base = {n for n, _ in small_model().named_modules()}
    removed = base - names
    print("modules gone:", sorted(removed)[:8])
    assert any(n.endswith(".m.0") or n.endswith(".m.1") for n in removed)
    metrics = YOLO(str(best)).val(data=str(shapes), imgsz=64, batch=8, plots=False, workers=0)
    assert metrics.box.map50 >= 0


def test_ddp_workers_get_yoloprune_keys(shapes, tmp_path):
    """Ultralytics' DDP launch rebuilds the trainer in each worker from pickled args: ours must survive it."""
    pytest.importorskip("cloudpickle")
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils.dist import generate_ddp_file
    from ultralytics.utils.patches import torch_load

    keys = dict(pruning=True, pruning_ratio=0.4, prune_at_epoch=2, importance_metric="bn", structured_l1=True,
                lambda_bn=3e-4, pruning_method="layer")
    parent = trainer_for("detect")(overrides=dict(model="yolo26n.yaml", data=str(shapes), epochs=5,
                                                  project=str(tmp_path), name="ddp", **keys))
    file = generate_ddp_file(parent)
    try:
        script = Path(file).read_text()
        state = torch_load(str(Path(file).with_suffix(".pt")), map_location="cpu")
        assert "state[\"trainer\"](cfg=cfg, overrides=state[\"args\"]" in script  # what the worker runs
        cfg = DEFAULT_CFG_DICT.copy()
        cfg.update(save_dir="")
        child = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"])
    finally:
        Path(file).unlink(missing_ok=True)
        Path(file).with_suffix(".pt").unlink(missing_ok=True)
    assert child.compression.to_dict() == parent.compression.to_dict()
    for k, v in keys.items():
        assert child.compression.to_dict()[k] == v
    assert type(child.regularizer).__name__ == "StructuredL1Regularizer"
    from yoloprune.train.trainer import _maybe_prune

    assert child.callbacks["on_train_epoch_start"].count(_maybe_prune) == 1  # not added again in the worker


def test_penalty_is_exact_under_amp_scaling_and_accumulation():
    """One optimizer step adds exactly lambda * images * dR/dw, whatever the loss scale and accumulation."""
    from torch import nn

    from yoloprune.train.regularize import StructuredL1Regularizer
    from yoloprune.train.trainer import TRAINERS

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -0.2, 0.1, 1.0]))
    reg = StructuredL1Regularizer(lambda_l1=1e-4, lambda_bn=1e-3)
    expected = {}
    probe = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
    for scale, batches, batch, task in ((1.0, 1, 8, "detect"), (1024.0, 4, 2, "detect"), (512.0, 3, 8, "classify")):
        t = object.__new__(TRAINERS["detect"])
        t.regularizer, t._batches_since_step, t.batch_size, t.ema = reg, batches, batch, None
        t.device = torch.device("cpu")
        t.args, t.world_size, t.distiller = SimpleNamespace(task=task), 0, None
        t.model = net
        t.optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
        t.scaler = torch.amp.GradScaler("cpu", init_scale=scale, enabled=scale != 1.0)
        t.scaler.scale(torch.zeros(()))  # as the backward of a scaled loss would
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        for p in net.parameters():
            p.grad = torch.zeros_like(p)  # a (scaled) zero data gradient
        t.optimizer_step()
        net.zero_grad()
        moved = {n: before[n] - p.detach() for n, p in net.named_parameters()}
        for p in probe.values():
            p.grad = None
        pn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        pn.load_state_dict({**net.state_dict(), **before})
        per_step = batches * (batch if task != "classify" else 1)  # classification losses are batch means
        (reg(pn) * per_step).backward()
        expected = {n: p.grad for n, p in pn.named_parameters() if p.grad is not None}
        for n, g in expected.items():
            print(scale, batches, n, (moved[n] - g).abs().max().item())
            assert torch.allclose(moved[n], g, atol=1e-6), n
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(before[n])


@pytest.mark.parametrize("argv, message", [
    (["data=/no/such.yaml"], "not found"),
    (["epochs=3", "pruning=True", "prune_at_epoch=3"], "prune_at_epoch=3 must be below epochs=3"),
    (["lambda_l1=-1"], "lambda_l1=-1.0 must be >= 0"),
    (["pruning_ratio=1.5"], "outside (0, 1)"),
    (["pruning_ratio=0"], "outside (0, 1)"),
    (["prune_at_epok=3"], "did you mean 'prune_at_epoch'"),
    (["importance_metric=l3"], "importance_metric 'l3' is unknown"),
    (["cfg=/no/such/cfg.yaml"], "cfg file"),
    (["pruning=maybe"], "must be a bool"),
    (["model=/no/such.pt"], "not found"),
    (["pruning=True", "prune_at_epoch=1", "compile=True"], "compile cannot be combined with pruning"),
])
def test_bad_train_input_is_one_line(argv, message, shapes, tmp_path, capsys):
    from yoloprune.cli import main

    defaults = {"model": "yolo26n.yaml", "data": str(shapes), "epochs": 2, "project": str(tmp_path)}
    given = {a.split("=")[0] for a in argv}
    args = [f"{k}={v}" for k, v in defaults.items() if k not in given] + argv
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "train").exists()  # nothing started


def test_unpruned_checkpoint_with_other_classes_trains_as_in_ultralytics(shapes, tmp_path):
    """Only slim models are kept as they are; a stock checkpoint for 5 classes gets a new head for the data's 3."""
    save_model(small_model(nc=5), tmp_path / "five.pt")
    train(str(tmp_path / "five.pt"), data=str(shapes), epochs=1, project=str(tmp_path), name="five", **FAST)
    assert ckpt_model(tmp_path / "five/weights/best.pt").nc == 3


def test_slim_class_mismatch_is_refused(shapes, tmp_path, capsys):
    from yoloprune import Slimmer
    from yoloprune.cli import main

    slim = Slimmer(small_model(nc=5), ratio=0.3).save(tmp_path / "slim5.pt")
    assert main(["train", f"model={slim}", f"data={shapes}", "epochs=1", f"project={tmp_path}", "imgsz=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "predicts 5 classes but data" in err and "has 3" in err, err


def test_seed_compression_config_runs(shapes, tmp_path):
    """The seed's compression_config.yaml as written, with data/model/teacher swapped for local ones (short run)."""
    save_model(small_model("yolo26s.yaml"), tmp_path / "teacher.pt")
    cfg = tmp_path / "compression_config.yaml"
    cfg.write_text(f"""
task: detect
mode: train
model: yolo26n.yaml
data: {shapes}
epochs: 2
batch: 8
imgsz: 64

# L1 Regularization
l1_regularization: True
lambda_l1: 0.00001
structured_l1: True
lambda_bn: 0.0001

# Pruning
pruning: True
pruning_ratio: 0.3
pruning_method: channel
importance_metric: bn
prune_at_epoch: 1

# Knowledge Distillation
distillation: True
teacher_model: {tmp_path / "teacher.pt"}
temperature: 4.0
distill_alpha: 0.7
distill_features: False
distill_type: response
""")
    out = subprocess.run([sys.executable, "-m", "yoloprune.cli", "train", f"cfg={cfg}", f"project={tmp_path}",
                          "name=seed", "workers=0", "plots=False", "nbs=8"], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = rows(tmp_path / "seed")
    assert table[1]["model/params"] < table[0]["model/params"]
    assert all(r["train/kd_loss"] > 0 for r in table)


def test_an_interrupted_pipeline_run_resumes_from_last(shapes, tmp_path):
    """A benchmark or demo run killed mid-way goes on from its last.pt when asked again with the same settings;
    with other settings it trains afresh; once finished it is reused."""
    import json

    from ultralytics import YOLO

    from yoloprune.pipeline import STARTED, Recipe, run_settings, train_run

    recipe = Recipe(imgsz=64, batch=8)

    def killed(name):
        """The run as train_run starts it, killed after its first epoch."""
        (tmp_path / name).mkdir()
        (tmp_path / name / STARTED).write_text(json.dumps(run_settings("yolo26n.yaml", shapes, 2, recipe)))
        yolo = YOLO("yolo26n.yaml")
        yolo.add_callback("on_model_save", kill_after(0))
        with pytest.raises(Killed):
            yolo.train(trainer=trainer_for("detect"), data=str(shapes), epochs=2, project=str(tmp_path), name=name,
                       **recipe.keys())
        return tmp_path / name

    run = killed("r")
    r = train_run("yolo26n.yaml", shapes, tmp_path, "r", 2, recipe, verbose=False)
    assert [int(t["epoch"]) for t in rows(run)] == [1, 2]
    assert torch.load(run / "weights/last.pt", weights_only=False)["train_args"]["resume"]
    assert not r.cached and Path(r.weights).is_file()
    assert train_run("yolo26n.yaml", shapes, tmp_path, "r", 2, recipe, verbose=False).cached
    done = (run / "weights/best.pt").read_bytes()
    (run / "weights/best.pt").write_bytes(done + b"\0")  # overwritten since: not the finished run's checkpoint
    assert not train_run("yolo26n.yaml", shapes, tmp_path, "r", 2, recipe, verbose=False).cached

    other = killed("o")
    train_run("yolo26n.yaml", shapes, tmp_path, "o", 1, recipe, verbose=False)  # other settings: afresh
    assert [int(t["epoch"]) for t in rows(other)] == [1]
    assert not torch.load(other / "weights/last.pt", weights_only=False)["train_args"]["resume"]
