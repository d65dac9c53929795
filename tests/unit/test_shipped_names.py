"""Classes shipped as source keep the caller's module name in what the worker reports.

The worker execs a bundle as module ``__chalk_fn__<hash>``; exception types defined in
the caller's module are reported (type and bases) under the caller's name, which is
what ``retry_on`` holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chalkcompute import RetryPolicy
from chalkcompute._code import build_bundle, caller_module, load_bundle
from chalkcompute.worker.outcome import error_message


class BaseShippedError(Exception):
    pass


class ShippedError(BaseShippedError):
    pass


def fails(x: int) -> int:
    raise ShippedError(f"bad {x}")


@pytest.mark.timeout(30)
def test_a_shipped_exception_is_reported_under_the_callers_module(tmp_path: Path) -> None:
    bundle = build_bundle(fails, remote_name=lambda obj: None)
    assert bundle.module == __name__
    fn = load_bundle(bundle, tmp_path, make_remote=lambda name: None)
    with pytest.raises(Exception) as info:
        fn(3)
    exc = info.value
    assert type(exc).__module__.startswith("__chalk_fn__")  # the worker's own name for the module
    assert caller_module(type(exc).__module__) == __name__
    err = error_message(exc)
    assert err.exception_type == f"{__name__}.ShippedError"
    assert list(err.exception_mro)[:2] == [f"{__name__}.BaseShippedError", "builtins.Exception"]
    # A policy made inside the worker names the shipped class the same way.
    assert RetryPolicy.linear(retry_on=(type(exc).__mro__[1],)).to_dict()["retry_on"] == \
        [f"{__name__}.BaseShippedError"]
    # Names that are not a bundle's pass through.
    assert caller_module("builtins") == "builtins" and caller_module("app.jobs") == "app.jobs"
