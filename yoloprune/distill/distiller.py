"""Knowledge distillation from a frozen teacher: the distiller, and the criterion that adds it to the task loss.

`KnowledgeDistiller` holds the teacher (frozen, eval mode, never a registered submodule: it is not in the
distiller's `state_dict` and never reaches a checkpoint) and the trainable 1x1 adapters that map the student's neck
widths to the teacher's (slim students are narrower). `DistillCriterion` wraps the student's own Ultralytics
criterion: loss = (1 - alpha) * task loss + alpha * distillation loss, with the distillation part reported as
`kd_loss`. The trainer installs it on the training model only; the EMA and the saved models keep the stock criterion.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..graph.trace import probe
from .losses import branches, classify_loss, cwd_loss, response_loss

TYPES = ("response", "feature", "yolo")


def load_teacher(teacher, task: str | None = None, nc: int | None = None) -> nn.Module:
    """A frozen, eval-mode teacher model from a path, `YOLO` or model; checked against the student's task and classes."""
    from ..checkpoint import load_model

    loaded = load_model(teacher)
    model = loaded.model.float()
    t_task = getattr(model, "task", None)
    if task and t_task and t_task != task:
        raise UserError(f"teacher '{loaded.source}' is a {t_task} model but the student is {task}: use a {task} teacher")
    t_nc = len(model.names) if getattr(model, "names", None) else getattr(model, "nc", None)
    if nc is not None and t_nc is not None and t_nc != nc:
        raise UserError(f"teacher '{loaded.source}' predicts {t_nc} classes but the student/data have {nc}: use a "
                        "teacher trained on the same classes")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class KnowledgeDistiller(nn.Module):
    """Distil a frozen teacher into a student: `response`, `feature` or `yolo` (both).

    Args:
        teacher_model: teacher (`.pt` path, `YOLO` or model) of the student's task and classes.
        student_model: the model being trained (used to size the feature adapters).
        temperature: softening temperature (> 0) of class scores and feature maps.
        alpha: share of the distillation loss in the total, in [0, 1].
        distill_type: `response` (head outputs), `feature` (neck features, channel-wise) or `yolo` (both).
        distill_features: also distil features when `distill_type=response`.
        imgsz: probe image size (a multiple of the largest stride).

    Example:
        >>> kd = KnowledgeDistiller(YOLO("teacher.pt").model, student.model, temperature=4.0, alpha=0.7)
        >>> loss = kd(images, student_raw_outputs)  # the distillation term; the trainer mixes it with the task loss
    """

    def __init__(self, teacher_model, student_model: nn.Module, temperature: float = 4.0, alpha: float = 0.7,
                 distill_type: str = "response", distill_features: bool = False, imgsz: int = 64):
        super().__init__()
        if distill_type not in TYPES:
            from ..errors import close_match

            raise UserError(f"distill_type '{distill_type}' is unknown{close_match(distill_type, TYPES)}; "
                            f"use one of {', '.join(TYPES)}")
        if not temperature > 0:
            raise UserError(f"temperature={temperature!r} must be > 0 (typical 2 to 5)")
        if not 0 <= alpha <= 1:
            raise UserError(f"distill_alpha={alpha!r} must be within [0, 1] (the distillation share of the loss)")
        self.temperature, self.alpha, self.distill_type = float(temperature), float(alpha), distill_type
        self.classify = getattr(student_model, "task", None) == "classify" or type(student_model).__name__ == "ClassificationModel"
        task = "classify" if self.classify else getattr(student_model, "task", None)
        nc = len(student_model.names) if getattr(student_model, "names", None) else None
        teacher = load_teacher(teacher_model, task, nc)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: never in state_dict, optimizer or checkpoint
        self.use_response = distill_type in ("response", "yolo")
        self.use_feature = distill_type in ("feature", "yolo") or distill_features
        if self.classify and self.use_feature:
            raise UserError("feature distillation needs a detection-family model (detect, segment, pose, obb); "
                            "use distill_type=response for classify")
        self.adapters = nn.ModuleList()
        self.to_device(next(student_model.parameters()).device)
        self._check(student_model, imgsz)

    def to_device(self, device, half: bool = False) -> "KnowledgeDistiller":
        """Move the teacher (optionally fp16, for CUDA with AMP) and the adapters to `device`."""
        t = self.teacher.to(device)
        object.__setattr__(self, "teacher", t.half() if half else t.float())
        self.adapters.to(device)
        return self

    def _check(self, student: nn.Module, imgsz: int) -> None:
        """Compare the two models' outputs on a probe image; build the feature adapters."""
        s_out, t_out = probe(student, imgsz), probe(self.teacher, imgsz)
        if self.classify:
            return
        sb, tb = branches(s_out), branches(t_out)
        if same := [b for b in sb if b in tb]:
            self.pairs = [(b, b) for b in same]  # YOLO26 with YOLO26: both end-to-end branches
        else:  # an end-to-end model with a one-branch one (e.g. YOLO26 and YOLO11): their one-to-many heads
            self.pairs = [("one2many" if "one2many" in sb else "main", "one2many" if "one2many" in tb else "main")]
        s_main, t_main = next(iter(sb.values())), next(iter(tb.values()))
        if s_main["scores"].shape[1:] != t_main["scores"].shape[1:]:
            raise UserError(f"teacher and student heads differ (scores {tuple(t_main['scores'].shape[1:])} vs "
                            f"{tuple(s_main['scores'].shape[1:])}): they need the same classes and strides")
        self.rebuild_adapters(student, imgsz, s_main["feats"], t_main["feats"])

    def rebuild_adapters(self, student: nn.Module, imgsz: int = 64, s_feats=None, t_feats=None) -> None:
        """(Re)build the student -> teacher 1x1 adapters for the student's current neck widths (e.g. after a cut)."""
        if not self.use_feature:
            return
        if s_feats is None:
            s_feats = next(iter(branches(probe(student, imgsz)).values()))["feats"]
            t_feats = next(iter(branches(probe(self.teacher, imgsz)).values()))["feats"]
        if len(s_feats) != len(t_feats) or any(a.shape[2:] != b.shape[2:] for a, b in zip(s_feats, t_feats)):
            raise UserError("teacher and student neck features differ in number or stride: feature distillation "
                            "needs the same feature levels (e.g. P3-P5 for both)")
        device = next(student.parameters()).device
        self.adapters = nn.ModuleList(nn.Conv2d(s.shape[1], t.shape[1], 1) for s, t in zip(s_feats, t_feats)).to(device)

    def teacher_outputs(self, images: torch.Tensor):
        with torch.no_grad():
            p = next(self.teacher.parameters())
            return self.teacher(images.to(p.dtype))

    def loss(self, student_preds, teacher_preds) -> tuple[torch.Tensor, dict]:
        """The distillation loss (a scalar) and its parts, from the two models' raw outputs."""
        t = self.temperature
        if self.classify:
            t_logits = teacher_preds[1] if isinstance(teacher_preds, tuple) else teacher_preds
            kd = classify_loss(student_preds, t_logits, t)
            return kd, {"response": kd.detach()}
        sb, tb = branches(student_preds), branches(teacher_preds)
        parts = {}
        kd = next(iter(sb.values()))["scores"].new_zeros(())
        if self.use_response:
            pairs = [(a, b) for a, b in self.pairs if a in sb and b in tb]
            r = sum(response_loss(sb[a], tb[b], t) for a, b in pairs) / max(len(pairs), 1)
            parts["response"] = r.detach()
            kd = kd + r
        if self.use_feature:
            s_feats, t_feats = next(iter(sb.values()))["feats"], next(iter(tb.values()))["feats"]
            f = sum(cwd_loss(a(s), tf, t) for a, s, tf in zip(self.adapters, s_feats, t_feats)) / len(self.adapters)
            parts["feature"] = f.detach()
            kd = kd + f
        return kd, parts

    def forward(self, images: torch.Tensor, student_preds) -> torch.Tensor:
        """The distillation loss for a batch: runs the teacher on `images` (no gradient) and compares."""
        return self.loss(student_preds, self.teacher_outputs(images))[0]


class YOLODistiller(KnowledgeDistiller):
    """`KnowledgeDistiller` with `distill_type='yolo'`: response (both end-to-end branches) + channel-wise features."""

    def __init__(self, teacher_model, student_model: nn.Module, temperature: float = 4.0, alpha: float = 0.7, **kw):
        kw.setdefault("distill_type", "yolo")
        super().__init__(teacher_model, student_model, temperature, alpha, **kw)


class DistillCriterion:
    """Wraps an Ultralytics criterion: returns `(1 - alpha) * task + alpha * kd` and a `kd_loss` item.

    Every other attribute (e.g. YOLO26's loss schedule `update()`) is the wrapped criterion's.
    """

    def __init__(self, base, distiller: KnowledgeDistiller):
        self.base, self.distiller = base, distiller

    def __deepcopy__(self, memo):
        """A copy of the model (e.g. a new EMA) gets the stock criterion, never the teacher."""
        import copy

        return copy.deepcopy(self.base, memo)

    def __call__(self, preds, batch):
        loss, items = self.base(preds, batch)
        imgs = batch["img"]
        kd = self.distiller(imgs, preds)
        a = self.distiller.alpha
        # Ultralytics' detection-family losses are sums over the batch's images (classification: a batch mean);
        # the distillation term is a per-image mean, brought to the same units
        per = 1 if self.distiller.classify else imgs.shape[0]
        total = torch.cat([(1 - a) * loss.reshape(-1), (a * kd * per).reshape(1).to(loss.dtype)])
        return total, {**items, "kd_loss": kd.detach().reshape(()).to(next(iter(items.values())).dtype)}

    def __getattr__(self, name):
        if name in ("base", "distiller"):
            raise AttributeError(name)
        return getattr(self.base, name)
