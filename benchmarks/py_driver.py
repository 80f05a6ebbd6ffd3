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


def main():
    mode = sys.argv[1]
    setup()
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
