"""Dense prediction heads."""

from efldet.models.heads.dense_head import DenseHead, concat_levels

__all__ = ["DenseHead", "concat_levels"]
