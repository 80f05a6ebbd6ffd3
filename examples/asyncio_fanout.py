"""Many Erlang calls at once from asyncio, and cancelling one.

    python examples/asyncio_fanout.py

Each `await erlang.asyncio.call(...)` runs in an Erlang process of its own,
so 1,000 calls that each sleep 50 ms take about as long as one of them, not
50 seconds; no thread waits per call, and the event loop is never blocked.
Cancelling an awaiting task (here through asyncio.wait_for) kills the Erlang
process running that call.
"""
import asyncio
import time

import erlang
import erlang.asyncio

N = 1000
SLEEP_MS = 50


async def main() -> None:
    # The first call starts the helper (in a thread, so the loop carries on).
    await erlang.asyncio.eval("""
        py:register_function(sleep_double, fun([Ms, X]) -> timer:sleep(Ms), X * 2 end),
        py:register_function(slow_named, fun([Ms]) ->
            register(slow_call, self()), timer:sleep(Ms), finished end).
    """)

    # Fan out: N calls in flight at once.
    t0 = time.monotonic()
    results: list[int] = await asyncio.gather(
        *(erlang.asyncio.call("sleep_double", SLEEP_MS, i) for i in range(N)))
    took = time.monotonic() - t0
    print("results in order:", results == [2 * i for i in range(N)])
    print("first ten:", results[:10])
    print("%d calls of a %d ms sleep took %.2f s (one after another: %.0f s)"
          % (N, SLEEP_MS, took, N * SLEEP_MS / 1000))

    # Cancel: wait_for gives up after 0.2 s and cancels the task, which
    # kills the Erlang process running the 10 s call.
    try:
        await asyncio.wait_for(erlang.asyncio.call("slow_named", 10_000), timeout=0.2)
    except asyncio.TimeoutError:
        print("wait_for gave up after 0.2 s")
    gone = False
    for _ in range(500):
        if await erlang.asyncio.eval("whereis(slow_call).") is None:
            gone = True
            break
        await asyncio.sleep(0.01)
    print("the cancelled call's Erlang process is gone:", gone)

    # timeout= does the same and raises erlang.CallTimeout.
    try:
        await erlang.asyncio.call("sleep_double", 10_000, 1, timeout=0.2)
    except erlang.CallTimeout as e:
        print("CallTimeout:", e)

    # An Erlang exception reaches the awaiting task only.
    outcomes = await asyncio.gather(
        erlang.asyncio.apply("lists", "seq", [1, 3]),
        erlang.asyncio.apply("erlang", "error", [erlang.Atom("boom")]),
        return_exceptions=True)
    print("gathered:", [type(o).__name__ if isinstance(o, Exception) else o
                        for o in outcomes])


asyncio.run(main())
