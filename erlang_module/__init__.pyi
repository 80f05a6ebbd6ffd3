# Type stubs of the erlang package: they accept what the runtime accepts
# (checked against it by tests/test_typing.py with mypy --strict).
import os
from concurrent.futures import Future
from typing import (Any, Callable, ClassVar, Iterable, Iterator, Mapping, Optional, Sequence,
                    SupportsIndex, Tuple, TypedDict, Union)

from typing_extensions import Buffer, Literal

__version__: str
__all__ = [
    "Atom", "BitString", "CallTimeout", "Error", "Fun", "HelperExited",
    "ImproperList", "Pid", "Port", "Reference", "UndefinedFunction",
    "apply", "apply_async", "binary_to_term", "call", "call_async", "eval", "info",
    "is_running", "load_module", "map", "start", "stop", "term_to_binary",
]

_StrPath = Union[str, "os.PathLike[str]"]
_AnyPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
# Seconds; None: the call_timeout start option (by default no limit).
_Timeout = Optional[float]
_Binaries = Literal["str", "bytes"]

# ------------------------------------------------------------------ types

class Atom(str): ...

class _Opaque:
    def __init__(self, raw: Buffer) -> None: ...
    @property
    def raw(self) -> bytes: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

class _OnNode(_Opaque):
    @property
    def node(self) -> Atom: ...

class Pid(_OnNode): ...
class Reference(_OnNode): ...
class Port(_OnNode): ...
class Fun(_Opaque): ...

class ImproperList:
    items: list[Any]
    tail: Any
    def __init__(self, items: Iterable[Any], tail: Any) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]

class BitString:
    def __init__(self, data: Buffer, bits: SupportsIndex) -> None: ...
    @property
    def data(self) -> bytes: ...
    @property
    def bits(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

# ------------------------------------------------------------------ errors

class Error(RuntimeError):
    kind: str
    reason: Any
    stacktrace: Sequence[Any]
    def __init__(
        self, kind: str, reason: Any, stacktrace: Sequence[Any] = ..., message: Optional[str] = ...
    ) -> None: ...

class UndefinedFunction(Error): ...
class CallTimeout(TimeoutError): ...

class HelperExited(ConnectionError):
    status: Optional[int]
    stderr: str
    def __init__(self, message: str, status: Optional[int] = ..., stderr: str = ...) -> None: ...

# ------------------------------------------------------------------ functions

class _Info(TypedDict):
    otp_release: str
    erts_version: str
    node: Atom
    os_pid: int
    started_at: float
    start_seconds: float
    erl: str
    protocol: int
    version: str

def call(name: Union[str, bytes], /, *args: Any, timeout: _Timeout = ...) -> Any: ...
def apply(
    module: str,
    function: str,
    args: Union[list[Any], Tuple[Any, ...]] = ...,
    timeout: _Timeout = ...,
) -> Any: ...
def eval(source: str, timeout: _Timeout = ...) -> Any: ...
def load_module(
    path_or_source: Union[str, "os.PathLike[str]", "os.PathLike[bytes]"],
    timeout: _Timeout = ...,
) -> Atom: ...
def start(
    *,
    erl: Optional[_AnyPath] = ...,
    args: Optional[Sequence[_AnyPath]] = ...,
    code_path: Optional[Sequence[_AnyPath]] = ...,
    modules: Optional[Sequence[_StrPath]] = ...,
    timeout: float = ...,
    call_timeout: _Timeout = ...,
    binaries: _Binaries = ...,
    on_start: Optional[Callable[[], object]] = ...,
    env: Optional[Mapping[str, str]] = ...,
    after_fork: Literal["restart", "error"] = ...,
    elixir: Union[bool, _AnyPath] = ...,
) -> None: ...
def call_async(name: Union[str, bytes], /, *args: Any, timeout: _Timeout = ...) -> Future[Any]: ...
def apply_async(
    module: str,
    function: str,
    args: Union[list[Any], Tuple[Any, ...]] = ...,
    timeout: _Timeout = ...,
) -> Future[Any]: ...
def map(
    name: Union[str, bytes],
    /,
    *iterables: Iterable[Any],
    timeout: _Timeout = ...,
    in_flight: int = ...,
) -> Iterator[Any]: ...
def stop(timeout: float = ...) -> bool: ...
def is_running() -> bool: ...
def info() -> Optional[_Info]: ...
def term_to_binary(obj: object, /) -> bytes: ...
def binary_to_term(data: Buffer, /, binaries: _Binaries = ...) -> Any: ...
