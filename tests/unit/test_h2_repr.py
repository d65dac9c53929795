"""chalkcompute/_h2_repr.py: h2's frame reprs (built for every received frame) keep their text
but no longer hexlify a DATA frame's whole body."""

from __future__ import annotations

import binascii
import os

import pytest
from hyperframe import frame
from hyperframe.frame import DataFrame

from chalkcompute import _h2_repr

pytestmark = pytest.mark.timeout(10)


def _hyperframe_text(data: bytes | None) -> str:
    """What hyperframe 6 writes: the hex of the whole body, cut to 20 digits and '...'."""
    if not data:
        return "None"
    r = binascii.hexlify(data).decode("ascii")
    return "<hex:" + (r[:20] + "..." if len(r) > 20 else r) + ">"


def test_installed_on_import_and_idempotent():
    assert frame._raw_data_repr is _h2_repr._raw_data_repr
    assert _h2_repr.install() is True


@pytest.mark.parametrize("n", [0, 1, 9, 10, 11, 12, 16384])
def test_the_text_is_hyperframes(n):
    data = os.urandom(n)
    assert _h2_repr._raw_data_repr(data) == _hyperframe_text(data)
    assert _h2_repr._raw_data_repr(memoryview(data)) == _hyperframe_text(data)
    assert repr(DataFrame(3, data=data)).endswith(": " + _hyperframe_text(data) if n else ": None")
