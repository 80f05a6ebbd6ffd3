"""Erlang calls Python: exports, re-entrant callbacks, the worker pool.

    python examples/callbacks.py

A Python function exported with @erlang.export is callable from Erlang as
py:call_python(Name, Args).  When the Erlang code running a Python call
calls back, the waiting Python thread runs the callback itself, so the two
sides can recurse into each other; from any other Erlang process the
callback runs on the python_workers thread pool.
"""
import threading

import erlang


@erlang.export
def area(w: int, h: int) -> int:
    return w * h


@erlang.export(name="fib")
def py_fib(n: int) -> int:
    # Python -> Erlang -> Python -> ...: each level is a real call.
    if n < 2:
        return n
    result: int = erlang.call("fib", n - 1) + erlang.call("fib", n - 2)
    return result


@erlang.export
def where() -> str:
    return threading.current_thread().name


@erlang.export
def fails(x: int) -> int:
    raise ValueError("no good: %d" % x)


def main() -> None:
    erlang.eval("""
        py:register_function(fib, fun([N]) -> py:call_python(<<"fib">>, [N]) end),
        py:register_function(where_from, fun([]) ->
            Self = self(),
            spawn(fun() -> Self ! {pool, py:call_python(where, [])} end),
            Here = py:call_python(where, []),
            receive {pool, Pool} -> {Here, Pool} end end).
    """)
    print("area from Erlang:", erlang.eval('py:call_python(<<"area">>, [6, 7]).'))
    print("fib(12), recursing through both sides:", erlang.call("fib", 12))
    here, pool = erlang.call("where_from")
    print("a call's own process calls back on:", here)
    print("a spawned process calls back on:", pool.rsplit("-", 1)[0])
    caught = erlang.eval('try py:call_python(fails, [3]) catch error:{python, T, M, _} -> {T, M} end.')
    print("a Python exception in Erlang:", caught)
    print("exported:", erlang.exported())


if __name__ == "__main__":
    main()
