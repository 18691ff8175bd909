"""Knowledge distillation: the losses, the criterion mix, training with a teacher (slim student, pruning, resume),
clean checkpoints, and bad inputs."""

import os
import subprocess
import sys

import pytest
import torch

from yoloprune.data import make_dataset
from yoloprune.distill import DistillCriterion, KnowledgeDistiller, YOLODistiller
from yoloprune.distill.losses import cwd_loss, response_loss

from conftest import FAST, Killed, kill_after
from conftest import results_rows as read
from conftest import save_model as save
from conftest import small_model as model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A synthetic dataset, a teacher checkpoint and a slim student checkpoint (3 classes)."""
    from yoloprune import Slimmer

    root = tmp_path_factory.mktemp("kd")
    data = make_dataset(root / "shapes", "detect", train=16, val=8, imgsz=64)
    teacher = model()
    save(teacher, root / "teacher.pt")
    slim = Slimmer(teacher, ratio=0.4, imgsz=64)
    slim.save(root / "student.pt")
    return root, data


def test_losses_vanish_only_at_the_teacher():
    torch.manual_seed(0)
    t = {"scores": torch.randn(2, 3, 50), "boxes": torch.rand(2, 4, 50) * 5}
    s = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    loss = response_loss(s, t, temperature=4.0)
    loss.backward()
    grad = max(s["scores"].grad.abs().max().item(), 0)
    print("gradient at the teacher:", grad)
    assert grad < 1e-6 and loss.abs() < 1e-5  # binary KL and box L1 are both zero at the teacher
    worse = {"scores": t["scores"] + 1.0, "boxes": t["boxes"] + 0.5}
    assert response_loss(worse, t, 4.0) > loss
    f = torch.randn(2, 8, 6, 6)
    assert cwd_loss(f, f, 4.0).abs() < 1e-6 and cwd_loss(f * 0.1 + 1, f, 4.0) > 1e-3


def test_reg_max_distributions_compare_as_distances():
    from yoloprune.distill.losses import ltrb

    logits = torch.full((1, 64, 3), -10.0)
    logits.view(1, 4, 16, 3)[:, :, 5] = 10.0  # every side at bin 5
    assert torch.allclose(ltrb(logits), torch.full((1, 4, 3), 5.0), atol=1e-3)


def test_criterion_mixes_task_and_distillation(setup):
    root, _ = setup
    teacher, student = model(), model()
    student.load_state_dict(teacher.state_dict())
    student.args = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
    from ultralytics.cfg import get_cfg

    student.args = get_cfg()
    batch = {"img": torch.rand(2, 3, 64, 64), "cls": torch.tensor([[0.0], [1.0]]), "bboxes": torch.rand(2, 4) * 0.5 + 0.25,
             "batch_idx": torch.tensor([0.0, 1.0])}
    student.train()
    preds = student(batch["img"])
    base = student.init_criterion()
    task, _ = base(preds, batch)
    for alpha in (0.0, 0.7, 1.0):
        kd = KnowledgeDistiller(teacher, student, temperature=4.0, alpha=alpha, distill_type="yolo")
        total, items = DistillCriterion(base, kd)(preds, batch)
        expected = torch.cat([(1 - alpha) * task.reshape(-1), (alpha * items["kd_loss"] * 2).reshape(1)])
        print(alpha, total.detach(), expected)
        assert torch.allclose(total.detach(), expected.detach(), rtol=1e-5, atol=1e-6) and "kd_loss" in items


def test_copies_of_the_student_never_carry_the_teacher():
    import copy

    teacher, student = model(), model()
    kd = KnowledgeDistiller(teacher, student, distill_type="yolo")
    student.criterion = DistillCriterion(student.init_criterion() if hasattr(student, "args") else None, kd)
    twin = copy.deepcopy(student)  # what a new EMA or NaN recovery does
    assert not isinstance(twin.criterion, DistillCriterion)
    assert isinstance(student.criterion, DistillCriterion)


def test_adapters_map_slim_widths_to_teacher_widths(setup):
    from yoloprune import Slimmer

    teacher = model()
    slim = Slimmer(teacher, ratio=0.4, imgsz=64).slim()
    kd = YOLODistiller(teacher, slim, temperature=2.0)
    ins = [a.in_channels for a in kd.adapters]
    outs = [a.out_channels for a in kd.adapters]
    print("adapters", list(zip(ins, outs)))
    assert outs == [b[0].conv.in_channels for b in teacher.model[-1].cv2]  # the teacher's neck widths
    assert ins == [b[0].conv.in_channels for b in slim.model[-1].cv2]  # the slim student's
    assert all(i < o for i, o in zip(ins, outs))
    assert not any("teacher" in k for k in kd.state_dict())  # the teacher is never part of the distiller's state


def test_distill_a_slim_student_while_pruning_then_resume(setup, tmp_path):
    """KD + pruning in one run, killed after epoch 1 and resumed; best.pt has no teacher/adapters, loads stock."""
    from ultralytics import YOLO

    from yoloprune.train import train, trainer_for

    root, data = setup

    yolo = YOLO(str(root / "student.pt"))
    yolo.add_callback("on_model_save", kill_after(0))
    keys = dict(distillation=True, teacher_model=str(root / "teacher.pt"), distill_type="yolo", pruning=True,
                pruning_ratio=0.2, prune_at_epoch=1)
    with pytest.raises(Killed):
        yolo.train(trainer=trainer_for("detect"), data=str(data), epochs=3, project=str(tmp_path), name="kd",
                   **keys, **FAST)
    run = tmp_path / "kd"
    assert (run / "weights/distill_adapters.pt").is_file()
    train(resume=str(run / "weights/last.pt"))
    table = read(run)
    print([(r["epoch"], r["train/kd_loss"], r["model/params"]) for r in table])
    assert [int(r["epoch"]) for r in table] == [1, 2, 3]
    assert all(r["train/kd_loss"] > 0 for r in table)
    assert table[1]["model/params"] < table[0]["model/params"]  # pruned at epoch 2, distillation went on
    ckpt = torch.load(run / "weights/best.pt", weights_only=False)
    names = [n for n, _ in ckpt["model"].named_modules()]
    assert not any("teacher" in n or "adapter" in n for n in names)
    assert getattr(ckpt["model"], "criterion", None) is None
    code = ("import sys; from ultralytics import YOLO; m = YOLO(sys.argv[1]); m.val(data=sys.argv[2], imgsz=64, "
            "batch=8, workers=0, plots=False); assert 'yoloprune' not in sys.modules; print('OK')")
    r = subprocess.run([sys.executable, "-c", code, str(run / "weights/best.pt"), str(data)], capture_output=True,
                       text=True, env=os.environ.copy(), timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("keys, message", [
    (["distillation=True"], "needs teacher_model"),
    (["distillation=True", "teacher_model=/no/teacher.pt"], "not found"),
    (["distillation=True", "teacher_model={root}/teacher.pt", "distill_alpha=1.5"], "within [0, 1]"),
    (["distillation=True", "teacher_model={root}/teacher.pt", "temperature=0"], "must be > 0"),
    (["distillation=True", "teacher_model={root}/teacher.pt", "distill_type=logits"], "distill_type 'logits'"),
    (["distillation=True", "teacher_model={root}/teacher5.pt"], "predicts 5 classes"),
    (["distillation=True", "teacher_model={root}/teacher_cls.pt"], "is a classify model"),
    (["distillation=True", "teacher_model={root}/teacher.pt", "distill_model={root}/teacher.pt"], "not both"),
])
def test_bad_distillation_input_is_one_line(keys, message, setup, tmp_path, capsys):
    from yoloprune.cli import main

    root, data = setup
    if not (root / "teacher5.pt").exists():
        save(model(nc=5), root / "teacher5.pt")
        save(model("yolo26n-cls.yaml"), root / "teacher_cls.pt")
    args = [f"model={root}/student.pt", f"data={data}", "epochs=1", f"project={tmp_path}", "imgsz=64"]
    assert main(["train", *args, *[k.format(root=root) for k in keys]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
