"""Many calls in flight from one thread: call_async, apply_async, map.

Async calls run each in an Erlang process of its own; nothing blocks a
Python thread per pending call.  Cancelling one (Future.cancel(),
timeout=, closing a map) kills exactly its process.
"""
import gc
import os
import signal
import threading
import time
from concurrent.futures import CancelledError, wait

import pytest

import erlang
from conftest import (erlang_process_count, helper_pid, open_fds,
                      run_python, wait_until, REGISTER_LITERAL)

def whereis(name):
    return erlang.eval("erlang:whereis(%s)." % name)


def settle_process_count(baseline, timeout=5.0):
    assert wait_until(lambda: erlang_process_count() <= baseline, timeout), \
        (erlang_process_count(), baseline)


# --------------------------------------------------------------- futures

def test_call_async_returns_a_future_with_the_result():
    fut = erlang.call_async("double_it", 21)
    assert fut.result(timeout=10) == 42
    assert erlang.apply_async("lists", "reverse", [[1, 2, 3]]).result(10) == [3, 2, 1]
    assert erlang.apply_async("erlang", "node").result(10) == "nonode@nohost"


def test_each_future_gets_its_own_reply():
    futs = [erlang.call_async("echo", ("x", i, b"%d" % i)) for i in range(2000)]
    assert [f.result(30) for f in futs] == [("x", i, str(i)) for i in range(2000)]


def test_an_erlang_exception_fails_only_its_future():
    futs = [erlang.call_async("maybe_fail", i) for i in range(10)]
    for i, f in enumerate(futs):
        if i % 2:
            assert f.result(10) == ("ok", i)
        else:
            with pytest.raises(erlang.Error) as info:
                f.result(10)
            assert info.value.reason == ("even", i)
    with pytest.raises(erlang.UndefinedFunction):
        erlang.call_async("no_such_function").result(10)
    with pytest.raises(erlang.UndefinedFunction):
        erlang.apply_async("no_such_module", "f", [1]).result(10)


def test_unencodable_arguments_raise_before_anything_is_sent():
    count = erlang_process_count()
    with pytest.raises(TypeError, match="set"):
        erlang.call_async("echo", {1, 2})
    with pytest.raises(TypeError):
        erlang.call_async(42)
    with pytest.raises(TypeError):
        erlang.apply_async("lists", "reverse", "not a list")
    with pytest.raises(ValueError):
        erlang.call_async("echo", 1, timeout=-1)
    with pytest.raises(TypeError):
        erlang.call_async("echo", 1, timeout=True)
    assert erlang_process_count() == count
    assert erlang.call("double_it", 2) == 4


def test_async_calls_run_concurrently_in_the_beam():
    t0 = time.monotonic()
    futs = [erlang.call_async("sleep_ms", 100) for _ in range(1000)]
    assert [f.result(30) for f in futs] == [100] * 1000
    # One after the other they would take 100 s.
    assert time.monotonic() - t0 < 10


def test_no_thread_is_blocked_per_pending_call():
    before = threading.active_count()
    futs = [erlang.call_async("sleep_ms", 300) for _ in range(200)]
    assert threading.active_count() <= before + 1      # at most the futures thread
    wait(futs, timeout=30)
    assert all(f.result() == 300 for f in futs)


def test_cancelling_a_future_kills_the_erlang_process_of_that_call(park_as):
    keep = erlang.call_async("sleep_echo", 300, "kept")
    fut = erlang.call_async("park_as", "victim_cancel")
    assert wait_until(lambda: whereis("victim_cancel") is not None)
    assert fut.cancel()
    assert fut.cancelled()
    with pytest.raises(CancelledError):
        fut.result()
    assert wait_until(lambda: whereis("victim_cancel") is None)
    assert keep.result(10) == "kept"          # nothing else disturbed
    assert erlang.call("double_it", 5) == 10


def test_a_future_timeout_raises_call_timeout_and_kills_the_call(park_as):
    t0 = time.monotonic()
    fut = erlang.call_async("park_as", "victim_timeout", timeout=0.3)
    with pytest.raises(erlang.CallTimeout, match="timeout=0.3"):
        fut.result(10)
    assert time.monotonic() - t0 < 5
    assert wait_until(lambda: whereis("victim_timeout") is None)
    zero = erlang.call_async("double_it", 1, timeout=0)
    with pytest.raises(erlang.CallTimeout, match="not sent"):
        zero.result(1)


def test_many_timeouts_expire_in_deadline_order():
    futs = [erlang.call_async("sleep_ms", 2000, timeout=t)
            for t in (0.9, 0.1, 0.5, 0.3, 0.7)]
    done_at = {}
    for f in futs:
        f.add_done_callback(lambda f, t0=time.monotonic(): done_at.setdefault(id(f), time.monotonic()))
    for f in futs:
        with pytest.raises(erlang.CallTimeout):
            f.result(10)
    order = sorted(futs, key=lambda f: done_at[id(f)])
    assert order == [futs[1], futs[3], futs[2], futs[4], futs[0]]


def test_call_timeout_start_option_applies_to_async_calls(restore_helper):
    erlang.stop()
    from conftest import register_functions
    erlang.start(call_timeout=0.2, on_start=register_functions)
    with pytest.raises(erlang.CallTimeout, match="call_timeout=0.2"):
        erlang.call_async("sleep_ms", 3000).result(10)
    assert erlang.call_async("double_it", 3, timeout=5).result(10) == 6


def test_a_future_callback_may_call_erlang_again():
    results = []
    done = threading.Event()

    def callback(fut):
        results.append(erlang.call("double_it", fut.result()))
        results.append(erlang.call_async("double_it", 1).result(10))
        done.set()

    erlang.call_async("double_it", 10).add_done_callback(callback)
    assert done.wait(10)
    assert results == [40, 2]


def test_cancelled_and_finished_futures_leave_no_processes_behind():
    base = erlang_process_count()
    futs = [erlang.call_async("sleep_ms", 5000) for _ in range(500)]
    assert wait_until(lambda: erlang_process_count() >= base + 500)
    for f in futs:
        f.cancel()
    settle_process_count(base)
    assert all(f.cancelled() for f in futs)


# ------------------------------------------------------------------- map

def test_map_yields_results_in_input_order():
    assert list(erlang.map("double_it", range(1000))) == [2 * i for i in range(1000)]
    assert list(erlang.map("my_function", "abc", [1, 2, 3, 4])) == [
        ("a", 1), ("b", 2), ("c", 3)]
    assert list(erlang.map("double_it", [])) == []


def test_map_results_come_in_order_even_when_replies_do_not():
    delays = [200, 0, 150, 10, 100, 50]
    out = list(erlang.map("sleep_echo", delays, range(6)))
    assert out == list(range(6))


def test_map_reads_its_input_lazily_with_at_most_in_flight_pending():
    consumed = []

    def source():
        for i in range(100):
            consumed.append(i)
            yield i

    it = erlang.map("double_it", source(), in_flight=8)
    assert consumed == []                      # nothing read before the first next()
    assert next(it) == 0
    assert len(consumed) <= 9
    assert list(it) == [2 * i for i in range(1, 100)]


def test_map_raises_an_error_at_its_item_and_cancels_the_rest(park_as):
    base = erlang_process_count()
    it = erlang.map("maybe_fail", [1, 3, 4, 5, 7])
    assert next(it) == ("ok", 1)
    assert next(it) == ("ok", 3)
    with pytest.raises(erlang.Error) as info:
        next(it)
    assert info.value.reason == ("even", 4)
    with pytest.raises(StopIteration):
        next(it)
    # Calls still running when the map is abandoned are killed.
    it = erlang.map("sleep_ms", [0] + [10000] * 50)
    assert next(it) == 0
    it.close()
    settle_process_count(base)


def test_map_over_a_generator_that_raises_yields_what_came_before():
    def source():
        yield 1
        yield 2
        raise KeyError("source broke")

    it = erlang.map("double_it", source())
    assert next(it) == 2
    assert next(it) == 4
    with pytest.raises(KeyError, match="source broke"):
        next(it)


def test_map_timeout_counts_from_the_call():
    it = erlang.map("sleep_ms", [0, 5000], timeout=0.5)
    assert next(it) == 0
    with pytest.raises(erlang.CallTimeout):
        next(it)


def test_map_with_an_unencodable_item_raises_it_in_its_place():
    it = erlang.map("echo", [1, {2}, 3])
    assert next(it) == 1
    with pytest.raises(TypeError):
        next(it)


@pytest.mark.parametrize("kw, exc", [
    ({"in_flight": 0}, ValueError), ({"in_flight": 1.5}, TypeError),
    ({"in_flight": True}, TypeError), ({"timeout": -1}, ValueError),
])
def test_map_rejects_bad_arguments(kw, exc):
    with pytest.raises(exc):
        erlang.map("double_it", [1], **kw)
    with pytest.raises(TypeError):
        erlang.map(1, [1])
    with pytest.raises(TypeError):
        erlang.map("double_it")


def test_maps_and_futures_from_many_threads_all_get_their_own_results():
    errors = []
    barrier = threading.Barrier(8)

    def work(k):
        try:
            barrier.wait()
            xs = list(range(k * 1000, k * 1000 + 500))
            if k % 3 == 0:
                got = list(erlang.map("echo", xs, in_flight=16))
            elif k % 3 == 1:
                got = [f.result(30) for f in [erlang.call_async("echo", x) for x in xs]]
            else:
                got = [erlang.call("echo", x) for x in xs]
            assert got == xs
        except BaseException as e:     # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


# ---------------------------------------------------------------- faults

def test_helper_death_fails_every_pending_future_within_a_second(restore_helper):
    futs = [erlang.call_async("sleep_ms", 30000) for _ in range(10000)]
    assert wait_until(lambda: erlang_process_count() > 10000, 30)
    t0 = time.monotonic()
    os.kill(helper_pid(), signal.SIGKILL)
    done, not_done = wait(futs, timeout=10)
    took = time.monotonic() - t0
    assert not not_done
    assert all(isinstance(f.exception(), erlang.HelperExited) for f in futs)
    assert took < 2.0, took
    # The next call starts a fresh helper.
    from conftest import register_functions
    register_functions()
    assert erlang.call_async("double_it", 4).result(30) == 8


def test_pending_futures_leave_no_descriptors_or_memory_behind():
    erlang.call_async("double_it", 1).result(10)      # the futures thread exists
    fds = open_fds()
    for _ in range(3):
        futs = [erlang.call_async("echo", b"x" * 1000) for _ in range(2000)]
        wait(futs, timeout=30)
        del futs
    gc.collect()
    assert open_fds() <= fds


def test_fork_with_pending_futures():
    proc = run_python(r"""
        import os, sys, erlang
        erlang.eval(%s)
        futs = [erlang.call_async("sleep_echo", 300, i) for i in range(20)]
        pid = os.fork()
        if pid == 0:
            try:
                # The parent's pending calls are lost here: they fail.
                try:
                    futs[0].result(10)
                    os._exit(3)
                except erlang.HelperExited as e:
                    if "fork" not in str(e):
                        os._exit(4)
                erlang.eval(%s)
                ok = erlang.call_async("double_it", 21).result(30) == 42
                ok = ok and list(erlang.map("double_it", [1, 2])) == [2, 4]
                os._exit(0 if ok else 1)
            except BaseException as e:
                print("child:", repr(e), file=sys.stderr)
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        print("RESULT child", os.waitstatus_to_exitcode(status))
        print("RESULT parent", [f.result(30) for f in futs] == list(range(20)))
    """ % (REGISTER_LITERAL, REGISTER_LITERAL), timeout=90)
    assert "RESULT child 0" in proc.stdout, proc.stderr
    assert "RESULT parent True" in proc.stdout, proc.stderr


@pytest.mark.slow
def test_a_million_calls_mixing_futures_map_asyncio_and_sync_calls_from_8_threads():
    import asyncio
    import erlang.asyncio as easyncio
    errors = []
    n = 125_000

    def work(k):
        try:
            base = k * n
            xs = range(base, base + n)
            mode = k % 4
            if mode == 0:
                got = list(erlang.map("echo", xs))
            elif mode == 1:
                got = []
                for lo in range(0, n, 1000):
                    futs = [erlang.call_async("echo", x) for x in xs[lo:lo + 1000]]
                    got.extend(f.result(60) for f in futs)
            elif mode == 2:
                async def main():
                    out = []
                    for lo in range(0, n, 1000):
                        out.extend(await asyncio.gather(
                            *[easyncio.call("echo", x) for x in xs[lo:lo + 1000]]))
                    return out
                got = asyncio.run(main())
            else:
                got = [erlang.call("echo", x) for x in xs]
            assert got == list(xs)
        except BaseException as e:
            errors.append((k, e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert not errors, errors[:3]


def test_map_timeout_counts_from_the_map_call_like_executor_map():
    it = erlang.map("sleep_ms", [300], timeout=0.5)
    time.sleep(0.7)
    with pytest.raises(erlang.CallTimeout):
        next(it)


def test_threads_waiting_on_futures_together_never_miss_their_completion():
    # Several threads wait in result() at once, each completing whatever
    # arrives: one that finds its future not done must be woken when
    # another thread completes it.
    errors = []
    barrier = threading.Barrier(6)

    def work(k):
        try:
            barrier.wait()
            for r in range(100):
                futs = [erlang.call_async("echo", (k, r, i)) for i in range(16)]
                assert [f.result(60) for f in futs] == [(k, r, i) for i in range(16)]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    # A missed wake-up leaves a thread asleep until its result() timeout
    # (60 s); all 9,600 calls take about a second.
    assert time.monotonic() - t0 < 30


def test_ctrl_c_interrupts_a_map_in_the_main_thread_and_cancels_its_calls():
    proc = run_python(r"""
        import os, signal, sys, threading, time, erlang
        erlang.eval(%s)
        base = erlang.eval("erlang:system_info(process_count).")
        # SIGINT sent to the process may be delivered to any thread.
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        try:
            list(erlang.map("sleep_ms", [20000] * 10))
        except KeyboardInterrupt:
            print("RESULT interrupted %%.1f" %% (time.monotonic() - t0))
        for _ in range(100):
            if erlang.eval("erlang:system_info(process_count).") <= base:
                break
            time.sleep(0.05)
        print("RESULT left", erlang.eval("erlang:system_info(process_count).") - base)
    """ % REGISTER_LITERAL, timeout=60)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert lines and lines[0].startswith("RESULT interrupted"), (proc.stdout, proc.stderr)
    assert float(lines[0].split()[-1]) < 5
    assert "RESULT left 0" in lines or any(ln.startswith("RESULT left -") for ln in lines), lines
