"""erlang.asyncio under load and faults, on the default loop and on uvloop.

Each await is a call in an Erlang process of its own; the loop is woken
through a descriptor it watches and never blocks.  Cancelling a task
(``task.cancel()``, ``asyncio.wait_for``, ``timeout=``) kills exactly that
process; a dead helper fails every pending task; a loop that goes away
with calls pending leaves nothing behind.
"""
import asyncio
import gc
import os
import random
import signal
import sys
import threading
import time

import pytest
import uvloop

import erlang
import erlang.asyncio as ea
from conftest import (erlang_process_count, helper_pid, open_fds,
                      register_functions, result_lines, run_python, wait_until,
                      REGISTER_LITERAL)

LOOPS = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


class Loop:
    """How a test runs its coroutines: on one kind of event loop."""

    def __init__(self, name):
        self.name = name
        self.new_loop = LOOPS[name]

    def run(self, coro):
        """Runs coro to its end on a fresh loop of this kind, as asyncio.run."""
        if hasattr(asyncio, "Runner"):
            with asyncio.Runner(loop_factory=self.new_loop) as runner:
                return runner.run(coro)
        loop = self.new_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            rest = asyncio.all_tasks(loop)
            for t in rest:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


@pytest.fixture(params=sorted(LOOPS))
def aio(request):
    return Loop(request.param)


async def await_until(pred, timeout=5.0):
    """Awaits until the coroutine function pred() returns true."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await pred():
            return True
        await asyncio.sleep(0.01)
    return await pred()


async def whereis(name):
    return await ea.eval("erlang:whereis('%s')." % name)


def settled(baseline_procs, baseline_fds, timeout=5.0):
    """Whether, within timeout, the BEAM's process count and our open
    descriptors come back to their baselines (collecting garbage meanwhile)."""
    def back():
        gc.collect()
        return erlang_process_count() <= baseline_procs and open_fds() <= baseline_fds
    return wait_until(back, timeout)


def baselines(aio):
    """The BEAM's process count and our open descriptors, after a first run
    of a loop of aio's kind (uvloop opens a pipe of its own once a process)."""
    aio.run(asyncio.sleep(0))
    gc.collect()
    return erlang_process_count(), open_fds()


class Ticker:
    """Counts the turns of the running loop: a task that sleeps 10 ms at a
    time and notes the largest gap between two ticks."""

    def __init__(self):
        self.ticks = 0
        self.max_gap = 0.0
        self._task = None

    async def _main(self):
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    async def __aenter__(self):
        self._task = asyncio.create_task(self._main())
        while self.ticks < 2:             # it runs
            await asyncio.sleep(0.01)
        self.ticks, self.max_gap = 0, 0.0
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


# ------------------------------------------------------------ results

def test_call_apply_and_eval_return_their_values(aio):
    async def main():
        return [
            await ea.call("double_it", 21),
            await ea.call("echo_args", 1, "two", (3, b"four")),
            await ea.call(b"my_function", [1], {"k": 2.5}),
            await ea.apply("lists", "reverse", [[1, 2, 3]]),
            await ea.apply("erlang", "node"),
            await ea.apply("lists", "seq", (1, 4)),
            await ea.eval("X = 5, X * 2."),
            await ea.eval("{ok, <<\"bin\">>, [a, 1.5]}."),
        ]
    assert aio.run(main()) == [
        42, [1, "two", (3, "four")], ([1], {"k": 2.5}), [3, 2, 1], "nonode@nohost",
        [1, 2, 3, 4], 10, ("ok", "bin", ["a", 1.5]),
    ]


def test_erlang_exceptions_are_raised_from_the_await(aio):
    async def main():
        outcomes = await asyncio.gather(*[ea.call("maybe_fail", i) for i in range(10)],
                                        return_exceptions=True)
        for i, got in enumerate(outcomes):
            if i % 2:
                assert got == ("ok", i)
            else:
                assert type(got) is erlang.Error and got.kind == "error"
                assert got.reason == ("even", i)
        with pytest.raises(erlang.Error) as info:
            await ea.call("raise_throw", "thrown")
        assert (info.value.kind, info.value.reason) == ("throw", "thrown")
        with pytest.raises(erlang.Error) as info:
            await ea.call("raise_exit", "gone")
        assert (info.value.kind, info.value.reason) == ("exit", "gone")
        with pytest.raises(erlang.UndefinedFunction, match="no_such_function"):
            await ea.call("no_such_function", 1)
        with pytest.raises(erlang.UndefinedFunction):
            await ea.apply("no_such_module", "f", [1])
        with pytest.raises(erlang.UndefinedFunction):
            await ea.apply("lists", "no_such_function", [])
        with pytest.raises(erlang.Error, match="syntax error"):
            await ea.eval("1 +.")
        with pytest.raises(erlang.Error) as info:
            await ea.eval("1 = 2.")
        assert info.value.reason == ("badmatch", 2)
        # The loop and the helper go on serving.
        return await ea.call("double_it", 5)
    assert aio.run(main()) == 10
    assert erlang.call("double_it", 6) == 12


def test_bad_input_raises_from_the_await_before_anything_is_sent(aio):
    procs = erlang_process_count()

    async def main():
        coro = ea.call("echo", {1, 2})           # nothing happens before the await
        with pytest.raises(TypeError, match="set"):
            await coro
        with pytest.raises(TypeError):
            await ea.call(42)
        with pytest.raises(TypeError):
            await ea.call("echo", object())
        with pytest.raises(TypeError):
            await ea.apply("lists", "reverse", "not a list")
        with pytest.raises(TypeError):
            await ea.apply(1, "reverse", [[]])
        with pytest.raises(TypeError):
            await ea.eval(b"1 + 1.")
        with pytest.raises(ValueError):
            await ea.call("echo", 1, timeout=-1)
        with pytest.raises(ValueError):
            await ea.call("echo", 1, timeout=float("nan"))
        with pytest.raises(TypeError):
            await ea.call("echo", 1, timeout=True)
        with pytest.raises(TypeError):
            await ea.eval("1.", timeout="1")
        with pytest.raises(erlang.CallTimeout, match="not sent"):
            await ea.call("echo", 1, timeout=0)
        assert erlang_process_count() == procs     # nothing reached the helper
        return await ea.call("double_it", 2), await ea.eval("ok.")
    assert aio.run(main()) == (4, "ok")
    assert erlang.call("double_it", 3) == 6


# -------------------------------------------------------- concurrency

def test_a_thousand_sleeps_run_at_once(aio):
    async def main():
        t0 = time.monotonic()
        got = await asyncio.gather(*[ea.call("sleep_ms", 100) for _ in range(1000)])
        return got, time.monotonic() - t0
    got, took = aio.run(main())
    assert got == [100] * 1000
    assert took < 10, took           # one after the other: 100 s


def test_ten_thousand_gathered_calls_each_get_their_own_value(aio):
    xs = [(i, "v%d" % i, b"%d" % i) for i in range(10000)]

    async def main():
        return await asyncio.gather(*[ea.call("echo", x) for x in xs])
    got = aio.run(main())
    assert len(got) == len(xs)
    for x, g in zip(xs, got):
        assert g == (x[0], x[1], x[2].decode())


def test_the_loop_keeps_turning_while_a_thousand_calls_are_pending(aio):
    async def main():
        async with Ticker() as ticker:
            got = await asyncio.gather(*[ea.call("sleep_ms", 200) for _ in range(1000)])
        return got, ticker.ticks, ticker.max_gap
    got, ticks, gap = aio.run(main())
    assert got == [200] * 1000
    assert ticks >= 10, ticks         # 200 ms at 10 ms a tick: about 20
    assert gap < 0.5, gap


def test_a_full_outbound_queue_makes_calls_wait_for_room_not_the_loop(aio, restore_helper):
    # The helper stopped (SIGSTOP) reads nothing: 60 MB of requests fill the
    # pipe and then the outbound queue (32 MB).
    pid = helper_pid()
    xs = [(b"%07d" % i) * 150000 for i in range(60)]

    async def main():
        async with Ticker() as ticker:
            os.kill(pid, signal.SIGSTOP)
            try:
                tasks = [asyncio.create_task(ea.apply("binary", "part", [x, len(x) - 7, 7]))
                         for x in xs]
                await asyncio.sleep(0.3)
                # A call that finds no room within its timeout is not sent.
                with pytest.raises(erlang.CallTimeout, match="not sent"):
                    await ea.apply("erlang", "byte_size", [b"x" * 2000000], timeout=0.2)
                assert not any(t.done() for t in tasks)
                ticks_while_stopped = ticker.ticks
            finally:
                os.kill(pid, signal.SIGCONT)
            got = await asyncio.gather(*tasks)
        return got, ticks_while_stopped, ticker.max_gap
    got, ticks, gap = aio.run(main())
    assert got == ["%07d" % i for i in range(60)]
    # The loop turned while the helper read nothing (0.5 s at 10 ms a tick:
    # about 50 ticks here, a few under ASan, none if a write blocked it).
    assert ticks >= 2, ticks
    assert gap < 2.0, gap
    assert aio.run(ea.call("echo", "after")) == "after"


# ---------------------------------------------------------- cancelling

def test_task_cancel_kills_exactly_that_erlang_process(aio, park_as):
    name = "victim_cancel_" + aio.name

    async def main():
        keep = asyncio.create_task(ea.call("sleep_echo", 300, "kept"))
        victim = asyncio.create_task(ea.call("park_as", name))
        assert await await_until(lambda: whereis_not_none(name))
        assert victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        assert victim.cancelled()
        assert await await_until(lambda: whereis_none(name))
        assert await keep == "kept"                 # nothing else disturbed
        return await ea.call("double_it", 5)
    assert aio.run(main()) == 10


async def whereis_not_none(name):
    return await whereis(name) is not None


async def whereis_none(name):
    return await whereis(name) is None


def test_wait_for_running_out_kills_the_call(aio, park_as):
    name = "victim_wait_for_" + aio.name

    async def main():
        keep = asyncio.create_task(ea.call("sleep_echo", 500, "kept"))
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ea.call("park_as", name), 0.3)
        assert time.monotonic() - t0 < 5
        assert await await_until(lambda: whereis_none(name))
        assert await keep == "kept"
    aio.run(main())


def test_timeout_raises_call_timeout_and_kills_the_call(aio, park_as):
    name = "victim_timeout_" + aio.name
    procs = erlang_process_count()

    async def main():
        keep = asyncio.create_task(ea.call("sleep_echo", 500, "kept"))
        t0 = time.monotonic()
        with pytest.raises(erlang.CallTimeout, match="timeout=0.3") as info:
            await ea.call("park_as", name, timeout=0.3)
        assert isinstance(info.value, TimeoutError)
        assert time.monotonic() - t0 < 5
        assert await await_until(lambda: whereis_none(name))
        with pytest.raises(erlang.CallTimeout):
            await ea.eval("receive never -> ok end.", timeout=0.2)
        with pytest.raises(erlang.CallTimeout):
            await ea.apply("timer", "sleep", [60000], timeout=0.2)
        assert await keep == "kept"
        # A timeout that does not run out changes nothing.
        assert await ea.call("sleep_echo", 50, "in time", timeout=10) == "in time"
    aio.run(main())
    assert wait_until(lambda: erlang_process_count() <= procs), (erlang_process_count(), procs)


def test_call_timeout_start_option_applies_to_asyncio_calls(aio, restore_helper):
    erlang.stop()
    erlang.start(call_timeout=0.2, on_start=register_functions)

    async def main():
        with pytest.raises(erlang.CallTimeout, match="call_timeout=0.2"):
            await ea.call("sleep_ms", 3000)
        return await ea.call("sleep_echo", 300, "own", timeout=5)
    assert aio.run(main()) == "own"


def test_a_storm_of_cancels_leaves_every_other_result_its_own(aio):
    seed = random.randrange(1 << 32)
    print("cancel storm seed:", seed)
    rnd = random.Random(seed)
    erlang.call("echo", 0)
    procs, fds = baselines(aio)
    n = 10000
    delays = [rnd.choice((0, 0, 1, 5, 20, 50)) for _ in range(n)]
    cancel_at = [rnd.random() * 0.06 if rnd.random() < 0.5 else None for _ in range(n)]
    timeouts = [rnd.choice((0.001, 0.02, 0.05)) if rnd.random() < 0.1 else None
                for _ in range(n)]

    async def main():
        loop = asyncio.get_running_loop()
        tasks = []
        for i in range(n):
            x = ("storm", i)
            tasks.append(asyncio.create_task(
                ea.call("sleep_echo", delays[i], x, timeout=timeouts[i])))
            if cancel_at[i] is not None:
                loop.call_later(cancel_at[i], tasks[-1].cancel)
        await asyncio.wait(tasks)
        # Cancels scheduled for later than the last reply still fire harmlessly.
        await asyncio.sleep(0.07)
        return tasks
    counts = check_storm(aio.run(main()), cancel_at, timeouts)
    print("cancel storm:", counts)
    assert counts["ok"] > 0 and counts["cancelled"] > 0
    assert settled(procs, fds), (erlang_process_count(), procs, open_fds(), fds)
    # Nothing stray reaches a later loop's calls.
    assert aio.run(gather_echo(range(100))) == list(range(100))


def check_storm(tasks, cancel_at, timeouts):
    """Every task's outcome is its own: a result equal to its input, or
    cancelled (when it was cancelled), or CallTimeout (when it had a timeout)."""
    counts = {"ok": 0, "cancelled": 0, "timeout": 0}
    for i, t in enumerate(tasks):
        if t.cancelled():
            assert cancel_at[i] is not None, i
            counts["cancelled"] += 1
        elif t.exception() is not None:
            assert isinstance(t.exception(), erlang.CallTimeout), (i, t.exception())
            assert timeouts[i] is not None, i
            counts["timeout"] += 1
        else:
            assert t.result() == ("storm", i), (i, t.result())
            counts["ok"] += 1
    return counts


async def gather_echo(xs):
    return await asyncio.gather(*[ea.call("echo", x) for x in xs])


# -------------------------------------------------------------- faults

def test_helper_sigkill_fails_ten_thousand_pending_tasks(aio, restore_helper):
    old_pid = helper_pid()

    async def main():
        tasks = [asyncio.create_task(ea.call("sleep_ms", 30000)) for _ in range(10000)]
        count = "erlang:system_info(process_count)."
        assert await await_until(lambda: more_than(count, 10000), 30)
        t0 = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        done, pending = await asyncio.wait(tasks, timeout=30)
        took = time.monotonic() - t0
        assert not pending, len(pending)
        assert all(isinstance(t.exception(), erlang.HelperExited) for t in tasks)
        assert took < 3.0, took
        # The next call starts a fresh helper.
        assert await ea.eval("1 + 1.") == 2
    aio.run(main())
    assert helper_pid() != old_pid
    register_functions()
    assert aio.run(ea.call("double_it", 4)) == 8


async def more_than(source, n):
    return await ea.eval(source) > n


def test_stopping_the_helper_fails_the_pending_tasks(aio, restore_helper):
    async def main():
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(ea.call("sleep_echo", 30000, i)) for i in range(500)]
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        assert await loop.run_in_executor(None, erlang.stop) is True
        done, pending = await asyncio.wait(tasks, timeout=30)
        assert not pending, len(pending)
        assert all(isinstance(t.exception(), erlang.HelperExited) for t in tasks)
        assert time.monotonic() - t0 < 10
        # The next call starts a helper again.
        return await ea.eval("ok.")
    assert aio.run(main()) == "ok"


def test_a_closed_loop_with_tasks_never_awaited_leaks_nothing(aio):
    erlang.call("echo", 0)
    procs, fds = baselines(aio)
    loop = aio.new_loop()
    tasks = [loop.create_task(ea.call("sleep_echo", 30000, i)) for i in range(200)]
    loop.run_until_complete(asyncio.sleep(0.2))      # something else: the calls go out
    assert wait_until(lambda: erlang_process_count() >= procs + 200)
    assert not any(t.done() for t in tasks)
    loop.close()
    del tasks, loop
    assert settled(procs, fds), (erlang_process_count(), procs, open_fds(), fds)
    # No late reply reaches a new loop's calls.
    assert aio.run(gather_echo(["a", "b", "c"])) == ["a", "b", "c"]


def test_a_closed_loop_that_is_still_referenced_leaks_nothing(aio):
    erlang.call("echo", 0)
    procs, fds = baselines(aio)
    loop = aio.new_loop()
    tasks = [loop.create_task(ea.call("sleep_echo", 30000, i)) for i in range(200)]
    loop.run_until_complete(asyncio.sleep(0.2))
    assert wait_until(lambda: erlang_process_count() >= procs + 200)
    loop.close()
    # Later calls, on a new loop, get their own values ...
    assert aio.run(gather_echo(["a", "b", "c"])) == ["a", "b", "c"]
    assert not any(t.done() for t in tasks)
    # ... and by then the closed loop's calls and descriptor are gone, though
    # the closed loop and its tasks are still referenced here.
    assert settled(procs, fds, timeout=2), (erlang_process_count(), procs, open_fds(), fds)
    assert loop.is_closed() and len(tasks) == 200


def test_asyncio_run_returning_with_calls_pending_leaks_nothing(aio, park_as):
    erlang.call("echo", 0)
    procs, fds = baselines(aio)
    name = "victim_run_" + aio.name

    async def main():
        asyncio.create_task(ea.call("park_as", name))
        for i in range(200):
            asyncio.create_task(ea.call("sleep_echo", 30000, i))
        await asyncio.sleep(0.2)
        assert await whereis(name) is not None
        return "returned"
    assert aio.run(main()) == "returned"
    assert settled(procs, fds), (erlang_process_count(), procs, open_fds(), fds)
    assert erlang.eval("erlang:whereis('%s')." % name) is None
    assert aio.run(gather_echo([1, 2, 3])) == [1, 2, 3]


def test_keyboard_interrupt_in_asyncio_run_with_calls_pending(aio):
    proc = run_python(r"""
        import asyncio, gc, os, signal, sys, time
        import uvloop
        import erlang, erlang.asyncio as ea
        erlang.eval(%s)
        factory = uvloop.new_event_loop if sys.argv[1] == "uvloop" else asyncio.new_event_loop
        def count():
            return erlang.eval("erlang:system_info(process_count).")
        base = count()
        with asyncio.Runner(loop_factory=factory) as runner:    # uvloop opens a pipe once
            runner.run(asyncio.sleep(0))
        fds = len(os.listdir("/proc/self/fd"))
        sent = []
        async def main():
            loop = asyncio.get_running_loop()
            tasks = [asyncio.create_task(ea.call("sleep_echo", 30000, i)) for i in range(1000)]
            while await ea.eval("erlang:system_info(process_count).") < base + 1000:
                await asyncio.sleep(0.01)
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.gather(*tasks)
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(main())
        except KeyboardInterrupt:
            print("RESULT interrupted after %%.3f s" %% (time.monotonic() - sent[0]))
        else:
            print("RESULT not interrupted")
        # (Out of the except block: its traceback would keep the loop alive.)
        del runner
        end = time.monotonic() + 5
        while time.monotonic() < end:
            gc.collect()
            if count() <= base and len(os.listdir("/proc/self/fd")) <= fds:
                break
            time.sleep(0.02)
        print("RESULT processes", count() <= base, count(), base)
        print("RESULT fds", len(os.listdir("/proc/self/fd")) <= fds)
        async def again():
            return await asyncio.gather(*[ea.call("echo", ("again", i)) for i in range(50)])
        with asyncio.Runner(loop_factory=factory) as runner:
            got = runner.run(again())
        print("RESULT again", got == [("again", i) for i in range(50)])
        raise KeyboardInterrupt
    """ % REGISTER_LITERAL, aio.name, timeout=60)
    lines = result_lines(proc)
    assert proc.returncode == -signal.SIGINT, (proc.returncode, proc.stdout, proc.stderr)
    assert "KeyboardInterrupt" in proc.stderr
    assert lines and lines[0].startswith("interrupted after"), (proc.stdout, proc.stderr)
    assert float(lines[0].split()[2]) < 3.0, lines
    assert len(lines) == 4 and lines[1].startswith("processes True"), (lines, proc.stderr)
    assert lines[2:] == ["fds True", "again True"], (lines, proc.stderr)


# ------------------------------------------------------- mixed company

def test_loops_in_several_threads_each_get_their_own_results(aio):
    errors = []
    barrier = threading.Barrier(6)

    def work(k):
        try:
            kind = Loop(aio.name if k % 2 else ("uvloop" if aio.name == "asyncio" else "asyncio"))
            barrier.wait()
            xs = [(k, i) for i in range(2000)]

            async def main():
                half = await asyncio.gather(*[ea.call("echo", x) for x in xs[:1000]])
                rest = await asyncio.gather(*[ea.call("sleep_echo", i % 3, x)
                                              for i, x in enumerate(xs[1000:])])
                return half + rest
            assert kind.run(main()) == xs
        except BaseException as e:         # reported below
            errors.append((k, e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors


def test_asyncio_calls_mixed_with_sync_calls_and_futures_from_other_threads(aio):
    errors = []
    stop = threading.Event()
    done_counts = []
    barrier = threading.Barrier(7)       # 6 threads and the loop's

    def sync_worker(k):
        try:
            barrier.wait()
            n = 0
            while not stop.is_set():
                x = ("sync", k, n)
                assert erlang.call("echo", x) == x
                n += 1
            done_counts.append(n)
        except BaseException as e:
            errors.append(e)

    def futures_worker(k):
        try:
            barrier.wait()
            n = 0
            while not stop.is_set():
                xs = [("fut", k, n, j) for j in range(50)]
                futs = [erlang.call_async("echo", x) for x in xs]
                assert [f.result(30) for f in futs] == xs
                n += 1
            done_counts.append(n)
        except BaseException as e:
            errors.append(e)

    threads = ([threading.Thread(target=sync_worker, args=(k,)) for k in range(3)] +
               [threading.Thread(target=futures_worker, args=(k,)) for k in range(3)])
    for t in threads:
        t.start()
    try:
        barrier.wait(30)

        async def main():
            for rnd in range(10):
                xs = [("aio", rnd, i) for i in range(500)]
                assert await gather_echo(xs) == xs
                fut = erlang.call_async("double_it", rnd)
                assert await asyncio.wrap_future(fut) == 2 * rnd
            return "done"
        assert aio.run(main()) == "done"
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert len(done_counts) == 6 and all(n > 0 for n in done_counts), done_counts


def test_the_first_call_starts_the_helper_without_blocking_the_loop(aio, restore_helper):
    erlang.stop()
    assert not erlang.is_running()

    async def main():
        async with Ticker() as ticker:
            got = await ea.apply("erlang", "abs", [-42])
        return got, ticker.ticks, ticker.max_gap
    got, ticks, gap = aio.run(main())
    assert got == 42
    assert erlang.is_running()
    # The start takes a tenth of a second or more; the loop turned meanwhile.
    assert ticks >= 3, ticks
    assert gap < 0.5, gap


def test_many_first_calls_start_one_helper_without_blocking_the_loop(aio, restore_helper):
    erlang.stop()

    async def main():
        async with Ticker() as ticker:
            got = await asyncio.gather(*[ea.eval("%d * 2." % i) for i in range(100)])
        return got, ticker.max_gap
    got, gap = aio.run(main())
    assert got == [2 * i for i in range(100)]
    assert gap < 0.5, gap
    # Deterministically: a start under way in another thread (a slow on_start).
    erlang.stop()

    def slow_start():
        time.sleep(1.0)
        register_functions()
    starter = threading.Thread(target=erlang.start, kwargs={"on_start": slow_start})
    starter.start()
    try:
        async def during_start():
            while not erlang.is_running():          # the start is under way
                await asyncio.sleep(0.005)
            async with Ticker() as ticker:
                got = await ea.call("double_it", 21)
            return got, ticker.max_gap
        got, gap = aio.run(during_start())
    finally:
        starter.join(30)
    assert got == 42
    assert gap < 0.5, gap
