"""Fuzz target: the reader's frame splitting (framing.c, through the
test-only entry point erlang._erlang._parse_frames), and the decoding of
every payload it returns.

A byte stream either splits into frames or raises ValueError (a protocol
error: the helper would be killed); the frames it returns must be exactly
the bytes they came from, every header one the helper can send, and every
payload must decode or raise ValueError, RecursionError or TypeError (an
unhashable map key).

Frames for workers 1..N are only accepted once N workers exist, so the
harness first makes a few (calls from threads to a helper it then stops).
"""
import os
import sys
import threading

import atheris

with atheris.instrument_imports():
    import erlang
    from erlang import _erlang

OK, ERROR, HELLO, OUTPUT, LOG = (_erlang.K_OK, _erlang.K_ERROR, _erlang.K_HELLO, _erlang.K_OUTPUT,
                               _erlang.K_LOG)
CALLBACK, MESSAGE, MAILBOX_DOWN = _erlang.K_CALLBACK, _erlang.K_MESSAGE, _erlang.K_MAILBOX_DOWN
ASYNC_WORKER = _erlang.ASYNC_WORKER      # the channel of async calls
N_WORKERS = 4


def make_workers(n):
    """Gives the pool n workers (ids 1..n); needs `erl`.  Returns n, or 0
    when no helper could be started."""
    try:
        erlang.start()
    except Exception as e:  # no erl: frames for worker 0 only
        print("fuzz_frames: no helper (%s); only worker 0 is routable" % e, file=sys.stderr)
        return 0
    barrier = threading.Barrier(n)

    def body():
        barrier.wait()
        erlang.apply("timer", "sleep", [200])

    ts = [threading.Thread(target=body) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    erlang.stop()
    return n


def encode(kind, worker, seq, payload):
    body = bytes([kind]) + worker.to_bytes(4, "big") + seq.to_bytes(4, "big") + payload
    return len(body).to_bytes(4, "big") + body


def TestOneInput(data):
    try:
        frames = _erlang._parse_frames(data)
    except ValueError:
        return
    rebuilt = b"".join(encode(*f) for f in frames)
    if data[:len(rebuilt)] != rebuilt:
        raise AssertionError("frames do not match their bytes")
    for kind, worker, seq, payload in frames:
        if worker == 0:
            assert kind in (HELLO, OUTPUT, LOG, CALLBACK, MESSAGE, MAILBOX_DOWN), (kind, worker)
        elif worker == ASYNC_WORKER:
            assert kind in (OK, ERROR, OUTPUT), (kind, worker)
        else:
            assert 1 <= worker <= max(N_WORKERS, 1), (kind, worker)
            assert kind in (OK, ERROR, OUTPUT, CALLBACK), (kind, worker)
        try:
            erlang.binary_to_term(payload)
        except (ValueError, RecursionError, TypeError):   # as in fuzz_codec.py
            pass


def main():
    global N_WORKERS
    sys.setrecursionlimit(10000)
    if not hasattr(_erlang, "_parse_frames"):
        print("fuzz_frames: erlang._erlang._parse_frames is missing", file=sys.stderr)
        sys.exit(2)
    if os.environ.get("FUZZ_NO_HELPER"):
        N_WORKERS = 0
    else:
        N_WORKERS = make_workers(N_WORKERS)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
