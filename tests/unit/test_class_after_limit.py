"""A class replica's ``@after``: run once when the replica stops, bounded by a limit (30 s) so a hook that
hangs cannot keep a replica (and its GPU) forever; a failing one is reported and the replica stops anyway.

The limit is lowered here so the hanging hook's case ends quickly; nothing measures time.
"""

from __future__ import annotations

import threading

import pytest

import chalkcompute
from chalkcompute.worker import lifecycle
from chalkcompute.worker.lifecycle import ClassReplica

pytestmark = pytest.mark.timeout(20)

release = threading.Event()
ran: list[str] = []


class Hangs:
    @chalkcompute.method()
    def run(self) -> int:
        return 1

    @chalkcompute.after()
    def close(self):
        ran.append("after")
        release.wait()  # until the test lets it go: far past the (lowered) limit


class Fails:
    @chalkcompute.method()
    def run(self) -> int:
        return 1

    @chalkcompute.after()
    def close(self):
        ran.append("after")
        raise RuntimeError("cannot flush the cache")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(lifecycle, "AFTER_LIMIT_SECONDS", 0.2)
    ran.clear()
    release.clear()
    yield
    release.set()


def test_a_hanging_after_is_given_up_on_at_the_limit_and_said_so(capsys) -> None:
    replica = ClassReplica(Hangs, "Hangs", "run")
    assert replica.start()() == 1
    replica.stop()  # returns although the hook still runs
    assert ran == ["after"] and replica.stopping
    assert "chalkcompute: @after Hangs.close did not finish within 0.2s; the replica stops anyway" in \
        capsys.readouterr().err
    replica.stop()  # once only
    assert ran == ["after"]


def test_a_failing_after_is_reported_and_the_replica_stops(capsys) -> None:
    replica = ClassReplica(Fails, "Fails", "run")
    replica.start()
    replica.stop()
    err = capsys.readouterr().err
    assert ran == ["after"] and "RuntimeError: cannot flush the cache" in err and "did not finish" not in err
