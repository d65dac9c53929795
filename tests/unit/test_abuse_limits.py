"""Hard to abuse (issue 13 item 4a): user strings quoted short, status messages capped, names and
paths bounded before anything reads them, control characters refused in volume file names."""

from __future__ import annotations

import pytest
from grpclib import GRPCError
from grpclib.const import Status

from chalkcompute._contract import MAX_NAME_CHARS, MAX_PATH_BYTES, name_too_long, path_too_long, quote
from chalkcompute.worker.outcome import error_message
from chalkd.catalog import InvalidFunction, validate_name
from chalkd.errors import InvalidArgument, NotFound
from chalkd.secrets.store import InvalidSecret, check_env_name, check_integration_name
from chalkd.services.errors import MAX_STATUS_MESSAGE, cap_message, status_of, to_grpc
from chalkd.volumes.paths import InvalidVolumeName, InvalidVolumePath, check_name, split_path

pytestmark = pytest.mark.timeout(30)


def test_quote_keeps_short_strings_whole_and_cuts_long_ones():
    assert quote("etl") == "'etl'"
    assert quote("a" * 100) == repr("a" * 100)
    long = quote("a" * 1_000_000)
    assert long == repr("a" * 100) + "... (1000000 characters)"
    assert quote(b"b" * 150) == repr(b"b" * 100) + "... (150 bytes)"
    assert quote("x" * 50, limit=10) == "'xxxxxxxxxx'... (50 characters)"


def test_quote_caps_other_objects_and_survives_a_raising_repr():
    assert len(quote(list(range(10_000)))) <= 103

    class Odd:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    assert quote(Odd()) == "<Odd: repr() failed: RuntimeError>"


def test_name_and_path_limits_name_the_argument_and_the_limit():
    assert name_too_long("function name", "f" * MAX_NAME_CHARS) is None
    msg = name_too_long("function name", "f" * (MAX_NAME_CHARS + 1))
    assert msg is not None and msg.startswith("invalid function name 'ffff")
    assert "longer than 128 characters" in msg and "(129 characters)" in msg
    assert name_too_long("volume name", None) is None  # not a str: the rule after it says so
    assert path_too_long("path", "a" * MAX_PATH_BYTES) is None
    msg = path_too_long("path", "a" * (MAX_PATH_BYTES + 1))
    assert msg is not None and "longer than 4096 bytes" in msg and len(msg) < 200
    # bytes, not characters: 2,049 two-byte characters are 4,098 bytes
    assert path_too_long("path", "é" * 2049) is not None
    assert path_too_long("path", "é" * 2048) is None


def test_cap_message_cuts_with_a_marker():
    assert cap_message("short") == "short"
    assert cap_message("x" * MAX_STATUS_MESSAGE) == "x" * MAX_STATUS_MESSAGE
    cut = cap_message("x" * 1_000_000)
    assert len(cut) == MAX_STATUS_MESSAGE and cut.endswith("... (message cut)")


def test_every_status_message_is_capped_the_backstop():
    status, message = status_of(NotFound("y" * 1_000_000))
    assert status is Status.NOT_FOUND and len(message) == MAX_STATUS_MESSAGE
    err = to_grpc(InvalidArgument("z" * 100_000))
    assert err.status is Status.INVALID_ARGUMENT and err.message is not None
    assert len(err.message) == MAX_STATUS_MESSAGE
    raw = to_grpc(GRPCError(Status.INTERNAL, "w" * 5000))
    assert raw.message is not None and len(raw.message) == MAX_STATUS_MESSAGE
    kept = GRPCError(Status.INTERNAL, "fine")
    assert to_grpc(kept) is kept


@pytest.mark.parametrize(("check", "error", "what"), [
    (validate_name, InvalidFunction, "function name"),
    (check_name, InvalidVolumeName, "volume name"),
    (check_env_name, InvalidSecret, "secret name"),
    (check_integration_name, InvalidSecret, "integration name"),
])
def test_daemon_name_checks_refuse_long_names_first_and_quote_them_short(check, error, what):
    with pytest.raises(error) as info:
        check("n" * 1_000_000)
    text = str(info.value)
    assert text.startswith(f"invalid {what} ") and "longer than 128 characters" in text
    assert "n" * 101 not in text and len(text) < 300
    with pytest.raises(error) as info:  # a bad name under the limit: the rule's message, quoted short
        check("?" * 120)
    assert "?" * 101 not in str(info.value)


def test_volume_paths_are_bounded_and_refuse_control_characters():
    with pytest.raises(InvalidVolumePath, match="longer than 4096 bytes") as info:
        split_path("p" * 5000, name="vol")
    assert "p" * 101 not in str(info.value) and "in volume 'vol'" in str(info.value)
    for bad in ("a\nb", "dir/x\ty", "cr\r", "del\x7f", "esc\x1b[31m"):
        with pytest.raises(InvalidVolumePath, match="control characters"):
            split_path(bad, name="vol")
    assert split_path("ok dir/é.txt") == ["ok dir", "é.txt"]


def test_an_exception_whose_str_raises_is_reported_by_type_with_a_placeholder():
    class BadStr(Exception):
        def __str__(self) -> str:
            raise ValueError("str is broken")

    try:
        raise BadStr()
    except BadStr as exc:
        err = error_message(exc)
    assert err.exception_type.endswith("BadStr")
    assert err.message == "<exception str() failed: ValueError: str is broken>"
    assert "BadStr" in err.traceback


def test_sdk_paths_are_bounded_before_use(tmp_path):
    from chalkcompute import Image
    from chalkcompute._mounts import volume_mounts

    with pytest.raises(ValueError, match="invalid local_path .*longer than 4096 bytes") as info:
        Image.debian_slim().add_local_dir("x" * 5000, "/app")
    assert "x" * 101 not in str(info.value)
    with pytest.raises(ValueError, match="invalid remote_path .*longer than 4096 bytes"):
        Image.debian_slim().add_local_dir(str(tmp_path), "/" + "y" * 5000)
    with pytest.raises(ValueError, match="invalid mount path .*longer than 4096 bytes"):
        volume_mounts([("vol", "/" + "m" * 5000)])
    with pytest.raises(ValueError, match="invalid volume name .*longer than 128 characters"):
        volume_mounts([("v" * 10_000, "/data")])
