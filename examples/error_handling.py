"""Erlang errors become Python exceptions.

    python examples/error_handling.py

erlang.Error (a RuntimeError) carries .kind ('error', 'throw' or 'exit'),
.reason (the decoded Erlang term) and .stacktrace.  Unknown names raise
erlang.UndefinedFunction, a slow call with timeout= raises erlang.CallTimeout.
"""
import threading

import erlang

erlang.eval("""
    py:register_function(maybe_fail,
        fun([X]) when X > 10 -> erlang:error({too_big, X});
           ([X]) -> {ok, X} end),
    py:register_function(slow, fun([Ms]) -> timer:sleep(Ms), done end).
""")


def worker() -> None:
    for x in (5, 42):
        try:
            status, value = erlang.call("maybe_fail", x)   # {ok, X}
            print(f"maybe_fail({x}) returned {status} {value}")
        except erlang.Error as e:
            print(f"caught {type(e).__name__}: {e}")   # "Erlang error in ...: ..."
            # Atoms arrive as erlang.Atom, a str subclass.
            what, value = e.reason                          # {too_big, X}
            print(f"  kind={e.kind} reason={str(what)} {value}")


thread = threading.Thread(target=worker)
thread.start()
thread.join()

try:
    erlang.call("no_such_function", 1)
except erlang.UndefinedFunction as e:
    print("UndefinedFunction:", e)

try:
    erlang.call("slow", 2000, timeout=0.1)
except erlang.CallTimeout:
    print("CallTimeout: slow(2000) did not answer within 0.1 s")
# The thread's next call is unaffected by the abandoned one.
print("next call after the timeout:", erlang.call("slow", 10))
