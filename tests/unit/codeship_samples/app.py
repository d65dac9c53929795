"""The sample user module; ``compute`` is the function the tests ship."""

from __future__ import annotations

import functools
import json
import math as m
import xml.etree.ElementTree
from dataclasses import dataclass, field
from enum import Enum

from . import _sidefx, fakesdk, units
from .units import hypot

# Top-level side effects: they must never run in the worker.
_sidefx.EVENTS.append("app imported")
print("codeship sample app imported")

SCALE = 3
LIMITS = {"lo": 0, "hi": 10, "tags": frozenset({"x", "y"})}
NAN = float("nan")


class Color(Enum):
    RED = "red"
    BLUE = "blue"


DEFAULT_COLOR = Color.BLUE


class TooBig(ValueError):
    """Raised by ``_checked``; ``compute`` catches it by its base type."""


class VeryTooBig(TooBig):
    pass


@dataclass
class Point:
    x: float
    y: float
    color: Color = Color.RED


@dataclass
class Report:
    points: list[Point] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    length: float = 0.0
    summary: str = ""
    remote: object = None


@fakesdk.function("samples-other")
def other(n: int) -> int:
    return n


def _checked(v: int) -> int:
    if v > LIMITS["hi"]:
        raise VeryTooBig(f"{v} > {LIMITS['hi']}")
    return v


@functools.lru_cache(maxsize=None)  # noqa: UP033 - user code as written: a kept decorator
def _square(v: int) -> int:
    return v * v


def _norm(p: Point) -> float:
    return hypot(p.x, p.y)


def _tally(n: int) -> object:
    return other(n)  # a remote function used by a helper


@fakesdk.function("samples-compute")
def compute(values: list[int]) -> Report:
    report = Report()
    for v in values:
        try:
            report.points.append(Point(float(_checked(v * SCALE)), float(_square(v)), DEFAULT_COLOR))
        except TooBig as e:
            report.rejected.append(f"{type(e).__name__}: {e}")
    report.length = m.floor(sum(_norm(p) for p in report.points) * units.FACTOR)
    root = xml.etree.ElementTree.Element("n", v=str(len(report.points)))
    report.summary = json.dumps({"n": root.get("v"), "nan": m.isnan(NAN)}, sort_keys=True)
    report.remote = _tally(len(report.points))
    return report
