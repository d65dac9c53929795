"""chalkcompute._progress: when displays show, and what their rows say (rendered as for a terminal)."""

from __future__ import annotations

import io
import re
import sys

import pytest

from chalkcompute import _progress
from chalkcompute._progress import LARGE_TRANSFER, BuildSteps, Counter, Transfer

pytestmark = pytest.mark.timeout(30)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """Captured terminal output as lines a person would have seen drawn (escapes dropped, \\r a new line)."""
    return _ANSI.sub("", text).replace("\r", "\n")


class _Captured:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def stderr(capsys, monkeypatch):
    """What the test writes to sys.stderr (pytest's capture: a fixture cannot replace sys.stderr for the
    test's call), with displays forced on and a wide terminal (no ellipsis in the rows)."""
    monkeypatch.setenv("CHALK_PROGRESS", "1")
    monkeypatch.setenv("COLUMNS", "200")
    return _Captured(capsys)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("value", "tty", "expected"), [
    ("", False, False), ("", True, True), ("0", True, False), ("off", True, False), ("1", False, True),
    ("yes", False, True), ("maybe", True, True), ("maybe", False, False)])
def test_enabled_follows_the_variable_then_the_terminal(monkeypatch, value, tty, expected):
    monkeypatch.setenv("CHALK_PROGRESS", value)
    monkeypatch.setattr(sys, "stderr", _Tty() if tty else io.StringIO())
    assert _progress.enabled() is expected


def test_enabled_with_no_stderr_at_all(monkeypatch):
    monkeypatch.delenv("CHALK_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", None)
    assert _progress.enabled() is False


def test_a_large_transfer_shows_bytes_rate_and_eta_then_its_last_state(stderr):
    t = Transfer("put models:weights.bin")
    t.sized(3 * LARGE_TRANSFER)
    t.done = LARGE_TRANSFER
    assert _progress.print_above("a line above")  # the area shows; lines go above it (and redraw it)
    t.done = 3 * LARGE_TRANSFER
    t.close()
    out = plain(stderr.getvalue())
    assert "a line above" in out
    assert re.search(r"put models:weights\.bin .* 8\.4/25\.2 MB · .*ETA", out), out
    assert re.search(r"put models:weights\.bin .* 25\.2/25\.2 MB · .*ETA 0:00:00", out), out
    assert not _progress.print_above("x")  # the area went with its last row


def test_a_small_transfer_or_displays_off_show_nothing(stderr, monkeypatch):
    t = Transfer("get models:small")
    t.sized(LARGE_TRANSFER - 1)
    t.done = LARGE_TRANSFER - 1
    t.close()
    monkeypatch.setenv("CHALK_PROGRESS", "0")
    t = Transfer("get models:big")
    t.sized(LARGE_TRANSFER * 2)
    t.done += LARGE_TRANSFER * 2
    t.close()
    assert stderr.getvalue() == ""


def test_build_steps_are_read_from_the_engines_lines(stderr):
    b = BuildSteps("building image 0123456789ab for function 'f'")
    b.start()
    for k in range(1, 6):
        lines = [f"Step {k}/5 : RUN echo {k}", f" ---> Running in c{k}"]
        b.feed(lines)
        _progress.print_above("\n".join(lines))
        if k == 2:
            assert (b.step, b.done, b.total) == (2, 1, 5)
    b.finish()
    b.close()
    out = plain(stderr.getvalue())
    # Under each step's lines, the row says which step runs (drawn fresh below each print).
    for k in range(1, 6):
        assert re.search(rf"Step {k}/5 : RUN echo {k}\n ---> Running in c{k}\n.*building image 0123456789ab "
                         rf"for function 'f' .* step {k} of 5 · \d:\d\d:\d\d", out), out


def test_a_build_without_steps_shows_its_time_only(stderr):
    b = BuildSteps("building image 0123456789ab for function 'g'")
    b.start()
    b.feed(["building image 0123456789ab for the process runtime (Python 3.11)"])
    b.close()
    out = plain(stderr.getvalue())
    assert re.search(r"building image 0123456789ab for function 'g' .* 0:00:0\d", out), out
    assert "step" not in out


def test_rows_share_one_area(stderr):
    a, c = Transfer("get v:a"), Counter("map f", 10)
    a.sized(LARGE_TRANSFER)
    c.start()
    c.done = 4
    a.done = LARGE_TRANSFER
    a.close()  # the other row keeps the area
    assert _progress.print_above("still here")
    c.done = 10
    c.close()
    out = plain(stderr.getvalue())
    assert re.search(r"map f .* 4/10", out), out
    assert re.search(r"map f .* 10/10", out), out
    assert "still here" in out


def test_a_counter_without_a_total_counts(stderr):
    c = Counter("map f", None)
    c.start()
    c.done = 7
    c.close()
    assert re.search(r"map f .* 7 done", plain(stderr.getvalue()))


def test_sized_total_of_zipped_iterables():
    assert _progress.sized_total(range(5), [1, 2, 3]) == 3
    assert _progress.sized_total(range(5), iter([1])) is None  # an iterator's length is unknown
    assert _progress.sized_total() is None


def test_count_items_is_the_iterator_itself_when_displays_are_off(monkeypatch):
    monkeypatch.setenv("CHALK_PROGRESS", "0")
    results = iter([1, 2])
    assert _progress.count_items(results, "map f", 2) is results


def test_count_items_counts_and_closes_its_source(stderr):
    closed = []

    def source():
        try:
            yield from range(100)
        finally:
            closed.append(True)

    counted = _progress.count_items(source(), "map square", 100)
    assert stderr.getvalue() == ""  # nothing shows before the loop starts
    for value in counted:
        if value == 41:
            break
    counted.close()  # the loop left early: the row goes, the map under it is closed (its calls cancelled)
    assert closed == [True]
    assert re.search(r"map square .* 42/100", plain(stderr.getvalue()))
    assert not _progress.print_above("x")


def test_acount_items_counts_an_async_map(stderr):
    import asyncio

    async def source():
        for i in range(5):
            yield i

    async def main():
        return [v async for v in _progress.acount_items(source(), "map cube", None)]

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert re.search(r"map cube .* 5 done", plain(stderr.getvalue()))


def test_a_terminal_shows_displays_by_default_and_a_pipe_does_not():
    import os
    import pty
    import subprocess

    code = ("from chalkcompute._progress import LARGE_TRANSFER, Transfer\n"
            "t = Transfer('get v:big'); t.sized(2 * LARGE_TRANSFER); t.done = 2 * LARGE_TRANSFER; t.close()\n")
    env = {k: v for k, v in os.environ.items() if k != "CHALK_PROGRESS"} | {"COLUMNS": "200"}
    master, slave = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", code], stderr=slave, stdout=subprocess.DEVNULL, env=env,
                       timeout=20, check=True)
    finally:
        os.close(slave)
    out = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed and all was read
            break
        if not data:
            break
        out += data
    os.close(master)
    assert re.search(r"get v:big .* 16\.8/16\.8 MB", plain(out.decode())), out
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=20, check=True)
    assert piped.stderr == b""


class _Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(32, "Broken pipe")


def test_a_broken_stderr_never_fails_the_work(monkeypatch):
    monkeypatch.setenv("CHALK_PROGRESS", "1")
    monkeypatch.setattr(sys, "stderr", _Broken())
    t = Transfer("put v:big")
    t.sized(2 * LARGE_TRANSFER)
    t.done = 2 * LARGE_TRANSFER
    assert _progress.print_above("line") is True  # dropped, not raised
    t.close()
    assert not _progress.print_above("x")


def test_a_display_leaves_stdout_and_stderr_in_place(stderr):
    out, err = sys.stdout, sys.stderr
    t = Transfer("get v:big")
    t.sized(LARGE_TRANSFER)
    assert (sys.stdout, sys.stderr) == (out, err)  # the program's prints still go where they went
    t.close()


def test_labels_are_text_not_markup(stderr):
    t = Transfer("put v:[/bold]odd[red].bin")  # would be a MarkupError, or vanish, as rich markup
    t.sized(LARGE_TRANSFER)
    t.done = LARGE_TRANSFER
    t.close()
    assert "put v:[/bold]odd[red].bin" in plain(stderr.getvalue())
