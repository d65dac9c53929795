"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from chalkcompute.worker.cancel import Canceller


@pytest.fixture
def canceller():
    """A worker Canceller that, as in the worker, raises CallCancelled again when a
    garbage-collector callback swallowed it (see Canceller.catch_swallowed)."""
    c = Canceller()
    undo = c.catch_swallowed()
    yield c
    undo()
