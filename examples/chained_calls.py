"""Several calls in a row from one thread: each result feeds the next call.

    python examples/chained_calls.py

A thread keeps the same channel (and the same Erlang handler process) for all
its calls, so a chain of calls costs no set-up after the first.
"""
import threading

import erlang

erlang.eval("py:register_function(add_one, fun([X]) -> X + 1 end).")

result: list[int] = []


def worker() -> None:
    x = erlang.call("add_one", 0)
    x = erlang.call("add_one", x)
    x = erlang.call("add_one", x)
    result.append(x)


thread = threading.Thread(target=worker)
thread.start()
thread.join()
print("add_one three times from 0:", result[0])   # 3

# The same chain, much longer, in the main thread.
x = 0
for _ in range(1000):
    x = erlang.call("add_one", x)
print("add_one 1000 times from 0:", x)
