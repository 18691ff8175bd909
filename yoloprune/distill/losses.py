"""Distillation losses for YOLO heads and neck features.

- `response_loss`: head outputs of a Detect-family head (detect, segment, pose, obb), per end-to-end branch. Class
  scores are independent sigmoids, so "temperature" scales the logits of each binary decision: the student's
  sigmoid(s / T) is trained towards the teacher's sigmoid(t / T) with binary cross-entropy (times T^2, as in Hinton's
  softmax KD), i.e. their binary KL. Boxes are decoded to left/top/right/bottom distances (the DFL expectation where reg_max > 1) and
  compared with L1. Both terms are weighted per anchor by the teacher's confidence (its highest class score), so the
  thousands of background anchors do not drown the few that hold objects.
- `classify_loss`: classic softmax KD, KL(teacher / T || student / T) * T^2.
- `cwd_loss`: channel-wise distillation (Shu et al., 2021) of neck features: each channel's map is turned into a
  spatial distribution by a softmax at temperature T and the student's (through a 1x1 adapter) is matched to the
  teacher's by KL; insensitive to the two models' feature scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def branches(preds) -> dict[str, dict]:
    """Raw head outputs by branch name (`one2many`, `one2one` or `main`), from train-mode or eval-mode outputs."""
    if isinstance(preds, tuple):  # eval mode: (inference output, raw outputs)
        preds = preds[1]
    if isinstance(preds, dict) and "one2many" in preds:
        return {k: v for k, v in preds.items() if k in ("one2many", "one2one") and isinstance(v, dict)}
    if isinstance(preds, dict):
        return {"main": preds}
    raise TypeError(f"unexpected head output {type(preds).__name__}")


def ltrb(boxes: torch.Tensor) -> torch.Tensor:
    """(B, 4 * reg_max, A) raw box outputs -> (B, 4, A) distances (identity when reg_max is 1)."""
    b, c, a = boxes.shape
    if c == 4:
        return boxes
    r = c // 4
    bins = torch.arange(r, device=boxes.device, dtype=boxes.dtype)
    return (boxes.view(b, 4, r, a).softmax(2) * bins.view(1, 1, r, 1)).sum(2)


def response_loss(student: dict, teacher: dict, temperature: float) -> torch.Tensor:
    """Confidence-weighted class (temperature-scaled binary KD) + box (L1 on distances) loss for one branch."""
    s_cls, t_cls = student["scores"].float(), teacher["scores"].float()
    with torch.no_grad():
        weight = t_cls.sigmoid().amax(1)  # (B, A): the teacher's confidence that the anchor holds an object
        norm = weight.sum().clamp_min(1e-6)
        target = (t_cls / temperature).sigmoid()
    # binary KL = cross-entropy - the target's own entropy: 0 when the student matches (same gradient as the BCE)
    entropy = F.binary_cross_entropy(target, target, reduction="none")
    cls = (F.binary_cross_entropy_with_logits(s_cls / temperature, target, reduction="none") - entropy).sum(1)
    cls = (cls * weight).sum() / norm * temperature**2
    box = (ltrb(student["boxes"].float()) - ltrb(teacher["boxes"].float())).abs().mean(1)
    box = (box * weight).sum() / norm
    return cls + box


def classify_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    t = F.log_softmax(teacher_logits.float() / temperature, 1)
    s = F.log_softmax(student_logits.float() / temperature, 1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2


def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Channel-wise distillation between two (B, C, H, W) maps of the same shape; mean over batch and channels."""
    b, c = teacher.shape[:2]
    s = F.log_softmax(student.float().reshape(b * c, -1) / temperature, 1)
    t = F.log_softmax(teacher.float().reshape(b * c, -1) / temperature, 1)
    return F.kl_div(s, t, reduction="sum", log_target=True) / (b * c) * temperature**2
