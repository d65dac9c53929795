"""Docstring examples run: every ``>>>`` example in chalkcompute/ and chalkd/ is a doctest.

Modules are found by their source (any ``>>>``), so a new example runs without being listed
here. Examples that need a daemon, Docker or a GPU carry ``# doctest: +SKIP``; illustrations
of a whole program stay ``::`` literal blocks, which doctest does not run.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("chalkcompute", "chalkd")
GENERATED = ("chalkcompute/_proto/",)


def _modules_with_examples() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(GENERATED) or ">>>" not in path.read_text():
                continue
            parts = rel.removesuffix(".py").split("/")
            if parts[-1] in ("__init__", "__main__"):
                parts = parts[:-1] if parts[-1] == "__init__" else parts
            names.append(".".join(parts))
    return names


MODULES = _modules_with_examples()


def test_the_examples_are_found():
    # The modules known to carry examples when this test was written: finding none would
    # mean the discovery broke, not that the examples went away.
    assert {"chalkcompute.worker.outcome", "chalkcompute.gpu", "chalkd.config"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, name)
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples in {name} failed (output above)"
    # A module whose every example is skipped still counts: it was found, parsed and imported.
    assert tests, f"{name} has '>>>' in its source but no docstring holds it"
