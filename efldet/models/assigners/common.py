"""Codes shared by the assigners: what an anchor that is not assigned to a GT index (>= 0) becomes."""

BACKGROUND = -1  # a negative: trained towards "no object"
IGNORE = -2  # excluded from the classification loss
