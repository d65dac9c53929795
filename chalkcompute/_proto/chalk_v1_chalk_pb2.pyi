from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageStep(_message.Message):
    __slots__ = ("kind", "args", "env", "path", "content", "mode", "source", "mount_root", "digest")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MOUNT_ROOT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    kind: str
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    path: str
    content: bytes
    mode: int
    source: str
    mount_root: str
    digest: str
    def __init__(self, kind: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., path: _Optional[str] = ..., content: _Optional[bytes] = ..., mode: _Optional[int] = ..., source: _Optional[str] = ..., mount_root: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class ImageSpec(_message.Message):
    __slots__ = ("base", "python_version", "steps", "content_hash")
    BASE_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    base: str
    python_version: str
    steps: _containers.RepeatedCompositeFieldContainer[ImageStep]
    content_hash: str
    def __init__(self, base: _Optional[str] = ..., python_version: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[ImageStep, _Mapping]]] = ..., content_hash: _Optional[str] = ...) -> None: ...

class Payload(_message.Message):
    __slots__ = ("schema", "batch", "rows")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    schema: bytes
    batch: bytes
    rows: int
    def __init__(self, schema: _Optional[bytes] = ..., batch: _Optional[bytes] = ..., rows: _Optional[int] = ...) -> None: ...

class RemoteError(_message.Message):
    __slots__ = ("exception_type", "message", "traceback", "code", "exception_mro")
    EXCEPTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    EXCEPTION_MRO_FIELD_NUMBER: _ClassVar[int]
    exception_type: str
    message: str
    traceback: str
    code: str
    exception_mro: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, exception_type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., code: _Optional[str] = ..., exception_mro: _Optional[_Iterable[str]] = ...) -> None: ...

class CodeBundle(_message.Message):
    __slots__ = ("module_source", "function_name", "files", "remote_refs", "module")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class RemoteRefsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODULE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    REMOTE_REFS_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    module_source: str
    function_name: str
    files: _containers.ScalarMap[str, str]
    remote_refs: _containers.ScalarMap[str, str]
    module: str
    def __init__(self, module_source: _Optional[str] = ..., function_name: _Optional[str] = ..., files: _Optional[_Mapping[str, str]] = ..., remote_refs: _Optional[_Mapping[str, str]] = ..., module: _Optional[str] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes", "gpu", "node", "node_labels")
    class NodeLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    NODE_LABELS_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    gpu: str
    node: str
    node_labels: _containers.ScalarMap[str, str]
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpu: _Optional[str] = ..., node: _Optional[str] = ..., node_labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RetrySpec(_message.Message):
    __slots__ = ("max_retries", "initial_wait_seconds", "backoff_multiplier", "max_wait_seconds", "jitter", "retry_on")
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    INITIAL_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    max_retries: int
    initial_wait_seconds: float
    backoff_multiplier: float
    max_wait_seconds: float
    jitter: bool
    retry_on: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_retries: _Optional[int] = ..., initial_wait_seconds: _Optional[float] = ..., backoff_multiplier: _Optional[float] = ..., max_wait_seconds: _Optional[float] = ..., jitter: _Optional[bool] = ..., retry_on: _Optional[_Iterable[str]] = ...) -> None: ...

class RateLimitSpec(_message.Message):
    __slots__ = ("rate", "per", "key")
    RATE_FIELD_NUMBER: _ClassVar[int]
    PER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    rate: float
    per: str
    key: str
    def __init__(self, rate: _Optional[float] = ..., per: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class ConcurrencySpec(_message.Message):
    __slots__ = ("max_concurrent", "key")
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    max_concurrent: int
    key: str
    def __init__(self, max_concurrent: _Optional[int] = ..., key: _Optional[str] = ...) -> None: ...

class QueuePolicySpec(_message.Message):
    __slots__ = ("max_items", "result_ttl_seconds")
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    max_items: int
    result_ttl_seconds: float
    def __init__(self, max_items: _Optional[int] = ..., result_ttl_seconds: _Optional[float] = ...) -> None: ...

class BatchingSpec(_message.Message):
    __slots__ = ("max_batch_size", "max_buffer_seconds")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BUFFER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_buffer_seconds: float
    def __init__(self, max_batch_size: _Optional[int] = ..., max_buffer_seconds: _Optional[float] = ...) -> None: ...

class FunctionSpec(_message.Message):
    __slots__ = ("name", "image", "resources", "env", "min_replicas", "max_replicas", "suspend_cooldown_seconds", "code", "input_schema", "output_schema", "is_generator", "is_async", "options", "serialization_format", "parameter_names", "retries", "rate_limit", "rate_limit_key", "concurrency", "queue_policy", "batching", "timeout_seconds", "volumes", "secrets", "replica_pool", "replica_pool_size")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SUSPEND_COOLDOWN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    IS_GENERATOR_FIELD_NUMBER: _ClassVar[int]
    IS_ASYNC_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SERIALIZATION_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_NAMES_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_KEY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POLICY_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_POOL_FIELD_NUMBER: _ClassVar[int]
    REPLICA_POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: ImageSpec
    resources: Resources
    env: _containers.ScalarMap[str, str]
    min_replicas: int
    max_replicas: int
    suspend_cooldown_seconds: float
    code: CodeBundle
    input_schema: bytes
    output_schema: bytes
    is_generator: bool
    is_async: bool
    options: _containers.ScalarMap[str, str]
    serialization_format: str
    parameter_names: _containers.RepeatedScalarFieldContainer[str]
    retries: RetrySpec
    rate_limit: RateLimitSpec
    rate_limit_key: str
    concurrency: ConcurrencySpec
    queue_policy: QueuePolicySpec
    batching: BatchingSpec
    timeout_seconds: float
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeMount]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretRef]
    replica_pool: str
    replica_pool_size: int
    def __init__(self, name: _Optional[str] = ..., image: _Optional[_Union[ImageSpec, _Mapping]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., suspend_cooldown_seconds: _Optional[float] = ..., code: _Optional[_Union[CodeBundle, _Mapping]] = ..., input_schema: _Optional[bytes] = ..., output_schema: _Optional[bytes] = ..., is_generator: _Optional[bool] = ..., is_async: _Optional[bool] = ..., options: _Optional[_Mapping[str, str]] = ..., serialization_format: _Optional[str] = ..., parameter_names: _Optional[_Iterable[str]] = ..., retries: _Optional[_Union[RetrySpec, _Mapping]] = ..., rate_limit: _Optional[_Union[RateLimitSpec, _Mapping]] = ..., rate_limit_key: _Optional[str] = ..., concurrency: _Optional[_Union[ConcurrencySpec, _Mapping]] = ..., queue_policy: _Optional[_Union[QueuePolicySpec, _Mapping]] = ..., batching: _Optional[_Union[BatchingSpec, _Mapping]] = ..., timeout_seconds: _Optional[float] = ..., volumes: _Optional[_Iterable[_Union[VolumeMount, _Mapping]]] = ..., secrets: _Optional[_Iterable[_Union[SecretRef, _Mapping]]] = ..., replica_pool: _Optional[str] = ..., replica_pool_size: _Optional[int] = ...) -> None: ...

class FunctionVersion(_message.Message):
    __slots__ = ("id", "function_name", "version", "scaling_group_name", "spec", "created_at", "ready_replicas", "replicas", "state", "error", "latest", "error_code", "desired_replicas", "scaling_decision", "scaling_decision_at", "waiting")
    ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCALING_GROUP_NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    READY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    DESIRED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SCALING_DECISION_FIELD_NUMBER: _ClassVar[int]
    SCALING_DECISION_AT_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    id: str
    function_name: str
    version: int
    scaling_group_name: str
    spec: FunctionSpec
    created_at: float
    ready_replicas: int
    replicas: int
    state: str
    error: str
    latest: bool
    error_code: str
    desired_replicas: int
    scaling_decision: str
    scaling_decision_at: float
    waiting: str
    def __init__(self, id: _Optional[str] = ..., function_name: _Optional[str] = ..., version: _Optional[int] = ..., scaling_group_name: _Optional[str] = ..., spec: _Optional[_Union[FunctionSpec, _Mapping]] = ..., created_at: _Optional[float] = ..., ready_replicas: _Optional[int] = ..., replicas: _Optional[int] = ..., state: _Optional[str] = ..., error: _Optional[str] = ..., latest: _Optional[bool] = ..., error_code: _Optional[str] = ..., desired_replicas: _Optional[int] = ..., scaling_decision: _Optional[str] = ..., scaling_decision_at: _Optional[float] = ..., waiting: _Optional[str] = ...) -> None: ...

class RegisterFunctionRequest(_message.Message):
    __slots__ = ("spec", "local_secrets")
    class LocalSecretsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SECRETS_FIELD_NUMBER: _ClassVar[int]
    spec: FunctionSpec
    local_secrets: _containers.ScalarMap[str, str]
    def __init__(self, spec: _Optional[_Union[FunctionSpec, _Mapping]] = ..., local_secrets: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterFunctionResponse(_message.Message):
    __slots__ = ("function", "created")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    function: FunctionVersion
    created: bool
    def __init__(self, function: _Optional[_Union[FunctionVersion, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetFunctionRequest(_message.Message):
    __slots__ = ("name", "id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class GetFunctionResponse(_message.Message):
    __slots__ = ("function",)
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    function: FunctionVersion
    def __init__(self, function: _Optional[_Union[FunctionVersion, _Mapping]] = ...) -> None: ...

class ListFunctionsRequest(_message.Message):
    __slots__ = ("include_old_versions",)
    INCLUDE_OLD_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    include_old_versions: bool
    def __init__(self, include_old_versions: _Optional[bool] = ...) -> None: ...

class ListFunctionsResponse(_message.Message):
    __slots__ = ("functions",)
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    functions: _containers.RepeatedCompositeFieldContainer[FunctionVersion]
    def __init__(self, functions: _Optional[_Iterable[_Union[FunctionVersion, _Mapping]]] = ...) -> None: ...

class DeleteFunctionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteFunctionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WaitReadyRequest(_message.Message):
    __slots__ = ("id", "timeout")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    id: str
    timeout: float
    def __init__(self, id: _Optional[str] = ..., timeout: _Optional[float] = ...) -> None: ...

class WaitReadyResponse(_message.Message):
    __slots__ = ("function",)
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    function: FunctionVersion
    def __init__(self, function: _Optional[_Union[FunctionVersion, _Mapping]] = ...) -> None: ...

class CallInfo(_message.Message):
    __slots__ = ("id", "function_id", "function_name", "state", "attempt", "chunks", "created_at", "finished_at", "error", "parent_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    function_id: str
    function_name: str
    state: str
    attempt: int
    chunks: int
    created_at: float
    finished_at: float
    error: str
    parent_id: str
    def __init__(self, id: _Optional[str] = ..., function_id: _Optional[str] = ..., function_name: _Optional[str] = ..., state: _Optional[str] = ..., attempt: _Optional[int] = ..., chunks: _Optional[int] = ..., created_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., error: _Optional[str] = ..., parent_id: _Optional[str] = ...) -> None: ...

class ListCallsRequest(_message.Message):
    __slots__ = ("limit", "function_name")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    limit: int
    function_name: str
    def __init__(self, limit: _Optional[int] = ..., function_name: _Optional[str] = ...) -> None: ...

class ListCallsResponse(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[CallInfo]
    def __init__(self, calls: _Optional[_Iterable[_Union[CallInfo, _Mapping]]] = ...) -> None: ...

class GetCallRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class GetCallResponse(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: CallInfo
    def __init__(self, call: _Optional[_Union[CallInfo, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "home", "runtime", "functions", "replicas", "calls_queued", "calls_running", "calls_total", "uptime_seconds", "durability", "pid", "fast_socket", "instance_id", "http_port")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CALLS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    CALLS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    CALLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    FAST_SOCKET_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    version: str
    home: str
    runtime: str
    functions: int
    replicas: int
    calls_queued: int
    calls_running: int
    calls_total: int
    uptime_seconds: float
    durability: str
    pid: int
    fast_socket: str
    instance_id: str
    http_port: int
    def __init__(self, version: _Optional[str] = ..., home: _Optional[str] = ..., runtime: _Optional[str] = ..., functions: _Optional[int] = ..., replicas: _Optional[int] = ..., calls_queued: _Optional[int] = ..., calls_running: _Optional[int] = ..., calls_total: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., durability: _Optional[str] = ..., pid: _Optional[int] = ..., fast_socket: _Optional[str] = ..., instance_id: _Optional[str] = ..., http_port: _Optional[int] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("name", "rate", "per", "used_by")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    PER_FIELD_NUMBER: _ClassVar[int]
    USED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    rate: float
    per: str
    used_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., rate: _Optional[float] = ..., per: _Optional[str] = ..., used_by: _Optional[_Iterable[str]] = ...) -> None: ...

class SetRateLimitRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: RateLimit
    def __init__(self, limit: _Optional[_Union[RateLimit, _Mapping]] = ...) -> None: ...

class SetRateLimitResponse(_message.Message):
    __slots__ = ("limit", "created")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    limit: RateLimit
    created: bool
    def __init__(self, limit: _Optional[_Union[RateLimit, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListRateLimitsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRateLimitsResponse(_message.Message):
    __slots__ = ("limits",)
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[RateLimit]
    def __init__(self, limits: _Optional[_Iterable[_Union[RateLimit, _Mapping]]] = ...) -> None: ...

class DeleteRateLimitRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteRateLimitResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Submit(_message.Message):
    __slots__ = ("ref", "function_id", "function_name", "args", "idempotency_key", "parent_call_id", "detach", "batch")
    REF_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    ref: int
    function_id: str
    function_name: str
    args: Payload
    idempotency_key: str
    parent_call_id: str
    detach: bool
    batch: bool
    def __init__(self, ref: _Optional[int] = ..., function_id: _Optional[str] = ..., function_name: _Optional[str] = ..., args: _Optional[_Union[Payload, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., parent_call_id: _Optional[str] = ..., detach: _Optional[bool] = ..., batch: _Optional[bool] = ...) -> None: ...

class Attach(_message.Message):
    __slots__ = ("ref", "call_id", "after_chunk")
    REF_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    ref: int
    call_id: str
    after_chunk: int
    def __init__(self, ref: _Optional[int] = ..., call_id: _Optional[str] = ..., after_chunk: _Optional[int] = ...) -> None: ...

class ChunkAck(_message.Message):
    __slots__ = ("call_id", "index")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    index: int
    def __init__(self, call_id: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class CancelCall(_message.Message):
    __slots__ = ("call_id", "detach")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    detach: bool
    def __init__(self, call_id: _Optional[str] = ..., detach: _Optional[bool] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("submits", "attaches", "acks", "cancels", "live_logs")
    SUBMITS_FIELD_NUMBER: _ClassVar[int]
    ATTACHES_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    LIVE_LOGS_FIELD_NUMBER: _ClassVar[int]
    submits: _containers.RepeatedCompositeFieldContainer[Submit]
    attaches: _containers.RepeatedCompositeFieldContainer[Attach]
    acks: _containers.RepeatedCompositeFieldContainer[ChunkAck]
    cancels: _containers.RepeatedCompositeFieldContainer[CancelCall]
    live_logs: bool
    def __init__(self, submits: _Optional[_Iterable[_Union[Submit, _Mapping]]] = ..., attaches: _Optional[_Iterable[_Union[Attach, _Mapping]]] = ..., acks: _Optional[_Iterable[_Union[ChunkAck, _Mapping]]] = ..., cancels: _Optional[_Iterable[_Union[CancelCall, _Mapping]]] = ..., live_logs: _Optional[bool] = ...) -> None: ...

class CallEvent(_message.Message):
    __slots__ = ("ref", "call_id", "accepted", "chunk", "result", "error", "done", "first_index", "batch_result")
    REF_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    BATCH_RESULT_FIELD_NUMBER: _ClassVar[int]
    ref: int
    call_id: str
    accepted: bool
    chunk: Payload
    result: Payload
    error: RemoteError
    done: bool
    first_index: int
    batch_result: BatchOutcome
    def __init__(self, ref: _Optional[int] = ..., call_id: _Optional[str] = ..., accepted: _Optional[bool] = ..., chunk: _Optional[_Union[Payload, _Mapping]] = ..., result: _Optional[_Union[Payload, _Mapping]] = ..., error: _Optional[_Union[RemoteError, _Mapping]] = ..., done: _Optional[bool] = ..., first_index: _Optional[int] = ..., batch_result: _Optional[_Union[BatchOutcome, _Mapping]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("events", "logs")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[CallEvent]
    logs: _containers.RepeatedCompositeFieldContainer[CallLogs]
    def __init__(self, events: _Optional[_Iterable[_Union[CallEvent, _Mapping]]] = ..., logs: _Optional[_Iterable[_Union[CallLogs, _Mapping]]] = ...) -> None: ...

class WorkerHello(_message.Message):
    __slots__ = ("replica_id", "token", "function_id")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    token: str
    function_id: str
    def __init__(self, replica_id: _Optional[str] = ..., token: _Optional[str] = ..., function_id: _Optional[str] = ...) -> None: ...

class AttemptEvent(_message.Message):
    __slots__ = ("call_id", "attempt", "chunk", "result", "error", "done", "first_index", "batch_result")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    BATCH_RESULT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    attempt: int
    chunk: Payload
    result: Payload
    error: RemoteError
    done: bool
    first_index: int
    batch_result: BatchOutcome
    def __init__(self, call_id: _Optional[str] = ..., attempt: _Optional[int] = ..., chunk: _Optional[_Union[Payload, _Mapping]] = ..., result: _Optional[_Union[Payload, _Mapping]] = ..., error: _Optional[_Union[RemoteError, _Mapping]] = ..., done: _Optional[bool] = ..., first_index: _Optional[int] = ..., batch_result: _Optional[_Union[BatchOutcome, _Mapping]] = ...) -> None: ...

class RowError(_message.Message):
    __slots__ = ("row", "error")
    ROW_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    row: int
    error: RemoteError
    def __init__(self, row: _Optional[int] = ..., error: _Optional[_Union[RemoteError, _Mapping]] = ...) -> None: ...

class BatchOutcome(_message.Message):
    __slots__ = ("results", "rows", "errors", "seconds")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    results: Payload
    rows: _containers.RepeatedScalarFieldContainer[int]
    errors: _containers.RepeatedCompositeFieldContainer[RowError]
    seconds: float
    def __init__(self, results: _Optional[_Union[Payload, _Mapping]] = ..., rows: _Optional[_Iterable[int]] = ..., errors: _Optional[_Iterable[_Union[RowError, _Mapping]]] = ..., seconds: _Optional[float] = ...) -> None: ...

class WorkerRequest(_message.Message):
    __slots__ = ("hello", "credit", "events", "heartbeat", "drained", "logs")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerHello
    credit: int
    events: _containers.RepeatedCompositeFieldContainer[AttemptEvent]
    heartbeat: bool
    drained: bool
    logs: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, hello: _Optional[_Union[WorkerHello, _Mapping]] = ..., credit: _Optional[int] = ..., events: _Optional[_Iterable[_Union[AttemptEvent, _Mapping]]] = ..., heartbeat: _Optional[bool] = ..., drained: _Optional[bool] = ..., logs: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("call_id", "attempt", "args", "batch", "batch_rows")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    attempt: int
    args: Payload
    batch: bool
    batch_rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, call_id: _Optional[str] = ..., attempt: _Optional[int] = ..., args: _Optional[_Union[Payload, _Mapping]] = ..., batch: _Optional[bool] = ..., batch_rows: _Optional[_Iterable[int]] = ...) -> None: ...

class AssignmentBatch(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, items: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class ChunkCredit(_message.Message):
    __slots__ = ("call_id", "attempt", "up_to", "bytes_up_to")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    UP_TO_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_TO_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    attempt: int
    up_to: int
    bytes_up_to: int
    def __init__(self, call_id: _Optional[str] = ..., attempt: _Optional[int] = ..., up_to: _Optional[int] = ..., bytes_up_to: _Optional[int] = ...) -> None: ...

class WorkerResponse(_message.Message):
    __slots__ = ("function", "assignments", "chunk_credits", "cancels", "drain", "heartbeat", "batches", "secret_env", "max_payload", "pool_function_ids")
    class SecretEnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CREDITS_FIELD_NUMBER: _ClassVar[int]
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    SECRET_ENV_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    POOL_FUNCTION_IDS_FIELD_NUMBER: _ClassVar[int]
    function: FunctionVersion
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    chunk_credits: _containers.RepeatedCompositeFieldContainer[ChunkCredit]
    cancels: _containers.RepeatedCompositeFieldContainer[AttemptEvent]
    drain: bool
    heartbeat: bool
    batches: _containers.RepeatedCompositeFieldContainer[AssignmentBatch]
    secret_env: _containers.ScalarMap[str, str]
    max_payload: int
    pool_function_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, function: _Optional[_Union[FunctionVersion, _Mapping]] = ..., assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., chunk_credits: _Optional[_Iterable[_Union[ChunkCredit, _Mapping]]] = ..., cancels: _Optional[_Iterable[_Union[AttemptEvent, _Mapping]]] = ..., drain: _Optional[bool] = ..., heartbeat: _Optional[bool] = ..., batches: _Optional[_Iterable[_Union[AssignmentBatch, _Mapping]]] = ..., secret_env: _Optional[_Mapping[str, str]] = ..., max_payload: _Optional[int] = ..., pool_function_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MissingBlobsRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class MissingBlobsResponse(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class PutBlobRequest(_message.Message):
    __slots__ = ("digest", "data", "last")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    data: bytes
    last: bool
    def __init__(self, digest: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class PutBlobResponse(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class BuildImageRequest(_message.Message):
    __slots__ = ("image", "bare")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    BARE_FIELD_NUMBER: _ClassVar[int]
    image: ImageSpec
    bare: bool
    def __init__(self, image: _Optional[_Union[ImageSpec, _Mapping]] = ..., bare: _Optional[bool] = ...) -> None: ...

class BuildResult(_message.Message):
    __slots__ = ("ok", "image_ref", "cached", "error", "failed_step", "log_tail")
    OK_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILED_STEP_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    image_ref: str
    cached: bool
    error: str
    failed_step: str
    log_tail: str
    def __init__(self, ok: _Optional[bool] = ..., image_ref: _Optional[str] = ..., cached: _Optional[bool] = ..., error: _Optional[str] = ..., failed_step: _Optional[str] = ..., log_tail: _Optional[str] = ...) -> None: ...

class BuildEvent(_message.Message):
    __slots__ = ("lines", "result")
    LINES_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedScalarFieldContainer[str]
    result: BuildResult
    def __init__(self, lines: _Optional[_Iterable[str]] = ..., result: _Optional[_Union[BuildResult, _Mapping]] = ...) -> None: ...

class ContainerSpec(_message.Message):
    __slots__ = ("name", "image", "resources", "env", "volumes", "secrets", "local_secrets")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LocalSecretsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SECRETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: ImageSpec
    resources: Resources
    env: _containers.ScalarMap[str, str]
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeMount]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretRef]
    local_secrets: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., image: _Optional[_Union[ImageSpec, _Mapping]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ..., volumes: _Optional[_Iterable[_Union[VolumeMount, _Mapping]]] = ..., secrets: _Optional[_Iterable[_Union[SecretRef, _Mapping]]] = ..., local_secrets: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ContainerInfo(_message.Message):
    __slots__ = ("id", "name", "status", "pod_name", "web_url", "image_uri", "created_at", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    WEB_URL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URI_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    status: str
    pod_name: str
    web_url: str
    image_uri: str
    created_at: float
    error: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., pod_name: _Optional[str] = ..., web_url: _Optional[str] = ..., image_uri: _Optional[str] = ..., created_at: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class CreateContainerRequest(_message.Message):
    __slots__ = ("spec", "start_timeout")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    START_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    spec: ContainerSpec
    start_timeout: float
    def __init__(self, spec: _Optional[_Union[ContainerSpec, _Mapping]] = ..., start_timeout: _Optional[float] = ...) -> None: ...

class CreateContainerResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: ContainerInfo
    def __init__(self, info: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class GetContainerRequest(_message.Message):
    __slots__ = ("id", "name", "wait_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    wait_seconds: float
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class GetContainerResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: ContainerInfo
    def __init__(self, info: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class ListContainersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListContainersResponse(_message.Message):
    __slots__ = ("containers",)
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    containers: _containers.RepeatedCompositeFieldContainer[ContainerInfo]
    def __init__(self, containers: _Optional[_Iterable[_Union[ContainerInfo, _Mapping]]] = ...) -> None: ...

class StopContainerRequest(_message.Message):
    __slots__ = ("id", "grace_period")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    id: str
    grace_period: float
    def __init__(self, id: _Optional[str] = ..., grace_period: _Optional[float] = ...) -> None: ...

class StopContainerResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: ContainerInfo
    def __init__(self, info: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("container_id", "argv", "env", "cwd", "timeout", "stdin")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    cwd: str
    timeout: float
    stdin: bytes
    def __init__(self, container_id: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., timeout: _Optional[float] = ..., stdin: _Optional[bytes] = ...) -> None: ...

class ExecResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code", "signal", "pid", "error")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_code: int
    signal: int
    pid: int
    error: str
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., pid: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class VolumeInfo(_message.Message):
    __slots__ = ("name", "created_at", "updated_at", "size_bytes", "file_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    created_at: float
    updated_at: float
    size_bytes: int
    file_count: int
    def __init__(self, name: _Optional[str] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., size_bytes: _Optional[int] = ..., file_count: _Optional[int] = ...) -> None: ...

class VolumeEntry(_message.Message):
    __slots__ = ("path", "size", "mtime")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    mtime: float
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., mtime: _Optional[float] = ...) -> None: ...

class CreateVolumeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CreateVolumeResponse(_message.Message):
    __slots__ = ("info", "created")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    info: VolumeInfo
    created: bool
    def __init__(self, info: _Optional[_Union[VolumeInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetVolumeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetVolumeResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: VolumeInfo
    def __init__(self, info: _Optional[_Union[VolumeInfo, _Mapping]] = ...) -> None: ...

class ListVolumesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVolumesResponse(_message.Message):
    __slots__ = ("volumes",)
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeInfo]
    def __init__(self, volumes: _Optional[_Iterable[_Union[VolumeInfo, _Mapping]]] = ...) -> None: ...

class DeleteVolumeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteVolumeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFilesRequest(_message.Message):
    __slots__ = ("name", "prefix", "recursive")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    prefix: str
    recursive: bool
    def __init__(self, name: _Optional[str] = ..., prefix: _Optional[str] = ..., recursive: _Optional[bool] = ...) -> None: ...

class ListFilesResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[VolumeEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[VolumeEntry, _Mapping]]] = ...) -> None: ...

class ReadFileRequest(_message.Message):
    __slots__ = ("name", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class WriteFilesRequest(_message.Message):
    __slots__ = ("name", "path", "data", "end_of_file", "commit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    END_OF_FILE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    data: bytes
    end_of_file: bool
    commit: bool
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., data: _Optional[bytes] = ..., end_of_file: _Optional[bool] = ..., commit: _Optional[bool] = ...) -> None: ...

class WriteFilesResponse(_message.Message):
    __slots__ = ("paths", "bytes")
    PATHS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    paths: _containers.RepeatedScalarFieldContainer[str]
    bytes: int
    def __init__(self, paths: _Optional[_Iterable[str]] = ..., bytes: _Optional[int] = ...) -> None: ...

class RemoveFileRequest(_message.Message):
    __slots__ = ("name", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class RemoveFileResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VolumeMount(_message.Message):
    __slots__ = ("volume", "path")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    volume: str
    path: str
    def __init__(self, volume: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class SecretRef(_message.Message):
    __slots__ = ("kind", "name", "alias", "prefix", "keys", "aliases", "digest")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    alias: str
    prefix: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    aliases: _containers.ScalarMap[str, str]
    digest: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., alias: _Optional[str] = ..., prefix: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., aliases: _Optional[_Mapping[str, str]] = ..., digest: _Optional[str] = ...) -> None: ...

class SecretInfo(_message.Message):
    __slots__ = ("name", "created_at", "updated_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    created_at: float
    updated_at: float
    def __init__(self, name: _Optional[str] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class IntegrationInfo(_message.Message):
    __slots__ = ("name", "keys", "created_at", "updated_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    created_at: float
    updated_at: float
    def __init__(self, name: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class SetSecretRequest(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class SetSecretResponse(_message.Message):
    __slots__ = ("info", "created")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    info: SecretInfo
    created: bool
    def __init__(self, info: _Optional[_Union[SecretInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListSecretsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSecretsResponse(_message.Message):
    __slots__ = ("secrets",)
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretInfo]
    def __init__(self, secrets: _Optional[_Iterable[_Union[SecretInfo, _Mapping]]] = ...) -> None: ...

class DeleteSecretRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteSecretResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetIntegrationRequest(_message.Message):
    __slots__ = ("name", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SetIntegrationResponse(_message.Message):
    __slots__ = ("info", "created")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    info: IntegrationInfo
    created: bool
    def __init__(self, info: _Optional[_Union[IntegrationInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListIntegrationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListIntegrationsResponse(_message.Message):
    __slots__ = ("integrations",)
    INTEGRATIONS_FIELD_NUMBER: _ClassVar[int]
    integrations: _containers.RepeatedCompositeFieldContainer[IntegrationInfo]
    def __init__(self, integrations: _Optional[_Iterable[_Union[IntegrationInfo, _Mapping]]] = ...) -> None: ...

class DeleteIntegrationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteIntegrationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChallengeRequest(_message.Message):
    __slots__ = ("client_nonce", "key_id")
    CLIENT_NONCE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    client_nonce: bytes
    key_id: str
    def __init__(self, client_nonce: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class ChallengeResponse(_message.Message):
    __slots__ = ("server_nonce", "server_proof")
    SERVER_NONCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_PROOF_FIELD_NUMBER: _ClassVar[int]
    server_nonce: bytes
    server_proof: bytes
    def __init__(self, server_nonce: _Optional[bytes] = ..., server_proof: _Optional[bytes] = ...) -> None: ...

class SandboxSpec(_message.Message):
    __slots__ = ("name", "image", "resources", "env", "volumes", "secrets", "local_secrets", "entrypoint", "no_network", "lifetime")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LocalSecretsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SECRETS_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    NO_NETWORK_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: ImageSpec
    resources: Resources
    env: _containers.ScalarMap[str, str]
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeMount]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretRef]
    local_secrets: _containers.ScalarMap[str, str]
    entrypoint: _containers.RepeatedScalarFieldContainer[str]
    no_network: bool
    lifetime: float
    def __init__(self, name: _Optional[str] = ..., image: _Optional[_Union[ImageSpec, _Mapping]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ..., volumes: _Optional[_Iterable[_Union[VolumeMount, _Mapping]]] = ..., secrets: _Optional[_Iterable[_Union[SecretRef, _Mapping]]] = ..., local_secrets: _Optional[_Mapping[str, str]] = ..., entrypoint: _Optional[_Iterable[str]] = ..., no_network: _Optional[bool] = ..., lifetime: _Optional[float] = ...) -> None: ...

class SandboxInfo(_message.Message):
    __slots__ = ("id", "name", "status", "status_message", "status_details", "image", "created_at", "cpu", "memory", "gpu", "isolation", "expires_at")
    class StatusDetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class IsolationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_DETAILS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    status: str
    status_message: str
    status_details: _containers.ScalarMap[str, str]
    image: str
    created_at: float
    cpu: str
    memory: str
    gpu: str
    isolation: _containers.ScalarMap[str, str]
    expires_at: float
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., status_message: _Optional[str] = ..., status_details: _Optional[_Mapping[str, str]] = ..., image: _Optional[str] = ..., created_at: _Optional[float] = ..., cpu: _Optional[str] = ..., memory: _Optional[str] = ..., gpu: _Optional[str] = ..., isolation: _Optional[_Mapping[str, str]] = ..., expires_at: _Optional[float] = ...) -> None: ...

class CreateSandboxRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: SandboxSpec
    def __init__(self, spec: _Optional[_Union[SandboxSpec, _Mapping]] = ...) -> None: ...

class GetSandboxRequest(_message.Message):
    __slots__ = ("id", "name", "wait_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    wait_seconds: float
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class ListSandboxesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSandboxesResponse(_message.Message):
    __slots__ = ("sandboxes",)
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[SandboxInfo]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[SandboxInfo, _Mapping]]] = ...) -> None: ...

class TerminateSandboxRequest(_message.Message):
    __slots__ = ("id", "grace_period")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    id: str
    grace_period: float
    def __init__(self, id: _Optional[str] = ..., grace_period: _Optional[float] = ...) -> None: ...

class ExecStart(_message.Message):
    __slots__ = ("sandbox_id", "argv", "env", "workdir", "timeout", "wait_ready")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    WAIT_READY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    workdir: str
    timeout: float
    wait_ready: float
    def __init__(self, sandbox_id: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., workdir: _Optional[str] = ..., timeout: _Optional[float] = ..., wait_ready: _Optional[float] = ...) -> None: ...

class ExecAttach(_message.Message):
    __slots__ = ("sandbox_id", "session_id", "after_seq")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    session_id: str
    after_seq: int
    def __init__(self, sandbox_id: _Optional[str] = ..., session_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class SandboxExecRequest(_message.Message):
    __slots__ = ("start", "attach", "stdin", "stdin_eof", "signal", "ack")
    START_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STDIN_EOF_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    start: ExecStart
    attach: ExecAttach
    stdin: bytes
    stdin_eof: bool
    signal: int
    ack: int
    def __init__(self, start: _Optional[_Union[ExecStart, _Mapping]] = ..., attach: _Optional[_Union[ExecAttach, _Mapping]] = ..., stdin: _Optional[bytes] = ..., stdin_eof: _Optional[bool] = ..., signal: _Optional[int] = ..., ack: _Optional[int] = ...) -> None: ...

class ExecExit(_message.Message):
    __slots__ = ("exit_code", "signal", "error")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    signal: int
    error: str
    def __init__(self, exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ExecOutput(_message.Message):
    __slots__ = ("seq", "stdout", "stderr", "exit")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    stdout: bytes
    stderr: bytes
    exit: ExecExit
    def __init__(self, seq: _Optional[int] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit: _Optional[_Union[ExecExit, _Mapping]] = ...) -> None: ...

class SandboxExecResponse(_message.Message):
    __slots__ = ("session_id", "pid", "events", "stdin_credit")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    STDIN_CREDIT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    pid: int
    events: _containers.RepeatedCompositeFieldContainer[ExecOutput]
    stdin_credit: int
    def __init__(self, session_id: _Optional[str] = ..., pid: _Optional[int] = ..., events: _Optional[_Iterable[_Union[ExecOutput, _Mapping]]] = ..., stdin_credit: _Optional[int] = ...) -> None: ...

class SandboxFileRequest(_message.Message):
    __slots__ = ("sandbox_id", "path")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class SandboxFileChunk(_message.Message):
    __slots__ = ("data", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class SandboxWriteRequest(_message.Message):
    __slots__ = ("sandbox_id", "path", "mode", "data")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    mode: int
    data: bytes
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ..., mode: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class SandboxWriteResponse(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class SandboxDirEntry(_message.Message):
    __slots__ = ("name", "type", "size", "mtime")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    size: int
    mtime: float
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., size: _Optional[int] = ..., mtime: _Optional[float] = ...) -> None: ...

class SandboxListDirResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[SandboxDirEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[SandboxDirEntry, _Mapping]]] = ...) -> None: ...

class ReadinessProbeSpec(_message.Message):
    __slots__ = ("kind", "path", "period_seconds", "timeout_seconds", "failure_threshold")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    kind: str
    path: str
    period_seconds: float
    timeout_seconds: float
    failure_threshold: int
    def __init__(self, kind: _Optional[str] = ..., path: _Optional[str] = ..., period_seconds: _Optional[float] = ..., timeout_seconds: _Optional[float] = ..., failure_threshold: _Optional[int] = ...) -> None: ...

class ScalingGroupSpec(_message.Message):
    __slots__ = ("name", "image", "port", "resources", "env", "volumes", "secrets", "local_secrets", "entrypoint", "min_replicas", "max_replicas", "readiness_probe", "authenticated")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LocalSecretsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SECRETS_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    READINESS_PROBE_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: ImageSpec
    port: int
    resources: Resources
    env: _containers.ScalarMap[str, str]
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeMount]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretRef]
    local_secrets: _containers.ScalarMap[str, str]
    entrypoint: _containers.RepeatedScalarFieldContainer[str]
    min_replicas: int
    max_replicas: int
    readiness_probe: ReadinessProbeSpec
    authenticated: bool
    def __init__(self, name: _Optional[str] = ..., image: _Optional[_Union[ImageSpec, _Mapping]] = ..., port: _Optional[int] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ..., volumes: _Optional[_Iterable[_Union[VolumeMount, _Mapping]]] = ..., secrets: _Optional[_Iterable[_Union[SecretRef, _Mapping]]] = ..., local_secrets: _Optional[_Mapping[str, str]] = ..., entrypoint: _Optional[_Iterable[str]] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., readiness_probe: _Optional[_Union[ReadinessProbeSpec, _Mapping]] = ..., authenticated: _Optional[bool] = ...) -> None: ...

class GroupReplicaInfo(_message.Message):
    __slots__ = ("id", "revision", "state", "in_flight", "address", "started_at", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    revision: int
    state: str
    in_flight: int
    address: str
    started_at: float
    error: str
    def __init__(self, id: _Optional[str] = ..., revision: _Optional[int] = ..., state: _Optional[str] = ..., in_flight: _Optional[int] = ..., address: _Optional[str] = ..., started_at: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class ScalingGroupInfo(_message.Message):
    __slots__ = ("id", "name", "status", "web_url", "ready_replicas", "available_replicas", "status_message", "revision", "target_revision", "rollout_error", "desired_replicas", "min_replicas", "max_replicas", "created_at", "auth_key", "image", "replicas", "port", "in_flight", "last_decision")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WEB_URL_FIELD_NUMBER: _ClassVar[int]
    READY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TARGET_REVISION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ERROR_FIELD_NUMBER: _ClassVar[int]
    DESIRED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    AUTH_KEY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISION_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    status: str
    web_url: str
    ready_replicas: int
    available_replicas: int
    status_message: str
    revision: int
    target_revision: int
    rollout_error: str
    desired_replicas: int
    min_replicas: int
    max_replicas: int
    created_at: float
    auth_key: str
    image: str
    replicas: _containers.RepeatedCompositeFieldContainer[GroupReplicaInfo]
    port: int
    in_flight: int
    last_decision: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., web_url: _Optional[str] = ..., ready_replicas: _Optional[int] = ..., available_replicas: _Optional[int] = ..., status_message: _Optional[str] = ..., revision: _Optional[int] = ..., target_revision: _Optional[int] = ..., rollout_error: _Optional[str] = ..., desired_replicas: _Optional[int] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., created_at: _Optional[float] = ..., auth_key: _Optional[str] = ..., image: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[GroupReplicaInfo, _Mapping]]] = ..., port: _Optional[int] = ..., in_flight: _Optional[int] = ..., last_decision: _Optional[str] = ...) -> None: ...

class DeployScalingGroupRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: ScalingGroupSpec
    def __init__(self, spec: _Optional[_Union[ScalingGroupSpec, _Mapping]] = ...) -> None: ...

class GetScalingGroupRequest(_message.Message):
    __slots__ = ("id", "name", "wait_seconds", "wake")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WAKE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    wait_seconds: float
    wake: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., wait_seconds: _Optional[float] = ..., wake: _Optional[bool] = ...) -> None: ...

class ListScalingGroupsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListScalingGroupsResponse(_message.Message):
    __slots__ = ("groups",)
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[ScalingGroupInfo]
    def __init__(self, groups: _Optional[_Iterable[_Union[ScalingGroupInfo, _Mapping]]] = ...) -> None: ...

class DeleteScalingGroupRequest(_message.Message):
    __slots__ = ("id", "name", "grace_period")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    grace_period: float
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., grace_period: _Optional[float] = ...) -> None: ...

class DeleteScalingGroupResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: ScalingGroupInfo
    def __init__(self, info: _Optional[_Union[ScalingGroupInfo, _Mapping]] = ...) -> None: ...

class ScalingGroupLogsRequest(_message.Message):
    __slots__ = ("id", "name", "tail", "replica")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    tail: int
    replica: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., tail: _Optional[int] = ..., replica: _Optional[str] = ...) -> None: ...

class ScalingGroupLogLine(_message.Message):
    __slots__ = ("replica", "revision", "line")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    replica: str
    revision: int
    line: str
    def __init__(self, replica: _Optional[str] = ..., revision: _Optional[int] = ..., line: _Optional[str] = ...) -> None: ...

class ScalingGroupLogsResponse(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[ScalingGroupLogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[ScalingGroupLogLine, _Mapping]]] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("call_ids", "ts", "stream", "text", "function_name", "relayed", "replica_id")
    CALL_IDS_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    RELAYED_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    call_ids: _containers.RepeatedScalarFieldContainer[str]
    ts: float
    stream: int
    text: str
    function_name: str
    relayed: bool
    replica_id: str
    def __init__(self, call_ids: _Optional[_Iterable[str]] = ..., ts: _Optional[float] = ..., stream: _Optional[int] = ..., text: _Optional[str] = ..., function_name: _Optional[str] = ..., relayed: _Optional[bool] = ..., replica_id: _Optional[str] = ...) -> None: ...

class CallLogs(_message.Message):
    __slots__ = ("ref", "call_id", "lines")
    REF_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    ref: int
    call_id: str
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, ref: _Optional[int] = ..., call_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class ReadLogsRequest(_message.Message):
    __slots__ = ("call_id", "function_name", "replica_id", "since", "tail", "follow", "object_id", "build")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    function_name: str
    replica_id: str
    since: float
    tail: int
    follow: bool
    object_id: str
    build: bool
    def __init__(self, call_id: _Optional[str] = ..., function_name: _Optional[str] = ..., replica_id: _Optional[str] = ..., since: _Optional[float] = ..., tail: _Optional[int] = ..., follow: _Optional[bool] = ..., object_id: _Optional[str] = ..., build: _Optional[bool] = ...) -> None: ...

class ReadLogsResponse(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class GenericResource(_message.Message):
    __slots__ = ("kind", "names", "count")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    names: _containers.RepeatedScalarFieldContainer[str]
    count: int
    def __init__(self, kind: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., count: _Optional[int] = ...) -> None: ...

class NodeReplica(_message.Message):
    __slots__ = ("replica_id", "function", "kind", "state", "service", "generic", "message")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    GENERIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    function: str
    kind: str
    state: str
    service: str
    generic: _containers.RepeatedCompositeFieldContainer[GenericResource]
    message: str
    def __init__(self, replica_id: _Optional[str] = ..., function: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., service: _Optional[str] = ..., generic: _Optional[_Iterable[_Union[GenericResource, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("id", "name", "address", "role", "leader", "state", "availability", "cpu_nanos", "memory_bytes", "generic", "engine_version", "labels", "is_daemon_node", "replicas")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    CPU_NANOS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GENERIC_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IS_DAEMON_NODE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    address: str
    role: str
    leader: bool
    state: str
    availability: str
    cpu_nanos: int
    memory_bytes: int
    generic: _containers.RepeatedCompositeFieldContainer[GenericResource]
    engine_version: str
    labels: _containers.ScalarMap[str, str]
    is_daemon_node: bool
    replicas: _containers.RepeatedCompositeFieldContainer[NodeReplica]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., address: _Optional[str] = ..., role: _Optional[str] = ..., leader: _Optional[bool] = ..., state: _Optional[str] = ..., availability: _Optional[str] = ..., cpu_nanos: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., generic: _Optional[_Iterable[_Union[GenericResource, _Mapping]]] = ..., engine_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., is_daemon_node: _Optional[bool] = ..., replicas: _Optional[_Iterable[_Union[NodeReplica, _Mapping]]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "unplaced")
    NODES_FIELD_NUMBER: _ClassVar[int]
    UNPLACED_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    unplaced: _containers.RepeatedCompositeFieldContainer[NodeReplica]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., unplaced: _Optional[_Iterable[_Union[NodeReplica, _Mapping]]] = ...) -> None: ...
