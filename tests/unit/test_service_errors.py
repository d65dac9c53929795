"""The daemon's one error table (chalkd.services.errors): each row, the decorator, and the unknown case."""

from __future__ import annotations

import asyncio
import logging

import pytest
from grpclib import GRPCError
from grpclib.const import Status

from chalkd import errors
from chalkd.services.errors import INTERNAL_MESSAGE, TABLE, grpc_errors, status_of, to_grpc

pytestmark = pytest.mark.timeout(10)

DOMAIN = [
    (errors.NotFound, Status.NOT_FOUND),
    (errors.AlreadyExists, Status.ALREADY_EXISTS),
    (errors.InvalidArgument, Status.INVALID_ARGUMENT),
    (errors.FailedPrecondition, Status.FAILED_PRECONDITION),
    (errors.ResourceExhausted, Status.RESOURCE_EXHAUSTED),
    (errors.PermissionDenied, Status.PERMISSION_DENIED),
    (errors.Unauthenticated, Status.UNAUTHENTICATED),
    (errors.Unavailable, Status.UNAVAILABLE),
    (errors.DeadlineExceeded, Status.DEADLINE_EXCEEDED),
    (errors.Unimplemented, Status.UNIMPLEMENTED),
    (errors.Internal, Status.INTERNAL),
]


@pytest.mark.parametrize(("kind", "status"), DOMAIN, ids=[k.__name__ for k, _ in DOMAIN])
def test_domain_exception_maps_to_its_status_with_its_message(kind: type[Exception], status: Status) -> None:
    assert status_of(kind(f"the {kind.__name__} message")) == (status, f"the {kind.__name__} message")


@pytest.mark.parametrize("row", TABLE, ids=[row[0].__name__ for row in TABLE])
def test_every_row_maps_its_exception(row: tuple) -> None:
    kind, status, _ = row
    exc = kind.__new__(kind)
    Exception.__init__(exc, "why")
    got_status, message = status_of(exc)
    assert got_status == status
    assert "why" in message


def test_rows_for_older_domain_errors() -> None:
    from chalkd.containers.manager import ContainerConflict
    from chalkd.images.blobs import LazyFileError
    from chalkd.images.dockerfile import ImageBuildError
    from chalkd.queue.core import CallNotFound
    from chalkd.store.db import DiskFull, StoreStopped

    assert status_of(CallNotFound("call 'x' not found")) == (Status.NOT_FOUND, "call 'x' not found")
    assert status_of(ContainerConflict("name taken"))[0] == Status.ALREADY_EXISTS  # before its ValueError base
    assert status_of(LazyFileError("no blob"))[0] == Status.INVALID_ARGUMENT
    assert status_of(ImageBuildError("step 2 failed", step="step 2/6")) == (
        Status.FAILED_PRECONDITION, "image build failed: step 2 failed")
    assert status_of(DiskFull("chalkd's disk is full"))[0] == Status.RESOURCE_EXHAUSTED
    assert status_of(StoreStopped("writer stopped"))[0] == Status.UNAVAILABLE


def test_no_row_is_shadowed_by_an_earlier_base() -> None:
    for i, (kind, _, _) in enumerate(TABLE):
        for earlier, _, _ in TABLE[:i]:
            assert not issubclass(kind, earlier), f"{kind.__name__} is shadowed by {earlier.__name__}"


def test_unknown_exception_is_internal_and_logged_with_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="chalkd.services.errors")
    try:
        {}["missing"]
    except KeyError as exc:
        assert status_of(exc) == (Status.INTERNAL, INTERNAL_MESSAGE)
    [record] = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert "KeyError" in caplog.text and "Traceback" in caplog.text


def test_a_plain_value_error_is_not_the_callers_fault(caplog: pytest.LogCaptureFixture) -> None:
    # Only the services' input checks decide a ValueError is the request's; a stray one is a bug in chalkd.
    caplog.set_level(logging.ERROR, logger="chalkd.services.errors")
    assert status_of(ValueError("oops"))[0] == Status.INTERNAL


def test_grpc_error_passes_through_unchanged() -> None:
    err = GRPCError(Status.RESOURCE_EXHAUSTED, "message too large")
    assert to_grpc(err) is err
    assert status_of(err) == (Status.RESOURCE_EXHAUSTED, "message too large")


class _Service:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc

    @grpc_errors
    async def Method(self, stream: list[str]) -> None:
        stream.append("ran")
        if self.exc is not None:
            raise self.exc


def test_decorator_answers_domain_errors_through_the_table() -> None:
    seen: list[str] = []
    with pytest.raises(GRPCError) as info:
        asyncio.run(_Service(errors.NotFound("no volume named 'm'")).Method(seen))
    assert (info.value.status, info.value.message) == (Status.NOT_FOUND, "no volume named 'm'")
    assert seen == ["ran"]
    assert _Service.Method.__name__ == "Method"


def test_decorator_answers_unknown_errors_internal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="chalkd.services.errors")
    with pytest.raises(GRPCError) as info:
        asyncio.run(_Service(ZeroDivisionError("division by zero")).Method([]))
    assert (info.value.status, info.value.message) == (Status.INTERNAL, INTERNAL_MESSAGE)
    assert "ZeroDivisionError" in caplog.text


def test_decorator_leaves_timeouts_and_success_to_grpclib() -> None:
    with pytest.raises(TimeoutError):
        asyncio.run(_Service(TimeoutError()).Method([]))
    assert asyncio.run(_Service(None).Method([])) is None


def test_volume_disk_errors_say_what_was_being_done(caplog: pytest.LogCaptureFixture) -> None:
    import errno

    from chalkd.services.volumes import _errors
    from chalkd.volumes.paths import VolumeNotFound

    def answer(exc: BaseException) -> tuple[Status, str]:
        try:
            with _errors("writing to volume 'm'"):
                raise exc
        except Exception as raised:
            return status_of(raised)
        raise AssertionError("_errors swallowed the error")

    assert answer(PermissionError(errno.EACCES, "Permission denied", "/v/m/a.txt")) == (
        Status.PERMISSION_DENIED, "writing to volume 'm': chalkd may not access /v/m/a.txt (Permission denied)")
    assert answer(OSError(errno.ENOSPC, "No space left on device")) == (
        Status.RESOURCE_EXHAUSTED, "writing to volume 'm': the daemon's disk is full (No space left on device)")
    assert answer(VolumeNotFound("m")) == (Status.NOT_FOUND, str(VolumeNotFound("m")))  # the store's own, as is
    caplog.set_level(logging.ERROR, logger="chalkd.services.volumes")
    status, message = answer(OSError(errno.EIO, "Input/output error"))
    assert status == Status.INTERNAL and message.startswith("writing to volume 'm' failed: ")
    assert "Input/output error" in caplog.text and "Traceback" in caplog.text
