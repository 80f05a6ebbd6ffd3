"""Erlang calls Python: exports, py:call_python / py:cast_python, re-entrancy,
the python_workers pool, errors both ways (real helper)."""
import asyncio
import os
import threading
import time

import pytest

import erlang
from erlang import Atom

# Erlang functions that call back into Python.
CALLBACK_FUNS = r"""
py:register_function(cb, fun([Name, Args]) -> py:call_python(Name, Args) end),
py:register_function(cb_timeout, fun([Name, Args, T]) -> py:call_python(Name, Args, T) end),
py:register_function(cb_spawned, fun([Name, Args]) ->
    Self = self(),
    spawn(fun() -> Self ! {done, catch py:call_python(Name, Args)} end),
    receive {done, R} -> R after 10000 -> timeout end end),
py:register_function(cast, fun([Name, Args]) -> py:cast_python(Name, Args) end),
py:register_function(down, fun([N]) -> py:call_python(<<"py_down">>, [N]) end),
ok.
"""


@pytest.fixture(autouse=True)
def callbacks():
    assert erlang.eval(CALLBACK_FUNS) == "ok"
    before = set(erlang.exported())
    yield
    for name in set(erlang.exported()) - before:
        erlang.unexport(name)


def test_export_forms_and_listing():
    @erlang.export
    def area(w, h):
        return w * h

    @erlang.export(name="area2")
    def other(w, h):
        return w * h * 2

    def third(x):
        return -x

    assert erlang.export(third, name="neg") is third
    assert {"area", "area2", "neg"} <= set(erlang.exported())
    assert erlang.exported() == sorted(erlang.exported())
    assert erlang.call("cb", "area", [3, 4]) == 12
    assert erlang.call("cb", "area2", [3, 4]) == 24
    assert erlang.call("cb", "neg", [5]) == -5
    assert erlang.eval('py:call_python(area, [2, 5]).') == 10   # an atom name
    assert erlang.unexport("neg") is True
    assert erlang.unexport("neg") is False
    assert "neg" not in erlang.exported()


def test_export_bad_input():
    with pytest.raises(TypeError):
        erlang.export(42)
    with pytest.raises(TypeError):
        erlang.export(lambda: 1)          # no usable name
    with pytest.raises(ValueError):
        erlang.export(len, name="")
    with pytest.raises(TypeError):
        erlang.export(len, name=3)
    # Names that collide are one export: the last one wins.
    erlang.export(lambda: 1, name="same")
    erlang.export(lambda: 2, name=Atom("same"))
    assert erlang.exported().count("same") == 1
    assert erlang.call("cb", "same", []) == 2


def test_reentrant_callback_runs_on_the_waiting_thread():
    seen = []

    @erlang.export
    def where():
        seen.append(threading.get_ident())
        return threading.current_thread().name

    assert erlang.call("cb", "where", []) == threading.current_thread().name
    assert seen == [threading.get_ident()]


def test_callback_from_another_process_runs_on_the_pool():
    @erlang.export
    def where2():
        return threading.current_thread().name

    name = erlang.call("cb_spawned", "where2", [])
    assert name.startswith("erlang-python-worker-")


def test_twenty_levels_deep_on_one_thread():
    idents = []

    @erlang.export
    def py_down(n):
        idents.append(threading.get_ident())
        return 0 if n == 0 else erlang.call("down", n - 1) + 1

    assert erlang.call("down", 25) == 25
    assert len(idents) == 26 and set(idents) == {threading.get_ident()}
    # The thread's next calls still work.
    assert erlang.call("double_it", 21) == 42


def test_deep_reentrancy_from_8_threads_at_once():
    @erlang.export
    def py_down(n):
        return 0 if n == 0 else erlang.call("down", n - 1) + 1

    results, errors = [], []

    def run():
        try:
            for _ in range(3):
                results.append(erlang.call("down", 20))
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=run) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors
    assert results == [20] * 24


def test_a_callback_that_raises_at_level_10():
    seen = {}

    @erlang.export
    def py_down(n):
        if n == 10:
            raise ValueError("boom at ten")
        try:
            return erlang.call("down", n + 1) + 1
        except erlang.Error as e:
            seen[n] = e.reason
            raise

    with pytest.raises(erlang.Error) as ei:
        erlang.call("down", 0)
    # Level 9 saw the exception as Erlang did: {python, Type, Message, Tb}.
    kind, typ, msg, tb = seen[9]
    assert (kind, typ, msg) == ("python", "ValueError", "boom at ten")
    assert 'raise ValueError("boom at ten")' in tb
    # Each level above saw the one below's erlang.Error.
    assert all(seen[n][:2] == ("python", "Error") for n in range(9))
    assert ei.value.reason[:2] == ("python", "Error")
    assert erlang.call("double_it", 2) == 4


def test_python_exception_reaches_erlang_as_a_python_error():
    @erlang.export
    def bad(x):
        raise KeyError(x)

    r = erlang.eval('try py:call_python(<<"bad">>, [7]) catch error:E -> E end.')
    assert r[0] == "python" and r[1] == "KeyError" and r[2] == "7"
    assert "Traceback" in r[3] and "raise KeyError" in r[3]


def test_timeout_at_level_5_unwinds_and_the_thread_goes_on():
    seen = {}

    @erlang.export
    def py_down(n):
        if n == 5:
            try:
                return erlang.call("sleep_ms", 3000, timeout=0.3)
            except erlang.CallTimeout as e:
                seen[5] = e
                raise
        try:
            return erlang.call("down", n + 1)
        except erlang.Error as e:
            seen[n] = e.reason
            raise

    t0 = time.monotonic()
    with pytest.raises(erlang.Error) as ei:
        erlang.call("down", 0)
    assert time.monotonic() - t0 < 2.5
    assert isinstance(seen[5], erlang.CallTimeout)
    assert seen[4][:2] == ("python", "CallTimeout")
    assert ei.value.reason[:2] == ("python", "Error")
    assert erlang.call("double_it", 5) == 10


def test_unknown_name_raises_in_erlang_without_creating_atoms():
    name = "no_such_export_%d_%d" % (os.getpid(), time.monotonic_ns())
    r = erlang.eval('try py:call_python(<<"%s">>, []) catch error:E -> E end.' % name)
    assert r == (Atom("undefined_python_function"), name)
    r = erlang.eval("try py:call_python(nope_x, []) catch error:E -> E end.")
    assert r == (Atom("undefined_python_function"), Atom("nope_x"))
    with pytest.raises(erlang.Error):
        erlang.eval('binary_to_existing_atom(<<"%s">>, utf8).' % name)


def test_unencodable_return_value_is_a_type_error_in_erlang():
    @erlang.export
    def gives_object():
        return object()

    r = erlang.eval('try py:call_python(<<"gives_object">>, []) catch error:E -> E end.')
    assert r[0] == "python" and r[1] == "TypeError"
    assert erlang.call("double_it", 1) == 2


def test_call_python_timeout_and_bad_arguments():
    release = threading.Event()

    @erlang.export
    def slow():
        release.wait(5)
        return 1

    try:
        r = erlang.eval('try py:call_python(<<"slow">>, [], 100) catch error:E -> E end.')
        assert r == (Atom("python_timeout"), "slow")
    finally:
        release.set()
    for bad in ('py:call_python(1, [])', 'py:call_python(<<"x">>, notalist)',
                'py:call_python(<<"x">>, [], -1)', 'py:cast_python("x", [])'):
        r = erlang.eval("try %s catch error:E -> E end." % bad)
        assert r == Atom("badarg"), bad


def test_cast_python_runs_on_the_pool():
    got = []
    done = threading.Event()

    @erlang.export
    def note(x):
        got.append((x, threading.current_thread().name))
        done.set()

    assert erlang.call("cast", "note", [9]) == Atom("ok")
    assert done.wait(10)
    assert got[0][0] == 9 and got[0][1].startswith("erlang-python-worker-")


def test_many_spontaneous_callbacks_at_once():
    @erlang.export
    def plus(a, b):
        return a + b

    r = erlang.eval(r"""
        Self = self(),
        Pids = [spawn(fun() -> Self ! {I, py:call_python(<<"plus">>, [I, 1])} end)
                || I <- lists:seq(1, 200)],
        lists:sort([receive {I, R} -> {I, R} after 20000 -> timeout end
                    || I <- lists:seq(1, length(Pids))]).""")
    assert r == [(i, i + 1) for i in range(1, 201)]


def test_async_def_export_runs_on_its_loop():
    ready = threading.Event()
    box = {}

    def loop_thread():
        async def main():
            async def aplus(a):
                await asyncio.sleep(0.01)
                return (a + 1, threading.get_ident())

            erlang.export(aplus)
            box["ident"] = threading.get_ident()
            ready.set()
            while not box.get("stop"):
                await asyncio.sleep(0.02)

        asyncio.run(main())

    t = threading.Thread(target=loop_thread)
    t.start()
    try:
        assert ready.wait(10)
        value, ident = erlang.call("cb_spawned", "aplus", [41])
        assert value == 42 and ident == box["ident"]
        # Re-entrant from a sync call too: the waiting thread waits for the loop.
        value, ident = erlang.call("cb", "aplus", [1])
        assert value == 2 and ident == box["ident"]
    finally:
        box["stop"] = True
        t.join(10)


def test_a_callback_that_stops_the_helper():
    @erlang.export
    def stopper():
        erlang.stop()
        return 1

    with pytest.raises(erlang.HelperExited):
        erlang.call("cb", "stopper", [])
    # The next call starts a fresh helper (the suite's on_start registers).
    assert erlang.call("double_it", 4) == 8


def test_helper_death_while_a_callback_runs():
    go = threading.Event()

    @erlang.export
    def wait_then_call():
        go.wait(10)
        return erlang.call("double_it", 1)

    box = {}

    def run():
        t0 = time.monotonic()
        try:
            erlang.call("cb", "wait_then_call", [])
        except BaseException as e:
            box["exc"] = e
        box["dt"] = time.monotonic() - t0

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)
    os.kill(erlang.info()["os_pid"], 9)
    time.sleep(0.2)
    t_kill = time.monotonic()
    go.set()
    t.join(10)
    assert isinstance(box.get("exc"), erlang.HelperExited), box
    assert time.monotonic() - t_kill < 1.5
    assert erlang.call("double_it", 3) == 6


def test_callbacks_from_async_calls_run_on_the_pool():
    @erlang.export
    def where3(x):
        return (x, threading.current_thread().name)

    futs = [erlang.call_async("cb", "where3", [i]) for i in range(50)]
    got = [f.result(timeout=30) for f in futs]
    assert [x for x, _ in got] == list(range(50))
    assert all(name.startswith("erlang-python-worker-") for _, name in got)

    async def main():
        import erlang.asyncio as ea
        return await asyncio.gather(*(ea.call("cb", "where3", [i]) for i in range(20)))

    got = asyncio.run(main())
    assert [x for x, _ in got] == list(range(20))


def test_ctrl_c_at_level_3_unwinds_every_level_and_the_thread_goes_on():
    import _thread

    @erlang.export
    def py_down(n):
        if n == 3:
            threading.Timer(0.2, _thread.interrupt_main).start()
            return erlang.call("sleep_ms", 5000)     # interrupted here
        return erlang.call("down", n + 1)

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        erlang.call("down", 0)
    assert time.monotonic() - t0 < 3
    # Every level's Erlang call was cancelled; the thread's calls work.
    assert erlang.call("double_it", 6) == 12
    erlang.unexport("py_down")
