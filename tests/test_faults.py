"""Faults: timeouts and cancellation, the helper's death, faults on the
Erlang side, Ctrl-C, interpreter exit with calls in flight.

Whatever goes wrong, a call never hangs and never gets another call's
reply: it returns its own result or raises CallTimeout, Error,
KeyboardInterrupt or HelperExited, and the next call works.

Cases that can kill or hang the interpreter run in a subprocess with a
timeout and report what they saw on lines starting with ``RESULT``.
(Case numbers refer to the issue "Never hang, never mix up, never lose".)
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import erlang
from conftest import (REGISTER_LITERAL, children_of, erlang_process_count, helper_pid,
                      proc_state, processes, result_lines, run_python, wait_gone)

# Functions of this file, registered before every test (a test may have
# killed the helper; the session's on_start only brings back REGISTER).
FAULTS = r"""
py:register_function(hang_forever,
    fun([]) -> process_flag(trap_exit, true), receive never_sent -> ok end end),
py:register_function(alive, fun([P]) -> is_process_alive(P) end),
py:register_function(kill_self, fun([]) -> exit(self(), kill) end),
py:register_function(exit_self, fun([R]) -> exit(self(), R) end),
py:register_function(link_and_die,
    fun([R]) -> spawn_link(fun() -> exit(R) end), receive after 5000 -> not_killed end end),
py:register_function(link_and_crash,
    fun([]) -> spawn_link(fun() -> erlang:error(crash_in_linked_process) end),
               receive after 5000 -> not_killed end end),
py:register_function(link_and_end_normally,
    fun([X]) -> spawn_link(fun() -> ok end), timer:sleep(50), X end),
py:register_function(crash_unlinked,
    fun([X]) -> spawn(fun() -> erlang:error(crash_in_unlinked_process) end), timer:sleep(50), X end),
py:register_function(garbage_to_owner,
    fun([Msgs]) -> [py_coordinator ! M || M <- Msgs], timer:sleep(50), sent end),
py:register_function(unregister_port, fun([]) -> unregister(py_port), done end),
py:register_function(late_reply,
    fun([Ms, X]) ->
        {W, S} = get('$py_call'),
        spawn(fun() -> timer:sleep(Ms),
                       port_command(py_port, [<<16, W:32, S:32>>, term_to_binary(X)]) end),
        receive never_sent -> ok end
    end),
ok.
"""

FAULTS_LITERAL = repr(FAULTS)


@pytest.fixture(autouse=True)
def faults_registered(helper):
    assert erlang.eval(FAULTS) == "ok"


def wait_until(pred, timeout, step=0.02):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= end:
            return v
        time.sleep(step)


def beams_of(pid):
    return [c for c in children_of(pid) if c[1].startswith("beam")]


# ------------------------------------------------ 1. timeouts, cancellation

HANGING = {
    "call": lambda t: erlang.call("hang_forever", timeout=t),
    "apply": lambda t: erlang.apply("timer", "sleep", [erlang.Atom("infinity")], timeout=t),
    "eval": lambda t: erlang.eval("receive never_sent -> ok end.", timeout=t),
}


@pytest.mark.parametrize("kind", sorted(HANGING))
def test_timeout_kills_a_function_that_never_returns_and_the_next_call_is_prompt(kind):
    handler = erlang.call("whoami")
    procs = erlang_process_count()
    t0 = time.monotonic()
    with pytest.raises(erlang.CallTimeout):
        HANGING[kind](0.3)
    took = time.monotonic() - t0
    assert 0.29 <= took < 1.5
    # The thread's next call is answered in normal time, with its own result.
    t0 = time.monotonic()
    assert erlang.call("echo", ("next", kind)) == ("next", kind)
    assert time.monotonic() - t0 < 0.5
    # The handler that ran the abandoned call was killed (even the one that
    # traps exits); a fresh one serves the worker; no process is left over.
    assert wait_until(lambda: erlang.call("alive", handler) is False, 2.0)
    assert erlang.call("whoami") != handler
    assert wait_until(lambda: erlang_process_count() == procs, 2.0), \
        (erlang_process_count(), procs)


def test_timeout_reaches_load_module():
    src = "-module(fault_timeout_mod).\n-export([f/0]).\nf() -> loaded.\n"
    with pytest.raises(erlang.CallTimeout):
        erlang.load_module(src, timeout=0)
    assert erlang.load_module(src, timeout=30) == "fault_timeout_mod"
    assert erlang.apply("fault_timeout_mod", "f", []) == "loaded"


@pytest.mark.parametrize("bad", [-1, float("nan"), "1", [1]])
def test_invalid_timeout_is_rejected_before_anything_is_sent(bad):
    with pytest.raises((TypeError, ValueError)):
        erlang.call("echo", 1, timeout=bad)
    with pytest.raises((TypeError, ValueError)):
        erlang.eval("1.", timeout=bad)
    assert erlang.call("echo", "after") == "after"


@pytest.mark.parametrize("huge", [2e10, 1e300, float("inf")])
def test_a_timeout_too_long_to_elapse_counts_as_none(huge):
    # Past about 31 years a deadline in nanoseconds would overflow.
    assert erlang.eval("timer:sleep(20), slept.", timeout=huge) == "slept"
    assert erlang.call("sleep_echo", 20, "x", timeout=huge) == "x"


def test_huge_start_and_call_timeouts_count_as_none(restore_helper):
    erlang.stop()
    erlang.start(timeout=1e300, call_timeout=1e300)
    assert erlang.eval("timer:sleep(20), slept.") == "slept"


def test_call_timeout_says_which_limit_elapsed(restore_helper):
    with pytest.raises(erlang.CallTimeout) as ei:
        erlang.call("sleep_ms", 2000, timeout=0.05)
    assert str(ei.value) == "no reply within timeout=0.05 s"
    erlang.stop()
    erlang.start(call_timeout=0.25)
    with pytest.raises(erlang.CallTimeout) as ei:
        erlang.eval("timer:sleep(2000).")
    assert str(ei.value) == "no reply within call_timeout=0.25 s"


def test_call_timeout_start_option_applies_to_eval_and_load_module(restore_helper):
    src = "-module(fault_ct_mod).\n-export([f/0]).\nf() -> ok.\n"
    erlang.stop()
    erlang.start(call_timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(erlang.CallTimeout):
        erlang.eval("receive never_sent -> ok end.")
    assert time.monotonic() - t0 < 1.5
    erlang.stop()
    erlang.start(call_timeout=0)          # every call times out unless told otherwise
    with pytest.raises(erlang.CallTimeout):
        erlang.load_module(src)
    assert erlang.load_module(src, timeout=30) == "fault_ct_mod"
    assert erlang.eval("1 + 1.", timeout=30) == 2


def test_many_timeouts_from_many_threads_leave_no_erlang_process_behind():
    procs = erlang_process_count()
    wrong = []

    def body(i):
        for k in range(5):
            try:
                erlang.call("sleep_echo", 2000, (i, k), timeout=0.05 + 0.01 * (k % 3))
                wrong.append(("returned", i, k))
            except erlang.CallTimeout:
                pass
            if erlang.call("echo", (i, k)) != (i, k):
                wrong.append(("mismatch", i, k))

    ts = [threading.Thread(target=body, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts)
    assert wrong == []
    # Handlers are kept per worker; nothing else stays.
    assert wait_until(lambda: erlang_process_count() <= procs + 8, 3.0), \
        (erlang_process_count(), procs)


# ----------------------------------------------------------- 2. helper death

KILL_32 = """
import json, os, signal, sys, threading, time
import erlang

REGISTER = %s
starts = []

def on_start():
    starts.append(erlang._erlang._helper_pid())
    erlang.eval(REGISTER)
    erlang.eval("py:register_function(counted_sleep, fun([Ms, X]) ->"
                " atomics:add(persistent_term:get(fault_inflight), 1, 1),"
                " timer:sleep(Ms), X end),"
                " persistent_term:put(fault_inflight, atomics:new(1, [])).")

erlang.start(on_start=on_start, env={"FAULT_MARK": "same-options"}, call_timeout=2,
             binaries="bytes")
old = erlang._erlang._helper_pid()
n = 32
barrier = threading.Barrier(n + 1)
out = [None] * n

def body(i):
    barrier.wait()
    try:
        r = erlang.call("counted_sleep", 15000, i, timeout=60)
        out[i] = {"kind": "returned", "value": r}
    except BaseException as e:
        out[i] = {"kind": type(e).__name__, "t": time.monotonic(),
                  "status": getattr(e, "status", None), "stderr": getattr(e, "stderr", ""),
                  "msg": str(e)}

ts = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
for t in ts:
    t.start()
barrier.wait()
# All 32 calls are running in the helper...
deadline = time.monotonic() + 20
while erlang.eval("atomics:get(persistent_term:get(fault_inflight), 1).") < n:
    assert time.monotonic() < deadline, "the calls did not all start"
    time.sleep(0.02)
# ...and it said something on stderr: the tail must reach HelperExited.
erlang.eval('io:format(standard_error, "fault test: last words before the kill~n", []).')
time.sleep(0.2)
t_kill = time.monotonic()
os.kill(old, signal.SIGKILL)
for t in ts:
    t.join(10)
hung = sum(t.is_alive() for t in ts)
# The next call starts a fresh helper with the same start options.
after = erlang.call("echo", "after")
new = erlang._erlang._helper_pid()
t0 = time.monotonic()
try:
    erlang.call("sleep_ms", 60000)
    timed_out = False
except erlang.CallTimeout:
    timed_out = True
print("RESULT " + json.dumps({
    "out": [dict(o, t=o["t"] - t_kill) if o and "t" in o else o for o in out],
    "hung": hung, "old": old, "new": new, "starts": starts, "after": repr(after),
    "env": erlang.eval('os:getenv("FAULT_MARK").'),
    "call_timeout_kept": timed_out, "call_timeout_took": time.monotonic() - t0,
    "old_state": open("/proc/%%d/stat" %% old).read().split()[2] if os.path.exists(
        "/proc/%%d" %% old) else None,
}))
""" % REGISTER_LITERAL


def test_helper_killed_while_32_threads_wait_all_get_helper_exited_with_status_and_stderr():
    proc = run_python(KILL_32, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = result_lines(proc)
    res = json.loads(line)
    out = res["out"]
    lat = [o["t"] for o in out if o and o["kind"] == "HelperExited"]
    print("HelperExited latency after SIGKILL, 32 threads: max %.3f s, median %.3f s"
          % (max(lat), sorted(lat)[len(lat) // 2]))
    assert res["hung"] == 0
    assert [o["kind"] for o in out] == ["HelperExited"] * 32, out
    assert max(lat) < 1.0
    for o in out:
        assert o["status"] == -9
        assert "last words before the kill" in o["stderr"]
        assert "last words before the kill" in o["msg"]
        assert "signal 9" in o["msg"]
    # Fresh helper, same options: env, binaries="bytes", call_timeout, on_start.
    assert res["new"] not in (None, res["old"])
    assert res["starts"] == [res["old"], res["new"]]
    assert res["after"] == repr(b"after")
    assert bytes(res["env"]) == b"same-options"
    assert res["call_timeout_kept"] is True
    assert res["call_timeout_took"] < 10
    assert res["old_state"] is None            # reaped: no zombie


def test_state_of_a_dead_helper_is_gone_after_the_restart(tmp_path):
    erlang.eval("py:register_function(fault_ephemeral, fun([]) -> here end),"
                " persistent_term:put(fault_state, kept).")
    mod = tmp_path / "fault_gone_mod.erl"
    mod.write_text("-module(fault_gone_mod).\n-export([f/0]).\nf() -> loaded.\n")
    erlang.load_module(mod)
    assert erlang.call("fault_ephemeral") == "here"
    old = helper_pid()
    os.kill(old, signal.SIGKILL)
    assert wait_gone(old, 5) is not None
    assert wait_until(lambda: not erlang.is_running(), 2.0)
    # The session's on_start ran again: its functions are back...
    assert erlang.call("double_it", 4) == 8
    assert helper_pid() not in (None, old)
    # ...but what was registered, stored or loaded in the old helper is gone.
    with pytest.raises(erlang.UndefinedFunction):
        erlang.call("fault_ephemeral")
    assert erlang.eval("persistent_term:get(fault_state, gone).") == "gone"
    with pytest.raises(erlang.UndefinedFunction):
        erlang.apply("fault_gone_mod", "f", [])


def test_death_of_an_idle_helper_is_noticed_without_a_call():
    old = helper_pid()
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    assert wait_until(lambda: not erlang.is_running(), 2.0)
    took = time.monotonic() - t0
    print("idle helper death noticed after %.3f s" % took)
    assert took < 1.0
    assert proc_state(old) is None             # reaped by the reader: no zombie
    assert erlang.call("double_it", 5) == 10


COUNTING_ERL = """#!/bin/sh
echo launched >> "{count}"
echo "fake erl: cannot start (bad args)" >&2
exit 3
"""

NOT_RETRIED = """
import json, sys, time
import erlang
out = []
for i in range(3):
    try:
        erlang.call("anything", i)
        out.append("returned")
    except erlang.HelperExited as e:
        out.append([e.status, e.stderr, str(e)])
time.sleep(1.5)                     # nothing retries in the background
print("RESULT " + json.dumps({"out": out, "running": erlang.is_running(),
                              "launches": len(open(sys.argv[1]).read().split())}))
"""


def test_helper_that_dies_at_start_up_is_reported_once_per_call_not_retried(tmp_path):
    count = tmp_path / "launches"
    fake = tmp_path / "erl"
    fake.write_text(COUNTING_ERL.format(count=count))
    fake.chmod(0o755)
    proc = run_python(NOT_RETRIED, count, env={"ERL": str(fake)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (line,) = result_lines(proc)
    res = json.loads(line)
    assert res["launches"] == 3, res        # one start attempt per call, no loop
    assert res["running"] is False
    for status, stderr, msg in res["out"]:
        assert status == 3
        assert "fake erl: cannot start" in stderr
        assert "fake erl: cannot start" in msg


@pytest.mark.parametrize("args, status, text", [
    (["-eval", "erlang:halt(9)"], 9, None),
    (["-boot", "/nonexistent/boot"], 1, "bootfile"),
    (["+P", "notanumber"], 1, None),
], ids=["halts-at-boot", "bad-boot-file", "bad-emulator-flag"])
def test_helper_with_bad_args_is_reported_and_leaves_nothing_running(args, status, text,
                                                                      restore_helper):
    erlang.stop()
    t0 = time.monotonic()
    with pytest.raises(erlang.HelperExited) as ei:
        erlang.start(args=args, timeout=30)
    took = time.monotonic() - t0
    assert took < 10
    assert "start-up" in str(ei.value)
    # A helper that closed its stdout but is slow to exit (a loaded machine,
    # a sanitizer run) is killed after a 500 ms grace: status -9, and its
    # last stderr lines may be cut.
    assert ei.value.status in (status, -9)
    if text and ei.value.status == status:
        assert text in ei.value.stderr and text in str(ei.value)
    assert not erlang.is_running()
    assert beams_of(os.getpid()) == []


def test_bad_module_at_start_is_reported_and_leaves_nothing_running(tmp_path, restore_helper):
    bad = tmp_path / "fault_bad_mod.erl"
    bad.write_text("-module(fault_bad_mod).\n-export([f/0]).\nf() -> .\n")
    erlang.stop()
    with pytest.raises(erlang.Error) as ei:
        erlang.start(modules=[bad])
    assert ei.value.reason[0] == "compile_error"
    assert "fault_bad_mod.erl:3" in ei.value.reason[1]
    assert not erlang.is_running()
    assert wait_until(lambda: beams_of(os.getpid()) == [], 5.0)


def test_code_path_holding_a_module_of_the_helper_is_refused(tmp_path):
    (tmp_path / "py_coordinator.beam").write_bytes(b"not used")
    (tmp_path / "mine.beam").write_bytes(b"not used")
    pid = helper_pid()
    with pytest.raises(ValueError) as ei:
        erlang.start(code_path=[str(tmp_path)])
    assert "py_coordinator.beam" in str(ei.value) and "mine" not in str(ei.value)
    with pytest.raises(TypeError):
        erlang.start(code_path=[42])
    assert helper_pid() == pid


def test_shadowed_helper_module_makes_the_start_fail_with_its_reason(tmp_path, restore_helper):
    # Raw erl flags that shadow the helper's own coordinator with one that
    # cannot start: the py application does not start, and start() says why.
    import shutil
    erlc = shutil.which("erlc")
    if erlc is None:
        pytest.skip("erlc not installed")
    src = tmp_path / "py_coordinator.erl"
    src.write_text("-module(py_coordinator).\n-export([start_link/0]).\n"
                   "start_link() -> {error, shadowed_by_the_test}.\n")
    subprocess.run([erlc, "-o", str(tmp_path), str(src)], check=True)
    erlang.stop()
    with pytest.raises(erlang.HelperExited) as ei:
        erlang.start(args=["-pa", str(tmp_path)], timeout=30)
    # This -pa comes before the helper's own ebin in the code path, so the
    # shadowing module is the one loaded: the start fails, with the reason
    # in the tail.
    assert "shadowed_by_the_test" in ei.value.stderr
    assert ei.value.status == 3
    assert not erlang.is_running()
    assert beams_of(os.getpid()) == []


# ------------------------------------------------------ 3. Erlang-side faults

FAULTS_KILLING_THE_HANDLER = [
    ("kill_self", (), "killed"),
    ("exit_self", ("boom",), "boom"),
    ("link_and_die", ("linked_boom",), "linked_boom"),
    ("link_and_crash", (), None),
]


@pytest.mark.parametrize("fn, args, reason", FAULTS_KILLING_THE_HANDLER,
                         ids=[f[0] for f in FAULTS_KILLING_THE_HANDLER])
def test_handler_killed_gives_that_caller_error_others_untouched_next_call_works(fn, args, reason):
    stop = threading.Event()
    wrong, done = [], [0]

    def steady(i):
        k = 0
        while not stop.is_set():
            if erlang.call("echo", (i, k)) != (i, k):
                wrong.append((i, k))
            k += 1
        done[0] += k

    others = [threading.Thread(target=steady, args=(i,)) for i in range(4)]
    for t in others:
        t.start()
    try:
        time.sleep(0.05)
        for attempt in range(3):
            handler = erlang.call("whoami")
            t0 = time.monotonic()
            with pytest.raises(erlang.Error) as ei:
                erlang.call(fn, *args)
            assert time.monotonic() - t0 < 2.0       # reported, not a wait for 5 s
            e = ei.value
            assert not isinstance(e, erlang.UndefinedFunction)
            assert e.kind == "exit"
            if reason is not None:
                assert e.reason == reason
            else:
                assert "crash_in_linked_process" in repr(e.reason)
            # The next call on this worker works, on a fresh handler.
            assert erlang.call("echo", ("after", attempt)) == ("after", attempt)
            assert erlang.call("whoami") != handler
    finally:
        stop.set()
        for t in others:
            t.join(30)
    assert wrong == []
    assert done[0] > 0


def test_linked_process_ending_normally_or_unlinked_crash_does_not_disturb_the_call():
    assert erlang.call("link_and_end_normally", "fine") == "fine"
    assert erlang.call("crash_unlinked", "fine too") == "fine too"


def test_exit_kill_from_eval_is_an_error_and_the_helper_stays():
    pid = helper_pid()
    with pytest.raises(erlang.Error) as ei:
        erlang.eval("exit(self(), kill).")
    assert (ei.value.kind, ei.value.reason) == ("exit", "killed")
    with pytest.raises(erlang.Error):
        erlang.eval("spawn_link(fun() -> exit(boom) end), receive after 5000 -> ok end.")
    assert erlang.call("double_it", 21) == 42
    assert helper_pid() == pid


def test_garbage_sent_to_the_port_owner_is_ignored():
    pid = helper_pid()
    garbage = erlang.eval("""
        Port = whereis(py_port),
        [garbage, {garbage}, {self(), {data, <<1,2,3>>}}, {Port, {data, <<>>}},
         {Port, {data, <<1,2,3>>}}, {Port, closed}, {'DOWN', make_ref(), process, self(), x},
         {'EXIT', self(), boom}, {system, {self(), make_ref()}, garbage},
         {io_request, self(), make_ref(), {put_chars, unicode, <<"x">>}},
         lists:seq(1, 1000)].
    """)
    assert erlang.call("garbage_to_owner", garbage) == "sent"
    assert [erlang.call("echo", i) for i in range(10)] == list(range(10))
    assert helper_pid() == pid


@pytest.mark.parametrize("source", [
    "{system, garbage, garbage}",                     # crashes sys:handle_system_msg
    "{whereis(py_port), eof}",                       # a fake end of input
    "{'EXIT', whereis(py_port), boom}",              # a fake channel failure
], ids=["bad-system-message", "fake-eof", "fake-port-exit"])
def test_message_that_takes_the_channel_down_gives_helper_exited_then_a_fresh_helper(source):
    old = helper_pid()
    t0 = time.monotonic()
    with pytest.raises(erlang.HelperExited):
        erlang.eval("py_coordinator ! %s, receive after 10000 -> not_down end." % source,
                    timeout=30)
    took = time.monotonic() - t0
    print("HelperExited %.3f s after %s" % (took, source))
    assert took < 5.0
    assert erlang.call("double_it", 2) == 4
    assert helper_pid() not in (None, old)


@pytest.mark.parametrize("source", [
    "exit(whereis(py_coordinator), kill)",
    "exit(whereis(py_sup), kill)",
    "port_close(whereis(py_port))",
], ids=["kill-coordinator", "kill-supervisor", "close-port"])
def test_killing_the_channel_from_erlang_gives_helper_exited_then_a_fresh_helper(source):
    old = helper_pid()
    t0 = time.monotonic()
    with pytest.raises(erlang.HelperExited):
        erlang.eval("%s, receive after 10000 -> not_down end." % source, timeout=30)
    assert time.monotonic() - t0 < 5.0
    assert erlang.call("double_it", 3) == 6
    assert helper_pid() not in (None, old)


def test_unregistering_the_port_name_does_not_break_the_channel_for_good(restore_helper):
    # A function that unregisters py_port: the channel either survives, or
    # the helper restarts (HelperExited); later calls must work again.
    try:
        erlang.call("unregister_port", timeout=30)
    except (erlang.Error, erlang.HelperExited):
        pass
    results = []
    for i in range(3):
        try:
            results.append(erlang.call("echo", i, timeout=30))
        except (erlang.Error, erlang.HelperExited) as e:
            results.append(type(e).__name__)
    assert results[-2:] == [1, 2], results


# ----------------------------------------------------------------- 4. Ctrl-C

def interrupt(script, delay, *args, timeout=60):
    """Runs script, waits for its READY line, sends SIGINT after delay.
    Returns (CompletedProcess, time the signal was sent)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)] + [str(a) for a in args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline().strip()
        assert line == "READY", (line, p.stderr.read() if p.poll() is not None else "")
        time.sleep(delay)
        t_sig = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), t_sig


CTRL_C_STALE = """
import time
import erlang
erlang.eval(%s)
erlang.eval(%s)
print("READY", flush=True)
try:
    # Its reply comes 0.5 s after the call, whatever happens to the call.
    erlang.call("late_reply", 500, "stale")
    print("RESULT returned")
except KeyboardInterrupt:
    print("RESULT interrupted %%.6f" %% time.monotonic(), flush=True)
# The stale reply arrives while this call waits: it must be dropped.
t0 = time.monotonic()
r1 = erlang.call("sleep_echo", 800, "next")
print("RESULT", repr(r1), repr(erlang.call("echo", "after")), "%%.3f" %% (time.monotonic() - t0),
      flush=True)
""" % (REGISTER_LITERAL, FAULTS_LITERAL)


def test_ctrl_c_drops_the_stale_reply_and_the_next_call_gets_its_own():
    proc, t_sig = interrupt(CTRL_C_STALE, 0.2)
    assert proc.returncode == 0, proc.stderr
    lines = result_lines(proc)
    assert len(lines) == 2, proc.stdout + proc.stderr
    word, t_exc = lines[0].split()
    assert word == "interrupted"
    latency = float(t_exc) - t_sig
    print("KeyboardInterrupt %.4f s after SIGINT" % latency)
    assert 0 <= latency < 0.5
    r1, r2, took = lines[1].split()
    assert (r1, r2) == ("'next'", "'after'")
    assert float(took) < 5


CTRL_C_BUSY = """
import threading, time
import erlang
erlang.eval(%s)
stop = threading.Event()
wrong, count = [], [0]
def steady(i):
    k = 0
    while not stop.is_set():
        if erlang.call("echo", (i, k)) != (i, k):
            wrong.append((i, k))
        k += 1
    count[0] += k
ts = [threading.Thread(target=steady, args=(i,)) for i in range(8)]
for t in ts: t.start()
time.sleep(0.2)
print("READY", flush=True)
try:
    erlang.call("sleep_ms", 20000)
except KeyboardInterrupt:
    print("RESULT interrupted %%.6f" %% time.monotonic(), flush=True)
stop.set()
for t in ts: t.join()
print("RESULT", len(wrong), count[0] > 0, erlang.call("double_it", 21), flush=True)
""" % REGISTER_LITERAL


@pytest.mark.parametrize("attempt", range(2))
def test_ctrl_c_while_eight_threads_hammer_the_channel(attempt):
    proc, t_sig = interrupt(CTRL_C_BUSY, 0.3)
    assert proc.returncode == 0, proc.stderr
    lines = result_lines(proc)
    assert len(lines) == 2, proc.stdout + proc.stderr
    word, t_exc = lines[0].split()
    assert word == "interrupted"
    latency = float(t_exc) - t_sig
    print("KeyboardInterrupt %.4f s after SIGINT (8 threads calling)" % latency)
    assert 0 <= latency < 0.5
    assert lines[1] == "0 True 42"


CTRL_C_AT_START = """
import os, sys, time
import erlang
print("READY", flush=True)
try:
    erlang.start(erl=sys.argv[1], timeout=60)
    print("RESULT started")
except KeyboardInterrupt:
    print("RESULT interrupted %.6f" % time.monotonic(), flush=True)
print("RESULT", erlang.is_running(), flush=True)
"""


def test_ctrl_c_while_waiting_for_a_helper_that_never_answers(tmp_path):
    fake = tmp_path / "erl"
    pidfile = tmp_path / "pid"
    fake.write_text("#!/bin/sh\necho $$ > %s\nexec sleep 60\n" % pidfile)
    fake.chmod(0o755)
    proc, t_sig = interrupt(CTRL_C_AT_START, 0.5, fake)
    assert proc.returncode == 0, proc.stderr
    lines = result_lines(proc)
    assert len(lines) == 2, proc.stdout + proc.stderr
    word, t_exc = lines[0].split()
    assert word == "interrupted"
    assert float(t_exc) - t_sig < 0.5
    assert lines[1] == "False"
    # The helper that never answered was killed, not left running.
    pid = int(pidfile.read_text())
    assert wait_gone(pid, 5) is not None


# ----------------------------------------------------------- 5. exit in flight

EXIT_IN_FLIGHT = """
import os, sys, threading, time
import erlang
erlang.eval(%s)
print("PID", erlang._erlang._helper_pid(), flush=True)
how = sys.argv[1]

def non_daemon(i):
    r = erlang.call("sleep_echo", 1000, i)
    sys.stdout.write("NONDAEMON %%d %%r\\n" %% (i, r))   # one write: lines stay whole
    sys.stdout.flush()

for i in range(8):
    threading.Thread(target=erlang.call, args=("sleep_echo", 60000, i), daemon=True).start()
for i in range(4):
    threading.Thread(target=non_daemon, args=(i,)).start()
time.sleep(0.3)                     # every call is in flight
print("EXIT %%.6f" %% time.monotonic(), flush=True)
if how == "sys.exit":
    sys.exit(3)
if how == "exception":
    raise RuntimeError("main thread fails")
""" % REGISTER_LITERAL


@pytest.mark.parametrize("how, code", [("return", 0), ("sys.exit", 3), ("exception", 1)])
def test_exit_with_daemon_and_non_daemon_calls_in_flight_is_prompt_and_clean(how, code):
    proc = run_python(EXIT_IN_FLIGHT, how, timeout=60)
    t_end = time.monotonic()
    assert proc.returncode == code, proc.stderr[-3000:]
    pid = int(next(ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("PID ")))
    t_exit = float(next(ln.split()[1] for ln in proc.stdout.splitlines()
                        if ln.startswith("EXIT ")))
    took = t_end - t_exit
    print("%s: interpreter exited %.3f s after the main thread ended" % (how, took))
    assert took < 5.0
    # The non-daemon threads' calls finished with their own results.
    assert sorted(ln for ln in proc.stdout.splitlines() if ln.startswith("NONDAEMON")) == \
        ["NONDAEMON %d %d" % (i, i) for i in range(4)]
    for bad in ("Fatal Python error", "Segmentation fault", "Aborted", "core dumped",
                "AddressSanitizer"):
        assert bad not in proc.stderr
    # No orphan BEAM: the helper (and its erl_child_setup) are gone.
    assert wait_gone(pid, 5) is not None, "helper %d outlived the interpreter" % pid


DAEMONS_CALLING_AT_EXIT = """
import sys, threading, time
import erlang
erlang.start(env={"ERLANG_PY_TEST_MARK": sys.argv[1]})

def loop():
    while True:
        try:
            erlang.apply("erlang", "node", [])
        except Exception:
            pass

for _ in range(4):
    threading.Thread(target=loop, daemon=True).start()
time.sleep(0.2)
"""


def beams_marked(mark):
    """Live processes (any parent) whose environment holds mark."""
    found = []
    for pid, _comm, _state, _ppid in processes():
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                env = f.read()
        except OSError:
            continue
        if ("ERLANG_PY_TEST_MARK=" + mark).encode() in env.split(b"\0"):
            found.append(pid)
    return found


def test_daemon_threads_calling_at_exit_never_start_a_helper_that_outlives_python():
    # At exit the helper is stopped; a daemon thread calling after that must
    # not start another one (it would be an orphan).
    mark = uuid.uuid4().hex
    for _ in range(8):
        proc = run_python(DAEMONS_CALLING_AT_EXIT, mark, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Fatal Python error" not in proc.stderr
        assert beams_marked(mark) == []


# ------------------------------------------- 6. a helper that does not read

def test_a_helper_that_stops_reading_cannot_hold_up_timeouts_or_stop(restore_helper):
    # The helper is stopped (SIGSTOP) while a 4 MiB request is half written:
    # the writer holds the channel.  Other calls still time out on time,
    # without sending; stop() kills the helper after its timeout.
    pid = helper_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        got = {}

        def big():
            try:
                got["big"] = erlang.call("echo", b"x" * (4 << 20))
            except Exception as e:   # noqa: BLE001 -- recorded and checked below
                got["big"] = e

        t = threading.Thread(target=big)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        with pytest.raises(erlang.CallTimeout, match="not sent"):
            erlang.call("echo", 1, timeout=0.3)
        assert 0.25 < time.monotonic() - t0 < 2.0
        # Ctrl-C reaches a main thread that waits for the channel.
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            erlang.call("echo", 2)
        assert time.monotonic() - t0 < 2.0
        t0 = time.monotonic()
        assert erlang.stop(timeout=0.5) is True
        assert time.monotonic() - t0 < 3.0
        t.join(10)
        assert not t.is_alive()
        assert isinstance(got["big"], erlang.HelperExited)
        assert wait_gone(pid, 5) is not None
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_a_cancel_queued_behind_a_blocked_write_still_reaches_the_helper(restore_helper):
    # A call times out while another call's write holds the channel: its
    # CANCEL waits for that write and is then sent, so the abandoned call's
    # side effect (due 1.2 s after it started) never happens.
    erlang.eval(
        "py:register_function(slow_mark2, fun([Ms]) -> timer:sleep(Ms),"
        " persistent_term:put(py_test_slow_mark2, done), done end)."
    )
    erlang.eval("persistent_term:erase(py_test_slow_mark2).")
    pid = helper_pid()
    got = {}

    def slow():
        try:
            erlang.call("slow_mark2", 1200, timeout=0.4)
        except erlang.CallTimeout as e:
            got["slow"] = e

    def big():
        got["big"] = len(erlang.call("echo", b"z" * (4 << 20)))

    ts = threading.Thread(target=slow)
    ts.start()
    time.sleep(0.1)                       # slow_mark2 is running in the helper
    os.kill(pid, signal.SIGSTOP)
    try:
        tb = threading.Thread(target=big)
        tb.start()
        time.sleep(0.2)                   # the 4 MiB write is stuck, holding the channel
        ts.join(5)                        # the slow call times out: CANCEL is queued
        assert isinstance(got.get("slow"), erlang.CallTimeout)
    finally:
        os.kill(pid, signal.SIGCONT)
    tb.join(30)
    assert got["big"] == 4 << 20
    time.sleep(1.5)
    assert erlang.eval("persistent_term:get(py_test_slow_mark2, not_done).") == "not_done"
    assert helper_pid() == pid
