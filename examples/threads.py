"""Plain threading.Thread workers calling Erlang, each with its own argument.

    python examples/threads.py
"""
import threading

import erlang

erlang.eval("""
    py:register_function(double_it, fun([X]) -> X * 2 end),
    py:register_function(my_function, fun([A, B]) -> {A, B, self()} end).
""")

results: dict[int, int] = {}


def worker(n: int) -> None:
    # Each thread may call as often as it likes; replies never mix up.
    results[n] = erlang.call("double_it", n)


threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("results by thread:", [results[i] for i in range(10)])


# Two arguments; the Erlang side also returns the pid of the Erlang process
# that served this thread (each Python thread has its own handler process).
def show() -> None:
    a, b, handler = erlang.call("my_function", "arg1", 2)
    print("Got:", (a, b), "served by Erlang process", handler)


thread = threading.Thread(target=show)
thread.start()
thread.join()
