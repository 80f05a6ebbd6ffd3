"""Call an Erlang function from a pool of Python threads.

    python examples/thread_pool.py

The first call starts the helper BEAM (an `erl` child process).  Every
thread of the pool gets its own channel to Erlang, so the four workers call
at the same time, and the GIL is released while they wait.
"""
from concurrent.futures import ThreadPoolExecutor

import erlang

# Register an Erlang fun under a name.  The fun receives the argument list.
erlang.eval("py:register_function(double_it, fun([X]) -> X * 2 end).")


def call_erlang(x: int) -> int:
    doubled: int = erlang.call("double_it", x)   # call() returns Any: say what it is
    return doubled


with ThreadPoolExecutor(max_workers=4) as executor:
    results = list(executor.map(call_erlang, range(10)))

print("double_it over range(10):", results)
assert results == [x * 2 for x in range(10)]
