"""efldet: one-stage long-tailed object detection with the Equalized Focal Loss (CVPR 2022)."""

__version__ = "0.1.0"
