"""Target assignment as pure functions under `torch.no_grad()`: priors per level + GT boxes -> GT index
per prior (>= 0), `BACKGROUND` (-1) or `IGNORE` (-2)."""

from efldet.models.assigners.atss import atss_assign
from efldet.models.assigners.common import BACKGROUND, IGNORE
from efldet.models.assigners.fcos import FCOS_SIZE_RANGES, fcos_assign
from efldet.models.assigners.max_iou import max_iou_assign
from efldet.models.assigners.paa import fit_two_component_gmm, paa_assign
from efldet.models.assigners.simota import YOLOXScores, dynamic_k_matching, simota_assign

__all__ = [
    "BACKGROUND",
    "FCOS_SIZE_RANGES",
    "IGNORE",
    "YOLOXScores",
    "atss_assign",
    "dynamic_k_matching",
    "fcos_assign",
    "fit_two_component_gmm",
    "max_iou_assign",
    "paa_assign",
    "simota_assign",
]
