# Type stubs of erlang.asyncio (checked by tests/test_typing.py).
from typing import Any, Optional, Tuple, Union

__all__ = ["call", "apply", "eval", "rpc"]

async def call(name: Union[str, bytes], /, *args: Any, timeout: Optional[float] = ...) -> Any: ...
async def apply(
    module: str,
    function: str,
    args: Union[list[Any], Tuple[Any, ...]] = ...,
    timeout: Optional[float] = ...,
) -> Any: ...
async def eval(source: str, timeout: Optional[float] = ...) -> Any: ...
async def rpc(
    node: str,
    module: str,
    function: str,
    args: Union[list[Any], Tuple[Any, ...]] = ...,
    timeout: Optional[float] = ...,
) -> Any: ...
