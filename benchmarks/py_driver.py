"""The Python process that bench.py traces with callgrind and strace.

Not meant to be run by hand.  Every mode first starts the helper, registers
`echo` and makes one call, so the traced difference between two runs (or the
traced window) is the calls alone.

    python py_driver.py cg N          N sequential calls, then exit (callgrind:
                                      run once with N and once with 0)
    python py_driver.py serve K       start, warm a pool of K threads, print
                                      "ready PID", then obey stdin lines:
                                      "seq N", "threads N" (N calls split over
                                      the K pool threads), "big N" (N calls
                                      echoing a 1 MB binary), "quit"
    python py_driver.py mem KIND N HOW
                                      N asyncio tasks left pending, KIND
                                      "call": on erlang.asyncio.call(
                                      "sleep_ms", 2000), "future": on a
                                      loop.create_future(); prints the
                                      memory they added as JSON, HOW "rss"
                                      (resident set) or "trace" (tracemalloc),
                                      then exits without waiting for them
"""
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import erlang

ARG = 42


def setup():
    erlang.eval("py:register_function(echo, fun([X]) -> X end).")
    erlang.call("echo", ARG)


def calls(n):
    call = erlang.call
    for _ in range(n):
        call("echo", ARG)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mem(kind, n, how):
    import asyncio
    import gc
    import json
    import tracemalloc

    import erlang.asyncio as ea

    erlang.eval("py:register_function(sleep_ms, fun([Ms]) -> timer:sleep(Ms), Ms end).")

    async def wait(fut):
        return await fut

    async def main():
        loop = asyncio.get_running_loop()
        # Warm both paths (the loop's waker, the code), a few tasks each, so
        # that what is measured is what N more pending tasks add.
        await asyncio.gather(*[ea.call("sleep_ms", 0) for _ in range(8)])
        futs = [loop.create_future() for _ in range(8)]
        tasks = [loop.create_task(wait(f)) for f in futs]
        await asyncio.sleep(0)
        for f in futs:
            f.set_result(None)
        await asyncio.gather(*tasks)
        del futs, tasks
        gc.collect()
        if how == "trace":
            tracemalloc.start()
        m0 = tracemalloc.get_traced_memory()[0] if how == "trace" else rss_bytes()
        if kind == "call":
            tasks = [loop.create_task(ea.call("sleep_ms", 2000)) for _ in range(n)]
        else:
            futs = [loop.create_future() for _ in range(n)]
            tasks = [loop.create_task(wait(f)) for f in futs]
        # Every task runs to its await (and the calls' frames are written).
        await asyncio.sleep(0.1)
        pending = sum(not t.done() for t in tasks)
        m1 = tracemalloc.get_traced_memory()[0] if how == "trace" else rss_bytes()
        print(json.dumps({"kind": kind, "how": how, "tasks": n, "pending": pending,
                          "bytes": m1 - m0}), flush=True)
        # Out at once, the tasks still pending: cancelling them is not
        # measured.  The helper sees its stdin close and halts.
        os._exit(0)

    asyncio.run(main())


def main():
    mode = sys.argv[1]
    setup()
    if mode == "mem":
        mem(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    if mode == "cg":
        calls(int(sys.argv[2]))
        # Skip the interpreter's shutdown: its work varies from run to run
        # and would blur the difference between the N-call and 0-call runs.
        # The helper sees its stdin close and halts.
        os._exit(0)
    k = int(sys.argv[2])
    pool = ThreadPoolExecutor(max_workers=k)
    barrier = threading.Barrier(k)

    def warm():
        barrier.wait()
        calls(1)

    for f in [pool.submit(warm) for _ in range(k)]:
        f.result()
    print("ready %d" % os.getpid(), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        n = int(words[1])
        if words[0] == "seq":
            calls(n)
        elif words[0] == "big":
            big = os.urandom(1_000_000)
            for _ in range(n):
                erlang.call("echo", big)
        elif words[0] == "threads":
            for f in [pool.submit(calls, n // k) for _ in range(k)]:
                f.result()
        print("done", flush=True)
    pool.shutdown()


if __name__ == "__main__":
    main()
