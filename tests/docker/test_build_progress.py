"""An image build's progress row (the Dockerfile step the engine is on) under its log, and the plain log
without displays: real engine, real daemon, read from pytest's capture of sys.stderr."""

from __future__ import annotations

import re
import uuid

import pytest

from chalkcompute import Image
from chalkcompute._build import prepare_image
from chalkcompute._client import Client, run_sync

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _build(monkeypatch, capsys, setting: str | None) -> tuple[str, Image]:
    if setting is None:
        monkeypatch.delenv("CHALK_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("CHALK_PROGRESS", setting)
    monkeypatch.setenv("COLUMNS", "200")
    # Steps of its own: a cached image builds nothing and prints nothing.
    image = Image.debian_slim().run_commands(f"echo progress-{uuid.uuid4().hex}", "echo second step")
    capsys.readouterr()
    outcome = run_sync(prepare_image(Client.get(), image, what="the progress test"))
    assert outcome.cached is False
    return capsys.readouterr().err, image


def test_a_build_shows_step_k_of_n_under_its_log(monkeypatch, capsys):
    err, image = _build(monkeypatch, capsys, "1")
    out = _ANSI.sub("", err).replace("\r", "\n")
    label = f"building image {image.content_hash[:12]} for the progress test"
    assert out.count(f"chalkd: {label}\n") == 1, out  # the log's first line, once, above the row
    totals = {int(n) for n in re.findall(r"^Step \d+/(\d+) : ", out, re.M)}
    assert len(totals) == 1, out  # the engine's own count of steps
    [n] = totals
    rows = [int(k) for k in re.findall(rf"^. ?{re.escape(label)} .* step (\d+) of {n} · \d:\d\d:\d\d *$", out, re.M)]
    assert len(set(rows)) >= 2, out  # the row moved with the build
    for k in rows:  # each step a row names is one the engine announced
        assert re.search(rf"^Step {k}/{n} : ", out, re.M), (k, out)
    assert rows[-1] == n  # the last state drawn: every step done
    assert re.search(r"^ ---> ", out, re.M)  # the engine's own lines still show above the row


@pytest.mark.parametrize("setting", ["0", None])
def test_without_displays_a_build_prints_its_plain_log(monkeypatch, capsys, setting):
    err, image = _build(monkeypatch, capsys, setting)
    lines = err.splitlines()
    assert lines[0] == f"chalkd: building image {image.content_hash[:12]} for the progress test"
    assert "\x1b" not in err and "\r" not in err
    assert any(re.match(r"Step 1/\d+ : FROM ", line) for line in lines), lines
