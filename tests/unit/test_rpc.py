"""The SDK's one error table (chalkcompute.exceptions) and the one typed stub
wrapper (chalkcompute._rpc) against a real daemon, a closed port and a socket
that never answers."""

from __future__ import annotations

import socket

import pytest
from grpclib import GRPCError
from grpclib.const import Status

from chalkcompute import _rpc
from chalkcompute._client import Client, run_sync
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import ContainersStub, FunctionCatalogStub, VolumesStub
from chalkcompute.exceptions import (
    AuthenticationError,
    ChalkError,
    ContainerError,
    DaemonUnavailableError,
    ErrorKind,
    FunctionError,
    FunctionNotFoundError,
    FunctionTimeoutError,
    InvalidArgumentError,
    NotSupportedError,
    PermissionDeniedError,
    ResourceExhaustedError,
    VolumeError,
    VolumeFileNotFoundError,
    VolumeInvalidArgumentError,
    VolumeNotFoundError,
    error_from_status,
    timeout_error,
    unavailable_error,
)
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("status", "cls"), [
    (Status.NOT_FOUND, FunctionNotFoundError),
    (Status.INVALID_ARGUMENT, InvalidArgumentError),
    (Status.FAILED_PRECONDITION, FunctionError),
    (Status.RESOURCE_EXHAUSTED, ResourceExhaustedError),
    (Status.UNAVAILABLE, DaemonUnavailableError),
    (Status.DEADLINE_EXCEEDED, FunctionTimeoutError),
    (Status.UNIMPLEMENTED, NotSupportedError),
    (Status.UNAUTHENTICATED, AuthenticationError),
    (Status.PERMISSION_DENIED, PermissionDeniedError),
])
def test_sdk_rows(status, cls):
    err = error_from_status(status, "the daemon's words")
    assert type(err) is cls and str(err) == "the daemon's words"


def test_a_status_without_a_row_is_a_chalk_error_named_by_the_status():
    err = error_from_status(Status.INTERNAL, None)
    assert type(err) is ChalkError and str(err) == "INTERNAL"
    assert str(error_from_status(Status.INTERNAL, "")) == "INTERNAL"


def test_volume_rows():
    v = ErrorKind.VOLUME
    err = error_from_status(Status.NOT_FOUND, "volume 'x' does not exist", v)
    assert type(err) is VolumeNotFoundError and err.code == "NOT_FOUND" and err.message == "volume 'x' does not exist"
    assert type(error_from_status(Status.NOT_FOUND, "file 'a' is not in volume 'x'", v)) is VolumeFileNotFoundError
    bad = error_from_status(Status.INVALID_ARGUMENT, "path '/a' is absolute", v)
    assert type(bad) is VolumeInvalidArgumentError and isinstance(bad, ValueError) and bad.code == "INVALID_ARGUMENT"
    other = error_from_status(Status.FAILED_PRECONDITION, "a symbolic link", v)
    assert type(other) is VolumeError and other.code == "FAILED_PRECONDITION"
    # Credentials stay the SDK-wide errors, whoever asked.
    assert type(error_from_status(Status.UNAUTHENTICATED, "no token", v)) is AuthenticationError
    assert type(error_from_status(Status.PERMISSION_DENIED, "scoped", v)) is PermissionDeniedError


def test_container_rows_wrap_the_sdk_message():
    err = error_from_status(Status.FAILED_PRECONDITION, "containers need the Docker runtime", ErrorKind.CONTAINER)
    assert type(err) is ContainerError and str(err) == "containers need the Docker runtime"
    assert str(error_from_status(Status.NOT_FOUND, None, ErrorKind.CONTAINER)) == "NOT_FOUND"


def test_connection_and_timeout_errors_by_kind():
    exc = ConnectionRefusedError(111, "Connection refused")
    sdk = unavailable_error("h:1", exc)
    assert type(sdk) is DaemonUnavailableError and isinstance(sdk, ConnectionError)
    assert str(sdk) == "no chalkd answers at h:1 ([Errno 111] Connection refused); start one with `chalkd serve`"
    assert type(unavailable_error("h:1", exc, ErrorKind.VOLUME)) is DaemonUnavailableError
    assert type(unavailable_error("h:1", exc, ErrorKind.CONTAINER)) is ContainerError
    assert str(timeout_error("h:1", "Get", 0.5)) == "chalkd at h:1 did not answer Get within 0.5s"
    assert type(timeout_error("h:1", "Get", 0.5, ErrorKind.CONTAINER)) is ContainerError


# -- the wrapper against real endpoints ------------------------------------------------------


def test_unary_maps_the_daemons_status(daemon):
    client = Client.get(daemon.target)

    async def go() -> None:
        catalog = FunctionCatalogStub(client.channel)
        with pytest.raises(FunctionNotFoundError, match="nope"):
            await _rpc.unary(catalog.GetFunction, pb.GetFunctionRequest(name="nope"), target=client.target)
        volumes = VolumesStub(client.channel)
        with pytest.raises(VolumeNotFoundError) as info:
            await _rpc.unary(volumes.Get, pb.GetVolumeRequest(name="never-made"), target=client.target,
                             kind=ErrorKind.VOLUME)
        assert info.value.code == "NOT_FOUND"
        # A success returns the typed response itself.
        status = await _rpc.unary(catalog.Status, pb.StatusRequest(), target=client.target)
        assert isinstance(status, pb.StatusResponse) and status.runtime

    run_sync(go())


def test_client_rpc_takes_the_stub_method_or_a_catalog_name(daemon):
    client = Client.get(daemon.target)
    by_method = run_sync(client.rpc(client.catalog.Status, pb.StatusRequest()))
    by_name = run_sync(client.rpc("Status", pb.StatusRequest()))
    assert by_method.instance_id == by_name.instance_id != ""
    with pytest.raises(FunctionNotFoundError):
        run_sync(client.rpc(client.catalog.GetFunction, pb.GetFunctionRequest(name="nope")))


def test_nothing_listening_is_daemon_unavailable():
    target = f"127.0.0.1:{free_port()}"
    client = Client.get(target)

    async def go(kind: ErrorKind) -> None:
        stub = ContainersStub(client.channel)
        await _rpc.unary(stub.List, pb.ListContainersRequest(), target=target, timeout=5, kind=kind)

    with pytest.raises(DaemonUnavailableError, match=f"no chalkd answers at {target} .*chalkd serve"):
        run_sync(go(ErrorKind.SDK))
    with pytest.raises(ContainerError, match=f"no chalkd answers at {target}"):
        run_sync(go(ErrorKind.CONTAINER))


def test_a_daemon_that_never_answers_is_named_with_the_method():
    # A socket that accepts and stays silent: the RPC's own deadline passes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        client = Client.get(target)

        async def go() -> None:
            stub = VolumesStub(client.channel)
            await _rpc.unary(stub.List, pb.ListVolumesRequest(), target=target, timeout=0.3, kind=ErrorKind.VOLUME)

        with pytest.raises(DaemonUnavailableError, match=f"chalkd at {target} did not answer List within 0.3s"):
            run_sync(go())


def test_guarded_maps_stream_failures_and_leaves_timeouts_alone():
    with pytest.raises(VolumeFileNotFoundError):
        with _rpc.guarded("h:1", ErrorKind.VOLUME):
            raise GRPCError(Status.NOT_FOUND, "file 'a' is not in volume 'v'")
    with pytest.raises(DaemonUnavailableError, match="no chalkd answers at h:1"):
        with _rpc.guarded("h:1"):
            raise ConnectionResetError("reset")
    with pytest.raises(TimeoutError) as info:
        with _rpc.guarded("h:1"):
            raise TimeoutError("the caller's deadline")
    assert not isinstance(info.value, ChalkError)
