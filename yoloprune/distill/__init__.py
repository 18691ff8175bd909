"""Knowledge distillation: response, feature (channel-wise with adapters) and the YOLO combination."""

from .distiller import DistillCriterion, KnowledgeDistiller, YOLODistiller, load_teacher

__all__ = ["DistillCriterion", "KnowledgeDistiller", "YOLODistiller", "load_teacher"]
