"""chalkcompute._contract: the one message batcher, the wire limits and the name
rules the SDK and the daemon share."""

from __future__ import annotations

import doctest
import os

import pytest

from chalkcompute import _contract
from chalkcompute._contract import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_BATCH_BYTES,
    batches,
    sdk_max_payload,
    set_max_payload,
    too_large,
    valid_container_name,
    valid_env_name,
    valid_function_name,
    valid_integration_name,
    valid_volume_name,
)

pytestmark = pytest.mark.timeout(30)


def _ident(n: int) -> int:
    return n


def test_batches_keep_order_and_stay_under_the_limit():
    sizes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    groups = list(batches(sizes, size=_ident, limit=10))
    assert [x for g in groups for x in g] == sizes
    assert all(sum(g) <= 10 for g in groups)
    # Greedy: each group is as long as the limit allows.
    assert groups == [[1, 2, 3, 4], [5], [6], [7], [8], [9], [10]]


def test_an_item_over_the_limit_travels_alone():
    assert list(batches([1, 50, 1, 1], size=_ident, limit=10)) == [[1], [50], [1, 1]]
    assert list(batches([50], size=_ident, limit=10)) == [[50]]


def test_exactly_at_the_limit_fits():
    assert list(batches([5, 5, 5], size=_ident, limit=10)) == [[5, 5], [5]]


def test_max_items_caps_a_group_as_well():
    assert list(batches(list(range(7)), size=lambda _: 0, limit=10, max_items=3)) == [[0, 1, 2], [3, 4, 5], [6]]
    # Both caps: bytes cut first here.
    assert list(batches([4, 4, 4, 1], size=_ident, limit=8, max_items=3)) == [[4, 4], [4, 1]]


def test_empty_input_gives_no_group_and_sizes_are_asked_once():
    assert list(batches([], size=_ident)) == []
    asked: list[int] = []

    def size(n: int) -> int:
        asked.append(n)
        return n

    list(batches([3, 3, 3], size=size, limit=4))
    assert asked == [3, 3, 3]


def test_default_limit_is_four_mib():
    assert MAX_BATCH_BYTES == 4 * 2**20
    two_mib = 2 * 2**20
    assert [len(g) for g in batches([two_mib] * 5, size=_ident)] == [2, 2, 1]


def test_bad_limits_are_refused_by_name():
    with pytest.raises(ValueError, match="limit must be a positive number of bytes, got 0"):
        list(batches([1], size=_ident, limit=0))
    with pytest.raises(ValueError, match="max_items must be positive or None, got 0"):
        list(batches([1], size=_ident, max_items=0))


def test_sdk_max_payload_from_the_environment_then_the_daemon():
    import subprocess
    import sys

    code = "from chalkcompute._contract import sdk_max_payload as m; print(m())"
    env = {k: v for k, v in os.environ.items() if k != "CHALK_MAX_MESSAGE_SIZE"}
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(default.stdout) == DEFAULT_MAX_MESSAGE_BYTES == 64 * 2**20
    env["CHALK_MAX_MESSAGE_SIZE"] = "2048"
    given = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(given.stdout) == 2048
    # A worker adopts the limit its daemon names (0: a daemon that names none).
    before = sdk_max_payload()
    try:
        set_max_payload(4096)
        assert sdk_max_payload() == 4096
        set_max_payload(0)
        assert sdk_max_payload() == 4096
    finally:
        set_max_payload(before)


def test_too_large_names_the_limit_and_the_flag():
    message = too_large("the result", 100, 10)
    assert "the result is 100 bytes, over the 10-byte limit" in message
    assert "--max-message-size" in message and "CHALK_MAX_MESSAGE_SIZE" in message


@pytest.mark.parametrize(("check", "good", "bad"), [
    (valid_function_name, ["add", "_x", "etl.load-v2", "a" * 128], ["", "2x", "-x", "a b", "a" * 129, None]),
    (valid_volume_name, ["v", "my-vol", "a.b_c", "A" * 63], ["", "-v", ".v", "a/b", "a" * 64, 3]),
    (valid_integration_name, ["prod_postgres", "gh.main"], ["", "_x", "a b", "a" * 64]),
    (valid_env_name, ["A", "_A", "API_KEY2", "A" * 128], ["", "1A", "A-B", "A" * 129, b"A"]),
    (valid_container_name, ["web", "web-1", "0"], ["", "Web", "-web", "web-", "a" * 64, "a_b"]),
])
def test_name_rules(check, good, bad):
    for name in good:
        assert check(name), name
    for name in bad:
        assert not check(name), name


def test_the_daemon_and_the_sdk_apply_the_same_rules():
    # The daemon's checks must agree with the contract (until both import it, they
    # carry copies; this test fails the moment one side drifts).
    from chalkd import catalog
    from chalkd.secrets import store as secrets
    from chalkd.volumes import paths

    for name in ["add", "2x", "etl.load-v2", "a" * 129]:
        assert bool(catalog.NAME_RE.match(name)) == valid_function_name(name)
    for name in ["v", "-v", "a" * 63, "a" * 64]:
        assert bool(paths.NAME_RE.fullmatch(name)) == valid_volume_name(name)
        assert bool(secrets.INTEGRATION_NAME_RE.fullmatch(name)) == valid_integration_name(name)
    for name in ["API_KEY", "1A", "A" * 256]:
        assert bool(secrets.ENV_NAME_RE.fullmatch(name)) == valid_env_name(name)


def test_doctests():
    result = doctest.testmod(_contract)
    assert result.attempted > 0 and result.failed == 0
