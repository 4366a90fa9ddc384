from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_STDOUT: _ClassVar[Stream]
    STREAM_STDERR: _ClassVar[Stream]
    STREAM_LOG: _ClassVar[Stream]
STREAM_STDOUT: Stream
STREAM_STDERR: Stream
STREAM_LOG: Stream

class WorkerMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "accept", "reject", "output", "progress", "checkpoint", "result", "spawn", "goodbye", "results")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SPAWN_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    register: Register
    heartbeat: Heartbeat
    accept: Accept
    reject: Reject
    output: Output
    progress: Progress
    checkpoint: Checkpoint
    result: Result
    spawn: Spawn
    goodbye: Goodbye
    results: Results
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., accept: _Optional[_Union[Accept, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ..., output: _Optional[_Union[Output, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., spawn: _Optional[_Union[Spawn, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ..., results: _Optional[_Union[Results, _Mapping]] = ...) -> None: ...

class Results(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Result]
    def __init__(self, results: _Optional[_Iterable[_Union[Result, _Mapping]]] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Register(_message.Message):
    __slots__ = ("worker_id", "name", "labels", "handlers", "shell", "container", "slots", "version", "queues", "running", "instance", "prefetch", "memory_bytes", "cpus", "max_load")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HANDLERS_FIELD_NUMBER: _ClassVar[int]
    SHELL_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MAX_LOAD_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    name: str
    labels: _containers.ScalarMap[str, str]
    handlers: _containers.RepeatedScalarFieldContainer[str]
    shell: bool
    container: bool
    slots: int
    version: str
    queues: _containers.RepeatedScalarFieldContainer[str]
    running: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    instance: str
    prefetch: int
    memory_bytes: int
    cpus: float
    max_load: float
    def __init__(self, worker_id: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., handlers: _Optional[_Iterable[str]] = ..., shell: bool = ..., container: bool = ..., slots: _Optional[int] = ..., version: _Optional[str] = ..., queues: _Optional[_Iterable[str]] = ..., running: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., instance: _Optional[str] = ..., prefetch: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., cpus: _Optional[float] = ..., max_load: _Optional[float] = ...) -> None: ...

class AttemptRef(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("running", "load", "draining", "memory_available_bytes", "disk_free_bytes")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    running: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    load: float
    draining: bool
    memory_available_bytes: int
    disk_free_bytes: int
    def __init__(self, running: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., load: _Optional[float] = ..., draining: bool = ..., memory_available_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ...) -> None: ...

class Accept(_message.Message):
    __slots__ = ("attempt",)
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("attempt", "reason", "release")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    reason: str
    release: bool
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., reason: _Optional[str] = ..., release: bool = ...) -> None: ...

class Output(_message.Message):
    __slots__ = ("attempt", "stream", "data")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    stream: Stream
    data: str
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., stream: _Optional[_Union[Stream, str]] = ..., data: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("attempt", "fraction", "message")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    fraction: float
    message: str
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("attempt", "data_json", "request_id")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    data_json: str
    request_id: int
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., data_json: _Optional[str] = ..., request_id: _Optional[int] = ...) -> None: ...

class Spawn(_message.Message):
    __slots__ = ("parent", "spec_json", "request_id", "api_spec_json")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    API_SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    parent: AttemptRef
    spec_json: str
    request_id: int
    api_spec_json: str
    def __init__(self, parent: _Optional[_Union[AttemptRef, _Mapping]] = ..., spec_json: _Optional[str] = ..., request_id: _Optional[int] = ..., api_spec_json: _Optional[str] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("attempt", "succeeded", "failed", "timed_out", "cancelled", "exit_code", "signal", "duration_ms", "cpu_seconds", "peak_rss_bytes")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    succeeded: Succeeded
    failed: Failed
    timed_out: Empty
    cancelled: Empty
    exit_code: int
    signal: int
    duration_ms: int
    cpu_seconds: float
    peak_rss_bytes: int
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., succeeded: _Optional[_Union[Succeeded, _Mapping]] = ..., failed: _Optional[_Union[Failed, _Mapping]] = ..., timed_out: _Optional[_Union[Empty, _Mapping]] = ..., cancelled: _Optional[_Union[Empty, _Mapping]] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., duration_ms: _Optional[int] = ..., cpu_seconds: _Optional[float] = ..., peak_rss_bytes: _Optional[int] = ...) -> None: ...

class Succeeded(_message.Message):
    __slots__ = ("result_json",)
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    result_json: str
    def __init__(self, result_json: _Optional[str] = ...) -> None: ...

class Failed(_message.Message):
    __slots__ = ("message", "retry", "retry_after_ms")
    class Retry(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RETRY_POLICY: _ClassVar[Failed.Retry]
        RETRY_AFTER: _ClassVar[Failed.Retry]
        RETRY_NEVER: _ClassVar[Failed.Retry]
    RETRY_POLICY: Failed.Retry
    RETRY_AFTER: Failed.Retry
    RETRY_NEVER: Failed.Retry
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    message: str
    retry: Failed.Retry
    retry_after_ms: int
    def __init__(self, message: _Optional[str] = ..., retry: _Optional[_Union[Failed.Retry, str]] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("registered", "assignments", "cancel", "drain", "ack")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    assignments: Assignments
    cancel: Cancel
    drain: Drain
    ack: Ack
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., assignments: _Optional[_Union[Assignments, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("worker_id", "heartbeat_interval_ms", "cancel", "takes_release")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    TAKES_RELEASE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    heartbeat_interval_ms: int
    cancel: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    takes_release: bool
    def __init__(self, worker_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., cancel: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., takes_release: bool = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("attempt", "handler", "shell", "container", "timeout_ms", "checkpoint_json", "slots", "cpus", "memory_bytes", "stdin")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    SHELL_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_JSON_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    handler: HandlerTask
    shell: ShellTask
    container: ContainerTask
    timeout_ms: int
    checkpoint_json: str
    slots: int
    cpus: float
    memory_bytes: int
    stdin: str
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., handler: _Optional[_Union[HandlerTask, _Mapping]] = ..., shell: _Optional[_Union[ShellTask, _Mapping]] = ..., container: _Optional[_Union[ContainerTask, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., checkpoint_json: _Optional[str] = ..., slots: _Optional[int] = ..., cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., stdin: _Optional[str] = ...) -> None: ...

class HandlerTask(_message.Message):
    __slots__ = ("name", "payload_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    payload_json: str
    def __init__(self, name: _Optional[str] = ..., payload_json: _Optional[str] = ...) -> None: ...

class ShellTask(_message.Message):
    __slots__ = ("argv", "script", "env", "cwd")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARGV_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    argv: Argv
    script: str
    env: _containers.ScalarMap[str, str]
    cwd: str
    def __init__(self, argv: _Optional[_Union[Argv, _Mapping]] = ..., script: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ...) -> None: ...

class Argv(_message.Message):
    __slots__ = ("args",)
    ARGS_FIELD_NUMBER: _ClassVar[int]
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, args: _Optional[_Iterable[str]] = ...) -> None: ...

class ContainerTask(_message.Message):
    __slots__ = ("image", "command", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    def __init__(self, image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("attempt", "reason")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_CANCEL: _ClassVar[Cancel.Reason]
        REASON_TIMEOUT: _ClassVar[Cancel.Reason]
    REASON_CANCEL: Cancel.Reason
    REASON_TIMEOUT: Cancel.Reason
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    reason: Cancel.Reason
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., reason: _Optional[_Union[Cancel.Reason, str]] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("grace_ms",)
    GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    grace_ms: int
    def __init__(self, grace_ms: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("request_id", "error", "task_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    error: str
    task_id: str
    def __init__(self, request_id: _Optional[int] = ..., error: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...
