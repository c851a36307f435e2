"""Dense prediction heads."""

from efldet.models.heads.dense_head import DenseHead, concat_levels
from efldet.models.heads.yolox import YOLOXHead

__all__ = ["DenseHead", "YOLOXHead", "concat_levels"]
