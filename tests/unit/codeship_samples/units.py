"""A project module the sample app imports: it travels as a file, not as source."""

import math

from ._base import EPSILON

FACTOR = 2


def hypot(x: float, y: float) -> float:
    return math.hypot(x, y) + EPSILON
