"""--memory-budget: parsing, validation, and how the queue and the sessions split it."""

from __future__ import annotations

import pytest

from chalkd.cli import main
from chalkd.config import Config, parse_size
from chalkd.queue.core import MemoryBudget
from chalkd.services.streams import session_outbox_limit


@pytest.mark.timeout(10)
@pytest.mark.parametrize("text,value", [
    ("1073741824", 2**30), ("512MiB", 512 * 2**20), ("1 GiB", 2**30), ("2g", 2 * 10**9), ("64mib", 64 * 2**20),
])
def test_sizes_parse(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.timeout(10)
@pytest.mark.parametrize("text", ["", "abc", "-1GiB", "12 parsecs"])
def test_a_bad_size_names_the_option(text: str) -> None:
    with pytest.raises(ValueError, match=r"--memory-budget must be a size such as 1073741824, 512MiB or 1GiB"):
        parse_size(text, "--memory-budget")


@pytest.mark.timeout(10)
def test_the_default_budget_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("CHALKD_MEMORY_BUDGET", raising=False)
    assert Config().memory_budget == 2**30
    monkeypatch.setenv("CHALKD_MEMORY_BUDGET", "256MiB")
    assert Config().memory_budget == 256 * 2**20
    with pytest.raises(ValueError, match="--memory-budget must be at least 64 MiB"):
        Config(memory_budget=2**20).validate()


@pytest.mark.timeout(10)
def test_the_cli_refuses_a_bad_budget_with_exit_2(capsys) -> None:
    assert main(["serve", "--memory-budget", "lots"]) == 2
    assert "--memory-budget must be a size" in capsys.readouterr().err
    assert main(["serve", "--memory-budget", "1MiB"]) == 2
    assert "--memory-budget must be at least 64 MiB" in capsys.readouterr().err


@pytest.mark.timeout(10)
def test_how_the_budget_is_split() -> None:
    b = MemoryBudget(2**30)
    assert (b.queued_args, b.finished, b.idempotency_keys) == (2**28, 2**28, 2**30 // 16 // 400)
    # A session's outbox holds at least two of the largest messages.
    assert session_outbox_limit(2**30, 64 * 2**20) == 2 * 64 * 2**20 + 4 * 2**20
    assert session_outbox_limit(8 * 2**30, 64 * 2**20) == 2**30
