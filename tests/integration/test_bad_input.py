"""Bad input gets a clear error naming the problem, and the daemon keeps serving."""

from __future__ import annotations

import threading

import pytest

import chalkcompute
from chalkcompute import (
    FunctionCodeError,
    FunctionError,
    FunctionNotFoundError,
    FunctionSignatureError,
    Image,
    InvalidArgumentError,
    RemoteFunction,
    ResourceExhaustedError,
    SerializationError,
)

pytestmark = pytest.mark.usefixtures("daemon")


@chalkcompute.function
def add2(x: int, y: int) -> int:
    return x + y


@chalkcompute.function
def size_of(data: bytes) -> int:
    return len(data)


def test_unknown_function():
    with pytest.raises(FunctionNotFoundError, match="'no-such-function' not found"):
        RemoteFunction.from_name("no-such-function")
    with pytest.raises(FunctionNotFoundError):
        RemoteFunction.from_id("fv-00000000000000000000")


def test_wrong_argument_types_and_shapes():
    with pytest.raises(SerializationError, match="argument 'x'"):
        add2("three", 4)
    with pytest.raises(FunctionSignatureError, match="missing a required argument: 'y'"):
        add2(1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        add2(1, 2, z=3)
    remote = RemoteFunction.from_name("add2")
    with pytest.raises(FunctionSignatureError, match="takes 2 positional"):
        remote(1, 2, 3)
    assert add2(1, 2) == 3  # still serving


def test_oversized_message_refused_by_the_sdk():
    with pytest.raises(ResourceExhaustedError, match="limit on arguments, results and chunks"):
        size_of(b"x" * (65 * 2**20))
    assert size_of(b"abc") == 3


def test_oversized_message_refused_by_the_daemon(tmp_path):
    from tests.conftest import Daemon

    d = Daemon(tmp_path / "home", extra_args=("--max-message-size", "100000")).start()
    try:
        def size(data: bytes) -> int:
            return len(data)

        fn = RemoteFunction(size, name="size", target=d.target)
        with pytest.raises(ResourceExhaustedError, match="100000-byte limit"):
            fn(b"x" * 200_000)
        assert fn(b"x" * 1000) == 1000  # the daemon keeps serving, on the same session
    finally:
        d.stop()


def test_invalid_names_and_resources():
    def f(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="invalid function name 'bad name!'"):
        chalkcompute.function(name="bad name!")(f)
    with pytest.raises(ValueError, match="cpu must be"):
        chalkcompute.function(cpu="lots")(f)
    with pytest.raises(ValueError, match="memory must be"):
        chalkcompute.function(memory="2Gx")(f)
    with pytest.raises(ValueError, match="min_replicas"):
        chalkcompute.function(min_replicas=3, max_replicas=2)(f)
    with pytest.raises(ValueError, match="serialization_format"):
        chalkcompute.function(serialization_format="pickle")(f)


def test_daemon_rejects_invalid_name_sent_directly(daemon):
    from chalkcompute._client import Client, run_sync
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

    spec = pb.FunctionSpec(name="bad name", max_replicas=1,
                           code=pb.CodeBundle(module_source="def f(): pass", function_name="f"))
    with pytest.raises(InvalidArgumentError, match="invalid function name 'bad name'"):
        run_sync(Client.get().rpc("RegisterFunction", pb.RegisterFunctionRequest(spec=spec)))


def test_request_larger_than_host_fails_at_deploy():
    def f(x: int) -> int:
        return x

    fn = RemoteFunction(f, name="too_big", cpu=4096)
    with pytest.raises(InvalidArgumentError, match="cpu request 4096000m exceeds this host"):
        fn.deploy()


def test_unsupported_image_steps_name_the_step():
    def f(x: int) -> int:
        return x

    fn = RemoteFunction(f, name="needs_docker", image=Image.debian_slim().run_commands("apt-get install -y curl"))
    with pytest.raises(FunctionError, match="run_commands.*--runtime docker"):
        fn.deploy()
    fn = RemoteFunction(f, name="needs_docker_base", image=Image.base("ubuntu:22.04"))
    with pytest.raises(FunctionError, match="ubuntu:22.04.*--runtime docker"):
        fn.deploy()
    fn = RemoteFunction(f, name="needs_python", image=Image.debian_slim("3.99"))
    with pytest.raises(FunctionError, match="3.99"):
        fn.deploy()


def test_policy_and_secret_parameters_are_type_checked():
    def f(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="chalkcompute.Secret"):
        chalkcompute.function(secrets=["s"])(f)
    with pytest.raises(TypeError, match="queue_policy must be a chalkcompute.QueuePolicy"):
        chalkcompute.function(queue_policy=object())(f)


def test_gpu_requests_are_checked_at_decoration_and_need_the_docker_runtime():
    def f(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="gpu='0:nvidia-l4'"):
        RemoteFunction(f, name="bad_gpu", gpu="0:nvidia-l4")
    fn = RemoteFunction(f, name="gpu_on_process", gpu="nvidia-l4")
    with pytest.raises(FunctionError, match="process runtime.*--runtime docker"):
        fn.deploy()


LOCK = threading.Lock()


def test_global_that_cannot_travel_fails_at_decoration():
    def uses_lock(x: int) -> int:
        with LOCK:
            return x

    with pytest.raises(FunctionCodeError, match="LOCK"):
        chalkcompute.function(uses_lock)


def test_containers_need_the_docker_runtime():
    from chalkcompute import Container, ContainerError

    with pytest.raises(ContainerError, match="Docker runtime.*--runtime process"):
        Container(image=Image.debian_slim(), name="on-process").run()
    with pytest.raises(ContainerError, match="Docker runtime"):
        Container.from_name("on-process")


def test_volumes_need_the_docker_runtime():
    def f(x: int) -> int:
        return x

    fn = RemoteFunction(f, name="volumes_on_process", volumes=[("cache", "/cache")])
    with pytest.raises(FunctionError, match="volumes= is not supported on the process runtime.*--runtime docker"):
        fn.deploy()


def test_one_bad_submit_is_refused_with_its_own_code_and_the_stream_goes_on(daemon):
    # Three submits in one message on one session stream: a good one, one naming no
    # function at all, one naming a function that does not exist, then more good ones.
    from chalkcompute._client import Client
    from chalkcompute.exceptions import FunctionNotFoundError, FunctionSignatureError

    add2.deploy()
    client = Client.get()
    payload = add2._encode((1, 2), {})
    decode = add2.codec.decode_results
    handles = client.start_calls(function_id=add2.info.id, payloads=[payload], decode=decode, display_name="add2")
    nameless = client.start_call(function_name="", args=payload, decode=decode)
    missing = client.start_call(function_name="no-such-function", args=payload, decode=decode)
    handles += client.start_calls(function_id=add2.info.id, payloads=[payload] * 3, decode=decode,
                                  display_name="add2")
    with pytest.raises(FunctionSignatureError, match="give a function name or a version id"):
        nameless.value_of(nameless.next_event(timeout=30))
    with pytest.raises(FunctionNotFoundError, match="no-such-function"):
        missing.value_of(missing.next_event(timeout=30))
    assert [h.value_of(h.next_event(timeout=30)) for h in handles] == [3, 3, 3, 3]
    assert add2(2, 2) == 4  # the session stream is still the one in use, and it works
