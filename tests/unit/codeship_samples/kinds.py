"""More kinds of globals: NamedTuple, IntEnum member, type alias, alias names, a
dropped decorator, a module-level ``global``, a submodule used by attribute."""

import concurrent.futures
from enum import IntEnum
from typing import NamedTuple, Optional

Vector = list[float]
MaybeInt = Optional[int]  # noqa: UP045 - the typing alias a user may write, shipped as such


class Level(IntEnum):
    LOW = 1
    HIGH = 2


TOP = Level.HIGH


class Pair(NamedTuple):
    a: int
    b: int = 0


class _Registry:
    def register(self, fn):
        return fn


REGISTRY = _Registry()


@REGISTRY.register  # an instance's method: cannot travel, so the helper arrives without it
def total(v: Vector) -> float:
    return sum(v)


add_up = total  # an alias of a shipped helper
calls = 0


def summarize(v: Vector, limit: MaybeInt = None) -> tuple:
    global calls
    calls += 1
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        s = pool.submit(add_up, v).result()
    return s, Pair(int(s)), TOP, Level(1).name, calls, limit
