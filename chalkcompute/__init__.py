"""chalkcompute: decorate a Python function, call it, and it runs on chalkd.

    import chalkcompute

    @chalkcompute.function
    def add(x: int, y: int) -> int:
        return x + y

    add.wait_ready()
    print(add(3, 5))  # 8

Set ``CHALK_COMPUTE_TARGET`` (default ``127.0.0.1:50051``) to reach another daemon.
"""

from typing import TYPE_CHECKING

from chalkcompute.calls import FunctionCall
from chalkcompute.classes import ClassBuildError, ClassError, RemoteClass, after, before, cls, method
from chalkcompute.container import Container, ContainerInfo, ExecResult
from chalkcompute.exceptions import (
    AuthenticationError,
    CallCancelledError,
    CallInterruptedError,
    ChalkError,
    ConcurrencyDeadlockError,
    ContainerError,
    DaemonUnavailableError,
    FunctionBuildError,
    FunctionCodeError,
    FunctionError,
    FunctionNotFoundError,
    FunctionSignatureError,
    FunctionTimeoutError,
    ImageBuildError,
    InvalidArgumentError,
    NotSupportedError,
    PermissionDeniedError,
    RemoteExecutionError,
    ResourceExhaustedError,
    SerializationError,
    WorkerLostError,
)
from chalkcompute.functions import FunctionVersionInfo, RemoteFunction, function
from chalkcompute.image import Image, LazyLocalFile
from chalkcompute.policies import ConcurrencyPolicy, QueuePolicy, RateLimitPolicy
from chalkcompute.retries import RetryPolicy
from chalkcompute.sandbox import (
    ExecError,
    ExecEvent,
    ExecProcess,
    Sandbox,
    SandboxBuildError,
    SandboxClient,
    SandboxCreationError,
    SandboxError,
    SandboxFileEntry,
    SandboxInfo,
    SandboxNotFoundError,
    SandboxStatusError,
    SandboxTerminatedError,
    VolumeMount,
)
from chalkcompute.scaling_group import (
    ReadinessProbe,
    ScalingGroup,
    ScalingGroupBuildError,
    ScalingGroupError,
    ScalingGroupInfo,
    ScalingGroupNotFoundError,
)
from chalkcompute.secret import Secret
from chalkcompute.volume import (
    Volume,
    VolumeBatch,
    VolumeClient,
    VolumeClosedError,
    VolumeEntry,
    VolumeError,
    VolumeFileNotFoundError,
    VolumeInfo,
    VolumeInvalidArgumentError,
    VolumeNotFoundError,
)
from chalkcompute.worker.cancel import CallCancelled

__version__ = "0.1.0"

if TYPE_CHECKING:  # type checkers see these; at run time __getattr__ imports them on first use
    from chalkcompute.dataframe import DataFrame, F, _
else:  # hidden from type checkers, which would otherwise accept any chalkcompute.<name>
    _LAZY = {"DataFrame", "F", "_"}  # chalkcompute.dataframe: pyarrow.dataset/compute cost ~75 ms to import

    def __getattr__(name: str) -> object:
        if name in _LAZY:
            from chalkcompute import dataframe

            return getattr(dataframe, name)
        raise AttributeError(f"module 'chalkcompute' has no attribute {name!r}")

__all__ = [
    "CallCancelled",
    "CallCancelledError",
    "CallInterruptedError",
    "ChalkError",
    "ClassBuildError",
    "ClassError",
    "ConcurrencyDeadlockError",
    "ConcurrencyPolicy",
    "Container",
    "ContainerError",
    "ContainerInfo",
    "DaemonUnavailableError",
    "DataFrame",
    "ExecError",
    "ExecEvent",
    "ExecProcess",
    "ExecResult",
    "F",
    "FunctionBuildError",
    "FunctionCall",
    "FunctionCodeError",
    "FunctionError",
    "FunctionNotFoundError",
    "FunctionSignatureError",
    "FunctionTimeoutError",
    "FunctionVersionInfo",
    "Image",
    "ImageBuildError",
    "InvalidArgumentError",
    "LazyLocalFile",
    "NotSupportedError",
    "AuthenticationError",
    "PermissionDeniedError",
    "QueuePolicy",
    "RateLimitPolicy",
    "RemoteClass",
    "RemoteExecutionError",
    "RemoteFunction",
    "ResourceExhaustedError",
    "RetryPolicy",
    "ReadinessProbe",
    "ScalingGroup",
    "ScalingGroupBuildError",
    "ScalingGroupError",
    "ScalingGroupInfo",
    "ScalingGroupNotFoundError",
    "Sandbox",
    "SandboxBuildError",
    "SandboxClient",
    "SandboxCreationError",
    "SandboxError",
    "SandboxFileEntry",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxStatusError",
    "SandboxTerminatedError",
    "Secret",
    "SerializationError",
    "Volume",
    "VolumeBatch",
    "VolumeClient",
    "VolumeClosedError",
    "VolumeEntry",
    "VolumeError",
    "VolumeFileNotFoundError",
    "VolumeInfo",
    "VolumeInvalidArgumentError",
    "VolumeMount",
    "VolumeNotFoundError",
    "WorkerLostError",
    "_",
    "after",
    "before",
    "cls",
    "function",
    "method",
]
